"""An atlas: every unit of a model's layers as ordinary jobs, batched for the fleet. TensorFlow-free.

A request names a model, its layers (all Conv2D layers by default), how many
units of each (all by default) and the job settings every unit shares. It is
normalized like a job, and its id is a hash of the normalized request, so the
same atlas asked for twice is the same atlas. Each unit is an ordinary job
(`contract.normalize` of its fields): it keeps the job id and result key it
would have on its own, so atlases and single jobs fill one cache, and an atlas
submitted again computes only the units whose meta.json is missing.

The work goes out as batches of up to `batch` units of one layer (each one
batched pass on a worker, as a sweep is) in a Celery group, with a chord
callback that marks the atlas finished. Producer and workers read and write the
atlas's `progress.json` and pages (featurevis/atlas_pages.py) under one Redis
lock per atlas, so concurrent batches never lose each other's updates.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from typing import Any, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field

from featurevis import contract, registry, store
from featurevis.contract import JobError, JobSpec

# 1: the first atlas request format; part of every atlas id.
ATLAS_VERSION = 1
PROGRESS = store.PROGRESS
MAX_BATCH = 256
# Units per task: large enough that a task is one efficient batched pass, small enough that a fleet
# shares a layer and a lost worker loses little (FEATUREVIS_ATLAS_BATCH overrides it per deployment).
DEFAULT_BATCH = int(os.environ.get("FEATUREVIS_ATLAS_BATCH", "32"))
ID = re.compile(r"^[0-9a-f]{24}$")  # an atlas id, as a job id: 24 hex digits of a sha256
LOCK_SECONDS = 120  # far above a page update; a dead holder's lock frees itself after this

FIELD_RANGES = {
    "model": contract.FIELD_RANGES["model"],
    "model_sha256": contract.FIELD_RANGES["model_sha256"],
    "layers": "'all' (every Conv2D layer) or a list of layer names and conv_ids",
    "units": "null (every unit) or an integer >= 1: the first that many units of each layer",
    "method": contract.FIELD_RANGES["method"],
    "iterations": contract.FIELD_RANGES["iterations"],
    "seed": contract.FIELD_RANGES["seed"],
    "batch": f"an integer in 1..{MAX_BATCH}: units of one layer per task",
    "force": "true or false: queue what the atlas lacks even while an earlier run looks unfinished (its chord "
             "lost when Redis lost its data)",
}


class AtlasFields(BaseModel):
    """The wire format of an atlas request. Strict, as a job's."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    model: str = Field(default=contract.DEFAULT_MODEL, pattern=registry.NAME_PATTERN.pattern, max_length=64)
    model_sha256: str | None = Field(default=None, pattern=registry.SHA256.pattern)
    layers: Literal["all"] | list[int | str] = Field(default="all")
    units: int | None = Field(default=None, ge=1)
    method: Literal[tuple(contract.METHODS)] = "gradient_ascent"  # type: ignore[valid-type]
    iterations: int = contract.iterations_field()
    seed: int | None = Field(default=None, ge=0, le=contract.MAX_SEED)
    batch: int = Field(default=DEFAULT_BATCH, ge=1, le=MAX_BATCH)
    force: bool = False


class AtlasLayer(BaseModel):
    model_config = ConfigDict(frozen=True)

    layer: str  # the Keras name, or "logits"
    conv_id: int | None
    features: tuple[int, ...]


class Atlas(BaseModel):
    """A normalized atlas request: the model version, the layers with their units, the shared job settings."""

    model_config = ConfigDict(frozen=True)

    model: str
    model_sha256: str
    layers: tuple[AtlasLayer, ...]
    units: int | None  # the first that many units of each layer; None: all
    method: str
    iterations: int
    seed: int
    batch: int
    force: bool = False  # this submission queues what is missing even while an earlier run looks unfinished

    @property
    def atlas_id(self) -> str:
        # `batch` only splits the work and `force` only says how to submit it: the same units are the same atlas.
        identity = self.model_dump(exclude={"batch", "force"})
        canonical = json.dumps({"atlas": ATLAS_VERSION, **identity}, sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()[:24]

    @property
    def key(self) -> str:
        return key(self.atlas_id)

    @property
    def total(self) -> int:
        return sum(len(layer.features) for layer in self.layers)

    def unit_fields(self, layer: AtlasLayer, feature: int) -> dict[str, Any]:
        """One unit as a job's wire fields."""
        return {"model": self.model, "model_sha256": self.model_sha256, "layer": layer.layer, "feature": feature,
                "iterations": self.iterations, "seed": self.seed, "method": self.method}

    def specs(self, layer: AtlasLayer, features: list[int] | tuple[int, ...] | None = None,
              models: registry.Registry | None = None) -> list[JobSpec]:
        """The units of a layer as job specs, normalized by the contract: the job ids single jobs would have."""
        return [contract.normalize(self.unit_fields(layer, feature), models=models)
                for feature in (layer.features if features is None else features)]

    def batches(self, wanted: dict[str, list[int]]) -> list[dict[str, Any]]:
        """The `featurevis.atlas_batch` keyword arguments for the wanted units, at most `batch` per task."""
        tasks = []
        for layer in self.layers:
            features = wanted.get(layer.layer, [])
            for first in range(0, len(features), self.batch):
                tasks.append({"atlas_id": self.atlas_id, "request": self.request(), "layer": layer.layer,
                              "features": features[first:first + self.batch]})
        return tasks

    def request(self) -> dict[str, Any]:
        """The normalized request as wire fields: normalizing it again gives this atlas."""
        return {"model": self.model, "model_sha256": self.model_sha256,
                "layers": [layer.layer for layer in self.layers], "units": self.units, "method": self.method,
                "iterations": self.iterations, "seed": self.seed, "batch": self.batch,
                **({"force": True} if self.force else {})}

    def layer(self, name: str) -> AtlasLayer:
        for layer in self.layers:
            if layer.layer == name:
                return layer
        raise JobError("layer", f"{name!r} is not a layer of atlas {self.atlas_id}")


def key(atlas_id: str) -> str:
    return store.atlas_key(atlas_id)


def normalize(fields: dict[str, Any], draw_seed: bool = True, models: registry.Registry | None = None) -> Atlas:
    """Validate an atlas request; JobError (one line naming the field and its range) on the first problem."""
    if not isinstance(fields, dict):
        raise JobError("atlas", f"must be a JSON object of fields ({', '.join(FIELD_RANGES)})")
    try:
        parsed = AtlasFields(**{str(k): v for k, v in fields.items()})
    except pydantic.ValidationError as error:
        detail = error.errors()[0]
        field = str(detail["loc"][0]) if detail["loc"] else "atlas"
        if detail["type"] == "extra_forbidden":
            raise JobError(field, f"unknown field; valid fields are {', '.join(FIELD_RANGES)}") from None
        raise JobError(field, f"must be {FIELD_RANGES.get(field, 'valid')}, got "
                              f"{contract.shown(detail['input'])}") from None
    models = models or registry.Registry.from_env()
    info = contract.model_info(models, parsed.model, parsed.model_sha256)
    seed = parsed.seed
    if seed is None:
        if not draw_seed:
            raise JobError("seed", f"required here, {FIELD_RANGES['seed']}")
        import secrets

        seed = secrets.randbelow(contract.MAX_SEED + 1)
    layers = []
    for conv_id, name in _layers(info, parsed.layers):
        channels = info.feature_count(name)
        features = tuple(range(min(channels, parsed.units or channels)))
        layers.append(AtlasLayer(layer=name, conv_id=conv_id, features=features))
    atlas = Atlas(model=info.name, model_sha256=info.sha256, layers=tuple(layers), units=parsed.units,
                  method=parsed.method, iterations=contract.iterations(parsed.method, parsed.iterations), seed=seed,
                  batch=parsed.batch, force=parsed.force)
    contract.normalize(atlas.unit_fields(atlas.layers[0], atlas.layers[0].features[0]), models=models)  # the rest agree
    return atlas


def _layers(info: registry.ModelInfo, wanted) -> list[tuple[int | None, str]]:
    """(conv_id, layer name) of each wanted layer, in the model's order when 'all', else as given."""
    if wanted == "all":
        if not info.conv_layers:
            raise JobError("layers", f"{info.name} has no Conv2D layer; name its layers")
        return [(layer.conv_id, layer.name) for layer in info.conv_layers]
    if not wanted:
        raise JobError("layers", f"must be {FIELD_RANGES['layers']}, got []")
    resolved = []
    for item in wanted:
        conv_id, layer = (item, None) if isinstance(item, int) else (None, item)
        resolved.append(contract.resolve_target(info, conv_id, layer))
    if len({name for _, name in resolved}) != len(resolved):
        raise JobError("layers", f"names a layer twice: {contract.shown(wanted)}")
    return resolved


def json_schema() -> dict:
    """JSON Schema of `featurevis.atlas`'s keyword arguments, for systems that start atlases by name.

    As a job's: types and fixed ranges; what depends on the model (layers, units) the worker checks.
    """
    schema = AtlasFields.model_json_schema()
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": "featurevis.atlas.schema.json",
            **schema, "title": "featurevis.atlas keyword arguments"}


def batch_request(fields: dict[str, Any], models: registry.Registry | None = None) -> tuple[Atlas, AtlasLayer, list[JobSpec]]:
    """A `featurevis.atlas_batch` task's arguments as (atlas, layer, its units' specs), checked as the producer did."""
    if not isinstance(fields, dict) or set(fields) != {"atlas_id", "request", "layer", "features"}:
        raise JobError("atlas_batch", "must be {atlas_id, request, layer, features}")
    atlas = normalize(fields["request"], draw_seed=False, models=models)
    if atlas.atlas_id != fields["atlas_id"]:
        raise JobError("atlas_id", f"{contract.shown(fields['atlas_id'])} is not the id of this request "
                                   f"({atlas.atlas_id})")
    layer = atlas.layer(fields["layer"])
    features = fields["features"]
    if not isinstance(features, list) or not features or not set(features) <= set(layer.features):
        raise JobError("features", f"must be 1..{MAX_BATCH} units of {layer.layer} in this atlas")
    return atlas, layer, atlas.specs(layer, features, models=models)


class LayerProgress(contract.Record):
    """One layer of an atlas: how many units it has, and which are finished (each once, in order)."""

    layer: str
    conv_id: int | None
    total: int
    done: list[int]


class AtlasProgress(contract.Record):
    """An atlas's progress.json: what its pages show, `producer status ATLAS_ID` answers and other systems read.

    `state`: queued (no worker has started it yet: only the producer's view), running, done, or
    incomplete (its callback ran with units missing). `started_by` names the featurevis.atlas task
    whose batches are out.
    """

    atlas_id: str
    model: str
    model_sha256: str
    method: str
    iterations: int
    seed: int
    batch: int
    request: dict[str, Any]
    state: Literal["queued", "running", "done", "incomplete"]
    total: int
    done: int
    layers: list[LayerProgress]
    started_by: str | None = None
    updated_at: str | None = None
    finished_at: str | None = None

    def layer(self, name: str) -> LayerProgress:
        return next(entry for entry in self.layers if entry.layer == name)


def initial_progress(atlas: Atlas, recorded: dict[str, list[int]] | None = None) -> AtlasProgress:
    """progress.json of an atlas before any of its batches ran (keeping units an earlier run recorded)."""
    recorded = recorded or {}
    layers = [LayerProgress(layer=layer.layer, conv_id=layer.conv_id, total=len(layer.features),
                            done=sorted(set(recorded.get(layer.layer, [])) & set(layer.features)))
              for layer in atlas.layers]
    return AtlasProgress(atlas_id=atlas.atlas_id, model=atlas.model, model_sha256=atlas.model_sha256,
                         method=atlas.method, iterations=atlas.iterations, seed=atlas.seed, batch=atlas.batch,
                         request=atlas.request(), state="running", total=atlas.total,
                         done=sum(len(entry.done) for entry in layers), layers=layers)


def record_done(progress: AtlasProgress, layer: str, features: list[int]) -> AtlasProgress:
    """progress with a layer's units marked done: a set union, so a redelivered batch counts once."""
    entry = progress.layer(layer)
    entry.done = sorted(set(entry.done) | set(features))
    progress.done = sum(len(entry.done) for entry in progress.layers)
    return progress


def page_lock(client, atlas_id: str):
    """The Redis lock every writer of an atlas's progress.json and pages holds while it reads and rewrites them."""
    return client.lock(f"featurevis:atlas:{atlas_id}", timeout=LOCK_SECONDS, blocking_timeout=LOCK_SECONDS)
