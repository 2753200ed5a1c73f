"""The job contract, shared by producer and worker. TensorFlow-free.

A job arrives as JSON keyword arguments, from our producer or from any other
system that sends `featurevis.optimize` by name. `normalize` turns them into a
`JobSpec` with every default filled in and the target resolved both ways
(conv_id and layer name), or raises `JobError`: one line naming the field and
its valid range. The job id is a hash of the normalized spec, so the same job
submitted twice is the same job, on any host.
"""
from __future__ import annotations

import hashlib
import json
import secrets
from typing import Any, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field

from featurevis import catalog, celeryconfig

CONTRACT_VERSION = 1
MAX_ITERATIONS = 10_000
MAX_SEED = 2**32 - 1
METHODS = ("gradient_ascent", "robust")
MAX_TARGETS = 16
MAX_WEIGHT = 100.0
MAX_IMAGES = 8
MAX_DIVERSITY = 100.0
# In units of the objective's own size (render.robust_step), so one default serves every model and layer.
# Measured on six features of shapes_cnn and inception_v3_untrained: at 3 the set's Gram similarity fell
# from ~1.0 to 0.19-0.81 on five while the objective kept 48-83% of its undiversified value; at 10, 9-40%.
DEFAULT_DIVERSITY = 3.0
DEFAULT_MODEL = "inception_v3"
# No device we serve on does one step faster than this (an H200-class GPU on a small layer), so a
# job needing iterations * FASTEST_STEP_SECONDS beyond the soft time limit can never finish in time.
FASTEST_STEP_SECONDS = 0.002


class JobError(ValueError):
    """A job the service cannot run. `str()` is the one-line message for users."""

    def __init__(self, field: str, message: str):
        # Both parts stay in args: Celery rebuilds a task's exception as type(*args).
        super().__init__(field, message)
        self.field, self.message = field, message

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


class Target(BaseModel):
    """One term of a composed objective: maximize weight x feature (a negative weight suppresses it)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    feature: int = Field(ge=0)
    weight: float = Field(default=1.0, ge=-MAX_WEIGHT, le=MAX_WEIGHT, allow_inf_nan=False)


class JobFields(BaseModel):
    """The wire format. Strict: JSON numbers are not strings, booleans are not ints."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    model: str = Field(default=DEFAULT_MODEL, json_schema_extra={"enum": catalog.model_names()})
    conv_id: int | None = None
    layer: str | None = None
    feature: int = Field(default=0, ge=0)
    iterations: int = Field(default=30, ge=1, le=MAX_ITERATIONS)
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    method: Literal[METHODS] = "gradient_ascent"  # type: ignore[valid-type]
    targets: list[Target] | None = Field(default=None, min_length=1, max_length=MAX_TARGETS)
    animate: bool = False
    images: int = Field(default=1, ge=1, le=MAX_IMAGES)
    diversity: float | None = Field(default=None, ge=0.0, le=MAX_DIVERSITY, allow_inf_nan=False)


class JobSpec(BaseModel):
    """A normalized job: every field set, target resolved. `conv_id` None means the logits."""

    model_config = ConfigDict(frozen=True)

    model: str
    conv_id: int | None
    layer: str
    feature: int
    iterations: int
    seed: int
    method: str
    targets: tuple[tuple[int, float], ...] | None = None  # (feature, weight), sorted; None: `feature` alone
    animate: bool = False
    images: int = 1  # more than one: a diverse set, optimized together
    diversity: float = 0.0  # weight of the diversity term between the images

    def fields(self) -> dict[str, Any]:
        """The normalized job as the task's keyword arguments (the wire format)."""
        fields = self.model_dump(exclude={"targets", *ADDED_FIELDS})
        if self.targets:
            del fields["feature"]
            fields["targets"] = [{"feature": feature, "weight": weight} for feature, weight in self.targets]
        fields.update({name: getattr(self, name) for name in self._added_and_set()})
        return fields

    def _added_and_set(self) -> list[str]:
        """Added fields away from their defaults; a set of images always names its diversity, even 0."""
        return [name for name in ADDED_FIELDS if getattr(self, name) != type(self).model_fields[name].default
                or (name == "diversity" and self.images > 1)]

    @property
    def seeds(self) -> list[int]:
        """One seed per image: the job's seed, then the next ones."""
        return [self.seed + index for index in range(self.images)]

    @property
    def weights(self) -> dict[int, float]:
        """The objective as feature -> weight; a plain job is its one feature at weight 1."""
        return dict(self.targets) if self.targets else {self.feature: 1.0}

    @property
    def job_id(self) -> str:
        # Fields added after version 1 enter the hash only when set, so older jobs keep their ids.
        kept = {*self._added_and_set(), *(["targets"] if self.targets else [])}
        identity = self.model_dump(exclude={"targets", *ADDED_FIELDS} - kept)
        canonical = json.dumps({"v": CONTRACT_VERSION, **identity}, sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()[:24]

    @property
    def key(self) -> str:
        """Where the result lives in the store: model / layer / feature(s) / job id."""
        features = "_".join(f"{feature:04d}" for feature in self.weights)
        return f"{self.model}/{self.layer}/{'features' if self.targets else 'feature'}_{features}/{self.job_id}"


# Fields added after version 1: at their defaults they leave the wire format and the job id as they were.
ADDED_FIELDS = ("animate", "images", "diversity")

# What each field accepts, for messages about a value of the wrong type or range.
FIELD_RANGES = {
    "model": f"one of {', '.join(catalog.model_names())}",
    "conv_id": "null (the class logits) or an integer conv layer index",
    "layer": f"null or a Conv2D layer name from the model's description, or '{catalog.LOGITS}'",
    "feature": "an integer channel or class index, >= 0",
    "iterations": f"an integer in 1..{MAX_ITERATIONS}",
    "seed": f"null or an integer in 0..{MAX_SEED}",
    "method": f"one of {', '.join(METHODS)}",
    "targets": f"null or a list of 1..{MAX_TARGETS} objects {{feature: integer >= 0, weight: number in "
               f"-{MAX_WEIGHT:g}..{MAX_WEIGHT:g}, default 1}} with distinct features and a nonzero weight",
    "animate": "true or false",
    "images": f"an integer in 1..{MAX_IMAGES}: how many differing images of the objective, optimized together "
              f"(more than 1 needs method robust)",
    "diversity": f"null or a number in 0..{MAX_DIVERSITY:g}: how hard the job's images are pushed apart "
                 f"(default {DEFAULT_DIVERSITY:g} when images > 1)",
}


def normalize(fields: dict[str, Any], draw_seed: bool = True) -> JobSpec:
    """Validate raw job fields and fill in defaults; raise JobError on the first problem."""
    if not isinstance(fields, dict):
        raise JobError("job", f"must be a JSON object of fields ({', '.join(FIELD_RANGES)})")
    try:
        parsed = JobFields(**{str(k): v for k, v in fields.items()})
    except pydantic.ValidationError as error:
        raise _first_error(error) from None
    info = _model_info(parsed.model)
    conv_id, layer = _resolve_target(info, parsed.conv_id, parsed.layer)
    targets = _normalize_targets(parsed, fields)
    feature = targets[0][0] if targets else parsed.feature
    for checked in dict(targets) if targets else [feature]:
        _check_feature(info, conv_id, checked)
    if targets and len(targets) == 1 and targets[0][1] == 1.0:
        targets = None  # one target of weight 1 is the plain job it always meant
    _check_duration(parsed.iterations)
    diversity = _diversity(parsed)
    seed = parsed.seed
    if seed is None:
        if not draw_seed:
            raise JobError("seed", f"required here, {FIELD_RANGES['seed']}")
        seed = secrets.randbelow(MAX_SEED + 1)
    return JobSpec(
        model=parsed.model, conv_id=conv_id, layer=layer, feature=feature,
        iterations=parsed.iterations, seed=seed, method=parsed.method, targets=targets, animate=parsed.animate,
        images=parsed.images, diversity=diversity,
    )


def _diversity(parsed: JobFields) -> float:
    """The diversity weight: only a set of images can differ, and only the robust step carries the term."""
    if parsed.images == 1:
        if parsed.diversity:
            raise JobError("diversity", "needs images > 1: it pushes a job's images apart")
        return 0.0
    if parsed.method != "robust":
        raise JobError("images", f"more than 1 needs method robust (the diversity term is in its step), "
                                 f"got method {parsed.method}")
    return DEFAULT_DIVERSITY if parsed.diversity is None else float(parsed.diversity)


def _normalize_targets(parsed: JobFields, fields: dict) -> tuple[tuple[int, float], ...] | None:
    """Sorted (feature, weight) pairs, or None when the job names a single `feature`."""
    if parsed.targets is None:
        return None
    if "feature" in fields:
        raise JobError("feature", "give either feature or targets, not both")
    pairs = tuple(sorted((target.feature, float(target.weight)) for target in parsed.targets))
    if len({feature for feature, _ in pairs}) != len(pairs) or not any(weight for _, weight in pairs):
        raise JobError("targets", f"must be {FIELD_RANGES['targets']}")
    return pairs


MAX_SWEEP_FEATURES = 16


def normalize_sweep(fields: dict[str, Any], draw_seed: bool = True) -> list[JobSpec]:
    """A sweep is one job per feature of one layer, sharing seed and settings.

    Each feature keeps the job id it would have on its own, so a sweep fills
    the same cache that single jobs read.
    """
    if not isinstance(fields, dict):
        raise JobError("job", "must be a JSON object of fields")
    fields = dict(fields)
    features = fields.pop("features", None)
    for single in ("feature", "targets", "images", "diversity"):
        if single in fields:
            raise JobError(single, "not allowed in a sweep; give features, a list, and send diverse sets as jobs")
    if (not isinstance(features, list) or not 1 <= len(features) <= MAX_SWEEP_FEATURES
            or len(set(map(repr, features))) != len(features)):
        raise JobError("features", f"must be a list of 1..{MAX_SWEEP_FEATURES} distinct feature indices, "
                                   f"got {_shown(features)}")
    first = normalize({**fields, "feature": features[0]}, draw_seed=draw_seed)
    return [first] + [normalize({**fields, "feature": f, "seed": first.seed}) for f in features[1:]]


def sweep_id(specs: list[JobSpec]) -> str:
    return hashlib.sha256(" ".join(spec.job_id for spec in specs).encode()).hexdigest()[:24]


def sweep_key(specs: list[JobSpec]) -> str:
    return f"{specs[0].model}/{specs[0].layer}/sweeps/{sweep_id(specs)}"


def json_schema(task: str = "featurevis.optimize") -> dict:
    """JSON Schema of a task's keyword arguments, for systems that enqueue by name.

    It checks types and fixed ranges; ranges that depend on the model (conv_id,
    feature) are checked by `normalize`, in the producer and again in the worker.
    """
    schema = JobFields.model_json_schema()
    if task == "featurevis.sweep":
        for single in ("targets", "images", "diversity"):
            schema["properties"].pop(single)
        schema.pop("$defs")
        feature = schema["properties"].pop("feature")
        schema["properties"]["features"] = {
            "type": "array", "items": {key: feature[key] for key in ("type", "minimum")},
            "minItems": 1, "maxItems": MAX_SWEEP_FEATURES, "uniqueItems": True, "title": "Features"}
        schema["required"] = ["features"]
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": f"{task}.schema.json",
            **schema, "title": f"{task} keyword arguments"}


def _first_error(error: pydantic.ValidationError) -> JobError:
    detail = error.errors()[0]
    field = str(detail["loc"][0]) if detail["loc"] else "job"
    if field == "targets" and len(detail["loc"]) > 1:  # a nested problem: report the whole field
        return JobError(field, f"must be {FIELD_RANGES[field]}, got {_shown(detail['input'])}")
    if detail["type"] == "extra_forbidden":
        return JobError(_shown(field).strip('"'), f"unknown field; valid fields are {', '.join(FIELD_RANGES)}")
    return JobError(field, f"must be {FIELD_RANGES[field]}, got {_shown(detail['input'])}")


def _shown(value: Any) -> str:
    """A value quoted on one short line, whatever it holds."""
    text = json.dumps(value, ensure_ascii=True, default=repr)
    return text if len(text) <= 40 else text[:37] + "..."


def _model_info(name: str) -> catalog.ModelInfo:
    try:
        return catalog.get(name)
    except KeyError:
        raise JobError("model", f"unknown model {_shown(name)}; must be {FIELD_RANGES['model']}") from None


def _resolve_target(info: catalog.ModelInfo, conv_id: int | None, layer: str | None) -> tuple[int | None, str]:
    last = len(info.conv_layers) - 1
    if conv_id is not None and not 0 <= conv_id <= last:
        raise JobError("conv_id", f"must be in 0..{last} for {info.name} (or null for the class logits), got {conv_id}")
    if layer is None:
        return conv_id, catalog.LOGITS if conv_id is None else info.conv_layers[conv_id].name
    named_id = None if layer == catalog.LOGITS else info.conv_id_of(layer)
    if named_id is None and layer != catalog.LOGITS:
        raise JobError("layer", f"unknown layer {_shown(layer)} for {info.name}; must be '{catalog.LOGITS}' or a "
                                f"Conv2D name such as {info.conv_layers[0].name}..{info.conv_layers[-1].name}")
    if conv_id is not None and conv_id != named_id:
        raise JobError("layer", f"{_shown(layer)} is not conv_id {conv_id}; give one of conv_id and layer, or both agreeing")
    return named_id, layer


def _check_duration(iterations: int) -> None:
    """Refuse jobs that cannot finish before the time limit, which sits below the visibility timeout."""
    budget = celeryconfig.task_soft_time_limit
    most = int(budget / FASTEST_STEP_SECONDS)
    if iterations > most:
        raise JobError("iterations", f"must be at most {most} under this service's time limit of {budget} s "
                                     f"(FEATUREVIS_SOFT_TIME_LIMIT), got {iterations}")


def _check_feature(info: catalog.ModelInfo, conv_id: int | None, feature: int) -> None:
    if conv_id is None:
        if feature >= info.classes:
            raise JobError("feature", f"must be a class index in 0..{info.classes - 1} for {info.name} logits, got {feature}")
        return
    channels = info.conv_layers[conv_id].channels
    if feature >= channels:
        raise JobError("feature", f"must be a channel in 0..{channels - 1} for conv_id {conv_id} "
                                  f"({info.conv_layers[conv_id].name}) of {info.name}, got {feature}")
