"""The math, run in this process: the tutorial's step, clipping, a rising loss, and the factory's caching."""
import time

import numpy as np
import pytest
import tensorflow as tf

from bench.loop import compiled_loop
from featurevis import batch, contract, scoring
from featurevis.optvis import objectives, param, render
from featurevis.step_cache import target_network

MODEL = "inception_v3_untrained"
SHAPE = (299, 299, 3)
CONV5_CHANNELS = 64


def one_hot(features, depth=CONV5_CHANNELS):
    return objectives.weights_matrix([{feature: 1.0} for feature in features], depth)


@pytest.fixture(scope="module")
def conv5(factory):
    return factory.acquire(MODEL, 5)


@pytest.fixture(scope="module")
def channel_means(conv5):
    """Each channel's mean over conv2d_5's map, computed here, not by the step: (batch, 64)."""
    network = tf.keras.Model(conv5.model.network.inputs[0], conv5.model.layer_output("conv2d_5"))
    means = tf.function(lambda x: tf.reduce_mean(network(x / 127.5 - 1.0, training=False), axis=[1, 2]))
    return lambda images: means(tf.constant(images, tf.float32)).numpy()


def test_step_is_the_tutorials_formula(conv5):
    image = param.tutorial_noise(SHAPE, [3])
    network = tf.keras.Model(conv5.model.network.inputs[0], conv5.model.layer_output("conv2d_5"))

    @tf.function  # graph mode like the step: eager gradients differ by float error amplified ~1e5
    def loss_and_grad(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_mean(network(x / 127.5 - 1.0, training=False)[..., 2])
        return loss, tape.gradient(loss, x)

    x = tf.constant(image)
    loss, grad = loss_and_grad(x)
    grad = grad.numpy()
    step_size = 1.0 / (grad.std() + 1e-8)
    expected = np.clip(image + step_size * grad, 0.0, 255.0)

    updated, stats = conv5.step.advance(x, tf.constant(one_hot([2])), None, None)
    assert stats.loss.numpy()[0] == pytest.approx(float(loss), rel=1e-4)
    assert stats.step_size.numpy()[0] == pytest.approx(step_size, rel=1e-3)
    assert stats.grad_min.numpy()[0] == pytest.approx(grad.min(), rel=1e-3)
    assert stats.grad_max.numpy()[0] == pytest.approx(grad.max(), rel=1e-3)
    np.testing.assert_allclose(updated.numpy(), expected, atol=1e-3)


def test_pixels_are_clipped_to_0_255(conv5):
    rng = np.random.default_rng(0)
    near_edges = np.where(rng.random((1, *SHAPE)) < 0.5, 0.5, 254.5).astype(np.float32)
    updated, _ = conv5.step.advance(tf.constant(near_edges), tf.constant(one_hot([2])), None, None)
    pixels = updated.numpy()
    assert pixels.min() == 0.0 and pixels.max() == 255.0  # the step (~1/std) overshoots both ends
    assert (pixels > 0).any() and (pixels < 255).any()


def test_loss_rises_over_iterations_for_a_fixed_seed(conv5):
    history = render.run(conv5.step, [11], one_hot([2]), 12).history
    losses = [float(stats.loss[0]) for stats in history]
    climbs = np.diff(losses[1:])  # the first step may overshoot from the flat start image
    assert (climbs > 0).mean() >= 0.9
    assert losses[-1] > 2 * losses[1]


def test_class_logit_rises(factory):
    logits = factory.acquire(MODEL, None)
    history = render.run(logits.step, [5], one_hot([278], 1000), 4).history
    losses = [float(stats.loss[0]) for stats in history]
    assert losses[-1] > losses[1]


def test_batching_never_changes_a_jobs_image(conv5):
    """Batched, an image climbs as it does alone, up to float rounding.

    Not bit for bit: oneDNN picks its convolution kernels by batch size on some
    CPUs (on an AMD EPYC: 0.8% of the pixels off by up to 1.1 levels after 3
    steps, where an Intel CPU gave identical images), and the tutorial's
    1/std(grad) step magnifies rounding in a tiny gradient, the more so on layers
    whose gradient is spread thin (the tutorial's conv_id 5, mixed/conv, more than
    conv2d_8 did). The climb itself must agree.
    """
    start = param.tutorial_noise(SHAPE, [21])
    alone = render.run(conv5.step, [21], one_hot([2]), 3).images[0] - start[0]
    batched = render.run(conv5.step, [20, 21], one_hot([1, 2]), 3).images[1] - start[0]
    assert np.corrcoef(alone.ravel(), batched.ravel())[0, 1] > 0.999
    assert np.abs(batched - alone).mean() < 0.01 * np.abs(alone).mean()


def test_the_bench_s_bare_loop_draws_a_job_s_picture(factory):
    """`make bench` measures jobs against a bare loop of their step: it must be the same climb, nothing less."""
    acquired = factory.acquire("shapes_cnn", None, "robust")
    weights = objectives.weights_matrix([{3: 1.0}], acquired.model.info.feature_count(None))
    job = render.run(acquired.step, [7], weights, 5).images
    np.testing.assert_array_equal(compiled_loop(acquired, None, 3, 5, seeds=(7,))(), job)


def test_weighted_targets_climb_their_sum(conv5, channel_means):
    """2 - 0.5 x 7: the loss is the weighted sum of the single losses, and feature 7 is pushed down, not ignored."""
    start = param.tutorial_noise(SHAPE, [13])
    mix = objectives.weights_matrix([{2: 1.0, 7: -0.5}], CONV5_CHANNELS)
    loss_of = lambda weights: float(conv5.step.advance(tf.constant(start), tf.constant(weights), None, None)[1].loss[0])
    alone = {feature: loss_of(one_hot([feature])) for feature in (2, 7)}
    assert abs(alone[7]) > 0.05 * abs(alone[2])  # feature 7's share is large enough to be missed
    assert loss_of(mix) == pytest.approx(alone[2] - 0.5 * alone[7], rel=1e-4, abs=1e-8)
    climbed = render.run(conv5.step, [13], mix, 8)
    assert climbed.history[-1].loss[0] > climbed.history[1].loss[0]
    # From the same start, climbing feature 2 alone raises feature 7 too; the mix must push it below its start.
    plain = render.run(conv5.step, [13], one_hot([2]), 8).images
    started, mixed, only_2 = (channel_means(images)[0] for images in (start, climbed.images, plain))
    assert mixed[7] < started[7] < only_2[7]
    assert mixed[2] - 0.5 * mixed[7] > only_2[2] - 0.5 * only_2[7]  # the mix's own objective: higher by its climb


def test_frames_for_an_animation(conv5):
    ascent = render.run(conv5.step, [1], one_hot([2]), 7, frame_every=3)
    assert len(ascent.frames) == 3 and ascent.frames[-1].shape == (1, *SHAPE)
    np.testing.assert_array_equal(ascent.frames[-1], ascent.images)


def test_predictions_come_when_the_cadence_says_and_always_at_the_end(conv5):
    every_ten = render.Cadence(predict_every=10)
    ascent = render.run(conv5.step, [1, 2], one_hot([1, 2]), 23, classify=conv5.model.classify,
                           cadence=every_ten)
    assert [p.iteration for p in ascent.predictions] == [10, 20, 23]
    assert ascent.predictions[-1].probabilities.shape == (2, 1000)
    np.testing.assert_allclose(ascent.predictions[-1].probabilities.sum(axis=1), 1.0, rtol=1e-4)
    none_on_the_way = render.run(conv5.step, [1], one_hot([1]), 12,
                                    classify=conv5.model.classify, cadence=render.Cadence(budget=0.0))
    assert [p.iteration for p in none_on_the_way.predictions] == [12]
    assert conv5.model.classify.cost_s > 0


def test_the_final_read_is_the_classifier_and_the_probe_in_one_pass(factory, conv5):
    """batch.run reads a finished batch once (scoring.read): its classes must be what the model's classifier says
    and its values at the pictures what the probe's own pass says, for a conv layer and for the logits; a loop
    told the caller reads the pictures makes no prediction at the end."""
    for acquired, features in ((conv5, CONV5_CHANNELS), (factory.acquire(MODEL, None), 1000)):
        ascent = render.run(acquired.step, [1, 2], one_hot([1, 2], features), 3, classify=acquired.model.classify,
                            predict_at_end=False)
        assert ascent.predictions == []
        final = scoring.read(acquired.probe, ascent.images)
        np.testing.assert_allclose(final.probabilities, acquired.model.classify(ascent.images).numpy(), atol=1e-6)
        at_pictures = acquired.probe.features(tf.constant(ascent.images))[0].numpy()
        np.testing.assert_allclose(final.values[:2], at_pictures, rtol=1e-4, atol=1e-5)
        assert final.values.shape == ((1 + scoring.SAMPLES) * 2, at_pictures.shape[1])
        assert not np.allclose(final.values[2:4], at_pictures)  # the moves are not the pictures
    network, _ = target_network(conv5.model, "conv2d_5")  # without classes: the same values, in one pass
    without_classes = scoring.read(scoring.feature_probe(network, conv5.model.preprocess, SHAPE), ascent.images)
    assert without_classes.probabilities is None
    np.testing.assert_allclose(without_classes.values, scoring.read(conv5.probe, ascent.images).values,
                               rtol=1e-4, atol=1e-5)


def test_a_batch_s_last_progress_and_its_result_carry_the_final_prediction(factory, conv5):
    """The loop leaves the last prediction to the final read: the batch still publishes it as the last progress,
    and the result's last prediction is at the last iteration."""
    seen = []
    spec = contract.normalize({"model": MODEL, "conv_id": 5, "feature": 1, "iterations": 3, "seed": 1})
    rendered = batch.run(factory, [spec], seen.append).jobs[0]
    assert seen[-1].iteration == 3 and seen[-1].prediction is not None
    assert seen[-1].prediction == rendered.predictions[-1] and rendered.predictions[-1].iteration == 3


def test_the_prediction_budget_counts_what_a_prediction_cost_not_the_one_image_estimate(conv5):
    """A classifier whose estimate (of one image) is far below what a call costs, as a batch of 32's is: with
    the estimate, nearly every iteration would predict; with each call's own cost, at most about half do."""
    real = conv5.model.classify

    def slow(images):
        time.sleep(0.05)
        return real(images)

    ascent = render.run(conv5.step, [1], one_hot([1]), 20, classify=render.Classifier(slow, cost_s=1e-4),
                        cadence=render.Cadence(budget=0.5))
    assert 2 <= len(ascent.predictions) <= 11


def test_a_batch_s_first_prediction_waits_for_the_cost_of_the_whole_batch():
    """A step of 10 ms and a classifier of 1 ms an image, at a 5% budget: one image may be predicted every
    20 ms, so a job of one image predicts on its way; a batch of 16 costs 16 ms a call, one every 320 ms, more
    than its 100 ms job, so it predicts only at the end (with one image's estimate it predicted at once)."""

    def advance(state, *arguments):
        time.sleep(0.01)
        zeros = np.zeros(len(state), np.float32)
        return state, render.StepStats(zeros, zeros, zeros, zeros)

    def classify(images):
        time.sleep(0.001 * len(images))
        return tf.zeros([len(images), 3])

    step = render.CompiledStep(advance, pixels=tf.constant,
                               start=lambda seeds, picture=None: np.zeros((len(seeds), 2, 2, 3), np.float32))
    predicted = {batch: [p.iteration for p in render.run(step, list(range(batch)), np.ones((batch, 1), np.float32),
                                                         10, classify=render.Classifier(classify, cost_s=0.001),
                                                         cadence=render.Cadence(budget=0.05)).predictions]
                 for batch in (1, 16)}
    assert len(predicted[1]) > 1 and predicted[16] == [10]


def test_progress_gets_the_figures_of_its_iteration_and_the_history_all_of_them(conv5):
    seen = []
    ascent = render.run(conv5.step, [4], one_hot([3]), 6, on_progress=lambda *call: seen.append(call),
                           cadence=render.Cadence(progress_s=0.0))
    assert [done for done, _, _ in seen] == [1, 2, 3, 4, 5, 6]
    assert [float(stats.loss[0]) for _, stats, _ in seen] == [float(stats.loss[0]) for stats in ascent.history]


def test_a_second_job_on_a_layer_builds_nothing(factory, conv5):
    builds = dict(factory.builds)
    again = factory.acquire(MODEL, 5)
    render.run(again.step, [1, 2, 3], one_hot([7, 8, 9]), 1)  # new features, new batch size
    assert again.step is conv5.step
    assert (again.model_load_s, again.compile_s) == (0.0, 0.0)
    assert dict(factory.builds) == builds
    assert conv5.step.traces == 1  # no retrace for new features or batch sizes


def test_the_step_cache_is_a_bounded_lru():
    from featurevis.factory import ModelFactory

    small = ModelFactory(step_cache_size=2)
    for conv_id in (0, 1, 0, 2):
        small.acquire(MODEL, conv_id)
    version = small.models.info(MODEL).sha256
    assert small.cached_steps() == [(MODEL, version, "conv2d", "gradient_ascent"),
                                    (MODEL, version, "conv2d_2", "gradient_ascent")]
    assert small.builds == {"model": 1, "step": 3}


def test_every_method_the_contract_names_has_a_step():
    from featurevis import contract
    from featurevis.optvis import methods

    assert list(methods.BY_NAME) == list(contract.METHODS)
    assert {name: method.needs_style for name, method in methods.BY_NAME.items()} == contract.METHODS


@pytest.mark.parametrize("method", ["gradient_ascent", "robust", "maco"])
def test_a_class_target_climbs_its_methods_class_objective_and_a_sigmoid_models_its_logit(factory, method):
    """contract.METHOD_DEFAULTS names what each method climbs for a class; a sigmoid's classes share no softmax."""
    import dataclasses

    from featurevis.contract import METHOD_DEFAULTS
    from featurevis.registry import LOGITS
    from featurevis.step_cache import target_network

    loaded = factory.model("shapes_cnn")
    wanted = METHOD_DEFAULTS[method].class_objective
    _, objective = target_network(loaded, LOGITS, class_objective=wanted)
    assert objective is {"logit": objectives.weighted_logits,
                         "log_probability": objectives.weighted_log_probabilities}[wanted]
    sigmoid = dataclasses.replace(loaded, info=dataclasses.replace(loaded.info, class_activation="sigmoid"))
    assert target_network(sigmoid, LOGITS, class_objective=wanted)[1] is objectives.weighted_logits
