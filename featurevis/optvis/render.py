"""The render loop: compiled steps (the tutorial's, and lucid's robust one) and the loop that drives them."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Callable, NamedTuple

import keras
import numpy as np
import tensorflow as tf

from featurevis.optvis import objectives, param, transform

Objective = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]


class StepStats(NamedTuple):
    """Per-image figures of one iteration, as the tutorial printed them."""

    loss: tf.Tensor
    grad_min: tf.Tensor
    grad_max: tf.Tensor
    step_size: tf.Tensor


@dataclass
class CompiledStep:
    """A traced step for one (model, layer). `traces` counts retraces: it should stay at 1."""

    fn: Callable[[tf.Tensor, tf.Tensor], tuple[tf.Tensor, StepStats]]
    traces: list[int] = field(default_factory=lambda: [0])


def gradient_ascent_step(network: keras.Model, preprocess: Callable, objective: Objective,
                         image_shape: tuple[int, int, int]) -> CompiledStep:
    """The tutorial's update, compiled once: grad in 0..255 pixel space, step 1/std(grad), clip.

    `network` ends at the target layer, so deeper layers are never computed.
    `objective` takes dense (batch, channels) weights (objectives.weighted_channels
    or weighted_logits; a plain job is one-hot): with any batch and weights as
    tensor arguments, new features and batch sizes reuse the same graph.
    """
    compiled = CompiledStep(fn=None)

    @tf.function(input_signature=[
        tf.TensorSpec([None, *image_shape], tf.float32),
        tf.TensorSpec([None, None], tf.float32),  # weights: image x channel (or class)
    ])
    def step(images, weights):
        compiled.traces[0] += 1  # runs at trace time only
        with tf.GradientTape() as tape:
            tape.watch(images)
            loss = objective(network(preprocess(images), training=False), weights)
            total = tf.reduce_sum(loss)  # images are independent, so d(total)/d(image b) = d(loss b)/d(image b)
        grads = tape.gradient(total, images)
        step_size = 1.0 / (tf.math.reduce_std(grads, axis=[1, 2, 3]) + 1e-8)
        updated = tf.clip_by_value(images + step_size[:, None, None, None] * grads, 0.0, 255.0)
        return updated, StepStats(loss, tf.reduce_min(grads, axis=[1, 2, 3]),
                                  tf.reduce_max(grads, axis=[1, 2, 3]), step_size)

    compiled.fn = step
    # Trace, and run once: TensorFlow optimizes the graph on its first call, which would
    # otherwise land in the first job's optimize time instead of the step's compile time.
    step(tf.zeros([1, *image_shape]), tf.zeros([1, network.output.shape[-1]]))
    return compiled


class RobustState(NamedTuple):
    """Spectra and their Adam moments, passed into and out of the robust step.

    Keeping them as tensors rather than variables (a Keras optimizer's slots
    are variables) leaves the step pure, so it takes any batch size.
    """

    spectrum: tf.Tensor
    m: tf.Tensor
    v: tf.Tensor
    updates: tf.Tensor  # int64 scalar: Adam steps taken, also the transforms' step number

    @classmethod
    def start(cls, spectrum: np.ndarray) -> RobustState:
        spectrum = tf.convert_to_tensor(spectrum, tf.float32)
        return cls(spectrum, tf.zeros_like(spectrum), tf.zeros_like(spectrum), tf.constant(0, tf.int64))


@dataclass
class RobustStep(CompiledStep):
    """fn(state, weights, seeds, diversity) -> (state, StepStats); pixels(spectrum) -> untransformed images."""

    pixels: Callable[[tf.Tensor], tf.Tensor] | None = None


LEARNING_RATE = 0.05  # lucid's Adam rate for the FFT parameterization


def robust_step(network: keras.Model, preprocess: Callable, objective: Objective, image_shape: tuple[int, int, int],
                learning_rate: float = LEARNING_RATE,
                robustness: transform.Robustness | None = None) -> RobustStep:
    """lucid's render step, compiled once: one Adam update of FFT spectra, the loss seen through random transforms.

    pixels = fft_to_pixels(spectrum), moved by transform.standard, then
    preprocess and `network` (ending at the target layer); the loss per image is
    objective - diversity * |objective| * objectives.diversity(style), where the
    style layer is the target itself or, for class logits, a second output of
    `network` (objectives.target_and_style), and Adam climbs it (the same as
    minimizing its negative). lucid subtracts a fixed multiple of the diversity,
    but the objective's size differs a hundredfold between models and layers (a
    mean of 0.1 on untrained InceptionV3's conv 5, 19 on shapes_cnn's conv4), and
    Adam only sees the gradients' ratio: a fixed weight either does nothing or
    drowns the objective. Scaled by the objective (held constant for the
    gradient), one weight means the same everywhere. `objective` takes dense
    (batch, channels) weights (objectives.weighted_channels or weighted_logits),
    so with any batch, weights and seeds as tensor arguments nothing retraces.
    The stats' gradient figures are of the spectra, which is what Adam moves;
    their step size is the learning rate.
    """
    spectrum_spec = tf.TensorSpec([None, *param.fft_spectrum_shape(image_shape)], tf.float32)
    compiled = RobustStep(fn=None)

    @tf.function(input_signature=[spectrum_spec])
    def pixels(spectrum):
        return param.fft_to_pixels(spectrum, image_shape)

    @tf.function(input_signature=[
        RobustState(spectrum_spec, spectrum_spec, spectrum_spec, tf.TensorSpec([], tf.int64)),
        tf.TensorSpec([None, None], tf.float32),  # weights: image x channel (or class)
        tf.TensorSpec([None], tf.int64),  # seeds: one per image, for its transforms
        tf.TensorSpec([], tf.float32),  # diversity weight
    ])
    def step(state, weights, seeds, diversity):
        compiled.traces[0] += 1  # runs at trace time only
        with tf.GradientTape() as tape:
            tape.watch(state.spectrum)
            moved = transform.standard(param.fft_to_pixels(state.spectrum, image_shape), seeds, state.updates,
                                       robustness)
            activations, style = objectives.target_and_style(network(preprocess(moved), training=False))
            target = objective(activations, weights)
            loss = target - diversity * tf.stop_gradient(tf.abs(target)) * objectives.diversity(style)
            total = tf.reduce_sum(loss)
        grads = tape.gradient(total, state.spectrum)
        axes = [1, 2, 3, 4]
        stats = StepStats(loss, tf.reduce_min(grads, axis=axes), tf.reduce_max(grads, axis=axes),
                          tf.fill(tf.shape(loss), learning_rate))
        return _adam_ascent(state, grads, learning_rate), stats

    compiled.fn, compiled.pixels = step, pixels
    start = RobustState.start(np.zeros([1, *spectrum_spec.shape[1:]], np.float32))
    # Trace and run once, as gradient_ascent_step does.
    step(start, tf.zeros([1, network.outputs[0].shape[-1]]), tf.zeros([1], tf.int64), tf.constant(0.0))
    pixels(start.spectrum)
    return compiled


def _adam_ascent(state: RobustState, grads: tf.Tensor, learning_rate: float,
                 beta_1: float = 0.9, beta_2: float = 0.999, epsilon: float = 1e-8) -> RobustState:
    """One Adam step up the gradient, with Kingma & Ba's (and lucid's) defaults."""
    updates = state.updates + 1
    m = beta_1 * state.m + (1 - beta_1) * grads
    v = beta_2 * state.v + (1 - beta_2) * tf.square(grads)
    t = tf.cast(updates, tf.float32)
    m_hat, v_hat = m / (1 - tf.pow(beta_1, t)), v / (1 - tf.pow(beta_2, t))
    return RobustState(state.spectrum + learning_rate * m_hat / (tf.sqrt(v_hat) + epsilon), m, v, updates)


@dataclass(frozen=True)
class Classifier:
    """Softmax class probabilities of the full model, and what one call costs (it sets how often a job asks)."""

    fn: Callable[[tf.Tensor], tf.Tensor]
    cost_s: float

    def __call__(self, images) -> tf.Tensor:
        return self.fn(images)


def classifier(model: keras.Model, preprocess: Callable, image_shape: tuple[int, int, int]) -> Classifier:
    """The model's classifier, compiled once per model; traced, optimized and timed here, not in a job."""

    @tf.function(input_signature=[tf.TensorSpec([None, *image_shape], tf.float32)])
    def classify(images):
        return tf.nn.softmax(model(preprocess(images), training=False))

    blank = tf.zeros([1, *image_shape])
    classify(blank).numpy()
    started = time.perf_counter()
    classify(blank).numpy()
    return Classifier(classify, time.perf_counter() - started)


class Prediction(NamedTuple):
    """The classifier's verdict on every image after `iteration` steps."""

    iteration: int
    probabilities: np.ndarray  # batch x classes


class Ascent(NamedTuple):
    images: np.ndarray
    history: list[StepStats]  # one per iteration, as numpy
    predictions: list[Prediction]
    frames: list[np.ndarray] = []  # batch images every `frame_every` iterations, when asked for


ProgressCallback = Callable[[int, StepStats, "Prediction | None"], None]
# The share of the job's time that predictions while it runs may cost (the one at the end is always made).
PREDICTION_BUDGET = float(os.environ.get("FEATUREVIS_PREDICTION_BUDGET", "0.02"))
PROGRESS_SECONDS = 0.25  # how often the loop fetches figures for progress: Redis is written no more often


@dataclass(frozen=True)
class Cadence:
    """When the loop looks up from the device: progress every `progress_s`, predictions by a budget.

    A prediction runs the full network, so predicting every iteration (as the
    tutorial's session.run did) would throw away what truncating the model saves.
    By default one is made whenever the job has run cost/budget seconds since
    the last and has at least as long still to run (the final prediction comes
    soon enough otherwise), so predictions cost at most `budget` of the job;
    `predict_every` fixes the interval in iterations instead.
    """

    progress_s: float = PROGRESS_SECONDS
    budget: float = PREDICTION_BUDGET
    predict_every: int | None = None

    def predict_now(self, done: int, iterations: int, since_last_s: float, elapsed_s: float,
                    classify: Classifier) -> bool:
        if self.predict_every:
            return done % self.predict_every == 0
        interval = classify.cost_s / self.budget if self.budget > 0 else float("inf")
        return since_last_s >= interval and elapsed_s / done * (iterations - done) >= interval


def ascend(step: CompiledStep, images: np.ndarray, weights: np.ndarray, iterations: int,
           classify: Classifier | None = None, on_progress: ProgressCallback | None = None,
           frame_every: int = 0, cadence: Cadence = Cadence()) -> Ascent:
    """Run the tutorial's step `iterations` times from `images`; image b climbs sum_c weights[b, c] * feature c."""
    weight_tensor = tf.constant(weights, tf.float32)
    return _climb(lambda current: step.fn(current, weight_tensor), tf.convert_to_tensor(images, tf.float32),
                  tf.identity, iterations, classify, on_progress, frame_every, cadence)


def ascend_robust(step: RobustStep, spectrum: np.ndarray, weights: np.ndarray, iterations: int, seeds: list[int],
                  diversity: float = 0.0, classify: Classifier | None = None,
                  on_progress: ProgressCallback | None = None, frame_every: int = 0,
                  cadence: Cadence = Cadence()) -> Ascent:
    """Run the robust step `iterations` times from `spectrum` (param.fft_spectrum_init of the same seeds).

    Image b maximizes the sum over c of weights[b, c] * feature c, minus
    `diversity` times objectives.diversity; seeds[b] drives its transforms.
    The images returned are the spectra's pixels, with no transform applied.
    """
    arguments = (tf.constant(weights, tf.float32), tf.constant(seeds, tf.int64), tf.constant(diversity, tf.float32))
    return _climb(lambda state: step.fn(state, *arguments), RobustState.start(spectrum),
                  lambda state: step.pixels(state.spectrum), iterations, classify, on_progress, frame_every, cadence)


# Each method: how its compiled step is built, and how a job runs it from its seeds.
STEPS = {"gradient_ascent": gradient_ascent_step, "robust": robust_step}


def optimize(method: str, step: CompiledStep, shape: tuple[int, int, int], seeds: list[int], weights: np.ndarray,
             iterations: int, **options) -> Ascent:
    """One batch of jobs by `method`, each image starting from its own seed."""
    if method == "robust":
        return ascend_robust(step, param.fft_spectrum_init(shape, seeds), weights, iterations, seeds, **options)
    return ascend(step, param.batch(shape, seeds), weights, iterations, **options)


def _climb(advance: Callable, state, pixels: Callable, iterations: int, classify: Classifier | None,
           on_progress: ProgressCallback | None, frame_every: int, cadence: Cadence) -> Ascent:
    """Advance `state` `iterations` times; classify its pixels when the cadence says and at the end.

    The step's figures stay on the device until progress is due, and all of
    them come back in one go at the end: a GPU is never made to wait for the
    host between steps. With `frame_every`, the pixels of every that-many
    iterations are kept, for an animation.
    """
    history, predictions, frames = [], [], []
    started = last_progress = last_prediction = time.perf_counter()
    for done in range(1, iterations + 1):
        state, stats = advance(state)
        history.append(stats)
        final, predicted = done == iterations, None
        now = time.perf_counter()
        if classify is not None and (final or cadence.predict_now(done, iterations, now - last_prediction,
                                                                  now - started, classify)):
            predicted = Prediction(done, classify(pixels(state)).numpy())
            predictions.append(predicted)
            last_prediction = time.perf_counter()
        if frame_every and (done % frame_every == 0 or final):
            frames.append(pixels(state).numpy())
        if on_progress is not None and (final or predicted is not None or now - last_progress >= cadence.progress_s):
            on_progress(done, StepStats(*(value.numpy() for value in stats)), predicted)
            last_progress = now
    return Ascent(pixels(state).numpy(), _on_host(history), predictions, frames)


def _on_host(history: list[StepStats]) -> list[StepStats]:
    """Every iteration's figures as numpy, fetched from the device once per figure."""
    stacked = [tf.stack(values).numpy() for values in zip(*history)]
    return [StepStats(*(values[index] for values in stacked)) for index in range(len(history))]
