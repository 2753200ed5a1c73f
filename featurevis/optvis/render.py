"""The render loop: a compiled gradient-ascent step and the loop that drives it."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, NamedTuple

import keras
import numpy as np
import tensorflow as tf

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
    The fixed input signature (any batch, int32 features) means new features
    and batch sizes reuse the same graph.
    """
    compiled = CompiledStep(fn=None)

    @tf.function(input_signature=[
        tf.TensorSpec([None, *image_shape], tf.float32),
        tf.TensorSpec([None], tf.int32),
    ])
    def step(images, features):
        compiled.traces[0] += 1  # runs at trace time only
        with tf.GradientTape() as tape:
            tape.watch(images)
            loss = objective(network(preprocess(images), training=False), features)
            total = tf.reduce_sum(loss)  # images are independent, so d(total)/d(image b) = d(loss b)/d(image b)
        grads = tape.gradient(total, images)
        step_size = 1.0 / (tf.math.reduce_std(grads, axis=[1, 2, 3]) + 1e-8)
        updated = tf.clip_by_value(images + step_size[:, None, None, None] * grads, 0.0, 255.0)
        return updated, StepStats(loss, tf.reduce_min(grads, axis=[1, 2, 3]),
                                  tf.reduce_max(grads, axis=[1, 2, 3]), step_size)

    compiled.fn = step
    # Trace, and run once: TensorFlow optimizes the graph on its first call, which would
    # otherwise land in the first job's optimize time instead of the step's compile time.
    step(tf.zeros([1, *image_shape]), tf.zeros([1], tf.int32))
    return compiled


def classifier(model: keras.Model, preprocess: Callable, image_shape: tuple[int, int, int]) -> Callable:
    """Softmax class probabilities of the full model, compiled once per model."""

    @tf.function(input_signature=[tf.TensorSpec([None, *image_shape], tf.float32)])
    def classify(images):
        return tf.nn.softmax(model(preprocess(images), training=False))

    classify(tf.zeros([1, *image_shape]))  # traced and optimized with the model, not in the middle of a job
    return classify


class Prediction(NamedTuple):
    """The classifier's verdict on every image after `iteration` steps."""

    iteration: int
    probabilities: np.ndarray  # batch x classes


class Ascent(NamedTuple):
    images: np.ndarray
    history: list[StepStats]  # one per iteration, as numpy
    predictions: list[Prediction]


IterationCallback = Callable[[int, StepStats, "Prediction | None"], None]
PREDICT_EVERY = 10


def ascend(step: CompiledStep, images: np.ndarray, features: list[int], iterations: int,
           classify: Callable | None = None, on_iteration: IterationCallback | None = None) -> Ascent:
    """Run the step `iterations` times, classifying every PREDICT_EVERY iterations and at the end.

    Classifying runs the full network, so doing it every step (as the tutorial's
    session.run did) would throw away what truncating the model saves.
    """
    current = tf.convert_to_tensor(images, tf.float32)
    feature_tensor = tf.constant(features, tf.int32)
    history, predictions = [], []
    for done in range(1, iterations + 1):
        current, stats = step.fn(current, feature_tensor)
        history.append(StepStats(*(value.numpy() for value in stats)))
        predicted = None
        if classify is not None and (done % PREDICT_EVERY == 0 or done == iterations):
            predicted = Prediction(done, classify(current).numpy())
            predictions.append(predicted)
        if on_iteration is not None:
            on_iteration(done, history[-1], predicted)
    return Ascent(current.numpy(), history, predictions)
