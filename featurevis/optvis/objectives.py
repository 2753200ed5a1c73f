"""Objectives: a layer's output and per-image targets -> one loss per image.

Targets are tensor arguments, not Python constants, so one compiled step
serves every feature of a layer without retracing: a dense (batch, channels)
weight per image, lucid's sums of objectives (`channel(l, 3) + 0.5 * channel(l, 7)`)
as data. A plain job, one feature, is the one-hot case.
"""
import numpy as np
import tensorflow as tf


def weights_matrix(per_image: list[dict[int, float]], channels: int) -> np.ndarray:
    """The dense (batch, channels) weights a compiled step takes, from each image's {feature: weight}."""
    weights = np.zeros((len(per_image), channels), np.float32)
    for row, terms in enumerate(per_image):
        for feature, weight in terms.items():
            weights[row, feature] = weight
    return weights


def weighted_channels(activations: tf.Tensor, weights: tf.Tensor) -> tf.Tensor:
    """sum over c of weights[b, c] * (mean of channel c over the map), for each image b.

    With one-hot weights it is the tutorial's conv loss, the mean of one channel:
    averaging over every position makes the whole image carry the pattern, not one spot.
    """
    return weighted_logits(tf.reduce_mean(activations, axis=[1, 2]), weights)


def weighted_logits(logits: tf.Tensor, weights: tf.Tensor) -> tf.Tensor:
    """sum over c of weights[b, c] * logits[b, c], for each image b (pre-softmax: raising one need not lower others)."""
    return tf.reduce_sum(tf.cast(logits, weights.dtype) * weights, axis=-1)  # float32 even under mixed precision


def target_and_style(outputs) -> tuple[tf.Tensor, tf.Tensor]:
    """A network's outputs as (the target layer, the layer `diversity` compares).

    One output serves as both. A class target's network has a second output,
    a conv layer: a (batch, classes) logit vector has no positions to take a
    Gram matrix over, and pushing logit vectors apart pushes the pictures
    towards other classes (bench/RESULTS.md, "Measurements behind defaults").
    """
    return tuple(outputs) if isinstance(outputs, (list, tuple)) else (outputs, outputs)


def diversity(activations: tf.Tensor) -> tf.Tensor:
    """lucid's diversity, per image: its Gram matrix's summed cosine similarity with the others', / batch.

    Gram matrices (channel x channel correlations over positions) describe
    style, not place, so lowering this asks for images of one feature that
    differ in kind, not just in where things are. Summed over the batch it is
    lucid's value; lower is more diverse, so an objective subtracts it. One
    image alone scores 0.
    """
    batch = tf.shape(activations)[0]
    flat = tf.reshape(activations, [batch, -1, tf.shape(activations)[-1]])
    grams = tf.math.l2_normalize(tf.matmul(flat, flat, transpose_a=True), axis=[1, 2], epsilon=1e-10)
    grams = tf.reshape(grams, [batch, -1])
    similarity = tf.matmul(grams, grams, transpose_b=True)  # cosines, as the Grams have unit norm
    return (tf.reduce_sum(similarity, axis=1) - tf.linalg.diag_part(similarity)) / tf.cast(batch, grams.dtype)
