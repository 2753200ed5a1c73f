"""The robust method's transparency channel (alpha: true) on a tiny network: what the network sees is the picture
over seeded noise, the opacity is a 0..1 map, and the variant is as reproducible and compiled-once as the rest."""
import numpy as np
import pytest
import tensorflow as tf

from featurevis.optvis import objectives, param, render, robust
from tests.test_robust import CHANNELS, SHAPE, one_hot_rows, preprocess, tiny  # noqa: F401 (tiny: a fixture)


@pytest.fixture(scope="module")
def steps(tiny):
    """(the alpha variant, the plain robust step) of one channel target."""
    return tuple(robust.compile_step(tiny[0], preprocess, objectives.weighted_channels, SHAPE, alpha=alpha)
                 for alpha in (True, False))


def with_opacity(colours: np.ndarray, level: float) -> robust.RobustState:
    """A state of the alpha variant: these colour spectra, and an opacity plane that is flat at sigmoid(level)."""
    plane = np.zeros((len(colours), 1, *colours.shape[2:]), np.float32)
    plane[:, 0, 0, 0, 0] = 4.0 * level  # the DC term alone: irfft2d of it, over lucid's /4, is `level` everywhere
    return robust.RobustState.start(np.concatenate([colours, plane], axis=1))


def first_loss(step, state, weights, seeds):
    arguments = (tf.constant(weights), tf.constant(seeds, tf.int64), tf.constant(0.0))
    return step.advance(state, *arguments)[1].loss.numpy()


def test_an_opaque_picture_is_seen_as_the_plain_one_and_a_transparent_one_as_noise(steps):
    transparent_step, plain_step = steps
    weights, seeds = one_hot_rows([3, 3], CHANNELS), [5, 6]
    colours = param.fft_spectrum_init(SHAPE, seeds)
    plain = first_loss(plain_step, robust.RobustState.start(colours), weights, seeds)
    opaque = first_loss(transparent_step, with_opacity(colours, 30.0), weights, seeds)
    # Opaque: the same view as without alpha; the loss also pays OPACITY_COST x |objective| x mean opacity (1).
    np.testing.assert_allclose(opaque, plain - robust.OPACITY_COST * np.abs(plain), rtol=1e-4, atol=1e-7)
    other_colours = param.fft_spectrum_init(SHAPE, [7, 8]) * 50
    clear = first_loss(transparent_step, with_opacity(colours, -30.0), weights, seeds)
    np.testing.assert_allclose(first_loss(transparent_step, with_opacity(other_colours, -30.0), weights, seeds),
                               clear, rtol=1e-4)  # transparent: the colours do not matter


def test_the_noise_behind_is_each_images_own_at_each_step():
    nothing = tf.zeros([3, *SHAPE])
    behind = lambda seeds, step: robust.over_noise(nothing[:len(seeds)], nothing[:len(seeds), ..., :1],
                                                    tf.constant(seeds, tf.int64), tf.constant(step, tf.int64)).numpy()
    noise = behind([1, 2, 1], 0)
    assert 0.0 <= noise.min() and noise.max() <= 255.0 and abs(noise.mean() - 127.5) < 5
    np.testing.assert_array_equal(noise[2], noise[0])  # same seed, same step: same noise
    np.testing.assert_array_equal(behind([2], 0)[0], noise[1])  # batching changes none
    assert np.abs(noise[1] - noise[0]).mean() > 50 and np.abs(behind([1], 1)[0] - noise[0]).mean() > 50


def test_a_transparent_picture_climbs_and_its_opacity_is_a_map_in_0_1(tiny, steps):
    ascent = render.run(steps[0], [5], one_hot_rows([3], CHANNELS), 20)
    opacity = ascent.extras["alpha"]
    assert ascent.images.shape == (1, *SHAPE) and opacity.shape == (1, *SHAPE[:2])
    assert 0.0 <= opacity.min() and opacity.max() <= 1.0 and opacity.std() > 0.01
    losses = [float(stats.loss[0]) for stats in ascent.history]
    assert np.mean(losses[-5:]) > np.mean(losses[:5])


def test_a_transparent_picture_starts_from_the_plain_jobs_colours(steps):
    transparent_step, plain_step = steps
    np.testing.assert_array_equal(transparent_step.pixels(transparent_step.start([7])),
                                  plain_step.pixels(plain_step.start([7])))


def test_batching_never_changes_a_transparent_picture_and_one_step_serves_all(steps):
    step = steps[0]
    weights = one_hot_rows([2, 6], CHANNELS)
    alone = render.run(step, [9], weights[1:], 3)
    batched = render.run(step, [8, 9], weights, 3)
    np.testing.assert_allclose(batched.images[1], alone.images[0], atol=0.05)
    np.testing.assert_allclose(batched.extras["alpha"][1], alone.extras["alpha"][0], atol=1e-4)
    assert step.traces == 1 and step.extras.experimental_get_tracing_count() == 1
