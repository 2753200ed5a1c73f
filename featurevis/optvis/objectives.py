"""Objectives: a layer's output and per-image feature indices -> one loss per image.

Feature indices are a tensor argument, not Python constants, so one compiled
step serves every feature of a layer without retracing.
"""
import tensorflow as tf


def channel_mean(activations: tf.Tensor, features: tf.Tensor) -> tf.Tensor:
    """Mean of channel features[b] over the whole map: the tutorial's conv loss.

    Averaging over every position makes the whole image carry the pattern,
    not one spot.
    """
    return _pick(tf.reduce_mean(activations, axis=[1, 2]), features)


def class_logit(logits: tf.Tensor, features: tf.Tensor) -> tf.Tensor:
    """The pre-softmax score of class features[b]: raising it need not lower the others."""
    return _pick(logits, features)


def _pick(values: tf.Tensor, features: tf.Tensor) -> tf.Tensor:
    """values[b, features[b]] for each image b.

    A one-hot product rather than `tf.gather(batch_dims=1)`, whose gradient
    comes back None inside a tf.function with an unknown batch size.
    """
    return tf.reduce_sum(values * tf.one_hot(features, tf.shape(values)[-1], dtype=values.dtype), axis=-1)
