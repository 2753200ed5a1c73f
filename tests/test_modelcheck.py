"""The static check of model files (featurevis/modelcheck.py): what it reads, what it counts, what it refuses.

Its table of layers (featurevis/layershapes.py) is held to Keras itself: every model here is saved by Keras
(or by Keras 2, tf-keras), and the check must count exactly the parameters Keras counts and find every
variable the weights file declares at the shape the config gives it. Each small model ends in
Flatten -> Dense(1), so a wrong output shape anywhere changes that Dense kernel and the check would refuse the
file. The hostile files (tests/hostile.py) must be refused before Keras reads them, each for its own reason.
"""
from __future__ import annotations

import json
import struct
import subprocess
import sys
import time
import tracemalloc
import zipfile
from pathlib import Path

import keras
import pytest

from featurevis import modelcheck
from featurevis.registry import ModelRefused
from tests import hostile

L = keras.layers


def _probe(name: str, shape: tuple, *layers) -> keras.Model:
    """Input -> layers -> Flatten -> Dense(1): the head's kernel records the output shape of what is before it."""
    keras.utils.set_random_seed(1)
    pixels = keras.Input(shape)
    x = pixels
    for layer in layers:
        x = layer(x)
    return keras.Model(pixels, L.Dense(1)(L.Flatten()(x)), name=name)


def _merged(name: str, merge) -> keras.Model:
    pixels = keras.Input((8, 8, 3))
    a = L.Conv2D(4, 3, padding="same")(pixels)
    b = L.Conv2D(4, 1)(pixels)
    return keras.Model(pixels, L.Dense(2)(L.Flatten()(merge([a, b]))), name=name)


def _layer_models() -> list[keras.Model]:
    """Every layer the check takes, in the configurations image models use."""
    return [
        _probe("conv", (9, 11, 3), L.Conv2D(5, 3, name="first"),
               L.Conv2D(4, (3, 2), strides=2, padding="same", use_bias=False),
               L.Conv2D(6, 3, dilation_rate=2, padding="same"), L.Conv2D(6, 1, groups=2)),
        _probe("depthwise", (10, 10, 4), L.DepthwiseConv2D(3), L.DepthwiseConv2D(3, strides=2, padding="same",
                                                                                   depth_multiplier=2)),
        _probe("separable", (10, 10, 3), L.SeparableConv2D(5, 3, depth_multiplier=2), L.SeparableConv2D(4, 1,
                                                                                                     use_bias=False)),
        _probe("transpose", (5, 6, 3), L.Conv2DTranspose(4, 3, strides=2), L.Conv2DTranspose(2, 2, strides=2,
                                                                                            padding="same")),
        _probe("normalizing", (6, 6, 4), L.BatchNormalization(), L.BatchNormalization(center=False, scale=False),
               L.BatchNormalization(renorm=True), L.LayerNormalization(), L.LayerNormalization(axis=[1, 2, 3]),
               L.GroupNormalization(2), L.UnitNormalization()),
        _probe("preprocessing", (12, 10, 3), L.Resizing(8, 9), L.Rescaling(1 / 255), L.Normalization(),
               L.Normalization(mean=[1.0, 2.0, 3.0], variance=[1.0, 4.0, 9.0]), L.CenterCrop(6, 7),
               L.RandomFlip(), L.RandomRotation(0.1), L.RandomZoom(0.1), L.RandomTranslation(0.1, 0.1),
               L.RandomContrast(0.1), L.RandomBrightness(0.1)),
        _probe("activations", (5, 5, 3), L.Activation("relu"), L.ReLU(6.0), L.LeakyReLU(), L.ELU(), L.PReLU(),
               L.PReLU(shared_axes=[1, 2]), L.Softmax(), L.Identity()),
        _probe("regularizing", (5, 5, 3), L.Dropout(0.1), L.SpatialDropout2D(0.1), L.GaussianNoise(0.1),
               L.GaussianDropout(0.1), L.AlphaDropout(0.1), L.ActivityRegularization(0.01)),
        _probe("pooling", (13, 12, 3), L.MaxPooling2D(), L.AveragePooling2D(3, strides=1, padding="same"),
               L.MaxPooling2D((2, 3), strides=(1, 2)), L.GlobalAveragePooling2D(keepdims=True)),
        _probe("global", (7, 7, 3), L.GlobalMaxPooling2D()),
        _probe("reshaping", (8, 6, 3), L.ZeroPadding2D(((1, 2), (0, 3))), L.Cropping2D((1, 2)), L.UpSampling2D(2),
               L.ZeroPadding2D(1), L.Permute((2, 1, 3)), L.Reshape((-1, 6)), L.Reshape((6, 4, -1))),
        _probe("dense", (4, 4, 3), L.Dense(5), L.Dense(3, use_bias=False)),
        _merged("add", L.Add()), _merged("subtract", L.Subtract()), _merged("multiply", L.Multiply()),
        _merged("average", L.Average()), _merged("maximum", L.Maximum()), _merged("minimum", L.Minimum()),
        _merged("concatenate", L.Concatenate()),
    ]


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[str, tuple[Path, int]]:
    """name -> (a .keras file, the parameters Keras counts)."""
    folder = tmp_path_factory.mktemp("checked")
    files = {}
    models = _layer_models()
    keras.utils.set_random_seed(2)
    backbone = keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, include_top=False, weights=None)
    pixels = keras.Input((32, 32, 3))
    nested = keras.Model(pixels, L.Dense(5, activation="softmax")(L.GlobalAveragePooling2D()(backbone(pixels))),
                         name="nested")
    inner = keras.Sequential([keras.Input((16, 16, 3)), L.Conv2D(4, 3), keras.Sequential([L.Conv2D(2, 3)])],
                             name="inner")
    sequential = keras.Sequential([keras.Input((16, 16, 3)), inner, L.Flatten(), L.Dense(2)], name="sequential")
    compiled = _probe("compiled", (8, 8, 3), L.Conv2D(2, 3))
    compiled.compile("adam", "mse")
    compiled.fit(keras.ops.zeros((2, 8, 8, 3)), keras.ops.zeros((2, 1)), verbose=0)
    for model in [*models, nested, sequential, compiled,
                  keras.applications.EfficientNetB0(input_shape=(32, 32, 3), include_top=False, weights=None),
                  keras.applications.DenseNet121(input_shape=(32, 32, 3), include_top=False, weights=None),
                  keras.applications.ResNet50V2(input_shape=(32, 32, 3), include_top=False, weights=None)]:
        path = folder / f"{model.name}.keras"
        model.save(path)
        files[model.name] = (path, model.count_params())
    return files


def test_every_layer_and_model_is_counted_as_keras_counts_it(saved):
    for name, (path, params) in saved.items():
        checked = modelcheck.check_file(path)
        assert (checked.format, checked.params) == (modelcheck.KERAS, params), name


def test_nested_models_are_walked_to_their_inner_layers(saved):
    checked = modelcheck.check_file(saved["nested"][0])
    assert checked.layers > 150  # the backbone's layers, not one "Functional" layer
    # Sequential in Sequential in Sequential: 4 + 3 + 2 layers, each config's InputLayer counted
    assert modelcheck.check_file(saved["sequential"][0]).layers == 9


@pytest.fixture(scope="module")
def keras2_files(tmp_path_factory) -> dict[str, tuple[Path, int]]:
    """Keras 2 (tf-keras) .h5 files, written in a process of their own: a nested backbone as people fine-tune
    one, an application whose DepthwiseConv2D configs carry keys Keras 3 does not take, and a Sequential model."""
    folder = tmp_path_factory.mktemp("keras2")
    script = f"""
import json, tf_keras as k2
out = {{}}
base = k2.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, include_top=False, weights=None)
pixels = k2.Input((32, 32, 3))
model = k2.Model(pixels, k2.layers.Dense(5, activation="softmax")(k2.layers.GlobalAveragePooling2D()(base(pixels))))
model.compile("adam", "categorical_crossentropy")
models = {{"backbone": model, "application": k2.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35,
                                                                        weights=None, classes=3),
          "sequential": k2.Sequential([k2.layers.Conv2D(4, 3, input_shape=(12, 12, 1)), k2.layers.MaxPooling2D(),
                                       k2.layers.Flatten(), k2.layers.Dense(2, activation="softmax")])}}
for name, model in models.items():
    model.save(r"{folder}/" + name + ".h5")
    out[name] = model.count_params()
print(json.dumps(out))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    counts = json.loads(done.stdout.strip().splitlines()[-1])
    return {name: (folder / f"{name}.h5", count) for name, count in counts.items()}


def test_keras2_files_are_checked_by_content_as_keras_counts_them(keras2_files, tmp_path):
    for name, (path, params) in keras2_files.items():
        renamed = tmp_path / f"{name}.model"  # the suffix says nothing: the content does
        renamed.write_bytes(path.read_bytes())
        checked = modelcheck.check_file(renamed)
        assert (checked.format, checked.params, checked.keras_version) == (modelcheck.LEGACY_H5, params, "2.21.0"), name


@pytest.fixture(scope="module")
def hostile_files(tmp_path_factory) -> tuple[dict[str, Path], Path]:
    folder = tmp_path_factory.mktemp("hostile")
    marker = folder / "code-ran.txt"
    return hostile.build_all(folder, marker), marker


# What each hostile file is refused for: the start of its one line.
REFUSALS = {
    "lambda_tfsm": "file: layer preprocess: a Lambda layer runs code named by the file",
    "tfsm_layer": "file: layer features: TFSMLayer loads a SavedModel from a path",
    **{name: "file: layer preprocess: a Lambda layer runs code named by the file"
       for name in ("setter_floatx", "setter_epsilon", "setter_image_data_format", "setter_backend", "setter_seed",
                    "h5_lambda_setter")},
    "dense_bomb": "file: the model has more than 200000000 parameters by its config (reached at layer logits)",
    "h5_dense_bomb": "file: the model has more than 200000000 parameters by its config (reached at layer logits)",
    "declared_shape_bomb": "file: weights of logits are declared as [(1073741824,), (2,)] in model.weights.h5; its "
                           "config makes them [(4, 2), (2,)]",
    "h5_declared_shape_bomb": "file: weights of logits are declared as [(1073741824,), (2,)] in model_weights",
    "config_deflate_bomb": "file: member config.json unpacks to 67108864 bytes, over the bound of 16777216",
    "oversized_config": "file: member config.json unpacks to 20971520 bytes, over the bound of 16777216",
    "h5_oversized_config": "file: model_config is 20971520 bytes, over the bound of 16777216",
    "overlapping_entries": "file: member 'assets/overlap_0.bin' is not one Keras writes",
    "path_traversal": "file: member '../../escaped.txt' is not one Keras writes",
    "unknown_module": "file: layer system: system is not one of the built-in Keras layers",
    "custom_registered": "file: layer evil: Evil is not one of the built-in Keras layers",
    "lookup_vocabulary_path": "file: layer tag_id: StringLookup is not one of the built-in Keras layers",
    "hdf5_external_storage": "file: HDF5 dataset layers/dense/vars/1 keeps its data in another file",
    "h5_external_storage": "file: HDF5 dataset model_weights/logits/logits/bias:0 keeps its data in another file",
    "hdf5_soft_link": "file: HDF5 object layers/dense/vars/0 is a soft link",
    "hdf5_external_link": "file: HDF5 object layers/dense/vars/0 is an external link",
    "hdf5_virtual_dataset": "file: HDF5 dataset layers/dense/vars/0 is a virtual dataset mapped from other files",
}


def test_every_hostile_file_is_refused_for_its_reason_before_keras_reads_it(hostile_files):
    files, marker = hostile_files
    assert set(files) == set(REFUSALS)
    for name, path in files.items():
        tracemalloc.start()
        started = time.perf_counter()
        with pytest.raises(ModelRefused) as refused:
            modelcheck.check_file(path)
        seconds, (_, peak) = time.perf_counter() - started, tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert str(refused.value).startswith(REFUSALS[name]), (name, str(refused.value))
        assert "\n" not in str(refused.value)
        assert seconds < 2 and peak < 64 * 2**20, (name, seconds, peak)  # read as data, bombs not unpacked
    assert not marker.exists()


def _relaid(source: Path, target: Path, edit) -> Path:
    """A copy of a .keras archive with one central-directory entry edited in place (struct fields)."""
    data = bytearray(source.read_bytes())
    with zipfile.ZipFile(source) as archive:
        start = archive.start_dir
        entries = archive.infolist()
    offset = start
    for entry in entries:
        name_length, extra_length, comment_length = struct.unpack("<HHH", data[offset + 28:offset + 34])
        edit(entry.filename, data, offset)
        offset += 46 + name_length + extra_length + comment_length
    target.write_bytes(bytes(data))
    return target


def test_members_whose_bytes_overlap_are_refused(saved, tmp_path):
    """Keras' own names, but config.json's declared data runs over model.weights.h5's (an overlapping zip)."""
    source = saved["conv"][0]
    sizes = {entry.filename: entry for entry in zipfile.ZipFile(source).infolist()}

    def stretch(name, data, offset):
        if name == "config.json":
            grown = sizes["config.json"].compress_size + 64
            data[offset + 20:offset + 24] = struct.pack("<I", grown)

    path = _relaid(source, tmp_path / "overlap.keras", stretch)
    with pytest.raises(ModelRefused, match="^file: members config.json and model.weights.h5 overlap in the archive$"):
        modelcheck.check_file(path)


def _with_config(source: Path, target: Path, change) -> Path:
    """A copy of a .keras file whose config.json went through `change` (a function editing the parsed JSON)."""
    with zipfile.ZipFile(source) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    config = json.loads(members["config.json"])
    change(config)
    members["config.json"] = json.dumps(config).encode()
    with zipfile.ZipFile(target, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return target


def _first(config: dict, class_name: str) -> dict:
    return next(layer for layer in config["config"]["layers"] if layer["class_name"] == class_name)


@pytest.mark.parametrize("change,message", [
    (lambda c: _first(c, "Conv2D").update(module="os"),
     "file: layer first: names module 'os'; only Keras' own layer modules are taken"),
    (lambda c: _first(c, "Conv2D")["config"].update(activation={"module": "keras.config", "class_name": "function",
                                                                 "config": "set_floatx", "registered_name": None}),
     "file: layer first: references the function keras.config.set_floatx; only Keras' activations may be named"),
    (lambda c: _first(c, "Conv2D")["config"].update(kernel_initializer={"module": "keras.config",
                                                                         "class_name": "set_floatx", "config": {}}),
     "file: layer first: set_floatx is not one of Keras' built-in initializers"),
    (lambda c: _first(c, "Conv2D")["config"].update(filepath="https://example.com/weights.h5"),
     "file: layer first: filepath names a file ('https://example.com/weights.h5')"),
    (lambda c: _first(c, "Conv2D")["config"].update(note="/etc/passwd"),
     "file: layer first: the value '/etc/passwd' names a file or an address"),
    (lambda c: _first(c, "Conv2D")["config"].update(data_format="channels_first"),
     "file: layer first: data_format 'channels_first': only channels_last models are served"),
    (lambda c: _first(c, "Conv2D")["build_config"].update(input_shape=[None, 9, 11, 300]),
     "file: layer first: its build_config input (None, 9, 11, 300) is not its input (None, 9, 11, 3)"),
    (lambda c: _first(c, "Conv2D")["inbound_nodes"][0]["args"][0]["config"].update(keras_history=["nowhere", 0, 0]),
     "file: the model: a node names layer 'nowhere', which it lacks"),
])
def test_a_changed_config_is_refused_in_one_line(saved, tmp_path, change, message):
    path = _with_config(saved["conv"][0], tmp_path / "changed.keras", change)
    with pytest.raises(ModelRefused) as refused:
        modelcheck.check_file(path)
    assert str(refused.value).startswith(message), str(refused.value)


def test_the_parameter_bound_is_the_operators(saved, monkeypatch):
    path, params = saved["nested"]
    monkeypatch.setenv("FEATUREVIS_MODEL_MAX_PARAMS", str(params - 1))
    with pytest.raises(ModelRefused, match=rf"^file: the model has more than {params - 1} parameters by its config"):
        modelcheck.check_file(path)
    monkeypatch.setenv("FEATUREVIS_MODEL_MAX_PARAMS", str(params))
    assert modelcheck.check_file(path).params == params


def test_a_file_that_is_neither_is_named_so(tmp_path):
    text = tmp_path / "model.keras"
    text.write_text("not a model")
    with pytest.raises(ModelRefused, match=r"^file: is not a model file featurevis reads \(a \.keras archive, a "
                                           r"Keras 2 \.h5 file or an \.onnx file\)"):
        modelcheck.check_file(text)
