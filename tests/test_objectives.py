"""Each kind of objective, climbed on the small network test_robust builds: the sign and size of what it should change.

Both methods take the objective as an objectives.Terms batch, so every test runs the real compiled steps.
"""
import numpy as np
import pytest
import tensorflow as tf

from featurevis.optvis import gradient_ascent, objectives, param, render, robust
from tests.test_robust import LUCID, preprocess, tiny  # noqa: F401 - tiny is a fixture

SHAPE = (64, 64, 3)
CHANNELS = 16
MAP = (29, 29, CHANNELS)  # the target layer's output for a 64x64 input
METHODS = {"gradient_ascent": gradient_ascent, "robust": robust}
# Adam at lucid's rate moves a random network's activations more slowly than the tutorial's 1/std step.
ITERATIONS = {"gradient_ascent": 15, "robust": 40}
# Robust climbs at lucid's rate and moves here, whatever the defaults `make quality-defaults` chooses for
# pictures: these tests are about what each kind of objective raises, not about the defaults.
SETTINGS = {"gradient_ascent": {}, "robust": LUCID}


@pytest.fixture(scope="module")
def network(tiny):
    """test_robust's small random CNN, ending at its linear conv layer, as InceptionV3's conv targets are."""
    return tiny[0]


@pytest.fixture(scope="module")
def steps(network):
    return {name: method.compile_step(network, preprocess, objectives.weighted_channels, SHAPE, **SETTINGS[name])
            for name, method in METHODS.items()}


class Term:
    """A contract.Term's shape, without the contract's checks (those are tested in test_objective_contract)."""

    def __init__(self, objective, weight=1.0, feature=None, x=None, y=None, vector=None, image=None):
        self.objective, self.weight, self.feature, self.x, self.y = objective, weight, feature, x, y
        self.vector, self.image = vector, image


def terms_of(per_image, channel_weights=None, targets=None):
    channels = np.zeros((len(per_image), CHANNELS), np.float32) if channel_weights is None else channel_weights
    return objectives.build(channels, per_image, MAP, lambda key: targets[key])


def activations(network, images):
    return network(preprocess(tf.constant(images, tf.float32))).numpy()


def start(method, seeds):
    """The state a method starts from, and its pixels. The robust start is lucid's spectrum x 30, a visible
    noise: from lucid's own near-grey start this random network's activations are ~0, with nothing to lower."""
    if method == "gradient_ascent":
        images = param.tutorial_noise(SHAPE, seeds)
        return tf.constant(images), images
    spectrum = 30 * param.fft_spectrum_init(SHAPE, seeds)
    return robust.RobustState.start(spectrum), param.fft_to_pixels(tf.constant(spectrum), SHAPE).numpy()


def climb(steps, method, seeds, terms):
    """(the start's pixels, the ascent) of `terms` by `method` from start(method, seeds)."""
    state, images = start(method, seeds)
    return images, render.run(steps[method], seeds, terms, ITERATIONS[method], state=state)


@pytest.mark.parametrize("method", METHODS)
def test_a_neuron_objective_raises_its_position_more_than_others(network, steps, method):
    """The tutorial's step raises exactly that position most; the robust step sees the image moved by a few
    map positions each time (lucid's jitter), so it raises that position's neighbourhood, and little beyond."""
    feature, x, y = 5, 20, 9
    begun, climbed = climb(steps, method, [3], terms_of([[Term("neuron", feature=feature, x=x, y=y)]]))
    gain = activations(network, climbed.images)[0, ..., feature] - activations(network, begun)[0, ..., feature]
    distance = np.maximum(*np.abs(np.mgrid[0:MAP[0], 0:MAP[1]] - np.array([y, x])[:, None, None]))
    assert gain[y, x] > 0.2 and gain[distance <= 3].mean() > 5 * np.abs(gain[distance > 6]).mean()
    if method == "gradient_ascent":
        assert np.unravel_index(gain.argmax(), gain.shape) == (y, x)


@pytest.mark.parametrize("method", METHODS)
def test_a_negative_weight_lowers_its_target(network, steps, method):
    """-1 x neuron lowers that position; -1 x layer lowers the layer's mean square."""
    feature, x, y = 2, 14, 14
    begun, climbed = climb(steps, method, [4, 4], terms_of([[Term("neuron", -1.0, feature, x, y)],
                                                            [Term("layer", -1.0)]]))
    before, after = activations(network, begun), activations(network, climbed.images)
    assert after[0, y, x, feature] < before[0, y, x, feature] - 0.1
    assert (after[1] ** 2).mean() < 0.7 * (before[1] ** 2).mean()


@pytest.mark.parametrize("method", METHODS)
def test_the_layer_objective_is_deepdreams_mean_square_and_climbs_it(network, steps, method):
    begun, climbed = climb(steps, method, [6], terms_of([[Term("layer", 1.0)]]))
    before, after = activations(network, begun), activations(network, climbed.images)
    if method == "gradient_ascent":  # the loss is read before the step: at the start image itself
        assert climbed.history[0].loss[0] == pytest.approx((before ** 2).mean(), rel=1e-4)
    assert (after ** 2).mean() > 1.5 * (before ** 2).mean()


@pytest.mark.parametrize("method", METHODS)
def test_a_direction_climbs_the_vectors_dot_product_with_the_channel_means(network, steps, method):
    vector = np.random.default_rng(1).normal(size=CHANNELS).astype(np.float32)
    begun, climbed = climb(steps, method, [7], terms_of([[Term("direction", 1.0, vector=tuple(vector))]]))
    before, after = (activations(network, images).mean(axis=(1, 2))[0] @ vector for images in (begun, climbed.images))
    if method == "gradient_ascent":
        assert climbed.history[0].loss[0] == pytest.approx(before, rel=1e-4, abs=1e-6)
    assert after > before + 0.1


@pytest.mark.parametrize("method", METHODS)
def test_a_caricatures_activations_move_toward_the_images(network, steps, method):
    """The user's image: diagonal stripes. The picture, from noise, comes to excite the layer as it does."""
    rows, cols = np.mgrid[0:64, 0:64]
    stripes = np.repeat(((rows + cols) // 4 % 2 * 200 + 28)[..., None], 3, axis=2).astype(np.float32)
    target = activations(network, stripes[None])[0]
    begun, climbed = climb(steps, method, [8], terms_of([[Term("caricature", 1.0, image="u")]], targets={"u": target}))
    cosine = lambda images: float(objectives.cosine(tf.constant(activations(network, images)),
                                                    tf.constant(target[None]))[0])
    before, after = cosine(begun), cosine(climbed.images)
    assert after > before + 0.1  # robust: 0.28 -> 0.46 in 40 steps, through its transforms
    if method == "gradient_ascent":
        assert climbed.history[0].loss[0] == pytest.approx(before, rel=1e-4)
        assert after > 0.5  # the tutorial's step, unhindered by transforms, matches it closely


def test_terms_compose_by_weight_and_one_step_serves_every_kind(network, steps):
    """0.5 x neuron + direction - layer + 2 x channel: the loss is the weighted sum of each kind alone; no retrace."""
    step, image = steps["gradient_ascent"], tf.constant(param.tutorial_noise(SHAPE, [9]))
    vector = tuple(np.linspace(-1, 1, CHANNELS))
    stripes = activations(network, np.full((1, *SHAPE), 90.0, np.float32))[0]
    kinds = [[Term("neuron", 0.5, 3, 4, 5)], [Term("direction", 1.0, vector=vector)], [Term("layer", -1.0)],
             [Term("caricature", 0.7, image="u")]]
    channel = np.zeros((1, CHANNELS), np.float32)
    channel[0, 11] = 2.0
    loss = lambda per_image, weights=None: float(step.advance(image, terms_of(per_image, weights, {"u": stripes}),
                                                              None, None)[1].loss[0])
    alone = [loss([kind]) for kind in kinds] + [loss([[]], channel)]
    assert loss([sum(kinds, [])], channel) == pytest.approx(sum(alone), rel=1e-4, abs=1e-6)
    render.run(steps["robust"], [1, 2], terms_of([kinds[0][:1] + kinds[2], kinds[3]], targets={"u": stripes}), 2)
    assert step.traces == 1 and steps["robust"].traces == 1


def test_a_bare_weights_matrix_is_the_channel_objective_alone(network, steps):
    """What every job before objectives sent: its loss and update are those of the same Terms with zeros."""
    weights = objectives.weights_matrix([{4: 1.0, 9: -0.5}], CHANNELS)
    image = tf.constant(param.tutorial_noise(SHAPE, [2]))
    bare = steps["gradient_ascent"].advance(image, tf.constant(weights), None, None)
    built = steps["gradient_ascent"].advance(image, terms_of([[]], weights), None, None)
    np.testing.assert_array_equal(bare[0].numpy(), built[0].numpy())
    np.testing.assert_array_equal(bare[1].loss.numpy(), built[1].loss.numpy())


def penalties_of(batch, **weights):
    """A (batch, 4) penalties matrix: tv, lp, lp_p, blur (objectives.PENALTIES)."""
    row = [weights.get(name, 2.0 if name == "lp_p" else 0.0) for name in objectives.PENALTIES]
    return np.array([row] * batch, np.float32)


def measures(images):
    """Each regularizer's own measure of 0..255 images, at weight 1 (objectives.regularizers)."""
    unit = tf.constant(images / 255.0, tf.float32)
    return {name: float(objectives.regularizers(unit, tf.constant(penalties_of(1, **{name: 1.0})))[0])
            for name in ("tv", "lp", "blur")}


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name, weight", [("tv", 0.3), ("lp", 0.3), ("blur", 30.0)])
def test_a_regularizer_lowers_its_measure_and_the_objective_still_climbs(network, steps, method, name, weight):
    """Channel 3 climbed twice from one start: with the regularizer its measure of the picture ends lower (by
    15-95% here), and the channel keeps at least half its rise: a weight the objective is traded against."""
    channel = objectives.weights_matrix([{3: 1.0}], CHANNELS)
    begun, plain = climb(steps, method, [5], objectives.build(channel, [()], MAP, None))
    regular = climb(steps, method, [5], objectives.build(channel, [()], MAP, None,
                                                         penalties_of(1, **{name: weight})))[1].images
    assert measures(regular)[name] < 0.9 * measures(plain.images)[name]
    rise = lambda images: activations(network, images)[0, ..., 3].mean() - activations(network, begun)[0, ..., 3].mean()
    assert rise(regular) > 0.5 * rise(plain.images) > 0


def test_regularizers_are_subtracted_from_the_loss_at_their_weights(network, steps):
    image = param.tutorial_noise(SHAPE, [3]) + np.random.default_rng(0).normal(0, 20, (1, *SHAPE)).astype(np.float32)
    channel = objectives.weights_matrix([{3: 1.0}], CHANNELS)
    loss = lambda penalties: float(steps["gradient_ascent"].advance(
        tf.constant(image), objectives.build(channel, [()], MAP, None, penalties), None, None)[1].loss[0])
    measured = measures(image)
    assert loss(penalties_of(1, tv=2.0, lp=3.0, blur=4.0)) == pytest.approx(
        loss(penalties_of(1)) - 2.0 * measured["tv"] - 3.0 * measured["lp"] - 4.0 * measured["blur"], rel=1e-4)
    assert measured["tv"] > 0 and measured["lp"] > 0 and measured["blur"] > 0


def test_the_log_probability_objective_reads_as_the_logit_but_climbs_the_log_probability():
    """Its value is the weighted logits (robust scales diversity and opacity by it); its gradient the log-softmax's,
    so raising every class's logit alike gains nothing."""
    logits = tf.constant([[2.0, -1.0, 0.5], [0.0, 3.0, 1.0]])
    weights = tf.constant([[1.0, 0.0, 0.0], [0.0, 0.5, 0.5]])
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(logits)
        mine = objectives.weighted_log_probabilities(logits, weights)
        log_p = objectives.weighted_logits(tf.nn.log_softmax(logits), weights)
    np.testing.assert_allclose(mine, objectives.weighted_logits(logits, weights), rtol=1e-6)
    np.testing.assert_allclose(tape.gradient(mine, logits), tape.gradient(log_p, logits), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(tf.reduce_sum(tape.gradient(mine, logits), axis=1), [0.0, 0.0], atol=1e-6)
