"""The job contract, shared by producer and worker: what a job sends, and what comes back. TensorFlow-free.

A job arrives as JSON keyword arguments, from our producer or from any other
system that sends `featurevis.optimize` by name. `normalize` turns them into a
`JobSpec` with every default filled in and the target resolved both ways
(conv_id and layer name), or raises `JobError`: one line naming the field and
its valid range. Models are checked against their registry descriptions
(featurevis/registry.py), and a job is pinned to the model version it was
validated against. The job id is a hash of the normalized spec, model version
included, so the same job submitted twice is the same job, on any host, and a
re-registered model gives new jobs.

What comes back is typed too (the records at the end of this module): a
running job's Progress, its meta.json (JobMeta) and the task's answer
(JobSummary, SweepSummary, Registration), read by the producer, the CLI,
Flower's progress line and the benchmarks by attribute, not by string key.
Tasks return them through Celery's pydantic support, so on the wire they are
the same JSON objects any other system reads; `None` fields are left out.
"""
from __future__ import annotations

import functools
import hashlib
import json
import secrets
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field

from featurevis import celeryconfig, datasets, registry, store
from featurevis.registry import LOGITS

# 2: conv_id in the tutorial's (creation) order, and the model version in every job id.
CONTRACT_VERSION = 2
MAX_ITERATIONS = 10_000
MAX_SEED = 2**32 - 1
# Each method by name, and whether its step carries the diversity term a set of images needs. The
# TensorFlow side of each is featurevis/optvis/<name>.py, listed in optvis/methods.py.
METHODS = {"gradient_ascent": False, "robust": True, "maco": False}
# Methods whose step takes `alpha: true` (a transparency channel); maco always saves its own alpha.png.
ALPHA_METHODS = ("robust",)
ALPHA_MAPS = ("maco",)
# Methods whose picture keeps a fixed magnitude spectrum, and the spectra a job may fix it to: 1/f, or the
# mean of the model's registered dataset (the spec names the dataset, JobSpec.magnitude).
MAGNITUDE_METHODS = ("maco",)
MAGNITUDES = ("1/f", "dataset")
# What a method's step climbs for a class: the class's logit (the tutorial's), or its log-probability under the
# model's softmax, the logit less the log-sum-exp of all of them (optvis/objectives.weighted_log_probabilities).
CLASS_OBJECTIVES = ("logit", "log_probability")
# Adam's rate may step down once, after this many updates (Defaults.settled_rate). A count of steps rather than
# a share of the job's iterations, so a step never depends on how many follow: a longer job's first pictures
# are a shorter one's, and `make quality-defaults` reads every count of iterations from one run.
SETTLE_AFTER = 50
# A climb may start coarse (Defaults.coarse_steps): for its first steps the picture holds no frequency above this
# many cycles per image, so the ascent lays out the whole shape before it draws edges and texture, as DeepDream's
# octaves and lucid's low-resolution parameterizations do. Counted in steps too, for the same reason.
COARSE_CYCLES = 4
# Where a climb starts (JobSpec.start): each seed's noise, or the dataset's start, the mean of the registered
# dataset's START_EXAMPLES images that excite the target most (examples.py's top examples, as multifaceted feature
# visualization starts from a class's best training images), with START_NOISE times the method's noise of each
# seed on it, so each seed still draws its own picture. Only where a method's start takes the noise. "facets" is
# multifaceted feature visualization's start in full: the dataset's START_FACETS x START_EXAMPLES best examples
# of the target fall into START_FACETS clusters (facets) of alike images, and seed s starts from the mean of
# facet s mod START_FACETS, so a class's seeds draw its facets rather than one picture.
STARTS = ("noise", "dataset", "facets")
START_METHODS = ("robust",)
START_EXAMPLES = 9
START_FACETS = 3
START_NOISE = 10.0
FACETS_PREFIX = "facets:"  # JobSpec.start of a facets start: the prefix, then the dataset's fingerprint


@dataclass(frozen=True)
class Defaults:
    """A method's settings where a job leaves them out: what a default job runs, chosen per method because a
    count of iterations right for one method's step stops another's before its picture forms.

    The TensorFlow side (optvis/robust.py, optvis/maco.py) reads its step's settings here too, so the table
    `make quality-defaults` chooses (docs/methods-and-quality.md) is the one place they are set.
    """

    iterations: int
    learning_rate: float | None = None  # Adam's rate; None: the method's own step rule
    settled_rate: float | None = None  # Adam's rate after SETTLE_AFTER updates; None: learning_rate throughout
    coarse_steps: int | None = None  # steps whose picture holds no frequency above COARSE_CYCLES; None: none
    moves: float | None = None  # how far the transforms move the picture, in lucid's amounts; None: none
    magnitude: str | None = None  # the fixed magnitude spectrum (MAGNITUDES) of a method that keeps one
    class_objective: str = "logit"  # what the step climbs for a class target (CLASS_OBJECTIVES)
    start: str = "noise"  # where a climb starts (STARTS), when the job can start there


METHOD_DEFAULTS = {
    "gradient_ascent": Defaults(iterations=30),  # the tutorial's: its step is 1/std(grad), on the pixels
    "robust": Defaults(iterations=100, learning_rate=0.1, settled_rate=0.02, moves=1.5, class_objective="log_probability",
                       start="facets"),
    "maco": Defaults(iterations=200, learning_rate=0.5, moves=0.5, magnitude="1/f", class_objective="log_probability"),
}
ITERATIONS_BY_METHOD = ", ".join(f"{name} {defaults.iterations}" for name, defaults in METHOD_DEFAULTS.items())


def iterations_field() -> Any:
    """The `iterations` wire field of jobs and atlases. Absent (never null) it is the method's (`iterations`
    fills it in), so the JSON Schema names no one default; an explicit value keeps the job id it always had."""
    return Field(default=None, ge=1, le=MAX_ITERATIONS, description=f"default: the method's ({ITERATIONS_BY_METHOD})",
                 json_schema_extra=lambda schema: schema.pop("default"))


def iterations(method: str, given: int | None) -> int:
    return METHOD_DEFAULTS[method].iterations if given is None else given


MAX_TARGETS = 16
MAX_WEIGHT = 100.0
MAX_IMAGES = 8
MAX_DIVERSITY = 100.0
# In units of the objective's own size (optvis/robust.py), so one default serves every model and layer:
# the weight that pulled a set's images apart while keeping most of the objective (bench/RESULTS.md,
# "Measurements behind defaults").
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


# The kinds of objective term (lucid's objectives), and the parts each needs and may have. channel is today's
# (a class, at the logits); the others need a layer with positions. optvis/objectives.py holds the math.
OBJECTIVES = {
    "channel": ({"feature"}, set()),  # the mean of one channel over the map, or one logit
    "class": ({"feature"}, set()),  # a class logit: the channel objective at the logits, by its other name
    "neuron": ({"feature"}, {"x", "y"}),  # one channel at one position of the layer's map, the centre by default
    "direction": ({"vector"}, set()),  # a vector over the layer's channels, dotted with their means
    "layer": (set(), set()),  # DeepDream: the mean squared activation of the whole layer
    "caricature": ({"image"}, set()),  # the activations an uploaded image gives, matched by cosine similarity
}
SPATIAL_OBJECTIVES = ("neuron", "direction", "layer", "caricature")
MAX_VECTOR = 4096  # channels of a direction
# Regularizers, off (0) by default: weights of penalties on the picture's 0..1 pixels (optvis/objectives.py).
MAX_PENALTY = 1000.0
LP_P_RANGE = (1.0, 10.0)
DEFAULT_LP_P = 2.0


class Target(BaseModel):
    """One term of a composed objective: maximize weight x its value (a negative weight suppresses it).

    Without `objective` it is a channel (or class) `feature`, as before objectives had kinds.
    """

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    objective: Literal[tuple(OBJECTIVES)] = "channel"  # type: ignore[valid-type]
    feature: int | None = Field(default=None, ge=0)
    x: int | None = Field(default=None, ge=0)
    y: int | None = Field(default=None, ge=0)
    vector: list[Annotated[float, Field(ge=-MAX_WEIGHT, le=MAX_WEIGHT, allow_inf_nan=False)]] | None = Field(
        default=None, min_length=1, max_length=MAX_VECTOR)
    image: str | None = Field(default=None, pattern=store.UPLOAD_PATTERN)
    weight: float = Field(default=1.0, ge=-MAX_WEIGHT, le=MAX_WEIGHT, allow_inf_nan=False)


class Term(BaseModel):
    """A normalized objective term other than a channel: its kind, weight and the parts that kind has."""

    model_config = ConfigDict(frozen=True)

    objective: str
    weight: float
    feature: int | None = None
    x: int | None = None
    y: int | None = None
    vector: tuple[float, ...] | None = None
    image: str | None = None

    def wire(self) -> dict[str, Any]:
        """As a `targets` item: only the parts this kind has."""
        return self.model_dump(exclude_none=True, mode="json")

    @property
    def label(self) -> str:
        """Its part of the result's folder name."""
        return f"neuron{self.feature:04d}" if self.objective == "neuron" else self.objective

    def sort_key(self) -> str:
        """Kind first, then its parts and weight: a job's terms in one order, whatever order they came in."""
        return f"{self.objective} {json.dumps(self.model_dump(mode='json'), sort_keys=True)}"

    def same_as(self) -> str:
        """What makes two terms one (a second would only add weight): everything but the weight."""
        return json.dumps(self.model_dump(mode="json", exclude={"weight"}), sort_keys=True)


class JobFields(BaseModel):
    """The wire format. Strict: JSON numbers are not strings, booleans are not ints."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    model: str = Field(default=DEFAULT_MODEL, pattern=registry.NAME_PATTERN.pattern, max_length=64)
    model_sha256: str | None = Field(default=None, pattern=registry.SHA256.pattern)
    conv_id: int | None = None
    layer: str | None = None
    feature: int = Field(default=0, ge=0)
    class_: int | str | None = Field(default=None, alias="class")
    iterations: int = iterations_field()
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    method: Literal[tuple(METHODS)] = "gradient_ascent"  # type: ignore[valid-type]
    targets: list[Target] | None = Field(default=None, min_length=1, max_length=MAX_TARGETS)
    animate: bool = False
    images: int = Field(default=1, ge=1, le=MAX_IMAGES)
    diversity: float | None = Field(default=None, ge=0.0, le=MAX_DIVERSITY, allow_inf_nan=False)
    alpha: bool = False
    tv: float = Field(default=0.0, ge=0.0, le=MAX_PENALTY, allow_inf_nan=False)
    lp: float = Field(default=0.0, ge=0.0, le=MAX_PENALTY, allow_inf_nan=False)
    lp_p: float | None = Field(default=None, ge=LP_P_RANGE[0], le=LP_P_RANGE[1], allow_inf_nan=False)
    blur: float = Field(default=0.0, ge=0.0, le=MAX_PENALTY, allow_inf_nan=False)
    start_image: str | None = Field(default=None, pattern=store.UPLOAD_PATTERN)
    magnitude: Literal[MAGNITUDES] | None = None  # type: ignore[valid-type]
    start: Literal[STARTS] | None = None  # type: ignore[valid-type]


class JobSpec(BaseModel):
    """A normalized job: every field set, target resolved. `conv_id` None means the logits."""

    model_config = ConfigDict(frozen=True)

    model: str
    model_sha256: str  # the registered version the job runs on
    conv_id: int | None  # the layer's index among the Conv2D layers; None for other layers and the logits
    layer: str  # a Keras layer name, or "logits"
    feature: int
    iterations: int
    seed: int
    method: str
    targets: tuple[tuple[int, float], ...] | None = None  # channel terms (feature, weight), sorted; None: `feature` alone
    animate: bool = False
    images: int = 1  # more than one: a diverse set, optimized together
    diversity: float = 0.0  # weight of the diversity term between the images
    alpha: bool = False  # a transparency channel, composited over random backgrounds (robust)
    # The objective's other terms (neuron, direction, layer, caricature), sorted. Kept apart from `targets`
    # so a job of channels keeps its id: the wire format has them all in `targets`.
    terms: tuple[Term, ...] | None = None
    tv: float = 0.0  # regularizer weights: total variation, the Lp norm (of power lp_p) and blur per step
    lp: float = 0.0
    lp_p: float = DEFAULT_LP_P
    blur: float = 0.0
    # An uploaded picture every image of the job starts from instead of noise (each method's start, optvis/);
    # a set's images all start from it and part through their seeds' transforms and the diversity term.
    start_image: str | None = None
    # maco with `magnitude: dataset`: the fingerprint of the dataset whose mean magnitude spectrum the picture
    # keeps (None: 1/f). On the wire as "dataset"; the fingerprint is in the job id, so a new dataset gives new
    # pictures.
    magnitude: str | None = None
    # start "dataset": the fingerprint of the dataset whose best examples of the target the climb starts from
    # (None: the seeds' noise, or start_image); start "facets": FACETS_PREFIX and that fingerprint. On the wire as
    # "dataset" or "facets", the fingerprint in the job id, as magnitude; a noise start keeps the id it always had,
    # and a method whose default is a dataset's start says "noise".
    start: str | None = None

    def fields(self) -> dict[str, Any]:
        """The normalized job as the task's keyword arguments (the wire format)."""
        fields = self.model_dump(exclude={"targets", *ADDED_FIELDS})
        if self.targets or self.terms:
            del fields["feature"]
            fields["targets"] = [{"feature": feature, "weight": weight} for feature, weight in self.targets or ()] \
                + [term.wire() for term in self.terms or ()]
        fields.update({name: getattr(self, name) for name in self._added_and_set()
                       if name not in ("terms", "magnitude", "start")})
        if self.magnitude:
            fields["magnitude"] = "dataset"
        if self.start:
            fields["start"] = dataset_start(self.start)[0]
        if self.method in START_METHODS and self.start is None and self.start_image is None:
            fields["start"] = "noise"  # said, so the worker's normalize does not give it the method's default start
        return fields

    def _added_and_set(self) -> list[str]:
        """Added fields away from their defaults; a set of images always names its diversity, even 0."""
        return [name for name in ADDED_FIELDS if getattr(self, name) != type(self).model_fields[name].default
                or (name == "diversity" and self.images > 1)]

    @property
    def step(self) -> str:
        """The compiled step a job needs: its method, or a variant whose state has another shape (factory)."""
        if self.alpha:
            return f"{self.method}+alpha"
        # The dataset's fingerprint names the step: a new dataset is another spectrum, so another compiled step.
        return f"{self.method}+dataset-{self.magnitude}" if self.magnitude else self.method

    @property
    def saves_alpha(self) -> bool:
        """Whether the job writes alpha.png: its transparency (alpha) or where the objective looked (maco)."""
        return self.alpha or self.method in ALPHA_MAPS

    @property
    def seeds(self) -> list[int]:
        """One seed per image: the job's seed, then the next ones."""
        return [self.seed + index for index in range(self.images)]

    @property
    def weights(self) -> dict[int, float]:
        """The channel terms as feature -> weight; a plain job is its one feature at weight 1."""
        if self.targets:
            return dict(self.targets)
        return {} if self.terms else {self.feature: 1.0}

    @property
    def job_id(self) -> str:
        return _job_id(self)

    @property
    def key(self) -> str:
        if self.terms:
            labels = [f"{feature:04d}" for feature in self.weights] + [term.label for term in self.terms]
            return store.objective_key(self.model, self.layer, labels, self.job_id)
        return store.job_key(self.model, self.layer, self.weights, bool(self.targets), self.job_id)


@functools.lru_cache(maxsize=4096)
def _job_id(spec: JobSpec) -> str:
    """A spec's id, kept by its value: an atlas batch asks for each unit's id and key a dozen times (files,
    pages, records), and hashing the canonical JSON each time was a measurable share of its host work. Keyed
    by the spec's fields, not stored on it, so a copy with other fields never carries a stale id."""
    # Fields added after version 1 enter the hash only when set, so older jobs keep their ids.
    kept = {*spec._added_and_set(), *(["targets"] if spec.targets else [])}
    identity = spec.model_dump(exclude={"targets", *ADDED_FIELDS} - kept)
    canonical = json.dumps({"v": CONTRACT_VERSION, **identity}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:24]


# Fields added after version 1: at their defaults they leave the wire format and the job id as they were.
ADDED_FIELDS = ("animate", "images", "diversity", "alpha", "terms", "tv", "lp", "lp_p", "blur", "start_image",
                "magnitude", "start")

# What each field accepts, for messages about a value of the wrong type or range.
FIELD_RANGES = {
    "model": "a registered model's name ([a-z0-9_-]{1,64}; `python -m producer models list`)",
    "model_sha256": "null (the current version) or a registered version's 64-hex sha256",
    "conv_id": "null (the class logits) or an integer Conv2D layer index, in creation order as in the tutorial",
    "layer": f"null, '{LOGITS}', or the name of a layer whose output is (batch, height, width, channels)",
    "feature": "an integer channel or class index, >= 0",
    "class": "null, a class index or a class name (exact or a unique prefix), for the logits",
    "iterations": f"an integer in 1..{MAX_ITERATIONS}",
    "seed": f"null or an integer in 0..{MAX_SEED}",
    "method": f"one of {', '.join(METHODS)}",
    "targets": f"null or a list of 1..{MAX_TARGETS} objects {{objective: {'|'.join(OBJECTIVES)} (default "
               f"channel), its parts (feature, x, y, vector, image), weight: number in -{MAX_WEIGHT:g}..{MAX_WEIGHT:g}, "
               f"default 1}} with distinct features and a nonzero weight",
    "animate": "true or false",
    "images": f"an integer in 1..{MAX_IMAGES}: how many differing images of the objective, optimized together "
              f"(more than 1 needs method robust)",
    "diversity": f"null or a number in 0..{MAX_DIVERSITY:g}: how hard the job's images are pushed apart "
                 f"(default {DEFAULT_DIVERSITY:g} when images > 1)",
    "alpha": f"true or false: a transparency channel, saved as alpha.png (method {' or '.join(ALPHA_METHODS)}, "
             f"images 1; {' and '.join(ALPHA_MAPS)} always saves one)",
    "tv": f"a number in 0..{MAX_PENALTY:g}: the weight of the picture's total variation, subtracted (0: off)",
    "lp": f"a number in 0..{MAX_PENALTY:g}: the weight of the picture's Lp norm about mid-grey, subtracted (0: off)",
    "lp_p": f"null or a number in {LP_P_RANGE[0]:g}..{LP_P_RANGE[1]:g}: the power of the lp norm (default "
            f"{DEFAULT_LP_P:g}; needs lp > 0)",
    "blur": f"a number in 0..{MAX_PENALTY:g}: how hard each step is pulled towards its own 3x3 blur (0: off)",
    "magnitude": f"null (the method's default) or one of {', '.join(MAGNITUDES)}: the magnitude spectrum a "
                 f"{' or '.join(MAGNITUDE_METHODS)} picture keeps (dataset: the mean of the model's registered dataset)",
    "start_image": f"null or an uploaded image's key {store.UPLOADS}/<sha256>.<{'|'.join(store.UPLOAD_FORMATS)}> "
                   f"(Producer.upload_image): the picture the job starts from instead of noise",
    "start": f"null (the method's default) or one of {', '.join(STARTS)}: where the climb starts (dataset: the "
             f"mean of the {START_EXAMPLES} images of the model's dataset that excite the one target most, with "
             f"each seed's noise on it; facets: the mean of one of {START_FACETS} clusters of its "
             f"{START_FACETS * START_EXAMPLES} best, seed by seed; method {' or '.join(START_METHODS)})",
}


def normalize(fields: dict[str, Any], draw_seed: bool = True, models: registry.Registry | None = None) -> JobSpec:
    """Validate raw job fields and fill in defaults; raise JobError on the first problem.

    Models are looked up in `models`, by default the registry of RESULTS_DIR.
    """
    if not isinstance(fields, dict):
        raise JobError("job", f"must be a JSON object of fields ({', '.join(FIELD_RANGES)})")
    try:
        parsed = JobFields(**{str(k): v for k, v in fields.items()})
    except pydantic.ValidationError as error:
        raise _first_error(error) from None
    models = models or registry.Registry.from_env()
    info = model_info(models, parsed.model, parsed.model_sha256)
    conv_id, layer = resolve_target(info, parsed.conv_id, parsed.layer)
    targets, terms = _normalize_targets(parsed, fields, info, layer, models)
    feature = _class_feature(info, parsed, fields, layer) if parsed.class_ is not None else parsed.feature
    if targets or terms:  # the job's feature, as meta.json names it: its first channel, else its first neuron's
        feature = targets[0][0] if targets else next((term.feature for term in terms if term.feature is not None), 0)
    for checked in dict(targets) if targets else [] if terms else [feature]:
        _check_feature(info, layer, checked)
    if targets and len(targets) == 1 and targets[0][1] == 1.0 and not terms:
        targets = None  # one target of weight 1 is the plain job it always meant
    steps = iterations(parsed.method, parsed.iterations)
    _check_duration(steps)
    diversity = _diversity(parsed)
    _check_alpha(parsed)
    if parsed.start_image is not None:
        _check_uploaded(models, "start_image", "start image", parsed.start_image, "--start-image")
    seed = parsed.seed
    if seed is None:
        if not draw_seed:
            raise JobError("seed", f"required here, {FIELD_RANGES['seed']}")
        seed = secrets.randbelow(MAX_SEED + 1)
    return JobSpec(
        model=parsed.model, model_sha256=info.sha256, conv_id=conv_id, layer=layer, feature=feature,
        iterations=steps, seed=seed, method=parsed.method, targets=targets, animate=parsed.animate,
        images=parsed.images, diversity=diversity, alpha=parsed.alpha, terms=terms, tv=float(parsed.tv),
        lp=float(parsed.lp), lp_p=_lp_power(parsed), blur=float(parsed.blur), start_image=parsed.start_image,
        magnitude=_magnitude(parsed, models, info), start=_start(parsed, models, info, targets or terms),
    )


def _start(parsed: JobFields, models: registry.Registry, info: registry.ModelInfo, composed: tuple | None) -> str | None:
    """The fingerprint of the dataset a job's climb starts from; None for noise or an uploaded start picture.

    A job that asks for the dataset's start gets it or an error; a method whose default is that start falls back
    to noise where the job cannot have it (a composed objective, or a model with no dataset), as a picture
    always could start from noise."""
    asked = parsed.start not in (None, "noise")
    if parsed.start is not None and parsed.start_image is not None:
        raise JobError("start", "give start or start_image, not both: a climb starts from one picture")
    kind = parsed.start or METHOD_DEFAULTS[parsed.method].start
    if parsed.start_image is not None or kind == "noise":
        return None
    if parsed.method not in START_METHODS:
        raise JobError("start", f"'{kind}' needs method {' or '.join(START_METHODS)} (its start takes the seeds' "
                                f"noise), got method {parsed.method}")
    if composed:
        if asked:
            raise JobError("start", f"'{kind}' needs one target, a class or a channel (`feature`): the dataset's "
                                    "best examples are a unit's")
        return None
    fingerprint = datasets.fingerprint(models, info)
    if fingerprint is None and asked:
        raise JobError("start", f"'{kind}' needs a model with a dataset; {info.name} has none (`python -m producer "
                                f"models dataset {info.name} PATH`), or use noise")
    return spec_start(kind, fingerprint)


def spec_start(kind: str, fingerprint: str | None) -> str | None:
    """A JobSpec.start from a start's kind (STARTS) and its model's dataset's fingerprint: None for noise or where
    there is no dataset, the fingerprint for "dataset", FACETS_PREFIX and it for "facets"."""
    if kind == "noise" or fingerprint is None:
        return None
    return FACETS_PREFIX + fingerprint if kind == "facets" else fingerprint


def dataset_start(start: str) -> tuple[str, str]:
    """A JobSpec.start as (its kind on the wire, "dataset" or "facets", and its dataset's fingerprint)."""
    if start.startswith(FACETS_PREFIX):
        return "facets", start.removeprefix(FACETS_PREFIX)
    return "dataset", start


def _magnitude(parsed: JobFields, models: registry.Registry, info: registry.ModelInfo) -> str | None:
    """The fingerprint of the dataset a job's magnitude spectrum comes from; None for 1/f, and for methods
    that keep none."""
    if parsed.method not in MAGNITUDE_METHODS:
        if parsed.magnitude is not None:
            raise JobError("magnitude", f"only method {' or '.join(MAGNITUDE_METHODS)} keeps a fixed magnitude "
                                        f"spectrum; this job's is {parsed.method}")
        return None
    if (parsed.magnitude or METHOD_DEFAULTS[parsed.method].magnitude) != "dataset":
        return None
    fingerprint = datasets.fingerprint(models, info)
    if fingerprint is None:
        raise JobError("magnitude", f"'dataset' needs a model with a dataset; {info.name} has none (`python -m "
                                    f"producer models dataset {info.name} PATH`), or use 1/f")
    return fingerprint


def _lp_power(parsed: JobFields) -> float:
    """The Lp norm's power: only a job that weighs the norm has one."""
    if parsed.lp_p is None:
        return DEFAULT_LP_P
    if not parsed.lp:
        raise JobError("lp_p", "needs lp > 0: it is the power of the lp regularizer")
    return float(parsed.lp_p)


def _class_feature(info: registry.ModelInfo, parsed: JobFields, fields: dict, layer: str) -> int:
    """The class a job names, by index or name, as its feature on the logits."""
    if "feature" in fields or parsed.targets is not None:
        raise JobError("class", "give one of class, feature and targets")
    if layer != LOGITS:
        raise JobError("class", f"names a class of the logits; the job's layer is {layer}")
    if not info.classes:
        raise JobError("class", f"{info.name} has no classes: {info.no_classes or 'it has no class output'}")
    try:
        return info.class_index(parsed.class_)
    except ValueError as error:
        raise JobError("class", f"{shown(parsed.class_)}: {error}") from None


def _diversity(parsed: JobFields) -> float:
    """The diversity weight: only a set of images can differ, and only some methods' steps carry the term."""
    if parsed.images == 1:
        if parsed.diversity:
            raise JobError("diversity", "needs images > 1: it pushes a job's images apart")
        return 0.0
    if not METHODS[parsed.method]:
        sets = " or ".join(name for name, diverse in METHODS.items() if diverse)
        raise JobError("images", f"more than 1 needs method {sets} (the diversity term is in its step), "
                                 f"got method {parsed.method}")
    return DEFAULT_DIVERSITY if parsed.diversity is None else float(parsed.diversity)


def _check_alpha(parsed: JobFields) -> None:
    """A transparency channel is a variant of some methods' steps, for one picture (alpha.png is one map)."""
    if not parsed.alpha:
        return
    if parsed.method not in ALPHA_METHODS:
        raise JobError("alpha", f"true needs method {' or '.join(ALPHA_METHODS)} ({' and '.join(ALPHA_MAPS)} saves "
                                f"its own alpha.png), got method {parsed.method}")
    if parsed.images > 1:
        raise JobError("alpha", f"true needs images 1 (a set has no alpha.png yet), got images {parsed.images}")


def _normalize_targets(parsed: JobFields, fields: dict, info: registry.ModelInfo, layer: str,
                       models: registry.Registry) -> tuple[tuple[tuple[int, float], ...] | None, tuple[Term, ...] | None]:
    """Sorted channel (feature, weight) pairs and sorted other terms; (None, None) when the job names a `feature`."""
    if parsed.targets is None:
        return None, None
    if "feature" in fields:
        raise JobError("feature", "give either feature or targets, not both")
    pairs, terms = [], []
    for target in parsed.targets:
        _check_parts(target, layer)
        if target.objective in ("channel", "class"):
            pairs.append((target.feature, float(target.weight)))
        else:
            terms.append(_term(target, info, layer, models))
    pairs.sort()
    terms.sort(key=Term.sort_key)
    if len({feature for feature, _ in pairs}) != len(pairs) or not any(
            weight for weight in [weight for _, weight in pairs] + [term.weight for term in terms]):
        raise JobError("targets", f"must be {FIELD_RANGES['targets']}")
    if len({term.same_as() for term in terms}) != len(terms):
        raise JobError("targets", "the same term twice; give it once, with the weights summed")
    if sum(term.objective == "caricature" for term in terms) > 1:
        raise JobError("targets", "at most one caricature term: a picture is matched to one image")
    return tuple(pairs) or None, tuple(terms) or None


def _check_parts(target: Target, layer: str) -> None:
    """A term has the parts its kind needs and no others, on a layer its kind applies to."""
    kind = target.objective
    required, optional = OBJECTIVES[kind]
    given = {part for part in ("feature", "x", "y", "vector", "image") if getattr(target, part) is not None}
    parts = ", ".join(sorted(required | optional)) or "none but weight"
    if missing := required - given:
        raise JobError("targets", f"a {kind} term needs {', '.join(sorted(missing))} (its parts: {parts})")
    if extra := given - required - optional:
        raise JobError("targets", f"a {kind} term has no {', '.join(sorted(extra))} (its parts: {parts})")
    if kind == "class" and layer != LOGITS:
        raise JobError("targets", f"a class term is a logit; the job's layer is {layer} (use objective channel)")
    if kind in SPATIAL_OBJECTIVES and layer == LOGITS:
        raise JobError("targets", f"a {kind} term needs a layer with positions (give conv_id or layer); "
                                  f"the job's layer is the logits")


def _term(target: Target, info: registry.ModelInfo, layer: str, models: registry.Registry) -> Term:
    """A neuron, direction, layer or caricature term, its parts checked against the layer (and the store)."""
    shape = info.layer(layer)
    where = f"layer {layer} of {info.name}"
    weight, x, y = float(target.weight), target.x, target.y
    if target.objective == "neuron":
        _check_feature(info, layer, target.feature)
        if shape.height is None or shape.width is None:
            raise JobError("targets", f"a neuron term needs a layer of fixed size; {where} has none")
        x = shape.width // 2 if x is None else x
        y = shape.height // 2 if y is None else y
        if x >= shape.width or y >= shape.height:
            raise JobError("targets", f"a neuron's x must be in 0..{shape.width - 1} and y in 0..{shape.height - 1} "
                                      f"(the map of {where}), got x {x}, y {y}")
    if target.vector is not None and len(target.vector) != shape.channels:
        raise JobError("targets", f"a direction's vector must have one number per channel, {shape.channels} for "
                                  f"{where}, got {len(target.vector)}")
    if target.vector is not None and not any(target.vector):
        raise JobError("targets", "a direction's vector must not be all zeros")
    if target.image is not None:
        _check_uploaded(models, "targets", "caricature image", target.image, "--caricature")
    vector = None if target.vector is None else tuple(float(value) for value in target.vector)
    return Term(objective=target.objective, weight=weight, feature=target.feature, x=x, y=y, vector=vector,
                image=target.image)


def _check_uploaded(models: registry.Registry, field: str, what: str, key: str, flag: str) -> None:
    """An image a job names by key must be in the store already: the worker reads it, and cannot ask for it."""
    if not models.store.exists(key):
        raise JobError(field, f"{what} {key[:24]}... is not in the store; upload it first "
                              f"(`python -m producer enqueue {flag} FILE`, or Producer.upload_image)")


MAX_SWEEP_FEATURES = 16


def normalize_sweep(fields: dict[str, Any], draw_seed: bool = True,
                    models: registry.Registry | None = None) -> list[JobSpec]:
    """A sweep is one job per feature of one layer, sharing seed and settings.

    Each feature keeps the job id it would have on its own, so a sweep fills
    the same cache that single jobs read.
    """
    if not isinstance(fields, dict):
        raise JobError("job", "must be a JSON object of fields")
    fields = dict(fields)
    features = fields.pop("features", None)
    for single in ("feature", "class", "targets", "images", "diversity"):
        if single in fields:
            raise JobError(single, "not allowed in a sweep; give features, a list, and send diverse sets as jobs")
    if (not isinstance(features, list) or not 1 <= len(features) <= MAX_SWEEP_FEATURES
            or len(set(map(repr, features))) != len(features)):
        raise JobError("features", f"must be a list of 1..{MAX_SWEEP_FEATURES} distinct feature indices, "
                                   f"got {shown(features)}")
    first = normalize({**fields, "feature": features[0]}, draw_seed=draw_seed, models=models)
    pinned = {**fields, "seed": first.seed, "model_sha256": first.model_sha256}  # every feature on one version
    return [first] + [normalize({**pinned, "feature": f}, models=models) for f in features[1:]]


def sweep_id(specs: list[JobSpec]) -> str:
    return hashlib.sha256(" ".join(spec.job_id for spec in specs).encode()).hexdigest()[:24]


def sweep_key(specs: list[JobSpec]) -> str:
    return store.sweep_key(specs[0].model, specs[0].layer, sweep_id(specs))


def json_schema(task: str = "featurevis.optimize") -> dict:
    """JSON Schema of a task's keyword arguments, for systems that enqueue by name.

    It checks types and fixed ranges; ranges that depend on the model (conv_id,
    feature) are checked by `normalize`, in the producer and again in the worker.
    """
    schema = JobFields.model_json_schema(by_alias=True)
    if task == "featurevis.sweep":
        for single in ("targets", "images", "diversity", "class"):
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
        return JobError(field, f"must be {FIELD_RANGES[field]}, got {shown(detail['input'])}")
    if detail["type"] == "extra_forbidden":
        return JobError(shown(field).strip('"'), f"unknown field; valid fields are {', '.join(FIELD_RANGES)}")
    return JobError(field, f"must be {FIELD_RANGES[field]}, got {shown(detail['input'])}")


def shown(value: Any) -> str:
    """A value quoted on one short line, whatever it holds."""
    text = json.dumps(value, ensure_ascii=True, default=repr)
    return text if len(text) <= 40 else text[:37] + "..."


def model_info(models: registry.Registry, name: str, version: str | None) -> registry.ModelInfo:
    try:
        return models.get(name, version)
    except KeyError:
        if version is not None and models.current_version(name) is not None:
            raise JobError("model_sha256", f"{version[:12]}... is not a registered version of {name}") from None
        raise JobError("model", f"unknown model {shown(name)}; registered: {', '.join(models.names())}") from None


def resolve_target(info: registry.ModelInfo, conv_id: int | None, layer: str | None) -> tuple[int | None, str]:
    """(conv_id, Keras layer name) of the target; a tutorial layer name resolves to the Keras one."""
    conv_layers = info.conv_layers
    if conv_id is not None and not 0 <= conv_id < len(conv_layers):
        raise JobError("conv_id", f"must be in 0..{len(conv_layers) - 1} for {info.name} (or null for the class "
                                  f"logits), got {conv_id}")
    if layer is None:
        if conv_id is None and not info.classes:
            raise JobError("layer", f"required for {info.name}: it has no class logits "
                                    f"({info.no_classes or 'no class output'})")
        return conv_id, LOGITS if conv_id is None else conv_layers[conv_id].name
    if layer == LOGITS and info.classes:
        named = None
    elif (named := info.layer(layer)) is None:
        examples = f"{info.layers[0].name}..{info.layers[-1].name}"
        raise JobError("layer", f"unknown layer {shown(layer)} for {info.name}; must be "
                                f"{f'{LOGITS!r} or ' if info.classes else ''}a layer with a (height, width, channels) "
                                f"output such as {examples} (`python -m producer models show {info.name}`)")
    named_id = None if named is None else named.conv_id
    if conv_id is not None and conv_id != named_id:
        raise JobError("layer", f"{shown(layer)} is not conv_id {conv_id}; give one of conv_id and layer, or both agreeing")
    return named_id, LOGITS if named is None else named.name


def _check_duration(iterations: int) -> None:
    """Refuse jobs that cannot finish before the time limit, which sits below the visibility timeout."""
    budget = celeryconfig.task_soft_time_limit
    most = int(budget / FASTEST_STEP_SECONDS)
    if iterations > most:
        raise JobError("iterations", f"must be at most {most} under this service's time limit of {budget} s "
                                     f"(FEATUREVIS_SOFT_TIME_LIMIT), got {iterations}")


def _check_feature(info: registry.ModelInfo, layer: str, feature: int) -> None:
    if layer == LOGITS:
        if feature >= info.classes:
            raise JobError("feature", f"must be a class index in 0..{info.classes - 1} for {info.name} logits, got {feature}")
        return
    target = info.layer(layer)
    if feature >= target.channels:
        where = f"conv_id {target.conv_id} ({layer})" if target.conv_id is not None else f"layer {layer}"
        raise JobError("feature", f"must be a channel in 0..{target.channels - 1} for {where} of {info.name}, "
                                  f"got {feature}")


# What comes back from a job.

# A quality block (scoring.py): numbers, the judge's name and whether it agrees.
Scores = dict[str, bool | int | float | str]


class Record(BaseModel):
    # Records are read back from meta.json files and result backends written by other
    # releases: fields they add are kept, not refused.
    model_config = ConfigDict(extra="allow")


class Prediction(Record):
    """The model's top class at one iteration."""

    iteration: int
    class_id: int
    class_name: str
    score: float


class Progress(Record):
    """A running batch's latest figures, in the result backend (PROGRESS) and in Flower's task-progress events."""

    job_ids: list[str]
    iteration: int
    iterations: int
    loss: float
    grad_min: float
    grad_max: float
    step_size: float
    prediction: Prediction | None = None

    def line(self) -> str:
        """One line for Flower's Result column, e.g. 'PROGRESS 12/30 loss=0.5312 top=syringe (22.6%)'."""
        text = f"PROGRESS {self.iteration}/{self.iterations} loss={self.loss:.4g}"
        if self.prediction is not None:
            text += f" top={self.prediction.class_name} ({self.prediction.score:.1%})"
        return text


class Timings(Record):
    model_load_s: float  # building the model, on the first job that needed it
    compile_s: float  # tracing the layer's step, on the first job at that layer
    optimize_s: float  # the climb, with the class predictions it makes on the way
    started_at: float  # epoch seconds the batch started
    batch_size: int  # jobs in the batch
    predictions_s: float = 0.0  # of optimize_s, the class predictions' share
    scores_s: float = 0.0  # after the climb: the final read (the pictures' classes, the scores' passes) and scores


class WorkerInfo(Record):
    hostname: str
    pid: int
    device: str


class FactoryCounts(Record):
    """How often this worker process built a model and a step, and traced this step: a check on caching."""

    models_built: int
    steps_built: int
    step_traces: int


class SetMember(Record):
    png: str
    seed: int
    quality: Scores


class DiverseSet(Record):
    """A diverse set: what pushed it apart, how alike it came out, and each image with its seed and scores."""

    images: int
    diversity: float
    gram_similarity: float
    members: list[SetMember]


class JobMeta(Record):
    """A finished job's meta.json: its normalized spec, where it ran, every iteration's figures and its scores.

    `quality` is the job's first image's, as image.png's first tile for a set.
    """

    job_id: str
    key: str
    spec: dict[str, Any]
    model: str
    model_sha256: str
    model_source: dict[str, Any]
    untrained: bool
    layer_name: str
    layer_type: str
    tutorial_layer_name: str | None
    method: str
    iterations: int
    seed: int
    conv_id: int | None
    feature: int
    loss: list[float]
    final_loss: float
    grad_min: list[float]
    grad_max: list[float]
    step_size: list[float]
    predictions: list[Prediction]
    timings: Timings
    worker: WorkerInfo
    versions: dict[str, str]
    created_at: str
    quality: Scores
    factory: FactoryCounts
    set: DiverseSet | None = None

    def to_json(self) -> dict[str, Any]:
        """meta.json's content: no `set` key for a single picture, every other field as it is."""
        return self.model_dump(mode="json", exclude={"set"} if self.set is None else set())


class JobSummary(Record):
    """`featurevis.optimize`'s answer: where the job's files are, relative to RESULTS_DIR."""

    job_id: str
    key: str
    image: str
    array: str
    meta: str
    final_loss: float
    untrained: bool
    cached: bool  # found in the store: no worker computed it for this request
    set: list[str] | None = None  # each picture of a diverse set
    alpha: str | None = None  # alpha.png, where the job saves one (JobSpec.saves_alpha)


class SweepMeta(Record):
    """A sweep's meta.json: its features, one job each."""

    sweep_id: str
    model: str
    layer: str
    features: list[int]
    jobs: list[JobSummary]


class SweepSummary(Record):
    """`featurevis.sweep`'s answer."""

    sweep_id: str
    key: str
    contact_sheet: str
    meta: str
    jobs: list[JobSummary]


class Registration(Record):
    """`featurevis.register_model`'s answer."""

    name: str
    sha256: str
    input_shape: list[int]
    layers: int
    classes: int
    conv_layers: int
