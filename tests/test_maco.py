"""MACO on a tiny network: a fixed magnitude spectrum, a climbing objective, per-image seeds, one trace, the
transparency map; and a maco job through a real worker, which writes image.png, alpha.png and meta.json."""
import io
import json
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from featurevis import contract, datasets
from featurevis.optvis import maco, objectives, param, render
from tests.test_robust import CHANNELS, SHAPE, one_hot_rows, preprocess, tiny  # noqa: F401 (tiny: a fixture)


@pytest.fixture(scope="module")
def channel_step(tiny):
    return maco.compile_step(tiny[0], preprocess, objectives.weighted_channels, SHAPE)


def decorrelated_spectrum(images: np.ndarray) -> np.ndarray:
    """|rfft2| of each decorrelated plane of 0..255 images, (batch, channels, h, w//2+1): RGB's colour mixing undone."""
    unmixing = np.linalg.inv(param._COLOR_CORRELATION.astype(np.float64)) if images.shape[-1] == 3 \
        else np.eye(images.shape[-1])
    planes = np.einsum("bhwd,cd->bchw", images.astype(np.float64), unmixing)
    return np.abs(np.fft.rfft2(planes))


def assert_fixed_magnitude(images: np.ndarray, magnitude: np.ndarray) -> None:
    """Every bin but DC (which min-max normalization sets) is the magnitude times one factor per image."""
    bins = magnitude > 0
    ratios = decorrelated_spectrum(images)[:, bins] / magnitude[bins]
    spread = (ratios.max(axis=1) - ratios.min(axis=1)) / ratios.mean(axis=1)
    assert (spread < 1e-3).all(), spread  # float32 pixels: about 1e-5


def test_the_magnitude_spectrum_stays_fixed_while_the_phase_moves(channel_step):
    """At every step the picture's spectrum is the fixed magnitude times one contrast factor per image:
    at the start, after 1 step and after 15."""
    weights, seeds = one_hot_rows([3, 5], CHANNELS), [4, 5]
    pictures = [render.run(channel_step, seeds, weights, iterations).images for iterations in (1, 15)]
    pictures.insert(0, channel_step.pixels(channel_step.start(seeds)).numpy())
    for images in pictures:
        assert_fixed_magnitude(images, maco.one_over_f(SHAPE).astype(np.float64))
    assert np.abs(pictures[2] - pictures[0]).mean() > 5.0  # the phase did move: the picture changed


@pytest.mark.parametrize("shape", [(31, 45, 3), (40, 33, 3), (32, 32, 1), (17, 16, 4)])
def test_odd_sizes_and_other_channel_counts_keep_their_magnitude_too(shape):
    """Odd heights and widths (no Nyquist column), grayscale and four channels (no colour mixing)."""
    magnitude = maco.one_over_f(shape)
    images = maco.phase_to_pixels(tf.constant(maco.phase_init(shape, [1, 2])), tf.constant(magnitude), shape)
    assert images.shape == (2, *shape)
    assert_fixed_magnitude(images.numpy(), magnitude.astype(np.float64))


@pytest.mark.parametrize("objective, target", [(objectives.weighted_channels, 0), (objectives.weighted_logits, 1)])
def test_maco_climbs_its_objective(tiny, objective, target):
    network = tiny[target]
    step = maco.compile_step(network, preprocess, objective, SHAPE)
    weights = one_hot_rows([3], network.output.shape[-1])
    ascent = render.run(step, [5], weights, 20)
    score = lambda images: float(objective(network(preprocess(images)), weights)[0])
    start = score(step.pixels(step.start([5])))
    losses = [float(stats.loss[0]) for stats in ascent.history]
    assert score(ascent.images) > start + 0.05 and np.mean(losses[-5:]) > np.mean(losses[:5])
    assert ascent.images.shape == (1, *SHAPE) and 0.0 <= ascent.images.min() and ascent.images.max() <= 255.0


def test_batching_never_changes_a_maco_image_or_its_map(channel_step):
    weights = one_hot_rows([2, 6], CHANNELS)
    alone = render.run(channel_step, [9], weights[1:], 3)
    batched = render.run(channel_step, [8, 9], weights, 3)
    np.testing.assert_allclose(batched.images[1], alone.images[0], atol=0.05)
    np.testing.assert_allclose(batched.extras["alpha"][1], alone.extras["alpha"][0], atol=1e-3)
    assert np.abs(batched.images[0] - batched.images[1]).mean() > 1.0  # another seed, another picture


def test_one_compiled_maco_step_serves_any_weights_and_batch(channel_step):
    render.run(channel_step, [1], one_hot_rows([3], CHANNELS), 2)
    mixed = np.random.default_rng(4).normal(size=(3, CHANNELS)).astype(np.float32)
    render.run(channel_step, [1, 2, 3], mixed, 2)
    assert channel_step.traces == 1
    assert channel_step.pixels.experimental_get_tracing_count() == 1
    assert channel_step.extras.experimental_get_tracing_count() == 1


def test_the_alpha_map_is_the_pictures_size_and_lights_up_where_the_objective_looks():
    """A channel that sees only the top half: the map is bright there and dark at the bottom.

    The transforms move the picture by a few pixels (and rotate its corners by up to ~8), so the
    map's edge is soft; the bottom 24 rows, 8 pixels away, are out of the channel's reach. (Half,
    not a quarter: a map transposed by mistake would pass a test on a square corner.)
    """
    keras.utils.set_random_seed(1)
    pixels = keras.Input(SHAPE)
    top = keras.layers.Cropping2D(((0, 32), (0, 0)))(pixels)
    network = keras.Model(pixels, keras.layers.Conv2D(4, 3)(top))
    step = maco.compile_step(network, preprocess, objectives.weighted_channels, SHAPE)
    looked = render.run(step, [3], one_hot_rows([1], 4), 10).extras["alpha"]
    assert looked.shape == (1, *SHAPE[:2]) and looked.max() == pytest.approx(1.0)
    seen, unseen = looked[0, :32].mean(), looked[0, 40:].mean()
    assert seen > 0.1 and unseen < 0.01 * seen  # here about 0.9 and 0


def test_a_maco_job_writes_its_picture_its_alpha_map_and_meta(stack, producer_api):
    fields = {"model": "shapes_cnn", "conv_id": 2, "feature": 5, "method": "maco", "iterations": 4, "seed": 1}
    result = producer_api.enqueue(fields).wait(timeout=300)
    results = Path(stack.results_dir)
    assert result.alpha == f"{result.key}/alpha.png"
    picture, alpha = (Image.open(io.BytesIO((results / name).read_bytes())) for name in (result.image, result.alpha))
    assert (picture.mode, picture.size, alpha.mode, alpha.size) == ("RGB", (64, 64), "L", (64, 64))
    meta = json.loads((results / result.meta).read_text())
    assert meta["method"] == "maco" and len(meta["loss"]) == 4 and meta["factory"]["step_traces"] == 1
    # By default the picture keeps 1/f; with `magnitude: dataset`, the mean spectrum of shapes_cnn's dataset.
    one_over_f = maco.one_over_f((64, 64, 3)).astype(np.float64)
    dataset_spectrum = param.mean_magnitude(datasets.drawn("shapes").images).astype(np.float64)
    assert_fixed_magnitude(np.load(results / result.array)[None], one_over_f)
    from_dataset = producer_api.enqueue({**fields, "magnitude": "dataset"}).wait(timeout=300)
    assert json.loads((results / from_dataset.meta).read_text())["spec"]["magnitude"] == \
        datasets.drawn_fingerprint("shapes")
    assert_fixed_magnitude(np.load(results / from_dataset.array)[None], dataset_spectrum)
    with pytest.raises(AssertionError):
        assert_fixed_magnitude(np.load(results / from_dataset.array)[None], one_over_f)
    transparent = producer_api.enqueue({**fields, "method": "robust", "alpha": True}).wait(timeout=300)
    opacity = Image.open(io.BytesIO((results / transparent.alpha).read_bytes()))
    assert (opacity.mode, opacity.size) == ("L", (64, 64)) and transparent.job_id != result.job_id
    assert np.load(results / transparent.array).shape == (64, 64, 3)  # image.npy keeps the colours only


def test_a_maco_job_names_the_dataset_its_magnitude_comes_from_and_refuses_one_it_cannot_have():
    """1/f by default (the ids maco jobs had); `dataset` puts the dataset's fingerprint in the spec and the id
    (a new dataset, new pictures) and travels as "dataset"; refusals name the field, in one line."""
    job = {"model": "shapes_cnn", "conv_id": 2, "feature": 5, "method": "maco", "iterations": 4, "seed": 1}
    plain, spectrum = contract.normalize(job), contract.normalize({**job, "magnitude": "dataset"})
    assert plain.magnitude is None and contract.normalize({**job, "magnitude": "1/f"}) == plain
    assert spectrum.magnitude == datasets.drawn_fingerprint("shapes") and spectrum.job_id != plain.job_id
    assert spectrum.fields()["magnitude"] == "dataset" and contract.normalize(spectrum.fields()) == spectrum
    assert (plain.step, spectrum.step) == ("maco", f"maco+dataset-{datasets.drawn_fingerprint('shapes')}")
    for fields, message in [
        ({**job, "model": "inception_v3_untrained", "magnitude": "dataset"},
         "magnitude: 'dataset' needs a model with a dataset; inception_v3_untrained has none (`python -m producer "
         "models dataset inception_v3_untrained PATH`), or use 1/f"),
        ({**job, "method": "robust", "magnitude": "1/f"},
         "magnitude: only method maco keeps a fixed magnitude spectrum; this job's is robust"),
        ({**job, "magnitude": "imagenet"}, f"magnitude: must be {contract.FIELD_RANGES['magnitude']}, got \"imagenet\""),
    ]:
        with pytest.raises(contract.JobError) as refused:
            contract.normalize(fields)
        assert str(refused.value) == message


def test_a_dataset_replaced_after_a_job_was_validated_fails_it_in_one_line_not_with_the_new_spectrum(tmp_path):
    """The job id names the dataset it was validated with; a worker must not render it with another."""
    from featurevis import registry
    from featurevis.factory import ModelFactory
    from featurevis.store import ResultStore

    models = registry.Registry(ResultStore(tmp_path / "results"))
    info = models.get("inception_v3_untrained")
    for colour in ((255, 0, 0), (0, 0, 255)):
        folder = tmp_path / f"pictures-{colour}"
        folder.mkdir()
        Image.new("RGB", (40, 30), colour).save(folder / "only.png")
        datasets.put(models, info, folder)
        if colour == (255, 0, 0):
            validated = datasets.fingerprint(models, info)
    factory = ModelFactory(models=models)
    assert factory.dataset_magnitude(info, datasets.fingerprint(models, info)).shape == (3, 299, 150)
    with pytest.raises(ValueError) as refused:
        factory.dataset_magnitude(info, validated)
    assert str(refused.value) == (f"magnitude: inception_v3_untrained's dataset changed since this job was validated "
                                  f"({validated} -> {datasets.fingerprint(models, info)}); submit it again")
