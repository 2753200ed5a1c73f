"""Objective kinds in the contract, the upload path, the schema and the CLI: what each accepts, and one line for the rest."""
from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from PIL import Image

from featurevis import contract, images
from featurevis.contract import JobError, normalize
from featurevis.store import ResultStore
from producer import Producer
from producer.cli import _objective

SCHEMA = json.loads((Path(__file__).resolve().parent.parent / "schema" / "featurevis.optimize.schema.json").read_text())
PLAIN_ID = "2795febb28d1a58568989cba"  # {"conv_id": 5, "feature": 2, "seed": 1}: tests/test_contract.py's pin
CONV5 = {"conv_id": 5, "seed": 1}  # inception_v3's conv2d_5: 35 x 35 x 64


def png(size=(20, 30), mode="RGB") -> bytes:
    buffer = io.BytesIO()
    pixels = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3 if mode == "RGB" else 1), np.uint8)
    Image.fromarray(pixels.squeeze()).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def producer(tmp_path_factory):
    """A producer on a store of its own (no Redis needed: uploads and validation only touch the store)."""
    return Producer(results_dir=tmp_path_factory.mktemp("results"))


@pytest.fixture(scope="module")
def uploaded(producer, tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("upload") / "stripes.png"
    path.write_bytes(png())
    return producer.upload_image(path)


def job(producer, targets, **fields):
    return normalize({**CONV5, **fields, "targets": targets}, models=producer.registry)


def test_channel_and_class_terms_are_todays_jobs_with_todays_ids(producer):
    assert job(producer, [{"objective": "channel", "feature": 2}]).job_id == PLAIN_ID
    by_class = normalize({"seed": 1, "targets": [{"objective": "class", "feature": 278}]}, models=producer.registry)
    assert by_class == normalize({"seed": 1, "feature": 278}, models=producer.registry)
    mixed = job(producer, [{"feature": 2}, {"objective": "channel", "feature": 7, "weight": -0.5}])
    assert mixed.terms is None and mixed.targets == ((2, 1.0), (7, -0.5))


def test_each_kind_normalizes_round_trips_and_has_its_own_id_and_folder(producer, uploaded):
    kinds = {
        "neuron": [{"objective": "neuron", "feature": 3}],
        "direction": [{"objective": "direction", "vector": [1] * 32 + [-1.0] * 32}],
        "layer": [{"objective": "layer"}],
        "caricature": [{"objective": "caricature", "image": uploaded}],
        "mix": [{"feature": 2}, {"objective": "layer", "weight": -0.5}, {"objective": "neuron", "feature": 9, "x": 0}],
    }
    specs = {name: job(producer, targets) for name, targets in kinds.items()}
    assert len({spec.job_id for spec in specs.values()} | {PLAIN_ID}) == len(kinds) + 1
    for spec in specs.values():
        assert normalize(spec.fields(), models=producer.registry) == spec
        assert "terms" not in spec.fields() and "feature" not in spec.fields()
    assert specs["neuron"].terms[0].wire() == {"objective": "neuron", "feature": 3, "x": 17, "y": 17, "weight": 1.0}
    assert job(producer, [{"objective": "neuron", "feature": 3, "x": 17, "y": 17}]) == specs["neuron"]  # the centre
    assert (specs["neuron"].feature, specs["neuron"].weights) == (3, {})
    assert specs["mix"].key == f"inception_v3/conv2d_5/objectives_0002_layer_neuron0009/{specs['mix'].job_id}"
    assert specs["mix"].weights == {2: 1.0} and [term.objective for term in specs["mix"].terms] == ["layer", "neuron"]
    assert specs["caricature"].key.split("/")[2] == "objectives_caricature"
    diverse = job(producer, kinds["layer"], method="robust", images=2)
    assert diverse.images == 2 and diverse.terms == specs["layer"].terms


BAD = [
    ([{"objective": "neuron"}], "a neuron term needs feature (its parts: feature, x, y)"),
    ([{"objective": "neuron", "feature": 64}], "feature: must be a channel in 0..63"),
    ([{"objective": "neuron", "feature": 1, "x": 35}], "targets: a neuron's x must be in 0..34 and y in 0..34"),
    ([{"objective": "neuron", "feature": 1, "y": 40}], "got x 17, y 40"),
    ([{"objective": "neuron", "feature": 1, "x": -1}], "targets: must be null or a list of 1..16 objects"),
    ([{"objective": "neuron", "feature": 1, "vector": [1.0]}], "a neuron term has no vector"),
    ([{"objective": "direction", "vector": [1.0] * 63}], "one number per channel, 64 for layer conv2d_5"),
    ([{"objective": "direction", "vector": [0.0] * 64}], "must not be all zeros"),
    ([{"objective": "direction", "vector": [1.0] * 63 + [101.0]}], "weight: number in -100..100"),
    ([{"objective": "direction"}], "a direction term needs vector"),
    ([{"objective": "layer", "feature": 2}], "a layer term has no feature (its parts: none but weight)"),
    ([{"objective": "layer", "weight": 0.0}], "nonzero weight"),
    ([{"objective": "layer"}, {"objective": "layer", "weight": 2.0}], "the same term twice"),
    ([{"objective": "layer", "weight": 101}], "weight: number in -100..100"),
    ([{"objective": "caricature"}], "a caricature term needs image"),
    ([{"objective": "caricature", "image": "../etc/passwd"}], "targets: must be null or a list"),
    ([{"objective": "caricature", "image": "uploads/" + "0" * 64 + ".png"}], "is not in the store; upload it first"),
    ([{"objective": "class", "feature": 3}], "a class term is a logit; the job's layer is conv2d_5"),
    ([{"objective": "dream"}], "objective: channel|class|neuron|direction|layer|caricature"),
    ([{"objective": "channel"}], "a channel term needs feature"),
]


@pytest.mark.parametrize("targets, message", BAD)
def test_bad_terms_get_one_line_naming_the_part_and_its_range(producer, targets, message):
    with pytest.raises(JobError) as caught:
        job(producer, targets)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value) and len(str(caught.value)) < 300


@pytest.mark.parametrize("kind", ["neuron", "direction", "layer", "caricature"])
def test_spatial_kinds_are_refused_at_the_logits(producer, uploaded, kind):
    parts = {"neuron": {"feature": 1}, "direction": {"vector": [1.0]}, "layer": {}, "caricature": {"image": uploaded}}
    with pytest.raises(JobError, match=f"^targets: a {kind} term needs a layer with positions"):
        normalize({"seed": 1, "targets": [{"objective": kind, **parts[kind]}]}, models=producer.registry)


def test_at_most_one_caricature(producer, uploaded, tmp_path):
    other = tmp_path / "other.png"
    other.write_bytes(png((8, 8)))
    twice = [{"objective": "caricature", "image": uploaded}, {"objective": "caricature", "image": producer.upload_image(other)}]
    with pytest.raises(JobError, match="at most one caricature"):
        job(producer, twice)


def test_uploads_are_content_addressed_decoded_first_and_refused_in_one_line(producer, uploaded, tmp_path):
    again = tmp_path / "same.png"
    again.write_bytes(png())
    assert producer.upload_image(again) == uploaded and uploaded.startswith("uploads/") and uploaded.endswith(".png")
    assert ResultStore(producer.registry.store.root).read_bytes(uploaded, "") == png()
    gray = tmp_path / "gray.npy"
    np.save(gray, np.full((5, 7), 200.0))
    assert producer.upload_image(gray).endswith(".npy")
    bad = {"broken.png": b"not a png", "photo.gif": png(), "fake.jpg": png(), "big.npy": None, "pickled.npy": None,
           "missing.png": None}
    messages = {"broken.png": "image: cannot be read as PNG", "photo.gif": "image: must be a .png, .jpg/.jpeg or .npy",
                "fake.jpg": "image: is not a JPG file", "big.npy": "image: must hold finite pixel values in 0..255",
                "pickled.npy": "image: cannot be read as NPY", "missing.png": "is not a file"}
    for name, data in bad.items():
        path = tmp_path / name
        if name == "big.npy":
            np.save(path, np.full((4, 4, 3), 300.0))
        elif name == "pickled.npy":
            np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
        elif data is not None:
            path.write_bytes(data)
        with pytest.raises(JobError) as caught:
            producer.upload_image(path)
        assert messages[name] in str(caught.value) and "\n" not in str(caught.value), name


def test_an_upload_is_resized_to_the_models_input_and_its_channels():
    pixels = images.decode_upload(png((20, 30)), "png")
    assert pixels.shape == (30, 20, 3)
    assert images.fit(pixels, (64, 64, 3)).shape == (64, 64, 3)
    assert images.fit(pixels, (28, 28, 1)).shape == (28, 28, 1)
    flat = np.full((10, 10, 1), 77.0, np.float32)
    np.testing.assert_allclose(images.fit(flat, (32, 32, 3)), 77.0, atol=1e-3)
    with pytest.raises(ValueError, match="has 4 channels; the model takes 3"):
        images.fit(np.zeros((4, 4, 4), np.float32), (8, 8, 3))


def test_the_cli_flags_become_targets(producer, tmp_path):
    vector = tmp_path / "v.json"
    vector.write_text(json.dumps([0.5] * 64))
    picture = tmp_path / "p.png"
    picture.write_bytes(png())
    assert _objective(producer, {"objective": "neuron", "feature": 3, "x": 5}) == \
        {"targets": [{"objective": "neuron", "feature": 3, "x": 5}]}
    assert _objective(producer, {"x": 1, "y": 2, "feature": 4}) == \
        {"targets": [{"objective": "neuron", "feature": 4, "x": 1, "y": 2}]}
    assert _objective(producer, {"direction_file": str(vector), "weight": 1}) == \
        {"weight": 1, "targets": [{"objective": "direction", "vector": [0.5] * 64}]}
    key = _objective(producer, {"caricature": str(picture)})["targets"][0]["image"]
    assert producer.registry.store.exists(key)
    assert _objective(producer, {"targets": '[{"feature": 2}]', "objective": "layer"}) == \
        {"targets": [{"feature": 2}, {"objective": "layer"}]}
    assert _objective(producer, {"feature": 2}) == {"feature": 2}  # no objective flags: today's job
    with pytest.raises(JobError, match="^targets: --targets: not JSON"):
        _objective(producer, {"targets": "[{feature: 2}]"})
    with pytest.raises(JobError, match="^targets: --direction-file: cannot read"):
        _objective(producer, {"direction_file": str(tmp_path / "none.json")})


@pytest.mark.parametrize("targets, valid", [
    ([{"objective": "neuron", "feature": 3, "x": 1, "y": 2}], True),
    ([{"objective": "layer", "weight": -1}], True),
    ([{"objective": "direction", "vector": [1.0] * 64}], True),
    ([{"objective": "neuron", "feature": 3, "x": -1}], False),
    ([{"objective": "deep"}], False),
    ([{"objective": "caricature", "image": "/etc/passwd"}], False),
    ([{"objective": "layer", "colour": 1}], False),
])
def test_the_schema_and_the_contract_agree_on_objective_terms(producer, targets, valid):
    assert jsonschema.Draft202012Validator(SCHEMA).is_valid({**CONV5, "targets": targets}) is valid
    try:
        job(producer, targets)
        accepted = True
    except JobError:
        accepted = False
    assert accepted is valid


# Through the real stack: the CLI uploads and enqueues, a worker climbs, meta.json records the terms.

def test_a_neuron_and_a_caricature_job_through_the_cli(stack, run_cli, tmp_path):
    neuron = run_cli("enqueue", "--model", "shapes_cnn", "--layer", "conv3", "--objective", "neuron", "--feature", "5",
                     "--x", "3", "--iterations", "3", "--seed", "1", "--blur", "2", "--wait")
    assert neuron.returncode == 0, neuron.stderr
    meta = json.loads((Path(neuron.stdout.strip().splitlines()[-1]).parent / "meta.json").read_text())
    assert meta["spec"]["terms"] == [{"objective": "neuron", "weight": 1.0, "feature": 5, "x": 3, "y": 8,
                                      "vector": None, "image": None}]
    assert meta["key"].split("/")[2] == "objectives_neuron0005" and meta["feature"] == 5
    assert (meta["spec"]["blur"], meta["spec"]["tv"]) == (2.0, 0.0)
    assert meta["loss"][-1] > meta["loss"][0]
    picture = tmp_path / "user.png"
    picture.write_bytes(png((40, 50)))
    caricature = run_cli("enqueue", "--model", "shapes_cnn", "--layer", "conv3", "--caricature", str(picture),
                         "--iterations", "4", "--seed", "1", "--method", "robust", "--wait")
    assert caricature.returncode == 0, caricature.stderr
    meta = json.loads((Path(caricature.stdout.strip().splitlines()[-1]).parent / "meta.json").read_text())
    [term] = meta["spec"]["terms"]
    assert term["objective"] == "caricature" and (Path(stack.results_dir) / term["image"]).is_file()
    assert -1.0 <= meta["loss"][0] <= meta["loss"][-1] <= 1.0  # a cosine similarity, climbing


def test_a_bad_term_is_refused_by_the_cli_and_by_the_worker_in_one_line(stack, run_cli, producer_api):
    refused = run_cli("enqueue", "--model", "shapes_cnn", "--layer", "conv3", "--objective", "neuron", "--feature",
                      "5", "--x", "16")
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr == "error: targets: a neuron's x must be in 0..15 and y in 0..15 (the map of layer conv3 " \
                             "of shapes_cnn), got x 16, y 8\n"
    sent = producer_api.app.send_task("featurevis.optimize", kwargs={
        "model": "shapes_cnn", "targets": [{"objective": "layer"}], "seed": 1})
    with pytest.raises(Exception) as caught:
        sent.get(timeout=120)
    assert str(caught.value) == "targets: a layer term needs a layer with positions (give conv_id or layer); " \
                                "the job's layer is the logits"


@pytest.mark.parametrize("fields, message", [
    ({"tv": -1}, "^tv: must be a number in 0..1000"),
    ({"tv": "x"}, "^tv: must be a number in 0..1000"),
    ({"lp": 1001}, "^lp: must be a number in 0..1000"),
    ({"blur": float("nan")}, "^blur: must be a number in 0..1000"),
    ({"lp": 1.0, "lp_p": 0.5}, "^lp_p: must be null or a number in 1..10"),
    ({"lp": 1.0, "lp_p": 11}, "^lp_p: must be null or a number in 1..10"),
    ({"lp_p": 3}, "^lp_p: needs lp > 0"),
])
def test_bad_regularizers_get_one_line_naming_the_field_and_range(producer, fields, message):
    with pytest.raises(JobError, match=message):
        normalize({**CONV5, "feature": 2, **fields}, models=producer.registry)


def test_regularizers_are_off_by_default_and_enter_the_id_only_when_on(producer):
    plain = normalize({**CONV5, "feature": 2, "tv": 0, "blur": 0.0}, models=producer.registry)
    assert plain.job_id == PLAIN_ID and (plain.tv, plain.lp, plain.blur) == (0.0, 0.0, 0.0)
    assert not {"tv", "lp", "lp_p", "blur"} & set(plain.fields())
    regular = normalize({**CONV5, "feature": 2, "tv": 2, "lp": 1, "lp_p": 6}, models=producer.registry)
    assert regular.job_id != PLAIN_ID and normalize(regular.fields(), models=producer.registry) == regular
    assert regular.fields()["lp_p"] == 6.0
    assert normalize({**CONV5, "feature": 2, "lp": 1}, models=producer.registry).lp_p == contract.DEFAULT_LP_P
