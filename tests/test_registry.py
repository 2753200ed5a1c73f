"""Your own model: register a .keras file (or a Keras Application), then visualize it like the built-ins.

The models are built and saved by the tests themselves, as a user would, so nothing is downloaded.
"""
from __future__ import annotations

import json
import re

import keras
import numpy as np
import pytest
from PIL import Image

from featurevis import registry
from featurevis.contract import JobError, normalize
from featurevis.registry import ModelRefused
from featurevis.store import ResultStore

BEE = 1  # a class of the functional model, by name "bee"


def _functional(seed: int = 1) -> keras.Model:
    """A functional RGB CNN with a linear Dense head."""
    keras.utils.set_random_seed(seed)
    pixels = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(8, 3, activation="relu")(pixels)
    x = keras.layers.Conv2D(16, 3, name="features")(x)
    x = keras.layers.Activation("relu", name="features_relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(pixels, keras.layers.Dense(5)(x))


def _grayscale() -> keras.Model:
    """A Sequential grayscale 28x28 CNN that ends in softmax, as MNIST tutorials write them."""
    keras.utils.set_random_seed(2)
    return keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Conv2D(8, 3, activation="relu", name="conv_a"),
                             keras.layers.MaxPooling2D(name="pool"),
                             keras.layers.Conv2D(16, 3, activation="relu", name="conv_b"),
                             keras.layers.Flatten(), keras.layers.Dense(10, activation="softmax", name="classes")])


def _depthwise() -> keras.Model:
    """Conv2D, DepthwiseConv2D and an Add of the two: targets beyond Conv2D, on a non-square input."""
    keras.utils.set_random_seed(3)
    pixels = keras.Input((40, 48, 3))
    a = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="stem")(pixels)
    b = keras.layers.DepthwiseConv2D(3, padding="same", name="depthwise")(a)
    x = keras.layers.Add(name="sum")([a, b])
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.ReLU()(x))
    return keras.Model(pixels, keras.layers.Dense(4)(x))


# name -> (builder, a Conv2D target, a non-Conv2D target, the class a job climbs). The channels are ones the
# start image excites: a ReLU inside a Conv2D can be dead there, and no gradient climbs a dead unit.
MODELS = {
    "fn-cnn": (_functional, ("features", 1), ("features_relu", 2), "bee"),
    "gray28": (_grayscale, ("conv_b", 2), ("pool", 4), 3),
    "dw-add": (_depthwise, ("stem", 1), ("sum", 2), 2),
}
# What meta.json must say of each target: (conv_id, layer type) of the Conv2D and the other layer.
EXPECTED = {"fn-cnn": ((1, "Conv2D"), (None, "Activation")), "gray28": ((1, "Conv2D"), (None, "MaxPooling2D")),
            "dw-add": ((0, "Conv2D"), (None, "Add"))}
CLASS_NAMES = ["ant", "bee", "cat", "dog", "eel"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("models")
    paths = {}
    for name, (build, *_) in MODELS.items():
        paths[name] = folder / f"{name}.keras"
        build().save(paths[name])
    paths["fn-cnn-retrained"] = folder / "fn-cnn-retrained.keras"
    _functional(seed=9).save(paths["fn-cnn-retrained"])
    return paths


@pytest.fixture(scope="module")
def registered(saved, run_cli, tmp_path_factory) -> dict:
    """Each test model registered through the CLI; name -> its version."""
    names = tmp_path_factory.mktemp("classes") / "names.txt"
    names.write_text("\n".join(CLASS_NAMES) + "\n")
    versions = {}
    for name in MODELS:
        extra = ["--class-names", str(names)] if name == "fn-cnn" else []
        done = run_cli("models", "register", name, "--file", str(saved[name]), *extra)
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == [name, registry.version_of_file(saved[name])]
        versions[name] = done.stdout.split()[1]
    return versions


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("method", ["gradient_ascent", "robust"])
def test_both_methods_climb_a_conv2d_channel_another_layer_and_a_class(stack, producer_api, registered, name, method):
    _, (conv, conv_feature), (other, other_feature), wanted = MODELS[name]
    info = producer_api.model(name)
    jobs = {"conv": {"layer": conv, "feature": conv_feature}, "other": {"layer": other, "feature": other_feature},
            "class": {"class": wanted}}
    for target, fields in jobs.items():
        result = producer_api.enqueue({"model": name, "method": method, "iterations": 16, "seed": 5, **fields}) \
            .wait(timeout=240)
        meta = json.loads((stack.results_dir / result.meta).read_text())
        assert meta["model_sha256"] == registered[name] == info.sha256
        assert meta["loss"][-1] > meta["loss"][1], (target, meta["loss"])
        if target == "class":
            assert meta["layer_name"] == "logits" and meta["layer_type"] == "Dense (pre-activation)"
            assert meta["feature"] == (BEE if wanted == "bee" else wanted) and meta["conv_id"] is None
            predicted = meta["predictions"][-1]
            if name == "fn-cnn":
                assert predicted["class_name"] == CLASS_NAMES[predicted["class_id"]]
        else:
            expected = EXPECTED[name][0 if target == "conv" else 1]
            assert (meta["conv_id"], meta["layer_type"]) == expected
            assert meta["layer_name"] == (conv if target == "conv" else other)
        pixels = np.load(stack.results_dir / result.array)
        assert pixels.shape == info.input_shape and 0 <= pixels.min() <= pixels.max() <= 255
        picture = Image.open(stack.results_dir / result.image)
        assert picture.size == info.input_shape[1::-1]
        assert picture.mode == ("L" if info.input_shape[-1] == 1 else "RGB")


def test_a_class_of_the_softmax_model_climbs_its_logit_not_its_probability(stack, producer_api, registered, saved):
    """The Sequential model ends in softmax; the objective is the last Dense layer's value before it."""
    result = producer_api.enqueue({"model": "gray28", "class": 7, "iterations": 12, "seed": 1}).wait(timeout=240)
    meta = json.loads((stack.results_dir / result.meta).read_text())
    model = keras.saving.load_model(saved["gray28"])
    pixels = np.load(stack.results_dir / result.array)[None] / 255.0  # the registry's default preprocess, unit
    head = model.get_layer("classes")
    before_softmax = keras.Model(model.inputs[0], head.input)(pixels).numpy() @ head.kernel.numpy() + head.bias.numpy()
    assert meta["quality"]["objective"] == pytest.approx(float(before_softmax[0, 7]), rel=1e-4, abs=1e-5)
    assert meta["quality"]["objective"] != pytest.approx(float(model(pixels).numpy()[0, 7]), abs=1e-3)
    assert meta["loss"][-1] > meta["loss"][1]


def test_models_list_and_show_describe_what_jobs_may_target(run_cli, registered):
    listed = run_cli("models", "list")
    assert listed.returncode == 0
    lines = {line.split()[0]: line for line in listed.stdout.splitlines()}
    assert set(MODELS) | set(registry.BUILTINS) <= set(lines)
    assert "input 28x28x1" in lines["gray28"] and "(2 Conv2D, conv_id 0..1)" in lines["gray28"]
    shown = run_cli("models", "show", "dw-add")
    assert shown.returncode == 0
    assert re.search(r"^ +0  stem +Conv2D +8  40x48", shown.stdout, re.M)
    assert re.search(r"^ +depthwise +DepthwiseConv2D +8  40x48", shown.stdout, re.M)
    assert re.search(r"^ +sum +Add +8  40x48", shown.stdout, re.M)
    assert re.search(r"^ +logits  dense\w* Dense \(pre-activation\): 4 classes", shown.stdout, re.M)
    described = json.loads(run_cli("models", "show", "fn-cnn", "--json").stdout)
    assert described["class_names"] == ["ant", "bee", "cat", "dog", "eel"]
    assert described["sha256"] == registered["fn-cnn"] and described["preprocess"]["kind"] == "unit"


def test_registering_the_same_file_twice_queues_nothing(stack, run_cli, saved, registered):
    again = run_cli("models", "register", "fn-cnn", "--file", str(saved["fn-cnn"]))
    assert again.returncode == 0 and "already registered" in again.stderr
    assert again.stdout.split() == ["fn-cnn", registered["fn-cnn"]]


def test_the_same_file_cannot_be_served_two_ways_under_one_name(stack, run_cli, producer_api, saved, registered):
    for options, changed in ((["--preprocess", "inception"], "preprocess unit"), (["--class-names", "/dev/null"],
                                                                                   "other class names")):
        done = run_cli("models", "register", "gray28", "--file", str(saved["gray28"]), *options)
        assert done.returncode == 2
        assert done.stderr.strip() == f"error: request: this file is registered as gray28 with {changed}; register " \
                                      f"it under another name to serve it differently"
    assert producer_api.model("gray28").preprocess.kind == "unit"


def test_a_changed_model_gets_new_job_ids_and_old_results_stay(stack, producer_api, run_cli, saved, registered):
    job = {"model": "fn-cnn", "layer": "features", "feature": 3, "iterations": 4, "seed": 2}
    before = producer_api.enqueue(job).wait(timeout=240)
    changed = run_cli("models", "register", "fn-cnn", "--file", str(saved["fn-cnn-retrained"]))
    assert changed.returncode == 0, changed.stderr
    version = changed.stdout.split()[1]
    assert version != registered["fn-cnn"]
    after = producer_api.enqueue(job).wait(timeout=240)
    assert after.job_id != before.job_id and after.cached is False
    assert (stack.results_dir / before.meta).is_file()  # the old version's result is left alone
    # A job pinned to the old version is the old job, and a new one pinned to it runs on the old file.
    pinned = normalize({**job, "model_sha256": registered["fn-cnn"]}, models=producer_api.registry)
    assert pinned.job_id == before.job_id
    old = producer_api.enqueue({**job, "seed": 3, "model_sha256": registered["fn-cnn"]}).wait(timeout=240)
    new = producer_api.enqueue({**job, "seed": 3}).wait(timeout=240)
    old_meta, new_meta = (json.loads((stack.results_dir / r.meta).read_text()) for r in (old, new))
    assert (old_meta["model_sha256"], new_meta["model_sha256"]) == (registered["fn-cnn"], version)
    assert old_meta["loss"][0] != new_meta["loss"][0]  # other weights, another climb from the same start
    restored = run_cli("models", "register", "fn-cnn", "--file", str(saved["fn-cnn"]))
    assert restored.returncode == 0 and restored.stdout.split()[1] == registered["fn-cnn"]


def test_jobs_are_validated_against_the_description_without_a_worker(producer_api, registered):
    with pytest.raises(JobError, match=r"^feature: must be a channel in 0..15 for conv_id 1 \(features\) of fn-cnn"):
        producer_api.enqueue({"model": "fn-cnn", "conv_id": 1, "feature": 16})
    with pytest.raises(JobError, match=r"^class: \"bat\": no class has that name in fn-cnn; near matches: .*cat"):
        producer_api.enqueue({"model": "fn-cnn", "class": "bat"})
    with pytest.raises(JobError, match=r"^layer: unknown layer \"classes\" for gray28"):
        producer_api.enqueue({"model": "gray28", "layer": "classes"})  # a Dense output is not (h, w, channels)


def _bad_files(folder) -> dict:
    text = folder / "notes.keras"
    text.write_text("not a model")
    truncated = folder / "truncated.keras"
    _functional().save(folder / "whole.keras")
    whole = (folder / "whole.keras").read_bytes()
    truncated.write_bytes(whole[: len(whole) // 2])
    pixels = keras.Input((16, 16, 3))
    with_lambda = keras.Model(pixels, keras.layers.Conv2D(2, 3)(keras.layers.Lambda(lambda t: t * 2.0, name="times_two")(pixels)))
    with_lambda.save(folder / "lambda.keras")
    vector = keras.Input((10,))
    keras.Model(vector, keras.layers.Dense(3)(vector)).save(folder / "flat.keras")
    image = keras.Input((8, 8, 1))
    keras.Model(image, keras.layers.Dense(3)(keras.layers.Flatten()(image))).save(folder / "no-maps.keras")
    keras.Model(pixels, Doubling(name="doubler")(pixels)).save(folder / "custom.keras")
    return {name: folder / f"{name}.keras" for name in ("lambda", "flat", "no-maps", "custom", "whole")} | \
        {"text": text, "truncated": truncated}


class Doubling(keras.layers.Layer):
    """A user's own layer class: its code is not Keras', so a worker must not run it."""

    def call(self, inputs):
        return inputs * 2.0


REFUSALS = [
    ("text", "file: is not a model file featurevis reads (a .keras archive, a Keras 2 .h5 file or an .onnx file)"),
    ("truncated", "file: is not a valid .keras file"),
    ("lambda", "file: layer times_two: a Lambda layer runs code named by the file (whatever its function)"),
    ("flat", "file: the model must take one image input, (batch, height, width, channels)"),
    ("no-maps", "file: no layer outputs (batch, height, width, channels); nothing to visualize"),
    ("custom", "file: layer doubler: Doubling is not one of the built-in Keras layers this service takes"),
]


@pytest.mark.parametrize("kind,message", REFUSALS)
def test_bad_model_files_are_refused_in_one_line_and_leave_no_trace(stack, run_cli, tmp_path, kind, message):
    path = _bad_files(tmp_path)[kind]
    name = f"bad-{kind}"
    done = run_cli("models", "register", name, "--file", str(path))
    assert done.returncode == 2
    assert done.stderr.strip().startswith(f"error: {message}") and len(done.stderr.strip().splitlines()) == 1
    assert not (stack.results_dir / "models" / name).exists()  # the upload was taken back
    assert run_cli("enqueue", "--model", name).returncode == 2


def test_refusals_before_anything_is_uploaded(stack, run_cli, tmp_path):
    whole = _bad_files(tmp_path)["whole"]
    cases = [
        (["Not_A_Name", "--file", str(whole)], "error: name: must match [a-z0-9_-]{1,64}"),
        (["x" * 65, "--file", str(whole)], "error: name: must match"),
        (["shapes_cnn", "--file", str(whole)], "error: name: shapes_cnn is a built-in model"),
        (["big", "--file", str(whole)], "error: file: "),
    ]
    for args, message in cases:
        limit = {"FEATUREVIS_MODEL_MAX_BYTES": "1000"} if args[0] == "big" else {}
        done = run_cli("models", "register", *args, env=limit)
        assert done.returncode == 2 and done.stderr.startswith(message), (args[0], done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1
    assert "over the limit of 1000 (FEATUREVIS_MODEL_MAX_BYTES)" in done.stderr
    assert not any((stack.results_dir / "models" / name).exists() for name in ("Not_A_Name", "x" * 65, "big"))
    current = json.loads((stack.results_dir / "models" / "shapes_cnn" / "current.json").read_text())
    assert current["sha256"] == registry.builtin_description("shapes_cnn")["sha256"]  # the built-in stays


def test_keras_applications_by_name(stack, run_cli, producer_api):
    done = run_cli("models", "register", "mobilenet", "--keras-app", "MobileNetV2", "--weights", "none")
    assert done.returncode == 0, done.stderr
    info = producer_api.model("mobilenet")
    assert info.input_shape == (224, 224, 3) and info.classes == 1000 and info.class_names[278] == "kit fox"
    assert info.preprocess.kind == "inception" and info.untrained
    assert {"DepthwiseConv2D", "Conv2D", "Add", "ReLU"} <= {layer.type for layer in info.layers}
    missing = run_cli("models", "register", "resnet", "--keras-app", "ResNet50")
    assert missing.returncode == 2
    assert "resnet50_weights_tf_dim_ordering_tf_kernels.h5 is not in" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1
    unknown = run_cli("models", "register", "nonesuch", "--keras-app", "NoSuchNet", "--weights", "none")
    assert unknown.returncode == 2 and "error: keras_app: 'NoSuchNet' is not a Keras Application" in unknown.stderr
    assert not (stack.results_dir / "models" / "resnet").exists() and not (stack.results_dir / "models" / "nonesuch").exists()


@pytest.mark.parametrize("kwargs,message", [
    ({"name": "Bad Name", "sha256": "0" * 64, "source": {"file": "model.keras"}}, "name: must match"),
    ({"name": "ghost", "sha256": "0" * 64, "source": {"file": "model.keras"}}, "file: nothing uploaded at models/ghost/"),
    ({"name": "ghost", "sha256": "xyz", "source": {"file": "model.keras"}}, "sha256: must be the model file's sha256"),
    ({"name": "ghost", "source": {"file": "/etc/passwd"}}, "source: must be"),
    ({"name": "ghost", "source": {"keras_app": "NoSuchNet", "weights": "none"}}, "keras_app: 'NoSuchNet' is not"),
    ({"name": "ghost", "source": {"keras_app": "ResNet50", "weights": "imagenet"}}, "weights: model ghost: weights file"),
    ({"name": "ghost", "source": {"keras_app": "MobileNetV2", "weights": "some"}}, "weights: must be one of imagenet, none"),
    ({"name": "ghost", "colour": 1}, "request: must be an object with fields"),
])
def test_refusals_by_name_through_celery(stack, producer_api, kwargs, message):
    result = producer_api.app.send_task("featurevis.register_model", kwargs=kwargs)
    with pytest.raises(ModelRefused) as caught:
        result.get(timeout=240)
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)
    assert not (stack.results_dir / "models" / "ghost").exists()


def test_evicted_models_are_rebuilt_once_not_per_job(stack):
    from featurevis.factory import ModelFactory

    models = registry.Registry(ResultStore(stack.results_dir))
    small = ModelFactory(model_cache_mb=0.35, models=models)  # holds shapes_cnn (0.25 MB), not shapes_cnn_b too
    for name in ("shapes_cnn", "shapes_cnn", "shapes_cnn_b", "shapes_cnn_b", "shapes_cnn"):
        small.acquire(name, 0)
    assert small.builds["model"] == 3
    assert [name for name, _ in small.cached_models()] == ["shapes_cnn"]
    assert {step[0] for step in small.cached_steps()} == {"shapes_cnn"}  # the evicted model's steps left with it


def test_a_model_without_a_dense_layer_serves_its_layers_and_has_no_classes(stack, run_cli, producer_api, tmp_path):
    pixels = keras.Input((20, 20, 3))
    keras.Model(pixels, keras.layers.Conv2D(4, 3, name="maps")(pixels)).save(tmp_path / "maps.keras")
    assert run_cli("models", "register", "maps-only", "--file", str(tmp_path / "maps.keras")).returncode == 0
    with pytest.raises(JobError, match=r"^layer: required for maps-only: it has no class logits \(its output is "
                                       r"\(None, 18, 18, 4\), not a vector of class scores\)$"):
        producer_api.enqueue({"model": "maps-only"})
    result = producer_api.enqueue({"model": "maps-only", "layer": "maps", "feature": 3, "iterations": 5,
                                   "method": "robust", "seed": 1}).wait(timeout=240)
    meta = json.loads((stack.results_dir / result.meta).read_text())
    assert meta["predictions"] == [] and meta["conv_id"] == 0 and "robustness" in meta["quality"]
