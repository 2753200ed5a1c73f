"""Your own model as people build them (tests/people_models.py): backbones nested in models, heads without a
Dense layer, multi-label heads, preprocessing inside the model, and a Keras 2 `.hdf5` file.

Each is registered through the CLI against the real worker, shown, and visualized: a class by name, an inner
layer by its path (and by its bare name where that is unique), a 4-unit atlas of an inner layer. What a job
computes is held to the saved model itself: the class objective is the value entering the final activation and
the inner layer's objective is that layer's channel mean, both recomputed here from the file with Keras. Every
target `models show` offers runs; the three big Keras Application backbones run in `make test-all` (slow).
"""
from __future__ import annotations

import json
import re

import keras
import numpy as np
import pytest

from featurevis import registry, targets
from tests import people_models
from tests.people_models import PEOPLE_MODELS

# Keras 2 files keep a list for their model's inputs; calling such a model on one array here says so, harmlessly.
pytestmark = pytest.mark.filterwarnings("ignore:The structure of `inputs` doesn't match:UserWarning")

FAST = ["mobilenet_v2_backbone_rescaling", "mini_xception", "mini_xception_h5", "squeezenet_style", "flatten_head",
        "multilabel_sigmoid", "sequential_backbone", "preprocessing_inside"]
SLOW = ["mobilenet_v2_backbone", "efficientnet_b0_backbone", "resnet50_backbone"]
METHODS = ("gradient_ascent", "robust", "maco")
# Each model's final activation, as people_models builds it (softmax where not named here).
FINAL = {"multilabel_sigmoid": "sigmoid", "sequential_backbone": None}


def _model_name(name: str) -> str:
    return name.replace("_", "-")


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("people")
    return {name: people_models.build(name, folder) for name in FAST}


@pytest.fixture(scope="module")
def registered(built, run_cli, tmp_path_factory) -> dict[str, str]:
    """Each fast model registered through the CLI with its class names; name -> stdout of `register`."""
    folder = tmp_path_factory.mktemp("classes")
    said = {}
    for name, path in built.items():
        names = folder / f"{name}.txt"
        names.write_text("\n".join(PEOPLE_MODELS[name].classes) + "\n")
        done = run_cli("models", "register", _model_name(name), "--file", str(path), "--class-names", str(names))
        assert done.returncode == 0, (name, done.stderr)
        said[name] = done.stderr
    return said


def _loaded(path) -> keras.Model:
    """The file as Keras 3 reads it here; a Keras 2 file is read from the .keras the registry stored for it."""
    return keras.saving.load_model(path, compile=False, safe_mode=True)


def _served(stack, name: str, producer_api):
    info = producer_api.model(_model_name(name))
    return info, _loaded(stack.results_dir / "models" / info.name / info.sha256 / "model.keras")


@pytest.mark.parametrize("name", FAST)
def test_models_show_lists_the_nested_layers_by_path_and_the_head(stack, producer_api, run_cli, registered, name):
    spec = PEOPLE_MODELS[name]
    info, model = _served(stack, name, producer_api)
    shown = run_cli("models", "show", _model_name(name)).stdout
    assert re.search(rf"^ +\d*  {re.escape(spec.inner_layer)} +\w+ +\d+ ", shown, re.M), shown
    # conv_id counts every Conv2D of the whole model, the backbone's included (not "1 layers (0 Conv2D)").
    convs = [found for found in targets.all_layers(model) if type(found.layer) is keras.layers.Conv2D]
    assert len(info.conv_layers) == len(convs) > 0
    assert [layer.name for layer in info.layers] == [found.path for found in targets.spatial_layers(model)]
    assert info.classes == len(spec.classes) and info.class_names == tuple(spec.classes)
    final = FINAL.get(name, "softmax")
    assert info.class_activation == final and (f"before its {final}" in shown) == (final is not None)
    assert ("(multi-label)" in shown) == (spec.head == "sigmoid")
    assert ("the model preprocesses its own input" in shown) == spec.preprocessing_in_model
    assert info.preprocess.kind == ("none" if spec.preprocessing_in_model else "unit")


def _layer_value(model: keras.Model, path: str, pixels: np.ndarray) -> np.ndarray:
    """A layer's output computed the way a Keras user would, without featurevis: what the outer model feeds the
    nested model (its previous layer's output: these models are chains up to their backbone), then the nested
    model's own feature extractor, level by level."""
    head, _, rest = path.partition("/")
    layer = model.get_layer(head)
    if not rest:
        return keras.Model(model.inputs, layer.output)([pixels]).numpy()
    before = [item for item in model.layers if not isinstance(item, keras.layers.InputLayer)]
    index = before.index(layer)
    fed = pixels if index == 0 else keras.Model(model.inputs, before[index - 1].output)([pixels]).numpy()
    return _layer_value(layer, rest, fed)


def _probabilities(model: keras.Model, pixels: np.ndarray, activation: str | None) -> np.ndarray:
    """What the model outputs, as the class probabilities a job predicts (softmax of a model's raw logits)."""
    out = model(pixels[None]).numpy()[0]
    return np.exp(out - out.max()) / np.exp(out - out.max()).sum() if activation is None else out


@pytest.mark.parametrize("name", FAST)
def test_a_class_by_name_and_an_inner_layer_by_path_are_what_the_saved_model_computes(stack, producer_api,
                                                                                      registered, name):
    spec = PEOPLE_MODELS[name]
    info, model = _served(stack, name, producer_api)
    scale, offset = (np.array(part, dtype="float32") for part in (info.preprocess.scale, info.preprocess.offset))

    def run(fields: dict) -> tuple[dict, np.ndarray]:
        result = producer_api.enqueue({"model": info.name, "iterations": 3, "seed": 2, **fields}).wait(timeout=300)
        meta = json.loads((stack.results_dir / result.meta).read_text())
        return meta, np.load(stack.results_dir / result.array) * scale + offset

    meta, pixels = run({"layer": spec.inner_layer, "feature": 1})
    assert meta["layer_name"] == spec.inner_layer
    assert ("~" in meta["key"].split("/")[1]) == ("/" in spec.inner_layer)  # one folder per layer, path or not
    channel = _layer_value(model, spec.inner_layer, pixels[None])[0, ..., 1].mean()
    assert meta["quality"]["objective"] == pytest.approx(float(channel), rel=1e-3, abs=1e-4)
    meta, pixels = run({"class": spec.classes[1]})
    assert meta["layer_name"] == "logits" and meta["feature"] == 1
    predicted, own = meta["predictions"][-1], _probabilities(model, pixels, info.class_activation)
    assert (predicted["class_name"], predicted["score"]) == (spec.classes[int(own.argmax())],
                                                             pytest.approx(float(own.max()), rel=1e-3, abs=1e-5))
    bare = spec.inner_layer.rsplit("/", 1)[-1]
    if bare != spec.inner_layer:  # a nested layer's own name, unique in the model, names it too
        same = producer_api.enqueue({"model": info.name, "layer": bare, "feature": 1, "iterations": 3, "seed": 2})
        assert same.specs[0].layer == spec.inner_layer and same.wait(timeout=300).cached  # the same job


def test_the_class_target_is_the_value_entering_the_final_activation(stack, producer_api, registered):
    """A softmax inside a 1x1 Conv2D, then Flatten: the logits are that Conv2D's values without its softmax; a
    sigmoid head's are its Dense layer's values before the sigmoid. Neither is the probability the model outputs.
    Recomputed here from the layers' weights, not through featurevis."""
    for name, layer in (("flatten_head", "class_conv"), ("multilabel_sigmoid", "tags")):
        info, model = _served(stack, name, producer_api)
        result = producer_api.enqueue({"model": info.name, "class": 2, "iterations": 3, "seed": 4}).wait(timeout=300)
        meta = json.loads((stack.results_dir / result.meta).read_text())
        pixels = np.load(stack.results_dir / result.array)[None] / 255.0
        head = model.get_layer(layer)
        before = keras.Model(model.inputs[0], head.input)(pixels).numpy()
        kernel, bias = (weight.numpy() for weight in head.weights)
        logits = before.reshape(-1, kernel.shape[-2]) @ kernel.reshape(-1, kernel.shape[-1]) + bias
        assert meta["quality"]["objective"] == pytest.approx(float(logits[0, 2]), rel=1e-4, abs=1e-5)
        assert meta["quality"]["objective"] != pytest.approx(float(model(pixels).numpy()[0, 2]), abs=1e-3)
        assert meta["layer_type"] == f"{type(head).__name__} (pre-activation)"


def test_a_keras2_file_is_stored_converted_with_its_original_hash(stack, producer_api, registered, built,
                                                                   tmp_path):
    info, model = _served(stack, "mini_xception_h5", producer_api)
    original = built["mini_xception_h5"]
    assert info.sha256 == registry.version_of_file(original)  # the version is the file the user has
    converted = info.description["converted_from"]
    assert converted["format"] == "Keras 2 HDF5" and converted["sha256"] == info.sha256
    assert any("kernel_regularizer" in dropped for dropped in converted["dropped_keys"])
    stored = stack.results_dir / "models" / info.name / info.sha256
    assert registry.version_of_file(stored / "model.keras") == info.description["file_sha256"] != info.sha256
    assert (stored / "model.h5").read_bytes() == original.read_bytes()
    pictures = np.random.default_rng(3).uniform(0, 255, (2, *info.input_shape)).astype("float32")
    keras2 = people_models.tf_keras_predict(original, pictures / 255.0, tmp_path)
    assert np.allclose(model(pictures / 255.0).numpy(), keras2, atol=1e-5)  # Keras 2's own predictions


@pytest.mark.parametrize("name", ["mobilenet_v2_backbone_rescaling", "mini_xception_h5"])
def test_a_four_unit_atlas_of_an_inner_layer_with_dataset_examples(stack, producer_api, registered, name, tmp_path):
    spec = PEOPLE_MODELS[name]
    info = producer_api.model(_model_name(name))
    pictures = np.random.default_rng(5).integers(0, 256, (12, *info.input_shape), dtype=np.uint8)
    np.savez(tmp_path / "dataset.npz", images=pictures)
    producer_api.add_dataset(info.name, tmp_path / "dataset.npz")
    job = producer_api.atlas({"model": info.name, "layers": [spec.inner_layer], "units": 4, "iterations": 2,
                              "seed": 1})
    job.wait(timeout=600)
    units = json.loads((stack.results_dir / job.page).parent.joinpath(
        spec.inner_layer.replace("/", "~"), "units.json").read_text())
    assert sorted(int(feature) for feature in units) == [0, 1, 2, 3]
    assert all(unit["layer"] == spec.inner_layer and unit["examples"]["top"] for unit in units.values())


def _every_target(info: registry.ModelInfo) -> list[str]:
    return [layer.name for layer in info.layers] + (["logits"] if info.classes else [])


@pytest.mark.parametrize("name", ["sequential_backbone"])
def test_every_offered_target_works(stack, producer_api, registered, name):
    """Every layer `models show` lists and the logits, one unit each in an atlas, by gradient ascent; every
    method on the first layer, the innermost listed layer and the logits. (A model nested two deep; every
    model, every method on every target, in `make test-all`.)"""
    info = producer_api.model(_model_name(name))
    every = _every_target(info)
    atlas = producer_api.atlas({"model": info.name, "layers": every, "units": 1, "iterations": 2, "seed": 1})
    progress = atlas.wait(timeout=900)
    assert progress.done == len(every), progress
    deepest = max((layer.name for layer in info.layers), key=lambda path: path.count("/"))
    for method in METHODS[1:]:
        for target in {every[0], deepest, every[-1]}:
            fields = {"class": 0} if target == "logits" else {"layer": target, "feature": 0}
            producer_api.enqueue({"model": info.name, "method": method, "iterations": 2, "seed": 1, **fields}) \
                .wait(timeout=300)


@pytest.mark.slow
@pytest.mark.parametrize("name", [*SLOW, *FAST])
def test_every_offered_target_works_for_every_method_on_the_big_ones(stack, producer_api, run_cli, name, tmp_path):
    path = people_models.build(name, tmp_path)
    model = f"all-{_model_name(name)}"
    assert run_cli("models", "register", model, "--file", str(path)).returncode == 0
    info = producer_api.model(model)
    every = _every_target(info)
    for method in METHODS:
        atlas = producer_api.atlas({"model": model, "layers": every, "units": 1, "iterations": 2, "seed": 1,
                                    "method": method})
        assert atlas.wait(timeout=3600).done == len(every), method


def test_sweeps_and_every_objective_work_on_a_nested_layer(stack, producer_api, registered, tmp_path):
    """A backbone's layer by path: a sweep of three channels, then one job whose objective composes a channel, a
    neuron, a direction, DeepDream's layer term and a caricature of an uploaded picture, all on that layer."""
    from PIL import Image

    spec = PEOPLE_MODELS["mobilenet_v2_backbone_rescaling"]
    info = producer_api.model(_model_name("mobilenet_v2_backbone_rescaling"))
    layer = info.layer(spec.inner_layer)
    sweep = producer_api.sweep({"model": info.name, "layer": spec.inner_layer, "features": [0, 1, 2],
                                "iterations": 2, "seed": 3}).wait(timeout=300)
    assert len(sweep.jobs) == 3 and (stack.results_dir / sweep.contact_sheet).is_file()
    picture = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(picture)
    terms = [{"objective": "channel", "feature": 1, "weight": 1.0},
             {"objective": "neuron", "feature": 2, "weight": 0.5},
             {"objective": "direction", "vector": [1.0] * layer.channels, "weight": 0.1},
             {"objective": "layer", "weight": 0.1},
             {"objective": "caricature", "image": producer_api.upload_image(picture), "weight": 0.5}]
    result = producer_api.enqueue({"model": info.name, "layer": spec.inner_layer, "targets": terms,
                                   "iterations": 2, "seed": 3}).wait(timeout=300)
    meta = json.loads((stack.results_dir / result.meta).read_text())
    assert meta["layer_name"] == spec.inner_layer and len(meta["loss"]) == 2


def test_a_model_that_preprocesses_itself_climbs_on_raw_pixels(stack, producer_api, registered):
    info = producer_api.model(_model_name("preprocessing_inside"))
    assert info.preprocess.kind == "none" and [name.split(" ")[1] for name in info.preprocessing_layers] == \
        ["(Resizing)", "(Rescaling)", "(Normalization)"]
    result = producer_api.enqueue({"model": info.name, "layer": PEOPLE_MODELS["preprocessing_inside"].inner_layer,
                                   "feature": 2, "iterations": 12, "seed": 6}).wait(timeout=300)
    loss = json.loads((stack.results_dir / result.meta).read_text())["loss"]
    assert loss[-1] > loss[1]


KERAS2_REFUSED = """
import json, h5py, tf_keras as k2
model = k2.Sequential([k2.layers.Conv2D(4, 3, input_shape=(16, 16, 3), name="{conv}"),
                       k2.layers.GlobalAveragePooling2D(), k2.layers.Dense(2)])
model.save(r"{path}")
with h5py.File(r"{path}", "r+") as handle:  # a key this Keras 2 never wrote, which Keras 3's Conv2D refuses
    config = json.loads(handle.attrs["model_config"])
    config["config"]["layers"][{index}]["config"].update({extra})
    handle.attrs["model_config"] = json.dumps(config)
"""


@pytest.mark.parametrize("conv,index,extra,refusal", [
    ("features", 1, {"frobnicate": 1}, "file: Keras 3.15.1 cannot rebuild layer features (Conv2D) of this file: "
                                       "Unrecognized keyword arguments passed to Conv2D: {'frobnicate': 1}"),
    # Keras 2 named the Sequential's input after its first layer: that is the first name Keras 3 refuses.
    ("block1/conv", 1, {}, "file: layer block1/conv_input: Keras 3 cannot rebuild a layer whose name has '/'"),
])
def test_a_keras2_file_keras3_cannot_rebuild_is_refused_naming_the_layer(stack, run_cli, tmp_path, conv, index,
                                                                         extra, refusal):
    import subprocess
    import sys

    path = tmp_path / "keras2.h5"
    script = KERAS2_REFUSED.format(conv=conv, path=path, index=index, extra=extra)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    refused = run_cli("models", "register", "keras2-refused", "--file", str(path))
    assert refused.returncode == 2 and refused.stderr.strip() == f"error: {refusal}"
    assert not (stack.results_dir / "models" / "keras2-refused").exists()
