"""A job's start image (issue 14): the contract's refusals and ids, each method's start from the picture on
test_robust's small network, and a job through the CLI and a real worker that starts from an uploaded file."""
from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import tensorflow as tf

from featurevis import images
from featurevis.contract import JobError, normalize, normalize_sweep
from featurevis.optvis import gradient_ascent, maco, objectives, param, render, robust
from producer.cli import _start_image
from tests.test_maco import assert_fixed_magnitude
from tests.test_objectives import MAP, Term
from tests.test_objective_contract import CONV5, PLAIN_ID, SCHEMA, png, producer, uploaded  # noqa: F401 - fixtures
from tests.test_robust import CHANNELS, SHAPE, preprocess, tiny  # noqa: F401 - tiny is a fixture

MISSING = "uploads/" + "0" * 64 + ".png"


def plain(producer, **fields):
    return normalize({**CONV5, "feature": 2, **fields}, models=producer.registry)


# The contract.

def test_a_start_image_changes_the_id_only_when_given_and_round_trips(producer, uploaded):
    assert plain(producer).job_id == plain(producer, start_image=None).job_id == PLAIN_ID
    assert "start_image" not in plain(producer).fields()
    started = plain(producer, start_image=uploaded)
    assert started.job_id != PLAIN_ID and started.start_image == uploaded
    assert started.fields()["start_image"] == uploaded
    assert normalize(started.fields(), models=producer.registry) == started
    assert started.key.rsplit("/", 1)[0] == plain(producer).key.rsplit("/", 1)[0]  # the same folder, another id


def test_a_set_and_a_sweep_start_every_image_from_the_one_picture(producer, uploaded):
    diverse = plain(producer, start_image=uploaded, method="robust", images=3)
    assert (diverse.images, diverse.start_image, diverse.seeds) == (3, uploaded, [1, 2, 3])
    swept = normalize_sweep({**CONV5, "features": [1, 2], "start_image": uploaded}, models=producer.registry)
    assert [spec.start_image for spec in swept] == [uploaded, uploaded]


@pytest.mark.parametrize("value, message", [
    ("../etc/passwd", "must be null or an uploaded image's key uploads/<sha256>.<png|jpg|npy>"),
    ("uploads/" + "0" * 64 + ".gif", "must be null or an uploaded image's key"),
    ("uploads/" + "0" * 63 + ".png", "must be null or an uploaded image's key"),
    (5, "must be null or an uploaded image's key"),
    (["uploads/x.png"], "must be null or an uploaded image's key"),
    (True, "must be null or an uploaded image's key"),
    (MISSING, "start image uploads/0000000000000000... is not in the store; upload it first "
              "(`python -m producer enqueue --start-image FILE`, or Producer.upload_image)"),
])
def test_a_bad_start_image_gets_one_line_naming_it(producer, value, message):
    with pytest.raises(JobError) as caught:
        plain(producer, start_image=value)
    assert str(caught.value).startswith(f"start_image: {message}")
    assert "\n" not in str(caught.value) and len(str(caught.value)) < 300


@pytest.mark.parametrize("value, valid", [(None, True), ("uploaded", True), ("../etc/passwd", False), (5, False)])
def test_the_schema_and_the_contract_agree_on_start_image(producer, uploaded, value, valid):
    job = {**CONV5, "feature": 2, "start_image": uploaded if value == "uploaded" else value}
    assert jsonschema.Draft202012Validator(SCHEMA).is_valid(job) is valid
    try:
        normalize(job, models=producer.registry)
        accepted = True
    except JobError:
        accepted = False
    assert accepted is valid


def test_the_cli_uploads_the_start_image_and_names_it_in_refusals(producer, tmp_path):
    path = tmp_path / "photo.png"
    path.write_bytes(png((8, 8)))
    key = _start_image(producer, {"feature": 2, "start_image": str(path)})["start_image"]
    assert key.startswith("uploads/") and producer.registry.store.exists(key)
    assert _start_image(producer, {"feature": 2}) == {"feature": 2}
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(JobError, match="^start_image: cannot be read as PNG"):
        _start_image(producer, {"start_image": str(tmp_path / "broken.png")})


# Each method's start, on test_robust's small network.

def picture(seed: int = 0, shape=SHAPE) -> np.ndarray:
    """A photo-like start: smooth blobs of colour, with some pixels at 0 and 255 (where the logit is clipped)."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:shape[0], 0:shape[1]] / shape[0]
    blobs = [np.sin(rng.uniform(2, 9) * rows + rng.uniform(0, 6)) * np.cos(rng.uniform(2, 9) * cols)
             for _ in range(shape[2])]
    return np.clip(np.stack(blobs, axis=-1) * 150 + 128, 0, 255).astype(np.float32)


@pytest.fixture(scope="module")
def steps(tiny):
    network = tiny[0]
    return {"gradient_ascent": gradient_ascent.compile_step(network, preprocess, objectives.weighted_channels, SHAPE),
            "robust": robust.compile_step(network, preprocess, objectives.weighted_channels, SHAPE),
            "maco": maco.compile_step(network, preprocess, objectives.weighted_channels, SHAPE)}


def layer_terms(batch: int) -> objectives.Terms:
    """DeepDream's objective, the layer's mean square: what a start image is mostly for."""
    return objectives.build(np.zeros((batch, CHANNELS), np.float32), [[Term("layer")]] * batch, MAP, None)


def test_gradient_ascent_starts_from_the_picture_itself(tiny, steps):
    """Every seed's state is exactly the picture, and the first step's loss is the objective there."""
    step, start = steps["gradient_ascent"], picture()
    state = step.start([1, 2], start)
    np.testing.assert_array_equal(step.pixels(state).numpy(), np.stack([start, start]))
    ascent = render.run(step, [1, 2], layer_terms(2), 1, state=state)
    expected = (tiny[0](preprocess(tf.constant(start[None]))).numpy() ** 2).mean()
    np.testing.assert_allclose(ascent.history[0].loss, [expected, expected], rtol=1e-4)
    assert np.abs(ascent.images[0] - start).mean() < 2.0 < np.abs(ascent.images[0] - 128.0).mean()


@pytest.mark.parametrize("shape", [SHAPE, (31, 45, 3), (40, 33, 1), (17, 16, 4)])
def test_the_fft_parameterization_inverts_to_the_picture(shape):
    """pixels_to_fft then fft_to_pixels is the picture, clipped half a level from 0 and 255: odd sizes,
    grayscale and four channels (no colour mixing) too."""
    start = picture(3, shape)[None]
    back = param.fft_to_pixels(tf.constant(param.pixels_to_fft(start, shape)), shape).numpy()
    np.testing.assert_allclose(back, np.clip(start, param.PIXEL_MARGIN, 255 - param.PIXEL_MARGIN), atol=2e-3)
    assert (start == 0).any() and (start == 255).any()


@pytest.mark.parametrize("alpha", [False, True])
def test_robust_starts_from_the_pictures_colours_and_alpha_from_its_noise(tiny, alpha):
    """Within half a level of the picture for every seed; with alpha the opacity starts as it does without a
    picture, from the seed's noise (robust.start_spectrum says why)."""
    step = robust.compile_step(tiny[0], preprocess, objectives.weighted_channels, SHAPE, alpha=alpha)
    start = picture(1)
    state = step.start([4, 5], start)
    np.testing.assert_allclose(step.pixels(state).numpy(), np.stack([start, start]), atol=0.5 + 1e-3)
    if alpha:
        without = step.extras(step.start([4, 5]))["alpha"].numpy()
        np.testing.assert_allclose(step.extras(state)["alpha"].numpy(), without, atol=1e-6)


def test_a_robust_set_starts_as_one_picture_and_parts_through_its_seeds(steps):
    """A set from one start image: the same picture at first, different ones after a few steps (each
    image's transforms follow its own seed; the diversity term then pushes them apart)."""
    ascent = render.run(steps["robust"], [1, 2], layer_terms(2), 8, diversity=3.0,
                        state=steps["robust"].start([1, 2], picture(2)))
    assert np.abs(ascent.images[0] - ascent.images[1]).mean() > 2.0  # 8.6 here (5.2 with diversity 0)


def phase(pixels: np.ndarray) -> np.ndarray:
    """The angle of each decorrelated plane's rfft2, RGB's colour mixing undone (as test_maco's spectrum)."""
    unmixing = np.linalg.inv(param._COLOR_CORRELATION.astype(np.float64))
    return np.angle(np.fft.rfft2(np.einsum("bhwd,cd->bchw", pixels.astype(np.float64), unmixing)))


def test_maco_starts_with_the_pictures_phase_and_its_own_magnitude(steps):
    """Every frequency but the four self-conjugate ones (DC among them; their sign a real half-spectrum of
    fixed positive magnitude cannot hold) has the picture's phase; the magnitude is still 1/f."""
    step, start = steps["maco"], picture(4)
    pixels = step.pixels(step.start([6, 7], start)).numpy()
    assert_fixed_magnitude(pixels, maco.one_over_f(SHAPE).astype(np.float64))
    difference = np.abs(np.angle(np.exp(1j * (phase(pixels) - phase(start[None])))))
    kept = np.ones(difference.shape[2:], bool)
    kept[np.ix_([0, SHAPE[0] // 2], [0, SHAPE[1] // 2])] = False
    assert difference[:, :, kept].max() < 1e-3 and kept.sum() == SHAPE[0] * (SHAPE[1] // 2 + 1) - 4
    assert np.abs(pixels[0] - pixels[1]).max() < 1e-3  # the seeds chose nothing


# Through the CLI and a real worker.

def test_a_job_from_a_start_image_starts_there_and_is_another_job(stack, run_cli, tmp_path):
    """One step of gradient_ascent from an uploaded 50x40 picture stays within a few levels of it, resized as
    images.fit does; the same job without it is the tutorial's grey noise, under another id."""
    path = tmp_path / "photo.png"
    path.write_bytes(png((50, 40)))
    job = ("enqueue", "--model", "shapes_cnn", "--layer", "conv3", "--feature", "5", "--iterations", "1", "--seed", "1")
    started, noise = run_cli(*job, "--start-image", str(path), "--wait"), run_cli(*job, "--wait")
    assert started.returncode == 0 == noise.returncode, started.stderr + noise.stderr
    folder = {name: Path(run.stdout.strip().splitlines()[-1]).parent for name, run in
              (("started", started), ("noise", noise))}
    metas = {name: json.loads((where / "meta.json").read_text()) for name, where in folder.items()}
    assert metas["started"]["job_id"] != metas["noise"]["job_id"] and metas["noise"]["spec"]["start_image"] is None
    key = metas["started"]["spec"]["start_image"]
    assert (Path(stack.results_dir) / key).read_bytes() == png((50, 40))
    expected = images.fit(images.decode_upload(png((50, 40)), "png"), (64, 64, 3))
    pictures = {name: np.load(where / "image.npy") for name, where in folder.items()}
    assert np.abs(pictures["started"] - expected).mean() < 2.0 < 20.0 < np.abs(pictures["noise"] - expected).mean()


def test_a_start_image_the_model_cannot_take_fails_the_job_in_one_line(stack, producer_api, tmp_path):
    """Four channels for a three-channel model: the producer checks that the upload exists, the worker that it fits."""
    path = tmp_path / "rgba.npy"
    np.save(path, np.full((8, 8, 4), 100.0, np.float32))
    key = producer_api.upload_image(path, field="start_image")
    job = producer_api.enqueue({"model": "shapes_cnn", "layer": "conv3", "feature": 5, "iterations": 1, "seed": 1,
                                "start_image": key})
    with pytest.raises(Exception) as caught:
        job.wait(timeout=300)
    assert str(caught.value) == f"start_image: {key[:24]}...: has 4 channels; the model takes 3"
