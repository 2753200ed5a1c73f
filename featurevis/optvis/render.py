"""The render loop, one for every method: it advances whatever state a method's compiled step moves.

Each method (gradient_ascent.py, robust.py; by name in methods.py) compiles its step into a
`CompiledStep`; `run` drives any of them, with the predictions, progress and frames a job wants.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

import keras
import numpy as np
import tensorflow as tf

from featurevis.optvis import objectives

Objective = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]


class StepStats(NamedTuple):
    """Per-image figures of one iteration, as the tutorial printed them."""

    loss: tf.Tensor
    grad_min: tf.Tensor
    grad_max: tf.Tensor
    step_size: tf.Tensor


@dataclass
class CompiledStep:
    """A method's step traced for one (model, layer), and what the loop needs around it.

    advance(state, terms, seeds, diversity) -> (state, StepStats) is the traced
    step (terms: objectives.Terms, or a bare (batch, channels) weights matrix); the
    state is whatever the method moves (pixels, or spectra and their Adam moments),
    made by start(seeds) from each seed's noise, or by start(seeds, picture) from one
    (h, w, channels) 0..255 picture at the network's input size for every image (a job's
    start_image: DeepDream starts from a photo) or one per image (batch, h, w, channels), and seen as 0..255
    images through pixels(state). The methods of contract.START_METHODS take start(seeds, picture, noise):
    the picture with `noise` times each seed's own noise on it (a job's dataset start).
    `extras(state)`, where a method has them, are per-image maps beside the pictures
    (`alpha`: (batch, h, w) in 0..1, published as alpha.png), read once at the end.
    `traces` counts traces of the step: it should stay at 1.
    """

    advance: Callable[..., tuple[Any, StepStats]] | None
    pixels: Callable[[Any], tf.Tensor]
    start: Callable[..., Any]  # (seeds, picture=None), and (seeds, picture, noise) for contract.START_METHODS
    traces: int = 0
    extras: Callable[[Any], dict[str, tf.Tensor]] | None = None


@dataclass(frozen=True)
class Method:
    """A way to climb an objective: how its step is compiled for a network ending at the target layer.

    `needs_style`: the step also takes a style layer beside a class target (for the
    diversity between a set's images; objectives.target_and_style).
    """

    name: str
    compile_step: Callable[[keras.Model, Callable, Objective, tuple[int, int, int]], CompiledStep]
    needs_style: bool = False


@dataclass(frozen=True)
class Classifier:
    """Class probabilities of the full model (softmax, or sigmoid for a multi-label model), and what a call on one
    image costs (it sets how often a job asks)."""

    fn: Callable[[tf.Tensor], tf.Tensor]
    cost_s: float

    def __call__(self, images) -> tf.Tensor:
        return self.fn(images)


def classifier(model: keras.Model, preprocess: Callable, image_shape: tuple[int, int, int],
               multi_label: bool = False) -> Classifier:
    """The model's classifier over its logits, compiled once per model; traced, optimized and timed here, not in
    a job. `multi_label` (registry.ModelInfo.multi_label): its classes are a sigmoid's, not a softmax's."""
    probabilities = class_probabilities(multi_label)

    @tf.function(input_signature=[tf.TensorSpec([None, *image_shape], tf.float32)])
    def classify(images):
        return probabilities(model(preprocess(images), training=False))

    blank = tf.zeros([1, *image_shape])
    classify(blank).numpy()
    started = time.perf_counter()
    classify(blank).numpy()
    return Classifier(classify, time.perf_counter() - started)


def class_probabilities(multi_label: bool) -> Callable[[tf.Tensor], tf.Tensor]:
    """What turns a model's logits into its class probabilities: a sigmoid per label, else one softmax."""
    return tf.nn.sigmoid if multi_label else tf.nn.softmax


class Prediction(NamedTuple):
    """The classifier's verdict on every image after `iteration` steps."""

    iteration: int
    probabilities: np.ndarray  # batch x classes


class Ascent(NamedTuple):
    images: np.ndarray
    history: list[StepStats]  # one per iteration, as numpy
    predictions: list[Prediction]
    frames: list[np.ndarray] = []  # batch images every `frame_every` iterations, when asked for
    extras: dict[str, np.ndarray] = {}  # the step's per-image maps at the end (CompiledStep.extras)
    predictions_s: float = 0.0  # of the loop's time, what its class predictions took


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
    `predict_every` fixes the interval in iterations instead. The cost is what
    the last prediction took; until the first, the classifier's own timing of
    one image times the batch: a batch of 32 costs many times one image, and
    the budget holds from the first prediction on.
    """

    progress_s: float = PROGRESS_SECONDS
    budget: float = PREDICTION_BUDGET
    predict_every: int | None = None

    def predict_now(self, done: int, iterations: int, since_last_s: float, elapsed_s: float,
                    cost_s: float) -> bool:
        if self.predict_every:
            return done % self.predict_every == 0
        interval = cost_s / self.budget if self.budget > 0 else float("inf")
        return since_last_s >= interval and elapsed_s / done * (iterations - done) >= interval


def step_arguments(weights: np.ndarray | objectives.Terms, seeds: list[int], diversity: float = 0.0) -> tuple:
    """What a compiled step's `advance` takes after the state, converted once for a whole climb: the objective's
    terms, the seeds as a tensor and the diversity weight."""
    return objectives.as_terms(weights), tf.constant(seeds, tf.int64), tf.constant(diversity, tf.float32)


def run(step: CompiledStep, seeds: list[int], weights: np.ndarray | objectives.Terms, iterations: int,
        diversity: float = 0.0,
        classify: Classifier | None = None, on_progress: ProgressCallback | None = None, frame_every: int = 0,
        cadence: Cadence = Cadence(), state=None, predict_at_end: bool = True) -> Ascent:
    """Advance a batch `iterations` times from step.start(seeds) (or `state`); classify when the cadence says,
    and at the end unless the caller reads the finished pictures itself (`predict_at_end=False`: batch.run's
    one final pass gives their classes with their scores).

    Image b climbs the sum over c of weights[b, c] * feature c, or the objective
    an objectives.Terms batch holds (objectives.total), minus `diversity`
    times the set's similarity for a method whose step has the term; and
    seeds[b] drives whatever randomness it meets, so batching never changes an
    image. The step's figures stay on the device until progress is due, and all
    of them come back in one go at the end: a GPU is never made to wait for the
    host between steps. With `frame_every`, the pixels of every that-many
    iterations are kept, for an animation.
    """
    arguments = step_arguments(weights, seeds, diversity)
    state = step.start(seeds) if state is None else state
    history, predictions, frames = [], [], []
    prediction_s = classify.cost_s * len(seeds) if classify is not None else 0.0
    predictions_s = 0.0
    started = last_progress = last_prediction = time.perf_counter()
    for done in range(1, iterations + 1):
        state, stats = step.advance(state, *arguments)
        history.append(stats)
        final, predicted = done == iterations, None
        now = time.perf_counter()
        if classify is not None and ((final and predict_at_end) or cadence.predict_now(
                done, iterations, now - last_prediction, now - started, prediction_s)):
            predicted = Prediction(done, classify(step.pixels(state)).numpy())
            predictions.append(predicted)
            last_prediction = time.perf_counter()
            prediction_s = last_prediction - now
            predictions_s += prediction_s
        if frame_every and (done % frame_every == 0 or final):
            frames.append(step.pixels(state).numpy())
        if on_progress is not None and (final or predicted is not None or now - last_progress >= cadence.progress_s):
            on_progress(done, StepStats(*(value.numpy() for value in stats)), predicted)
            last_progress = now
    extras = {name: value.numpy() for name, value in step.extras(state).items()} if step.extras else {}
    return Ascent(step.pixels(state).numpy(), _on_host(history), predictions, frames, extras, predictions_s)


def _on_host(history: list[StepStats]) -> list[StepStats]:
    """Every iteration's figures as numpy, fetched from the device once per figure."""
    stacked = [tf.stack(values).numpy() for values in zip(*history)]
    return [StepStats(*(values[index] for values in stacked)) for index in range(len(history))]
