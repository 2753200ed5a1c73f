"""The static check of a model file: read before Keras reads it, with no TensorFlow and nothing run.

A model file is untrusted input, like code. Keras' `safe_mode` refuses Python
lambdas, but a Lambda that names a Keras-registered callable (TFSMLayer, the
`keras.config` setters) passes it and runs during loading, and Keras' own
bounds on archives and HDF5 datasets start at 4 GiB. So before any process
hands a file to Keras, this module reads it as data and refuses, in one line
naming the reason:

- in a `.keras` archive: members other than the three Keras writes, entries
  that overlap or unpack past a bound, a config.json over
  FEATUREVIS_MODEL_MAX_CONFIG_BYTES;
- in the config, walked whole (sub-models, initializers, regularizers,
  constraints, activations, inbound-node arguments): any class outside the
  built-in layers an image model is made of (featurevis/layershapes.py) and
  Keras' own initializers, regularizers, constraints and dtype policies; any
  Lambda, whatever its function; TFSMLayer; a function reference that is not a
  Keras activation; a `module` outside Keras' own; strings that name a file or
  an address; a parameter count, followed through the graph from the config,
  over FEATUREVIS_MODEL_MAX_PARAMS;
- in the HDF5 weights (inside the archive, or a Keras 2 `.h5` file): external
  storage, soft or external links, virtual datasets, and any dataset whose
  declared shape is not the one the config gives that variable.

The producer runs it before uploading; a worker runs it before every load of
a user's file (featurevis/loading.py). It reads the archive's central
directory, the config and the HDF5 metadata; no weight value is read.
"""
from __future__ import annotations

import io
import json
import math
import os
import re
import shutil
import struct
import tempfile
import zipfile
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Iterator

import h5py

from featurevis import layershapes
from featurevis.layershapes import Shape, ShapeError, values
from featurevis.registry import ModelRefused, max_model_bytes
from featurevis.store import LEGACY_MODEL_FILE, MODEL_FILE, ONNX_MODEL_FILE

KERAS = "keras"  # a Keras 3 archive: metadata.json, config.json, model.weights.h5 in a zip
LEGACY_H5 = "h5"  # a Keras 2 file: the config in an HDF5 attribute, the weights beside it
ONNX = "onnx"  # an ONNX ModelProto (protobuf): checked by featurevis/onnxcheck.py, which needs `onnx`
# A serialized ModelProto starts with its ir_version (field 1, a varint: tag 0x08, 3-15), then another field's tag.
ONNX_FIELD_TAGS = {0x12, 0x1a, 0x22, 0x28, 0x32, 0x3a, 0x42}
UPLOAD_NAMES = {KERAS: MODEL_FILE, LEGACY_H5: LEGACY_MODEL_FILE, ONNX: ONNX_MODEL_FILE}  # a file's name in the store
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
ZIP_SIGNATURE = b"PK\x03\x04"

DEFAULT_MAX_PARAMS = 200_000_000  # EfficientNetB7 is 66 M, VGG19 144 M, ConvNeXtXLarge 350 M
DEFAULT_MAX_CONFIG_BYTES = 16 * 2**20
METADATA_MAX_BYTES = 2**16
MAX_DEFLATE_RATIO = 1100  # deflate cannot pack more than 1032:1
MAX_LAYERS = 20_000
MAX_NESTING = 64  # JSON depth and model depth
MAX_INPUT_VALUES = 2**26  # height * width * channels of the image a job optimizes
MAX_OUTPUT_VALUES = 2**27  # values a layer outputs per image (512 MB in float32)
OPTIMIZER_SHARE = 3  # an optimizer keeps at most this many values per parameter (Adam: 2, plus counters)
MAX_HDF5_OBJECTS = 200_000

ARCHIVE_MEMBERS = ("metadata.json", "config.json", "model.weights.h5")
WEIGHTS_MEMBER = "model.weights.h5"
EXTRA_WEIGHT_GROUPS = ("optimizer", "metrics")  # saved with a compiled model, never read by compile=False

MODELS = {"Functional", "Sequential", "Model"}
INPUT = "InputLayer"
REFUSED_LAYERS = {
    "Lambda": "a Lambda layer runs code named by the file (whatever its function); rebuild it from built-in layers",
    "TFSMLayer": "TFSMLayer loads a SavedModel from a path, which runs that SavedModel's code",
}
OBJECTS = {
    # keras.initializers
    "Constant", "GlorotNormal", "GlorotUniform", "HeNormal", "HeUniform", "Identity", "IdentityInitializer",
    "LecunNormal", "LecunUniform", "Ones", "Orthogonal", "OrthogonalInitializer", "RandomNormal", "RandomUniform",
    "TruncatedNormal", "VarianceScaling", "Zeros",
    # keras.regularizers and keras.constraints
    "L1", "L2", "L1L2", "OrthogonalRegularizer", "MaxNorm", "MinMaxNorm", "NonNeg", "UnitNorm",
    # dtype policies (Keras 2's mixed precision "Policy" too)
    "DTypePolicy", "FloatDTypePolicy", "Policy",
}
STRUCTURES = {"__tuple__", "__numpy__"}  # how Keras 3 writes tuples and small arrays inside a config
NUMERIC_DTYPES = re.compile(r"^(float(16|32|64)|bfloat16|u?int(8|16|32|64)|bool)$")
ACTIVATIONS = {"celu", "elu", "exponential", "gelu", "glu", "hard_shrink", "hard_sigmoid", "hard_silu",
               "hard_swish", "hard_tanh", "leaky_relu", "linear", "log_sigmoid", "log_softmax", "mish", "relu",
               "relu6", "selu", "sigmoid", "silu", "soft_shrink", "softmax", "softplus", "softsign", "sparse_plus",
               "sparse_sigmoid", "sparsemax", "squareplus", "swish", "tanh", "tanh_shrink", "threshold"}
ACTIVATION_MODULES = {"keras.activations", "keras.src.activations.activations", "keras.src.activations"}
KERAS_MODULES = {None, "keras", "keras.layers", "keras.models", "keras.initializers", "keras.regularizers",
                 "keras.constraints", "keras.dtype_policies", "keras.mixed_precision",
                 "keras.src.models.functional", "keras.src.models.sequential", "keras.src.models.model",
                 "keras.src.engine.functional", "keras.src.engine.sequential"}
# Config fields where Keras accepts a file: a string there would be read from disk.
FILE_FIELDS = {"vocabulary", "idf_weights", "filepath", "file_path", "path", "url", "vocabulary_file"}
LOCATION = re.compile(r"://|^\s*[/~\\]|^[A-Za-z]:[\\/]|\.\.[/\\]|^\s*\.\.\s*$")


@dataclass(frozen=True)
class Limits:
    max_bytes: int
    max_params: int
    max_config_bytes: int

    @classmethod
    def from_env(cls) -> Limits:
        return cls(max_bytes=max_model_bytes(),
                   max_params=int(os.environ.get("FEATUREVIS_MODEL_MAX_PARAMS", DEFAULT_MAX_PARAMS)),
                   max_config_bytes=int(os.environ.get("FEATUREVIS_MODEL_MAX_CONFIG_BYTES",
                                                       DEFAULT_MAX_CONFIG_BYTES)))


@dataclass(frozen=True)
class Checked:
    """What the check read of a file that passed."""

    format: str  # KERAS, LEGACY_H5 or ONNX
    params: int  # the values loading allocates for the model's variables
    layers: int  # every layer, nested ones included
    keras_version: str | None  # the Keras that saved it, as the file says


def check_file(path: str | os.PathLike, limits: Limits | None = None,
               input_size: tuple[int, int] | None = None) -> Checked:
    """The file read as data; ModelRefused (one line, `file: ...`) for anything a serving process must not load.
    `input_size`: an ONNX graph's height and width, where it leaves them open."""
    limits, path = limits or Limits.from_env(), Path(path)
    size = path.stat().st_size
    if size > limits.max_bytes:
        raise ModelRefused(f"file: {size} bytes, over the limit of {limits.max_bytes} (FEATUREVIS_MODEL_MAX_BYTES)")
    kind = file_format(path)
    if kind == KERAS:
        return _check_archive(path, limits)
    if kind == LEGACY_H5:
        return _check_legacy(path, limits)
    if kind == ONNX:
        from featurevis import onnxcheck  # imports onnx: workers only

        model, params = onnxcheck.check_file(path, limits.max_params, input_size)
        return Checked(ONNX, params, len(model.graph.node), None)
    raise ModelRefused("file: is not a model file featurevis reads (a .keras archive, a Keras 2 .h5 file or an "
                       ".onnx file)")


def check_upload(path: str | os.PathLike) -> str:
    """What the producer checks before it uploads a file, without TensorFlow or onnx: a Keras file wholly
    (check_file), an ONNX file its size and kind (the worker checks its graph before anything is built).
    The file's format."""
    limits, path = Limits.from_env(), Path(path)
    if file_format(path) != ONNX:
        return check_file(path, limits).format
    size = path.stat().st_size
    if size > limits.max_bytes:
        raise ModelRefused(f"file: {size} bytes, over the limit of {limits.max_bytes} (FEATUREVIS_MODEL_MAX_BYTES)")
    return ONNX


def file_format(path: str | os.PathLike) -> str | None:
    """KERAS, LEGACY_H5 or ONNX by the file's first bytes (never by its name), or None."""
    with open(path, "rb") as handle:
        head = handle.read(len(HDF5_SIGNATURE))
    if head.startswith(ZIP_SIGNATURE):
        return KERAS
    if head == HDF5_SIGNATURE:
        return LEGACY_H5
    onnx_like = len(head) >= 3 and head[0] == 0x08 and 3 <= head[1] <= 15 and head[2] in ONNX_FIELD_TAGS
    return ONNX if onnx_like else None


def _refuse(reason: str) -> ModelRefused:
    return ModelRefused(f"file: {' '.join(reason.split())}")


# --- a .keras archive -------------------------------------------------------------------------------------------


def _check_archive(path: Path, limits: Limits) -> Checked:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, struct.error):
        raise _refuse("is not a valid .keras file (not a zip archive with a model config, or truncated)") from None
    with archive:
        entries = archive.infolist()
        _check_members(entries, limits)
        starts = _check_extents(path, archive, entries)
        config = _json(_read_member(archive, "config.json", limits.max_config_bytes), "config.json")
        metadata = _json(_read_member(archive, "metadata.json", METADATA_MAX_BYTES), "metadata.json") \
            if "metadata.json" in archive.NameToInfo else {}
        model = _Reader(limits).read(config)
        if WEIGHTS_MEMBER not in archive.NameToInfo:
            raise _refuse(f"has no {WEIGHTS_MEMBER}: a saved model's weights are missing")
        try:
            with _member_file(path, archive, WEIGHTS_MEMBER, starts[WEIGHTS_MEMBER]) as handle, \
                    h5py.File(handle, "r") as weights:
                _check_keras_weights(_datasets(weights), model)
        except ModelRefused:
            raise
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
            raise _refuse(f"{WEIGHTS_MEMBER} is not a readable HDF5 file ({_short(error)})") from None
    version = metadata.get("keras_version") if isinstance(metadata, dict) else None
    return Checked(KERAS, model.params, model.layers, version if isinstance(version, str) else None)


def _check_members(entries: list[zipfile.ZipInfo], limits: Limits) -> None:
    bounds = {"metadata.json": METADATA_MAX_BYTES, "config.json": limits.max_config_bytes,
              WEIGHTS_MEMBER: limits.max_bytes}
    names = Counter(entry.filename for entry in entries)
    for entry in entries:
        name = entry.filename
        if name not in bounds:
            raise _refuse(f"member {name[:80]!r} is not one Keras writes ({', '.join(ARCHIVE_MEMBERS)})")
        if names[name] > 1:
            raise _refuse(f"member {name} appears {names[name]} times")
        if entry.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise _refuse(f"member {name} uses compression method {entry.compress_type}; Keras writes stored or "
                          f"deflated members")
        if entry.file_size > bounds[name]:
            raise _refuse(f"member {name} unpacks to {entry.file_size} bytes, over the bound of {bounds[name]}"
                          + (" (FEATUREVIS_MODEL_MAX_CONFIG_BYTES)" if name == "config.json" else ""))
        if entry.compress_type == zipfile.ZIP_DEFLATED and entry.file_size > MAX_DEFLATE_RATIO * max(entry.compress_size, 1):
            raise _refuse(f"member {name} claims {entry.file_size} bytes from {entry.compress_size}: more than "
                          f"deflate can pack")
    if "config.json" not in names:
        raise _refuse("is not a valid .keras file (no config.json)")


def _check_extents(path: Path, archive: zipfile.ZipFile, entries: list[zipfile.ZipInfo]) -> dict[str, int]:
    """Each member's bytes lie apart from every other's and before the central directory: overlapping members
    unpack the same bytes many times over (the overlapping-entries zip bomb). Returns where each member's
    data starts."""
    end = getattr(archive, "start_dir", path.stat().st_size)
    spans, starts = [], {}
    with open(path, "rb") as handle:
        for entry in entries:
            handle.seek(entry.header_offset)
            header = handle.read(30)
            if len(header) != 30 or header[:4] != ZIP_SIGNATURE:
                raise _refuse(f"member {entry.filename} has no local header where the directory says")
            name_length, extra_length = struct.unpack("<HH", header[26:30])
            if handle.read(name_length).decode("utf-8", "replace") != entry.filename:
                raise _refuse(f"member {entry.filename} is named otherwise in its local header")
            start = entry.header_offset + 30 + name_length + extra_length
            spans.append((entry.header_offset, start + entry.compress_size, entry.filename))
            starts[entry.filename] = start
    spans.sort()
    for (_, first_end, first), (second_start, _, second) in zip(spans, spans[1:]):
        if second_start < first_end:
            raise _refuse(f"members {first} and {second} overlap in the archive")
    if spans and spans[-1][1] > end:
        raise _refuse(f"member {spans[-1][2]} runs into the archive's directory")
    return starts


@contextmanager
def _member_file(path: Path, archive: zipfile.ZipFile, name: str, start: int) -> Iterator[BinaryIO]:
    """A member as a seekable file for h5py, which reads a file's metadata in many small jumps: a stored member
    is a window on the archive (zipfile's own handle would re-read the member from its start on every jump
    back), a deflated one is unpacked to a temporary file first."""
    entry = archive.getinfo(name)
    if entry.compress_type == zipfile.ZIP_STORED:
        with open(path, "rb") as handle:
            yield _Window(handle, start, entry.file_size)
        return
    with tempfile.TemporaryFile() as unpacked:
        with archive.open(name) as packed:
            shutil.copyfileobj(packed, unpacked, 1 << 20)
        unpacked.seek(0)
        yield unpacked


class _Window(io.RawIOBase):
    """Bytes start..start+size of an open file, as a file of their own."""

    def __init__(self, handle: BinaryIO, start: int, size: int):
        super().__init__()
        self._handle, self._start, self._size, self._at = handle, start, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._at

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._at = max(0, offset + (0, self._at, self._size)[whence])
        return self._at

    def readinto(self, buffer) -> int:
        wanted = max(0, min(len(buffer), self._size - self._at))
        self._handle.seek(self._start + self._at)
        got = self._handle.readinto(memoryview(buffer)[:wanted])
        self._at += got
        return got


def _read_member(archive: zipfile.ZipFile, name: str, bound: int) -> bytes:
    """A member's bytes, never more than `bound` of them whatever its header claims."""
    try:
        with archive.open(name) as handle:
            data = handle.read(bound + 1)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, RuntimeError) as error:
        raise _refuse(f"member {name} cannot be read ({_short(error)}); the file is damaged or truncated") from None
    if len(data) > bound:
        raise _refuse(f"member {name} unpacks to more than {bound} bytes")
    return data


def _json(data: bytes | str, what: str):
    try:
        return json.loads(data)
    except (ValueError, RecursionError, UnicodeDecodeError) as error:
        raise _refuse(f"{what} is not valid JSON ({_short(error)})") from None


def _short(error: BaseException) -> str:
    return " ".join(str(error).split())[:120] or type(error).__name__


# --- a Keras 2 HDF5 file ----------------------------------------------------------------------------------------


def _check_legacy(path: Path, limits: Limits) -> Checked:
    try:
        handle = h5py.File(path, "r")
    except (OSError, ValueError) as error:
        raise _refuse(f"is not a readable HDF5 file ({_short(error)})") from None
    with handle:
        datasets = _datasets(handle)  # links, external storage and virtual datasets refused before anything is read
        config = handle.attrs.get("model_config")
        if config is None:
            raise _refuse("is an HDF5 file without a model_config: a weights-only file, not a model")
        text = config.decode("utf-8", "replace") if isinstance(config, bytes) else str(config)
        if len(text) > limits.max_config_bytes:
            size = len(text)
            del config, text  # a refusal's traceback keeps this frame: not the oversized config with it
            raise _refuse(f"model_config is {size} bytes, over the bound of {limits.max_config_bytes} "
                          f"(FEATUREVIS_MODEL_MAX_CONFIG_BYTES)")
        model = _Reader(limits).read(_json(text, "model_config"))
        if "model_weights" not in handle:
            raise _refuse("has no model_weights group: a saved model's weights are missing")
        _check_legacy_weights(handle["model_weights"], datasets, model)
        version = handle.attrs.get("keras_version")
    version = version.decode("utf-8", "replace") if isinstance(version, bytes) else version
    return Checked(LEGACY_H5, model.params, model.layers, version if isinstance(version, str) else None)


# --- HDF5 weights -----------------------------------------------------------------------------------------------


def _datasets(root: h5py.Group) -> dict[str, tuple[Shape, str]]:
    """Every dataset of an HDF5 file by path, with its declared shape and dtype, read from metadata only.

    A soft or external link, a dataset stored in another file (external storage) or mapped from other files
    (a virtual dataset) is refused: each makes Keras read something outside the upload."""
    found: dict[str, tuple[Shape, str]] = {}
    pending = [(root, "")]
    seen = 0
    while pending:
        group, prefix = pending.pop()
        for name in group:
            seen += 1
            if seen > MAX_HDF5_OBJECTS:
                raise _refuse(f"its HDF5 file holds more than {MAX_HDF5_OBJECTS} objects")
            where = f"{prefix}{name}"
            link = group.get(name, getlink=True)
            if isinstance(link, h5py.SoftLink):
                raise _refuse(f"HDF5 object {where[:80]} is a soft link; links can make Keras read another object")
            if isinstance(link, h5py.ExternalLink):
                raise _refuse(f"HDF5 object {where[:80]} is an external link to {link.filename[:60]!r}")
            item = group[name]
            if isinstance(item, h5py.Group):
                if where.count("/") >= MAX_NESTING:
                    raise _refuse("its HDF5 groups nest too deep")
                pending.append((item, f"{where}/"))
            elif isinstance(item, h5py.Dataset):
                found[where] = (_declared(item, where), item.dtype.str)
    return found


def _declared(dataset: h5py.Dataset, where: str) -> Shape:
    if dataset.external:
        raise _refuse(f"HDF5 dataset {where[:80]} keeps its data in another file (external storage)")
    if dataset.is_virtual:
        raise _refuse(f"HDF5 dataset {where[:80]} is a virtual dataset mapped from other files")
    if dataset.dtype.kind not in "fiub":
        raise _refuse(f"HDF5 dataset {where[:80]} holds {dataset.dtype}, not numbers")
    return tuple(int(size) for size in dataset.shape or ())


def _check_keras_weights(datasets: dict[str, tuple[Shape, str]], model: _Model) -> None:
    """Every variable the config gives a layer is in the file with that shape, and the file holds nothing else
    but a bounded optimizer state."""
    for layer_path, shapes in model.keras_paths.items():
        declared = [datasets.get(f"{layer_path}/vars/{index}", (None,))[0] for index in range(len(shapes))]
        if declared != shapes or f"{layer_path}/vars/{len(shapes)}" in datasets:
            raise _refuse(f"weights of {model.keras_names[layer_path]} are declared as {_listed(declared)} in "
                          f"{WEIGHTS_MEMBER}; its config makes them {_listed(shapes)}")
    expected = {f"{path}/vars/{index}" for path, shapes in model.keras_paths.items() for index in range(len(shapes))}
    _check_extra(datasets, expected, model)


def _check_legacy_weights(group: h5py.Group, datasets: dict[str, tuple[Shape, str]], model: _Model) -> None:
    """Keras 2 keeps each top-level layer's variables under model_weights/<layer name>/, listed in its
    weight_names attribute, and loads them by order; each layer's declared shapes must be its config's."""
    expected = set()
    for name, shapes in model.legacy_layers.items():
        listed = group[name].attrs.get("weight_names", []) if name in group and \
            isinstance(group[name], h5py.Group) else []
        paths = [f"model_weights/{name}/{_text(weight)}" for weight in listed]
        declared = [datasets.get(path, (None,))[0] for path in paths]
        if sorted(map(_sortable, declared)) != sorted(map(_sortable, shapes)):
            raise _refuse(f"weights of {name} are declared as {_listed(declared)} in model_weights; its config "
                          f"makes them {_listed(shapes)}")
        expected.update(paths)
    _check_extra(datasets, expected, model, extra=("optimizer_weights",))


def _check_extra(datasets: dict[str, tuple[Shape, str]], expected: set[str], model: _Model,
                 extra: tuple[str, ...] = EXTRA_WEIGHT_GROUPS) -> None:
    stored = 0
    for path, (shape, _) in datasets.items():
        if path in expected:
            continue
        if path.split("/", 1)[0] not in extra:
            raise _refuse(f"weights file holds {path[:80]}, which no layer of the config has")
        stored += math.prod(shape)
    if stored > OPTIMIZER_SHARE * model.params + 64:
        raise _refuse(f"weights file's {'/'.join(extra)} state declares {stored} values for a model of "
                      f"{model.params} parameters")


def _text(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _sortable(shape) -> tuple:
    return tuple(-1 if size is None else size for size in shape)


def _listed(shapes) -> str:
    return "[" + ", ".join("missing" if shape == (None,) else str(tuple(shape)) for shape in shapes) + "]"


# --- the config -------------------------------------------------------------------------------------------------


@dataclass
class _Model:
    """What reading a config found: parameters, and each weighted layer's variables where the weights file
    keeps them (a .keras archive's paths, and Keras 2's top-level layer names)."""

    params: int = 0
    layers: int = 0
    keras_paths: dict[str, list[Shape]] = field(default_factory=dict)
    keras_names: dict[str, str] = field(default_factory=dict)  # archive path -> the layer's name path
    legacy_layers: dict[str, list[Shape]] = field(default_factory=dict)


class _Reader:
    """Walks a model config the way Keras would build it: every object checked, every shape followed."""

    def __init__(self, limits: Limits):
        self.limits = limits
        self.model = _Model()

    def read(self, config) -> _Model:
        if not isinstance(config, dict) or config.get("class_name") not in MODELS:
            raise _refuse("config is not a Keras model (Functional or Sequential)")
        _check_identity(config, "the model")
        inner = config.get("config")
        _check_objects({key: value for key, value in inner.items() if key != "layers"} if isinstance(inner, dict)
                       else {}, "the model")
        _check_objects(config.get("build_config"), "the model")
        self._evaluate(config, None, names=(), weights_at="")
        return self.model

    # One model (top-level or nested): its layers in order, each checked, built once and followed per call.
    def _evaluate(self, entry: dict, fed: list[Shape] | None, names: tuple[str, ...], weights_at: str,
                  count: bool = True) -> tuple[list[Shape], list[Shape]]:
        """(input shapes, output shapes) of a model entry; `fed` shapes replace its declared inputs' (a nested
        model called on a tensor), and `count` is False when only the shapes are wanted (a second call)."""
        if len(names) > MAX_NESTING:
            raise _refuse("models nest too deep")
        config = entry.get("config")
        if entry.get("class_name") == "Sequential":
            return self._sequential(entry, config, fed, names, weights_at, count)
        if not isinstance(config, dict) or not isinstance(config.get("layers"), list):
            raise _refuse(f"{_where(names) or 'the model'}: a Functional config without a list of layers")
        layers = config["layers"]
        by_name: dict[str, dict] = {}
        for layer in layers:
            name = _layer_name(layer)
            if name in by_name:
                raise _refuse(f"two layers of {_where(names) or 'the model'} are named {name!r}")
            by_name[name] = layer
        inputs, outputs = (_refs(config.get(key), key) for key in ("input_layers", "output_layers"))
        if fed is not None and len(fed) != len(inputs):
            raise _refuse(f"{_where(names)}: called on {len(fed)} inputs, it has {len(inputs)}")
        built = self._build_all(layers, names, weights_at, skip_inputs=False) if count else {}
        graph = _Graph(self, by_name, names, built, fed_inputs=dict(zip((ref[0] for ref in inputs), fed or [])))
        declared = [graph.shape(graph.model_node(ref)) for ref in inputs]
        produced = [graph.shape(graph.model_node(ref)) for ref in outputs]
        self._build_unused(built, names)
        return declared, produced

    def _sequential(self, entry, config, fed, names, weights_at, count):
        layers = config if isinstance(config, list) else config.get("layers") if isinstance(config, dict) else None
        if not isinstance(layers, list) or not layers:
            raise _refuse(f"{_where(names) or 'the model'}: a Sequential config without layers")
        shape = fed[0] if fed else _declared_input(layers[0], entry, config)
        if shape is None:
            raise _refuse(f"{_where(names) or 'the model'}: a Sequential model without an input shape")
        declared = shape
        built = self._build_all(layers, names, weights_at, skip_inputs=True) if count else {}
        for layer in layers:
            if layer.get("class_name") == INPUT:
                continue
            shape = self._call(layer, [shape], names, built, node=0)[0]
        return [declared], [shape]

    def _build_unused(self, built: dict[str, _Built], names: tuple[str, ...]) -> None:
        """Layers a config lists but no node calls: Keras still makes them, a model with its own inputs and a layer
        from its build_config, so their variables count too."""
        for name, place in built.items():
            if place.done:
                continue
            place.done = True
            here = (*names, name)
            if place.layer["class_name"] in MODELS:
                self._evaluate(place.layer, None, here, f"{place.path}/")
            elif (shape := _build_shape(place.layer)) is not None:
                try:
                    weights = layershapes.spec(place.layer["class_name"]).weights(place.layer.get("config") or {},
                                                                                  [shape])
                except ShapeError as error:
                    raise _refuse(f"layer {_where(here)}: {error}") from None
                self._add_weights(place.path, here, weights)

    def _build_all(self, layers: list, names: tuple[str, ...], weights_at: str,
                   skip_inputs: bool) -> dict[str, _Built]:
        """Each layer checked and given its place in the weights file, in the order Keras names those places
        (snake_case of the class, numbered per container; a Sequential's InputLayer has none)."""
        used: dict[str, int] = {}
        built = {}
        for layer in layers:
            if not isinstance(layer, dict):
                raise _refuse(f"{_where(names) or 'the model'}: a layer entry is not an object")
            name = _layer_name(layer)
            self._check_layer(layer, (*names, name))
            self.model.layers += 1
            if self.model.layers > MAX_LAYERS:
                raise _refuse(f"more than {MAX_LAYERS} layers")
            if skip_inputs and layer.get("class_name") == INPUT:
                continue
            snake = _unique(_snake_case(layer["class_name"]), used)
            built[name] = _Built(layer, f"{weights_at}layers/{snake}")
        return built

    def _check_layer(self, layer: dict, names: tuple[str, ...]) -> None:
        class_name, where = layer.get("class_name"), _where(names)
        if class_name in REFUSED_LAYERS:
            raise _refuse(f"layer {where}: {REFUSED_LAYERS[class_name]}")
        if class_name not in MODELS and class_name != INPUT and layershapes.spec(str(class_name)) is None:
            raise _refuse(f"layer {where}: {str(class_name)[:60]} is not one of the built-in Keras layers this "
                          f"service takes; custom and non-image layers are refused")
        _check_identity(layer, f"layer {where}")
        if "/" in names[-1]:
            raise _refuse(f"layer {where}: Keras 3 cannot rebuild a layer whose name has '/'")
        config = layer.get("config")
        if class_name in MODELS:
            inner = {key: value for key, value in config.items() if key != "layers"} \
                if isinstance(config, dict) else {}
            if len(names) > 1 and layer.get("compile_config"):
                raise _refuse(f"layer {where}: a nested model's compile_config is run at load; save it uncompiled")
        else:
            inner = config
        if not isinstance(inner, dict):
            raise _refuse(f"layer {where}: its config is not an object")
        _check_objects(inner, f"layer {where}")
        _check_objects(layer.get("build_config"), f"layer {where}")

    # One call of one layer: its output shapes, and on its first build its variables.
    def _call(self, layer: dict, shapes: list[Shape], names: tuple[str, ...], built: dict[str, _Built],
              node: int) -> list[Shape]:
        name = _layer_name(layer)
        here = (*names, name)
        class_name = layer["class_name"]
        if class_name in MODELS:
            place = built.get(name)
            if place is not None and not place.done:
                place.done = True
                declared, outputs = self._evaluate(layer, None, here, f"{place.path}/")
                if _compatible(declared, shapes):
                    return outputs
            return self._evaluate(layer, shapes, here, "", count=False)[1]
        config = layer.get("config") or {}
        try:
            out = layershapes.spec(class_name).output(config, shapes)
            place = built.get(name)
            if place is not None and not place.done:
                place.done = True
                build_shape = _build_shape(layer)
                if build_shape is not None and not _compatible([build_shape], shapes[:1]) and len(shapes) == 1:
                    raise ShapeError(f"its build_config input {layershapes.shown(build_shape)} is not its input "
                                     f"{layershapes.shown(shapes[0])}")
                self._add_weights(place.path, here, layershapes.spec(class_name).weights(config, shapes))
        except ShapeError as error:
            raise _refuse(f"layer {_where(here)}: {error}") from None
        self._check_output(out, here)
        return [out]

    def _add_weights(self, path: str, names: tuple[str, ...], shapes: list[Shape]) -> None:
        if not shapes:
            return
        self.model.params += sum(math.prod(shape) for shape in shapes)
        if self.model.params > self.limits.max_params:
            raise _refuse(f"the model has more than {self.limits.max_params} parameters by its config (reached at "
                          f"layer {_where(names)}), over FEATUREVIS_MODEL_MAX_PARAMS")
        self.model.keras_paths[path] = [tuple(shape) for shape in shapes]
        self.model.keras_names[path] = _where(names)
        top = names[0]
        self.model.legacy_layers.setdefault(top, []).extend(tuple(shape) for shape in shapes)

    def _check_output(self, shape: Shape, names: tuple[str, ...]) -> None:
        known = [size for size in shape[1:] if size is not None]
        if known and math.prod(known) > MAX_OUTPUT_VALUES:
            raise _refuse(f"layer {_where(names)} outputs {math.prod(known)} values per image, over the bound of "
                          f"{MAX_OUTPUT_VALUES}")


@dataclass
class _Built:
    layer: dict
    path: str  # where the weights file keeps its variables (a .keras archive)
    done: bool = False


class _Graph:
    """A Functional model's nodes, evaluated on demand without recursion (graphs run to thousands of layers)."""

    def __init__(self, reader: _Reader, by_name: dict[str, dict], names: tuple[str, ...], built: dict[str, _Built],
                 fed_inputs: dict[str, Shape]):
        self.reader, self.by_name, self.names, self.built = reader, by_name, names, built
        self.fed = fed_inputs
        self.outputs: dict[tuple[str, int], list[Shape]] = {}

    def shape(self, ref: tuple[str, int, int]) -> Shape:
        name, node, tensor = ref
        self._evaluate(name, node)
        produced = self.outputs[(name, node)]
        if not 0 <= tensor < len(produced):
            raise _refuse(f"{_where((*self.names, name))}: output {tensor} of a layer with {len(produced)}")
        return produced[tensor]

    def _evaluate(self, name: str, node: int) -> None:
        stack, visiting = [(name, node)], set()
        while stack:
            key = stack[-1]
            if key in self.outputs:
                stack.pop()
                continue
            layer = self._layer(key[0])
            if layer.get("class_name") == INPUT:
                self.outputs[key] = [self._input_shape(layer)]
                stack.pop()
                continue
            parents = self._parents(layer, key)
            missing = [parent[:2] for parent in parents if parent[:2] not in self.outputs]
            if missing:
                if key in visiting:
                    raise _refuse(f"layer {_where((*self.names, key[0]))}: its inputs form a cycle")
                visiting.add(key)
                stack.extend(missing)
                continue
            shapes = [self.shape(parent) for parent in parents]
            self.outputs[key] = self.reader._call(layer, shapes, self.names, self.built, key[1])
            stack.pop()

    def _layer(self, name: str) -> dict:
        if name not in self.by_name:
            raise _refuse(f"{_where(self.names) or 'the model'}: a node names layer {str(name)[:60]!r}, which it lacks")
        return self.by_name[name]

    def _input_shape(self, layer: dict) -> Shape:
        name = _layer_name(layer)
        shape = self.fed.get(name) or _declared_input(layer)
        if shape is None:
            raise _refuse(f"input {_where((*self.names, name))} has no declared shape")
        if not self.names:
            sizes = shape[1:]
            if None not in sizes and math.prod(sizes) > MAX_INPUT_VALUES:
                raise _refuse(f"input {name}: {layershapes.shown(shape)} is over {MAX_INPUT_VALUES} values a picture")
        return shape

    def _parents(self, layer: dict, key: tuple[str, int]) -> list[tuple[str, int, int]]:
        nodes = layer.get("inbound_nodes")
        where = _where((*self.names, key[0]))
        if not isinstance(nodes, list) or not 0 <= key[1] < len(nodes):
            raise _refuse(f"layer {where}: no inbound node {key[1]}")
        refs = _node_inputs(nodes[key[1]], where)
        return [self.model_node(ref) for ref in refs] if isinstance(nodes[key[1]], list) else refs

    def model_node(self, ref: tuple[str, int, int]) -> tuple[str, int, int]:
        """Keras 2 gave a model its own node 0, so its first call is node 1 there (Keras 3 reads it so too)."""
        name, node, tensor = ref
        nested = self._layer(name).get("class_name") in MODELS
        return (name, node - 1, tensor) if nested and node >= 1 else ref


def _node_inputs(node, where: str) -> list[tuple[str, int, int]]:
    """The (layer, node, tensor) references a call reads: Keras 3's {"args", "kwargs"}, Keras 2's list of lists."""
    if isinstance(node, dict):
        refs: list = []
        _collect_tensors(node.get("args"), refs, where)
        kwargs = node.get("kwargs") or {}
        found: list = []
        _collect_tensors(kwargs, found, where)
        if found:
            raise _refuse(f"layer {where}: passes tensors as keyword arguments, which built-in image layers do not take")
        _check_objects(kwargs, f"layer {where}")
        return refs
    if isinstance(node, list):
        refs = []
        for item in node:
            if not (isinstance(item, list) and len(item) >= 3 and isinstance(item[0], str)):
                raise _refuse(f"layer {where}: an inbound node entry is not [layer, node, tensor, kwargs]")
            if len(item) > 3:
                _check_objects(item[3], f"layer {where}")
            refs.append(_ref(item[:3], where))
        return refs
    raise _refuse(f"layer {where}: an inbound node is neither Keras 3's nor Keras 2's form")


def _collect_tensors(value, refs: list, where: str, depth: int = 0) -> None:
    if depth > MAX_NESTING:
        raise _refuse(f"layer {where}: inbound arguments nest too deep")
    if isinstance(value, dict):
        if value.get("class_name") == "__keras_tensor__":
            refs.append(_ref((value.get("config") or {}).get("keras_history"), where))
            return
        for item in value.values():
            _collect_tensors(item, refs, where, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _collect_tensors(item, refs, where, depth + 1)


def _ref(history, where: str) -> tuple[str, int, int]:
    if not (isinstance(history, list) and len(history) == 3 and isinstance(history[0], str)
            and all(isinstance(n, int) and not isinstance(n, bool) and 0 <= n < 1_000_000 for n in history[1:])):
        raise _refuse(f"{where}: a tensor reference is not [layer, node, tensor]")
    return history[0], history[1], history[2]


def _refs(value, key: str) -> list[tuple[str, int, int]]:
    """input_layers / output_layers: one [name, node, tensor] or a list of them."""
    if isinstance(value, list) and value and isinstance(value[0], str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise _refuse(f"the model's {key} are missing")
    return [_ref(item, key) for item in value]


def _layer_name(layer) -> str:
    if not isinstance(layer, dict):
        raise _refuse("a layer entry is not an object")
    config = layer.get("config")
    name = layer.get("name") or (config.get("name") if isinstance(config, dict) else None)
    if not isinstance(name, str) or not name or len(name) > 256:
        raise _refuse("a layer has no name")
    return name


def _declared_input(layer: dict, entry: dict | None = None, config=None) -> Shape | None:
    """An InputLayer's (or a Keras 2 first layer's) declared batch shape, or a Sequential's build_config."""
    inner = layer.get("config") if isinstance(layer.get("config"), dict) else {}
    for key in ("batch_shape", "batch_input_shape"):
        if inner.get(key) is not None:
            return _shape(inner[key])
    for source in (entry and entry.get("build_config"), isinstance(config, dict) and config.get("build_input_shape")):
        if isinstance(source, dict) and source.get("input_shape") is not None:
            return _shape(source["input_shape"])
        if isinstance(source, list):
            return _shape(source)
    return None


def _build_shape(layer: dict) -> Shape | None:
    build = layer.get("build_config")
    if isinstance(build, dict) and isinstance(values(build.get("input_shape")), list):
        shape = values(build["input_shape"])
        if shape and all(isinstance(size, int) or size is None for size in shape):
            return _shape(shape)
    return None


def _shape(value) -> Shape:
    value = values(value)
    if not isinstance(value, list) or not 1 <= len(value) <= 8 or \
            not all(size is None or (isinstance(size, int) and not isinstance(size, bool) and 0 < size <= 2**31)
                    for size in value):
        raise _refuse(f"an input shape is not a list of sizes: {str(value)[:60]}")
    return tuple(value)


def _compatible(declared: list[Shape], given: list[Shape]) -> bool:
    return len(declared) == len(given) and all(
        len(a) == len(b) and all(x is None or y is None or x == y for x, y in zip(a, b)) for a, b in zip(declared, given))


def _where(names: tuple[str, ...]) -> str:
    return "/".join(name[:60] for name in names)


def _snake_case(name: str) -> str:
    """Keras' naming.to_snake_case, which names a layer's place in the weights file."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _unique(name: str, used: dict[str, int]) -> str:
    if name not in used:
        used[name] = 0
        return name
    used[name] += 1
    return f"{name}_{used[name]}"


# --- every object inside a layer's config -----------------------------------------------------------------------


def _check_identity(entry: dict, where: str) -> None:
    """`module` and `registered_name` name where Keras finds the class: only Keras' own modules, no custom name."""
    module, registered = entry.get("module"), entry.get("registered_name")
    if module not in KERAS_MODULES:
        raise _refuse(f"{where}: names module {str(module)[:60]!r}; only Keras' own layer modules are taken")
    if registered is not None and registered != entry.get("class_name"):
        raise _refuse(f"{where}: registered_name {str(registered)[:60]!r} names a custom object")


def _check_objects(value, where: str, depth: int = 0) -> None:
    """Every nested object is an allowed Keras object, and no string names a file or an address."""
    if depth > MAX_NESTING:
        raise _refuse(f"{where}: its config nests too deep")
    if isinstance(value, dict):
        if "class_name" in value:
            _check_object(value, where)
        for key, item in value.items():
            if key in FILE_FIELDS and isinstance(item, str) and item:
                raise _refuse(f"{where}: {key} names a file ({item[:60]!r}); files outside the archive are refused")
            if key not in ("name", "config") or not isinstance(item, str):
                _check_objects(item, where, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check_objects(item, where, depth + 1)
    elif isinstance(value, str) and LOCATION.search(value):
        raise _refuse(f"{where}: the value {value[:60]!r} names a file or an address")


def _check_object(entry: dict, where: str) -> None:
    class_name = entry.get("class_name")
    if class_name == "__lambda__":
        raise _refuse(f"{where}: holds a Python lambda, whose code would run")
    if class_name == "function":
        name = entry.get("config")
        if entry.get("module") not in ACTIVATION_MODULES or name not in ACTIVATIONS:
            raise _refuse(f"{where}: references the function {entry.get('module')}.{str(name)[:40]}; only Keras' "
                          f"activations may be named")
        return
    if class_name == "__numpy__":
        dtype = (entry.get("config") or {}).get("dtype")
        if not isinstance(dtype, str) or not NUMERIC_DTYPES.match(dtype):
            raise _refuse(f"{where}: an array of dtype {str(dtype)[:30]!r}")
        return
    if class_name in STRUCTURES:
        return
    if class_name in REFUSED_LAYERS:
        raise _refuse(f"{where}: {REFUSED_LAYERS[class_name]}")
    if class_name not in OBJECTS:
        raise _refuse(f"{where}: {str(class_name)[:60]} is not one of Keras' built-in initializers, regularizers, "
                      f"constraints or dtype policies")
    _check_identity(entry, where)
