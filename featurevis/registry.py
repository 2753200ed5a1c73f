"""The model registry: what every process knows of a served model, without TensorFlow.

A model is registered once and served by every worker that shares the store.
Its files live in the store, next to the results (featurevis/store.py): the
user's file (none for a Keras Application) and the description the worker
that validated it wrote, under models/<name>/<version>/, and
models/<name>/current.json naming the version a job on <name> gets.

The version is the model file's sha256 (for a Keras Application, the hash of
its recipe), so re-registering a changed file makes a new version, and new job
ids, while the old results stay valid. The description names every layer whose
output is (batch, height, width, channels), the Conv2D layers in Keras'
creation order (what `conv_id` indexes, as the tutorial's `conv_names` did),
the classes and how 0..255 pixels reach the network. The producer validates
jobs from it alone.

The six built-in models are ordinary entries whose descriptions ship in
`featurevis/models/`; workers write them into the store at start, and a
process that finds no entry for a built-in name reads the shipped one.
"""
from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path

from featurevis.store import (CURRENT, DESCRIPTION, LEGACY_MODEL_FILE, MODEL_FILE, MODELS, ONNX_MODEL_FILE, model_key,
                              ResultStore)

SHIPPED_DIR = Path(__file__).parent / "models"
LOGITS = "logits"
NAME_PATTERN = re.compile(r"^[a-z0-9_-]{1,64}$")
DEFAULT_MAX_BYTES = 2 * 1024**3
SHA256 = re.compile(r"^[0-9a-f]{64}$")
REQUEST_FIELDS = ("name", "sha256", "source", "preprocess", "class_names")  # of featurevis.register_model
WEIGHTS = ("imagenet", "none")  # a Keras Application's
UPLOADS = (MODEL_FILE, LEGACY_MODEL_FILE, ONNX_MODEL_FILE)  # what a user's file is uploaded as, by its format
INPUT_SIZES = range(8, 4097)  # an ONNX graph's height and width, where the graph leaves them open

# How 0..255 pixels reach a network: pixels (after an RGB->BGR flip where `bgr`) * scale + offset, per channel.
_TORCH_MEAN, _TORCH_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
PREPROCESS = {
    "inception": {"scale": [1 / 127.5], "offset": [-1.0], "bgr": False},  # keras.applications' "tf" mode
    "caffe": {"scale": [1.0], "offset": [-103.939, -116.779, -123.68], "bgr": True},
    "torch": {"scale": [1 / (255 * s) for s in _TORCH_STD], "offset": [-m / s for m, s in zip(_TORCH_MEAN, _TORCH_STD)],
              "bgr": False},
    "unit": {"scale": [1 / 255], "offset": [0.0], "bgr": False},
    "none": {"scale": [1.0], "offset": [0.0], "bgr": False},
}

# name -> the recipe a worker builds it from; its description ships as featurevis/models/<description>.json.
BUILTINS = {
    "inception_v3": {"keras_app": "InceptionV3", "weights": "imagenet", "description": "inception_v3"},
    "inception_v3_untrained": {"keras_app": "InceptionV3", "weights": "untrained", "description": "inception_v3"},
    "shapes_cnn": {"architecture": "shapes_cnn", "weights": "shipped", "description": "shapes_cnn"},
    "shapes_cnn_b": {"architecture": "shapes_cnn_b", "weights": "shipped", "description": "shapes_cnn_b"},
    "shapes_judge": {"architecture": "shapes_judge", "weights": "shipped", "description": "shapes_judge"},
    "shapes_judge_clean": {"architecture": "shapes_judge_clean", "weights": "shipped",
                           "description": "shapes_judge_clean"},
}

# A model whose class visualizations an independently trained model judges (scoring's judge). shapes_judge
# shares neither architecture nor training data nor the generator of its data (featurevis/shapes_judge.py)
# with shapes_cnn; shapes_cnn_b, trained on shapes_cnn's generator, stays a model jobs can use.
# shapes_judge_clean, its twin trained on clean images, is the second judge that `make quality` and `make
# quality-defaults` read beside it.
JUDGES = {"shapes_cnn": "shapes_judge"}


class ModelRefused(ValueError):
    """A model the registry will not take. `str()` is the one-line reason.

    TensorFlow-free, like every exception a task raises: Celery unpickles it in
    the worker's parent process, which must never load TensorFlow.
    """


class WeightsUnavailable(RuntimeError):
    """A model's weights file is neither cached nor downloadable (nor, when shipped, in the repository)."""


@dataclass(frozen=True)
class Layer:
    """A layer a job can target: its output is (batch, height, width, channels)."""

    name: str
    type: str
    channels: int
    height: int | None
    width: int | None
    conv_id: int | None = None  # its index among the Conv2D layers in creation order; None for other types
    tutorial_name: str | None = None  # the tutorial's name for it (InceptionV3 only), e.g. mixed/conv
    node: str | None = None  # an ONNX model's: the node's own name, e.g. /layer3/layer3.0/conv1/Conv


@dataclass(frozen=True)
class Preprocess:
    kind: str
    scale: tuple[float, ...]
    offset: tuple[float, ...]
    bgr: bool = False

    def as_dict(self) -> dict:
        return {"kind": self.kind, "scale": list(self.scale), "offset": list(self.offset), "bgr": self.bgr}


@dataclass(frozen=True)
class ModelInfo:
    name: str
    sha256: str
    source: dict
    input_shape: tuple[int, int, int]
    classes: int
    class_names: tuple[str, ...]
    layers: tuple[Layer, ...]
    preprocess: Preprocess
    logits_layer: str | None
    class_activation: str | None = None  # the final activation the logits enter: softmax, sigmoid, or None
    no_classes: str | None = None  # where the model has no classes: why none could be found
    preprocessing_layers: tuple[str, ...] = ()  # the layers at its input that preprocess pixels themselves
    description: dict = field(default_factory=dict, compare=False, repr=False)  # the whole JSON it came from

    @property
    def multi_label(self) -> bool:
        """A sigmoid's classes are independent labels, each its own probability; a softmax's (or bare logits')
        compete for one. It decides what a class climbs and how a judge's or a job's probabilities are read."""
        return self.class_activation == "sigmoid"

    @property
    def untrained(self) -> bool:
        return self.source.get("weights") in ("untrained", "none")

    @property
    def logits_type(self) -> str:
        """Which value of which layer type the class logits are (descriptions before 0.9 had Dense ones only)."""
        return self.description.get("logits_type") or "Dense (pre-activation)"

    @property
    def conv_layers(self) -> tuple[Layer, ...]:
        """The Conv2D layers, indexed by conv_id."""
        return tuple(sorted((layer for layer in self.layers if layer.conv_id is not None), key=lambda l: l.conv_id))

    def layer(self, name: str) -> Layer | None:
        """A layer by its name (a nested layer's path, `backbone/block_6_expand`, or its bare name where no other
        layer has it), for InceptionV3 the tutorial's (`mixed/conv`, with or without `/Conv2D`), for an ONNX
        model its node's (`/layer3/layer3.0/conv1/Conv`)."""
        wanted = name[:-len("/Conv2D")] if name.endswith("/Conv2D") else name
        for layer in self.layers:
            if name in (layer.name, layer.node) or wanted == layer.tutorial_name:
                return layer
        bare = [layer for layer in self.layers if layer.name.rsplit("/", 1)[-1] == name]
        return bare[0] if len(bare) == 1 else None

    def target_layer(self, target: str | int | None) -> str:
        """A target as a layer name: a name stays, a conv_id names its Conv2D layer, None the logits."""
        if target is None:
            return LOGITS
        return self.conv_layers[target].name if isinstance(target, int) else target

    def feature_count(self, target: str | int | None) -> int:
        """How many features a target has: its layer's channels, or the classes for the logits."""
        layer = self.target_layer(target)
        return self.classes if layer == LOGITS else self.layer(layer).channels

    def class_index(self, wanted: int | str) -> int:
        """A class by index or by name (exact, case-insensitive, or a unique prefix); ValueError with near matches."""
        if isinstance(wanted, int):
            return wanted
        lowered = [name.lower() for name in self.class_names]
        key = wanted.strip().lower()
        if key in lowered:
            return lowered.index(key)
        prefixed = [index for index, name in enumerate(lowered) if name.startswith(key)]
        if len(prefixed) == 1:
            return prefixed[0]
        near = [self.class_names[i] for i in prefixed[:5]] or difflib.get_close_matches(wanted, self.class_names, 5)
        what = "several classes start with it" if prefixed else "no class has that name"
        raise ValueError(f"{what} in {self.name}; near matches: {', '.join(near) or 'none'}")


def version_of_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def version_of_recipe(recipe: dict) -> str:
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()


def check_name(name: object) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name) or name == MODELS:
        raise ModelRefused(f"name: must match [a-z0-9_-]{{1,64}} (and not be '{MODELS}'), got "
                           f"{json.dumps(name, default=repr)[:70]}")
    return name


def model_cache_dir() -> Path:
    """Where a worker keeps its copies of model files from a remote (s3://) store."""
    return Path(os.environ.get("FEATUREVIS_MODEL_CACHE", Path.home() / ".cache" / "featurevis" / "models"))


def shipped_weights_file(architecture: str) -> Path:
    """Where scripts/train_shapes.py writes an architecture's trained weights."""
    return SHIPPED_DIR / f"{architecture}.weights.h5"


def max_model_bytes() -> int:
    return int(os.environ.get("FEATUREVIS_MODEL_MAX_BYTES", DEFAULT_MAX_BYTES))


def preprocess_from(spec: str | dict | None, channels: int, default: str = "unit") -> Preprocess:
    """A named preprocessing or {"scale": [...], "offset": [...]} (one value, or one per channel)."""
    spec = spec or default
    if isinstance(spec, str):
        if spec not in PREPROCESS:
            raise ModelRefused(f"preprocess: must be one of {', '.join(PREPROCESS)} or a per-channel scale and "
                               f"offset, got {spec!r}")
        kind, values = spec, PREPROCESS[spec]
    elif isinstance(spec, dict) and set(spec) <= {"scale", "offset"}:
        kind, values = "affine", {"scale": spec.get("scale", [1.0]), "offset": spec.get("offset", [0.0]), "bgr": False}
    else:
        raise ModelRefused(f"preprocess: must be a name or {{scale, offset}}, got {json.dumps(spec, default=repr)[:60]}")
    if values["bgr"] and channels != 3:
        raise ModelRefused(f"preprocess: {kind} flips RGB to BGR and needs 3 input channels, the model has {channels}")
    scale, offset = (_per_channel(values[part], channels, part) for part in ("scale", "offset"))
    return Preprocess(kind, scale, offset, values["bgr"])


def _per_channel(values, channels: int, part: str) -> tuple[float, ...]:
    values = [values] if isinstance(values, (int, float)) else values
    ok = isinstance(values, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    if not ok or len(values) not in (1, channels):
        raise ModelRefused(f"preprocess: {part} must be 1 or {channels} numbers (one per input channel), got {values!r}")
    return tuple(float(v) for v in (values * channels if len(values) == 1 else values))


def info_from_description(description: dict) -> ModelInfo:
    preprocess = description["preprocess"]
    return ModelInfo(
        name=description["name"], sha256=description["sha256"], source=description["source"],
        input_shape=tuple(description["input_shape"]), classes=description["classes"],
        class_names=tuple(description["class_names"]),
        layers=tuple(Layer(**layer) for layer in description["layers"]),
        preprocess=Preprocess(preprocess["kind"], tuple(preprocess["scale"]), tuple(preprocess["offset"]),
                              preprocess["bgr"]),
        logits_layer=description["logits_layer"], class_activation=description.get("class_activation"),
        no_classes=description.get("no_classes"),
        preprocessing_layers=tuple(description.get("preprocessing_layers", ())),
        description=description,
    )


class Registry:
    """Registered models in one store. Descriptions are immutable per version, so they are cached."""

    def __init__(self, store: ResultStore):
        self.store = store

    @classmethod
    def from_env(cls) -> Registry:
        return _registry_for(os.environ.get("RESULTS_DIR", ""))

    def get(self, name: str, version: str | None = None) -> ModelInfo:
        """A registered model, at its current version or the one given; KeyError when there is none."""
        version = version or self.current_version(name)
        if version is None:
            raise KeyError(name)
        if name in BUILTINS and version == builtin_description(name)["sha256"]:
            return builtin_info(name)
        return _cached_info(self, name, version)

    def current_version(self, name: str) -> str | None:
        record = self._read_json(self.key(name), CURRENT)
        if record is not None:
            return record["sha256"]
        return builtin_description(name)["sha256"] if name in BUILTINS else None

    def names(self) -> list[str]:
        """Every registered name, built-ins included."""
        root = self.store.path(MODELS)
        found = set()
        if self.store.fs.isdir(root):
            found = {path.rstrip("/").rsplit("/", 1)[-1] for path in self.store.fs.ls(root, detail=False)}
            found = {name for name in found if self._read_json(self.key(name), CURRENT) is not None}
        return sorted(found | set(BUILTINS))

    def description(self, name: str, version: str) -> dict | None:
        return self._read_json(self.key(name, version), DESCRIPTION)

    def publish(self, description: dict) -> None:
        """Write a validated model's description, then make it the name's current version."""
        name, version = description["name"], description["sha256"]
        self._write_json(self.key(name, version), DESCRIPTION, description)
        self._write_json(self.key(name), CURRENT, {"sha256": version, "published_at": _now()})

    def install_builtins(self) -> None:
        """Write the built-in entries that the store does not hold yet (a worker does this at start)."""
        for name in BUILTINS:
            description = builtin_description(name)
            if self.description(name, description["sha256"]) is None:
                self.publish(description)

    def key(self, name: str, version: str = "") -> str:
        return model_key(name, version)

    def model_file(self, name: str, version: str, file_name: str = MODEL_FILE, sha256: str | None = None) -> Path:
        """A local path to a registered model's file: the store's own where it is local, else a cached copy.

        A worker on another host downloads each file once, into
        FEATUREVIS_MODEL_CACHE (default ~/.cache/featurevis/models), and checks
        its hash (`sha256`: the version's, unless the file is a conversion).
        """
        key = self.key(name, version)
        if self.store.local:
            return Path(self.store.path(key, file_name))
        local = model_cache_dir() / name / version / file_name
        if local.is_file():
            return local
        remote = self.store.path(key, file_name)
        if self.store.fs.size(remote) > max_model_bytes():
            raise ModelRefused(f"file: over the limit of {max_model_bytes()} bytes (FEATUREVIS_MODEL_MAX_BYTES)")
        local.parent.mkdir(parents=True, exist_ok=True)
        temporary = local.parent / f".{file_name}.{os.getpid()}.tmp"
        try:
            self.store.fs.get_file(remote, str(temporary))
            if version_of_file(temporary) != (sha256 or version):
                raise ModelRefused(f"file: the stored file of {name} does not match its version {version[:12]}")
            os.replace(temporary, local)
        finally:
            temporary.unlink(missing_ok=True)
        return local

    def remove_version(self, name: str, version: str) -> None:
        """Take back an upload that was refused, unless that version was already published.

        Its cached copy goes too. On a local store the name's folder goes where nothing else is
        in it (rmdir refuses a folder another upload has just entered); S3 has no folders.
        """
        if self.description(name, version) is not None:
            return
        path = self.store.path(self.key(name, version))
        if self.store.fs.exists(path):
            self.store.fs.rm(path, recursive=True)
        shutil.rmtree(model_cache_dir() / name / version, ignore_errors=True)
        if self.store.local:
            try:
                os.rmdir(self.store.path(self.key(name)))
            except OSError:
                pass  # not empty: other versions, or another upload

    def _read_json(self, key: str, file_name: str) -> dict | None:
        try:
            return json.loads(self.store.read_bytes(key, file_name))
        except FileNotFoundError:
            return None

    def _write_json(self, key: str, file_name: str, value: dict) -> None:
        self.store.put(key, file_name, json.dumps(value, indent=1, sort_keys=True).encode(), "application/json")


@lru_cache(maxsize=256)
def _cached_info(registry: Registry, name: str, version: str) -> ModelInfo:
    description = registry.description(name, version)
    if description is None:
        raise KeyError(f"{name}@{version}")
    return info_from_description(description)


@lru_cache(maxsize=8)
def _registry_for(results_dir: str) -> Registry:
    return Registry(ResultStore(results_dir or "./results"))


@lru_cache(maxsize=None)
def builtin_description(name: str) -> dict:
    """A built-in model's description: the shipped architecture description, named and versioned."""
    recipe = {key: value for key, value in BUILTINS[name].items() if key != "description"}
    shipped = json.loads((SHIPPED_DIR / f"{BUILTINS[name]['description']}.json").read_text())
    if recipe["weights"] == "shipped":  # a retrained file is a new version
        recipe["weights_sha256"] = version_of_file(shipped_weights_file(recipe["architecture"]))
    class_names = json.loads((SHIPPED_DIR / shipped.pop("class_names")).read_text())["names"]
    return {**shipped, "name": name, "sha256": version_of_recipe(recipe), "source": {**recipe, "builtin": True},
            "class_names": class_names}


@lru_cache(maxsize=None)
def builtin_info(name: str) -> ModelInfo:
    return info_from_description(builtin_description(name))


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")



def registration_request(fields: dict) -> dict:
    """A `featurevis.register_model` request, checked without TensorFlow; ModelRefused, one line, otherwise.

    {"name", "sha256", "source": {"file": "model.keras" | "model.h5" | "model.onnx", optionally "input_size":
     [height, width] for an ONNX graph that leaves them open} or {"keras_app": "ResNet50", "weights":
     "imagenet"|"none"}, "preprocess": a name, {"scale", "offset"} or null, "class_names": a list of strings or null}.
    For a file, sha256 is the file's (it is uploaded to models/<name>/<sha256>/<file> first: model.h5 for a
    Keras 2 file, model.onnx for an ONNX one); for a Keras Application, the hash of its recipe
    (application_recipe).
    """
    if not isinstance(fields, dict) or set(fields) - set(REQUEST_FIELDS):
        raise ModelRefused(f"request: must be an object with fields {', '.join(REQUEST_FIELDS)}")
    name = check_name(fields.get("name"))
    if name in BUILTINS:
        raise ModelRefused(f"name: {name} is a built-in model; register yours under another name")
    source = fields.get("source")
    if isinstance(source, dict) and source.get("file") in UPLOADS and set(source) <= {"file", "input_size"}:
        if "input_size" in source:
            check_input_size(source["input_size"], source["file"])
        version = fields.get("sha256")
        if not isinstance(version, str) or not SHA256.fullmatch(version):
            raise ModelRefused("sha256: must be the model file's sha256, 64 lowercase hex digits")
    elif isinstance(source, dict) and set(source) == {"keras_app", "weights"}:
        version = version_of_recipe(application_recipe(source["keras_app"], source["weights"], fields.get("preprocess")))
    else:
        raise ModelRefused(f'source: must be {{"file": "{MODEL_FILE}"|"{LEGACY_MODEL_FILE}"|"{ONNX_MODEL_FILE}"}} or '
                           f'{{"keras_app": NAME, "weights": imagenet|none}}, got {json.dumps(source, default=repr)[:60]}')
    class_names = fields.get("class_names")
    if class_names is not None and not (isinstance(class_names, list) and all(isinstance(n, str) for n in class_names)):
        raise ModelRefused("class_names: must be null or a list of strings, one per class")
    return {"name": name, "sha256": version, "source": source, "preprocess": fields.get("preprocess"),
            "class_names": class_names}


def check_input_size(size: object, file_name: str = ONNX_MODEL_FILE) -> list[int]:
    """[height, width] for an ONNX graph that leaves them open; ModelRefused (one line) otherwise."""
    valid = isinstance(size, list) and len(size) == 2 and all(
        isinstance(side, int) and not isinstance(side, bool) and side in INPUT_SIZES for side in size)
    if not valid or file_name != ONNX_MODEL_FILE:
        raise ModelRefused(f"input_size: an ONNX model's height and width, two integers in {INPUT_SIZES.start}.."
                           f"{INPUT_SIZES.stop - 1}, got {json.dumps(size, default=repr)[:40]}"
                           f"{'' if file_name == ONNX_MODEL_FILE else ' (for a Keras file, which fixes its own)'}")
    return size


def changed_options(description: dict, request: dict) -> str | None:
    """What a request for an already described version would change, or None.

    A version is its file's hash, so the same file cannot be served two ways under one name:
    settings given again must match (settings left out keep what was registered).
    """
    if request["preprocess"] is not None:
        wanted = preprocess_from(request["preprocess"], description["input_shape"][-1]).as_dict()
        if wanted != description["preprocess"]:
            return f"preprocess {description['preprocess']['kind']}"
    if request["class_names"] is not None and request["class_names"] != description["class_names"]:
        return "other class names"
    if request["source"].get("input_size", description["source"].get("input_size")) != \
            description["source"].get("input_size"):
        return f"input size {description['input_shape'][:2]}"
    return None


def application_recipe(app: object, weights: object, preprocess) -> dict:
    if not isinstance(app, str) or not re.fullmatch(r"[A-Za-z][A-Za-z0-9]{0,63}", app):
        raise ModelRefused(f"keras_app: must be a Keras Application's name such as ResNet50, got {app!r}")
    if weights not in WEIGHTS:
        raise ModelRefused(f"weights: must be one of {', '.join(WEIGHTS)}, got {weights!r}")
    return {"keras_app": app, "weights": weights, "preprocess": preprocess}
