"""The tutorial's method: plain gradient ascent on the pixels, from nearly flat grey noise."""
from __future__ import annotations

from typing import Callable

import keras
import tensorflow as tf

from featurevis.optvis import objectives, param
from featurevis.optvis.render import CompiledStep, Method, Objective, StepStats


def compile_step(network: keras.Model, preprocess: Callable, objective: Objective,
                 image_shape: tuple[int, int, int]) -> CompiledStep:
    """The tutorial's update, compiled once: grad in 0..255 pixel space, step 1/std(grad), clip.

    `network` ends at the target layer, so deeper layers are never computed.
    `objective` takes dense (batch, channels) weights (objectives.weighted_channels
    or weighted_logits; a plain job is one-hot) and objectives.total adds the
    other kinds of term: with any batch and objectives.Terms as tensor arguments,
    new features, objectives and batch sizes reuse the same graph. The
    state is the images themselves; seeds only chose the starting noise, so
    from a start picture (exactly the picture) they change nothing.
    """
    compiled = CompiledStep(advance=None, pixels=tf.identity, start=lambda seeds, picture=None: tf.constant(
        param.tutorial_noise(image_shape, seeds) if picture is None else param.tiled(picture, len(seeds))))

    @tf.function(input_signature=[
        tf.TensorSpec([None, *image_shape], tf.float32),
        objectives.SPEC,  # the objective's terms, per image
    ])
    def step(images, terms):
        compiled.traces += 1  # runs at trace time only
        with tf.GradientTape() as tape:
            tape.watch(images)
            loss = objectives.total(objective, network(preprocess(images), training=False), terms) \
                - objectives.penalty(images, terms)
            total = tf.reduce_sum(loss)  # images are independent, so d(total)/d(image b) = d(loss b)/d(image b)
        grads = tape.gradient(total, images)
        step_size = 1.0 / (tf.math.reduce_std(grads, axis=[1, 2, 3]) + 1e-8)
        updated = tf.clip_by_value(images + step_size[:, None, None, None] * grads, 0.0, 255.0)
        return updated, StepStats(loss, tf.reduce_min(grads, axis=[1, 2, 3]),
                                  tf.reduce_max(grads, axis=[1, 2, 3]), step_size)

    compiled.advance = lambda images, terms, seeds, diversity: step(images, objectives.as_terms(terms))
    # Trace, and run once: TensorFlow optimizes the graph on its first call, which would
    # otherwise land in the first job's optimize time instead of the step's compile time.
    step(tf.zeros([1, *image_shape]), objectives.as_terms(tf.zeros([1, network.output.shape[-1]])))
    return compiled


METHOD = Method("gradient_ascent", compile_step)
