"""lucid's robust method on a tiny network: FFT images, transforms, weighted objectives, diversity, the Adam step."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from featurevis.contract import COARSE_CYCLES, METHOD_DEFAULTS, SETTLE_AFTER
from featurevis.optvis import maco, objectives, param, render, robust, transform

SHAPE = (64, 64, 3)
CHANNELS, CLASSES = 16, 5
# The step's mechanics are tested at lucid's rate and moves (those transform.standard defaults to), whatever
# defaults `make quality-defaults` chooses for pictures; test_a_steps_rate_and_moves_are_its_methods_defaults_in_
# the_contract checks that a worker's step takes the contract's.
LUCID = {"learning_rate": 0.05, "settled_rate": None, "coarse_steps": None,
         "moves": transform.Moves.lucid(max(SHAPE), 1.0)}


def preprocess(pixels):
    return pixels / 127.5 - 1.0


@pytest.fixture(scope="module")
def tiny():
    """A small random CNN: the last conv layer (linear, as in InceptionV3) is the target, then logits."""
    keras.utils.set_random_seed(0)
    pixels = keras.Input(SHAPE)
    x = keras.layers.ReLU()(keras.layers.Conv2D(8, 3, strides=2)(pixels))
    target = keras.layers.Conv2D(CHANNELS, 3)(x)
    logits = keras.layers.Dense(CLASSES)(keras.layers.GlobalAveragePooling2D()(keras.layers.ReLU()(target)))
    return keras.Model(pixels, target), keras.Model(pixels, logits)


@pytest.fixture(scope="module")
def channel_step(tiny):
    return robust.compile_step(tiny[0], preprocess, objectives.weighted_channels, SHAPE, **LUCID)


def pixels_of(spectrum):
    return param.fft_to_pixels(tf.constant(spectrum), SHAPE).numpy()


def one_hot_rows(features, depth):
    return objectives.weights_matrix([{feature: 1.0} for feature in features], depth)


def test_fft_images_are_pixels_of_the_right_shape():
    spectrum = param.fft_spectrum_init(SHAPE, [1, 2])
    assert spectrum.shape == (2, 3, 64, 33, 2) and spectrum.std() == pytest.approx(0.01, rel=0.05)
    images = pixels_of(spectrum * 300)  # large enough to reach the sigmoid's ends
    assert images.shape == (2, *SHAPE)
    assert images.min() >= 0.0 and images.max() <= 255.0 and images.min() < 10 and images.max() > 245


def test_fft_images_are_deterministic_per_seed_and_batching_changes_none():
    alone = pixels_of(param.fft_spectrum_init(SHAPE, [7]))
    batched = pixels_of(param.fft_spectrum_init(SHAPE, [3, 7]))
    np.testing.assert_array_equal(param.fft_spectrum_init(SHAPE, [7]), param.fft_spectrum_init(SHAPE, [7]))
    np.testing.assert_allclose(batched[1], alone[0], atol=1e-4)
    assert np.abs(batched[0] - batched[1]).max() > 0.1


def moved(images, seeds, step=0, moves=None):
    return transform.standard(tf.constant(images), tf.constant(seeds, tf.int64), tf.constant(step, tf.int64),
                              moves).numpy()


def test_transforms_keep_shape_and_range_and_follow_the_seed():
    images = np.random.default_rng(0).uniform(0, 255, (3, *SHAPE)).astype(np.float32)
    images[2] = images[0]
    out = moved(images, [1, 2, 1])
    assert out.shape == images.shape and out.min() >= 0.0 and out.max() <= 255.0
    np.testing.assert_array_equal(out, moved(images, [1, 2, 1]))
    np.testing.assert_allclose(out[2], out[0], atol=1e-4)  # same image, same seed: same move
    np.testing.assert_allclose(moved(images[1:2], [2])[0], out[1], atol=1e-4)  # batching changes none
    assert np.abs(moved(images[:1], [3])[0] - out[0]).mean() > 1.0  # another seed moves it elsewhere
    assert np.abs(moved(images[:1], [1], step=1)[0] - out[0]).mean() > 1.0  # and so does the next step


def test_transforms_without_movement_are_the_identity():
    images = np.random.default_rng(1).uniform(0, 255, (2, *SHAPE)).astype(np.float32)
    still = transform.Moves(pad=0, jitter=0, scale=(1.0, 1.0), degrees=0, jitter_after=0)
    np.testing.assert_allclose(moved(images, [1, 2], moves=still), images, atol=1e-3)


@pytest.mark.parametrize("zoom", [0.5, 0.8, 1.25])
def test_a_scale_draw_shows_the_picture_that_much_smaller_or_larger(zoom):
    """The models want their own size, so the moved view is resized to it; the scale must survive that resize,
    or lucid's scale stage would leave every pattern one size."""
    images = np.zeros((1, *SHAPE), np.float32)
    side = SHAPE[0] // 4
    start = (SHAPE[0] - side) // 2
    images[0, start:start + side, start:start + side] = 255.0
    scaled = transform.Moves(pad=0, jitter=0, scale=(zoom, zoom), degrees=0, jitter_after=0)
    out = moved(images, [1], moves=scaled)[0, ..., 0]
    assert np.isclose((out > 127.5).sum(), (side * zoom) ** 2, rtol=0.2)
    assert (out[SHAPE[0] // 2, SHAPE[1] // 2]) > 250.0  # about the middle


def test_lucids_pixel_amounts_scale_with_the_image_and_a_strength_scales_them_all():
    assert transform.Moves.lucid(224) == transform.Moves(12, 8, (0.9, 1.1), 10.0, 4)
    assert transform.Moves.lucid(448).pad == 24
    assert transform.Moves.lucid(224, 2.0) == transform.Moves(24, 16, (0.8, 1.2), 20.0, 8)
    assert transform.Moves.lucid(224, 0.0) == transform.Moves(0, 0, (1.0, 1.0), 0.0, 0)


@pytest.mark.parametrize("method", [robust, maco])
def test_a_steps_rate_and_moves_are_its_methods_defaults_in_the_contract(tiny, method):
    """What a worker compiles (the network and objective only) is the step at the contract's rate and strength:
    the same pictures, step for step, as that step named in full, and not those of another strength."""
    defaults = METHOD_DEFAULTS[method.METHOD.name]
    seeds, weights = [1, 2], one_hot_rows([3, 5], CHANNELS)
    climbed = lambda **settings: render.run(method.compile_step(tiny[0], preprocess, objectives.weighted_channels,
                                                                SHAPE, **settings), seeds, weights, 3)
    default = climbed()
    assert [stats.step_size[0] for stats in default.history] == pytest.approx([defaults.learning_rate] * 3)
    named = climbed(learning_rate=defaults.learning_rate, moves=transform.Moves.lucid(max(SHAPE), defaults.moves))
    np.testing.assert_array_equal(default.images, named.images)
    other = climbed(moves=transform.Moves.lucid(max(SHAPE), defaults.moves + 1.0))
    assert np.abs(other.images - default.images).max() > 1.0


@pytest.mark.parametrize("method", [robust, maco])
def test_a_scheduled_rate_settles_after_its_steps_and_leaves_the_first_pictures_alone(tiny, method):
    """A settled rate takes over after contract.SETTLE_AFTER updates, whatever the job's length: the pictures up to
    there are those of the same step at one rate (make quality-defaults reads every count from one run), and
    the ones after move by the settled rate's steps."""
    seeds, weights = [1], one_hot_rows([3], CHANNELS)
    climbed = lambda settled: render.run(
        method.compile_step(tiny[0], preprocess, objectives.weighted_channels, SHAPE, learning_rate=0.05,
                            settled_rate=settled, coarse_steps=None),
        seeds, weights, SETTLE_AFTER + 2, frame_every=SETTLE_AFTER)
    steady, settling = climbed(None), climbed(0.01)
    assert [stats.step_size[0] for stats in settling.history] == pytest.approx([0.05] * SETTLE_AFTER + [0.01] * 2)
    np.testing.assert_array_equal(settling.frames[0], steady.frames[0])
    assert np.abs(settling.images - steady.images).max() > 0.0


@pytest.mark.parametrize("method", [robust, maco])
def test_a_coarse_start_holds_the_fine_frequencies_out_of_its_first_pictures_and_then_lets_them_in(tiny, method):
    """For its first coarse_steps updates a climb sees only the frequencies up to contract.COARSE_CYCLES cycles
    per image: two starts that differ only above them give the same pictures on the way, and different ones
    once those updates are done (the fine frequencies come back as they started)."""
    coarse_steps, seeds, weights = 3, [1], one_hot_rows([3], CHANNELS)
    step = method.compile_step(tiny[0], preprocess, objectives.weighted_channels, SHAPE, learning_rate=0.05,
                               coarse_steps=coarse_steps)
    h, w = SHAPE[:2]
    fine = np.hypot(np.fft.fftfreq(h)[:, None] * h, np.fft.rfftfreq(w)[None, :] * w) > COARSE_CYCLES
    start = step.start(seeds)
    moved = start[0].numpy().copy()  # the spectrum (robust) or the phase (maco)
    moved[:, :, fine] = step.start([seeds[0] + 1])[0].numpy()[:, :, fine]
    assert np.abs(moved - start[0].numpy()).max() > 0.0
    climbed = [render.run(step, seeds, weights, coarse_steps, state=state, frame_every=1)
               for state in (start, start._replace(**{start._fields[0]: tf.constant(moved)}))]
    np.testing.assert_array_equal(climbed[0].frames[:-1], climbed[1].frames[:-1])
    assert np.abs(climbed[0].images - climbed[1].images).max() > 1.0


def test_weighted_objectives_are_linear_and_one_hot_is_the_tutorials_loss():
    rng = np.random.default_rng(2)
    activations = tf.constant(rng.normal(size=(3, 5, 5, CHANNELS)), tf.float32)
    logits = tf.constant(rng.normal(size=(3, CLASSES)), tf.float32)
    np.testing.assert_allclose(objectives.weighted_channels(activations, one_hot_rows([4, 0, 9], CHANNELS)),
                               [activations.numpy()[b, :, :, f].mean() for b, f in enumerate([4, 0, 9])], rtol=1e-5)
    np.testing.assert_allclose(objectives.weighted_logits(logits, one_hot_rows([4, 0, 1], CLASSES)),
                               [logits.numpy()[b, f] for b, f in enumerate([4, 0, 1])], rtol=1e-6)
    a, b = (rng.normal(size=(3, CHANNELS)).astype(np.float32) for _ in range(2))
    np.testing.assert_allclose(objectives.weighted_channels(activations, 2 * a - 3 * b),
                               2 * objectives.weighted_channels(activations, a)
                               - 3 * objectives.weighted_channels(activations, b), rtol=1e-4, atol=1e-5)


def test_diversity_is_lower_for_different_images(tiny):
    network = tiny[0]
    different = np.random.default_rng(3).uniform(0, 255, (3, *SHAPE)).astype(np.float32)
    same = np.repeat(different[:1], 3, axis=0)
    of = lambda images: objectives.diversity(network(preprocess(images))).numpy()
    np.testing.assert_allclose(of(same), 2 / 3, rtol=1e-5)  # each image is a perfect match for the other two
    assert (of(different) < of(same)).all()
    assert of(different[:1]) == pytest.approx([0.0])


def test_a_class_target_is_diversified_on_its_conv_layer_not_its_logits(tiny):
    """The logits network's second output is where the diversity term compares the set's Gram matrices."""
    network = keras.Model(tiny[1].input, [tiny[1].output, tiny[0].output])
    step = robust.compile_step(network, preprocess, objectives.weighted_logits, SHAPE, **LUCID)
    weights, seeds = one_hot_rows([2] * 3, CLASSES), [4, 5, 6]
    spectrum = param.fft_spectrum_init(SHAPE, seeds)
    first = render.run(step, seeds, weights, 1, diversity=3.0).history[0].loss
    seen = transform.standard(tf.constant(pixels_of(spectrum)), tf.constant(seeds, tf.int64), tf.constant(0))
    logits = objectives.weighted_logits(tiny[1](preprocess(seen)), weights).numpy()
    on = lambda layer: logits - 3.0 * np.abs(logits) * objectives.diversity(layer(preprocess(seen))).numpy()
    np.testing.assert_allclose(first, on(tiny[0]), rtol=1e-4, atol=1e-6)
    assert not np.allclose(first, on(tiny[1]), rtol=1e-3)
    apart = render.run(step, seeds, weights, 30, diversity=3.0).images
    alike = render.run(step, seeds, weights, 30, diversity=0.0).images
    style = lambda images: float(objectives.diversity(tiny[0](preprocess(images))).numpy().mean())
    assert style(apart) < style(alike)


def test_adam_climbs_like_keras_adam_minimizing_the_negative():
    grads = [tf.constant(np.random.default_rng(seed).normal(size=(2, 3)), tf.float32) for seed in range(3)]
    variable = tf.Variable(tf.ones([2, 3]))
    optimizer = keras.optimizers.Adam(learning_rate=0.05)
    state = robust.RobustState.start(np.ones([2, 3], np.float32))
    for grad in grads:
        optimizer.apply_gradients([(-grad, variable)])
        state = robust.adam_ascent(state, grad, 0.05)
    np.testing.assert_allclose(state.spectrum, variable.numpy(), rtol=1e-5)
    assert int(state.updates) == 3


@pytest.mark.parametrize("objective, target", [(objectives.weighted_channels, 0), (objectives.weighted_logits, 1)])
def test_twenty_robust_steps_raise_the_target_on_the_plain_image(tiny, objective, target):
    network = tiny[target]
    step = robust.compile_step(network, preprocess, objective, SHAPE, **LUCID)
    weights = one_hot_rows([3], network.output.shape[-1])
    start = param.fft_spectrum_init(SHAPE, [5])
    ascent = render.run(step, [5], weights, 20)
    score = lambda images: float(objective(network(preprocess(images)), weights)[0])
    assert score(ascent.images) > score(pixels_of(start)) + 0.01  # from ~0: a tiny random net moves slowly
    assert ascent.images.shape == (1, *SHAPE) and ascent.images.dtype == np.float32
    assert [float(stats.step_size[0]) for stats in ascent.history] == [pytest.approx(0.05)] * 20


def test_one_compiled_step_serves_any_weights_and_batch(channel_step):
    seeds = [1, 2, 3]
    render.run(channel_step, seeds[:1], one_hot_rows([3], CHANNELS), 2)
    mixed = np.random.default_rng(4).normal(size=(3, CHANNELS)).astype(np.float32)
    render.run(channel_step, seeds, mixed, 2, diversity=10.0)
    assert channel_step.traces == 1
    assert channel_step.pixels.experimental_get_tracing_count() == 1


def test_a_negative_weight_is_climbed_down_by_the_robust_step(tiny, channel_step):
    """3 - 1: the step's loss is the weighted sum on the moved image, and feature 1 ends below its start."""
    seeds, spectrum = [5], param.fft_spectrum_init(SHAPE, [5])
    mix = objectives.weights_matrix([{3: 1.0, 1: -1.0}], CHANNELS)
    means = lambda images: tf.reduce_mean(tiny[0](preprocess(tf.constant(images))), axis=[1, 2]).numpy()[0]
    seen = transform.standard(tf.constant(pixels_of(spectrum)), tf.constant(seeds, tf.int64), tf.constant(0, tf.int64))
    first = render.run(channel_step, seeds, mix, 1).history[0].loss
    np.testing.assert_allclose(first, [means(seen)[3] - means(seen)[1]], rtol=1e-4, atol=1e-7)
    started = means(pixels_of(spectrum))
    mixed = means(render.run(channel_step, seeds, mix, 20).images)
    only_3 = means(render.run(channel_step, seeds, one_hot_rows([3], CHANNELS), 20).images)
    assert mixed[1] < started[1] < only_3[1]  # feature 3 alone drags feature 1 up; the mix pushes it down


def test_batching_never_changes_a_robust_image(channel_step):
    weights = one_hot_rows([2, 6], CHANNELS)
    alone = render.run(channel_step, [9], weights[1:], 3).images
    batched = render.run(channel_step, [8, 9], weights, 3).images
    np.testing.assert_allclose(batched[1], alone[0], atol=0.05)


def test_robust_predictions_come_when_the_cadence_says_and_at_the_end(tiny, channel_step):
    classify = render.classifier(tiny[1], preprocess, SHAPE)
    seen = []
    ascent = render.run(channel_step, [1], one_hot_rows([1], CHANNELS), 12, classify=classify,
                        cadence=render.Cadence(predict_every=10), on_progress=lambda done, stats, predicted: seen.append((done, predicted)))
    assert [p.iteration for p in ascent.predictions] == [10, 12]
    assert [done for done, predicted in seen if predicted is not None] == [10, 12] and seen[-1][0] == 12
    np.testing.assert_allclose(ascent.predictions[-1].probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_a_diversity_weight_drives_one_features_images_apart(tiny, channel_step):
    start = np.repeat(param.fft_spectrum_init(SHAPE, [6]), 2, axis=0)  # the same start; only the transforms differ
    weights = one_hot_rows([4, 4], CHANNELS)

    def similarity(weight):
        images = render.run(channel_step, [1, 2], weights, 10, diversity=weight,
                            state=robust.RobustState.start(start)).images
        return float(objectives.diversity(tiny[0](preprocess(images))).numpy().sum())

    assert similarity(100.0) < 0.5 * similarity(0.0)  # lucid's weight; here about 0.09 against 1.0
