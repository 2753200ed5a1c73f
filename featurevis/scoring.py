"""Scores of a finished picture, in every meta.json, so methods are compared by numbers.

- robustness: the objective under random transforms the optimization did not
  use (scale 0.8-1.2, rotation ±15°, shifts up to 1/16 of the size), divided
  by its value at the picture itself. Near 1: the pattern is really there;
  near 0: it was noise tuned to one pixel grid.
- specificity: for a conv target, the target channel's z-score among all the
  layer's channels at the picture (does it excite this feature, or everything?);
  for a class target, the class's softmax probability and rank.
- transferability (models with a judge, e.g. shapes_cnn judged by shapes_judge):
  whether an independently trained network, one that learnt the classes from another
  generator's images, also sees the target class (gives it at least JUDGE_SEES).
- for a diverse set, gram_similarity: how alike the images' styles are at the
  target layer, the quantity the diversity term lowers.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Callable, NamedTuple

import keras
import numpy as np
import tensorflow as tf

from featurevis.optvis import objectives, transform

# Each is a forward pass of the truncated network: on short jobs four of them took a large share of the
# budget for everything around the step, so two (bench/RESULTS.md has the measurements).
SAMPLES = 2
HELD_OUT_SEED = 10_007  # not a seed any job's own transforms use: they draw from the job seed
# A judge recognizes a picture's class when it gives that class at least this probability: the rule of the
# measurement made outside the project. Its top class alone would count pictures with nothing drawn: shapes_judge
# reads a flat picture as a triangle.
JUDGE_SEES = 0.5


def held_out(size: int) -> transform.Moves:
    return transform.Moves(pad=0.0, jitter=size / 16, scale=(0.8, 1.2), degrees=15.0, jitter_after=0.0)


class Probe(NamedTuple):
    """The compiled passes scores take: `features(images)` -> (per-feature values, diversity), and
    `final(images)` -> Final, the finished pictures read once."""

    features: Callable
    final: Callable


class Final(NamedTuple):
    """A finished batch read in one compiled pass: the model's class probabilities at the pictures (None for a
    model without classes), and the target's per-feature values at them, then at each of SAMPLES held-out moves."""

    probabilities: np.ndarray | None
    values: np.ndarray  # (batch * (1 + SAMPLES), features): the pictures' rows first


def read(probe: Probe, images: np.ndarray) -> Final:
    probabilities, values = probe.final(tf.constant(images))
    return Final(None if probabilities is None else probabilities.numpy(), values.numpy())


def scores(final: Final, images: np.ndarray, weights: np.ndarray, classes: bool,
           judge: tuple[str, Callable] | None = None) -> list[dict]:
    """One dict of scores per image, from the batch's `final` read (`classes`: the target is the class logits)."""
    batch = images.shape[0]
    at_image = final.values[:batch]
    objective = (at_image * weights).sum(axis=1)
    moved = (final.values[batch:].reshape(SAMPLES, batch, -1) * weights).sum(axis=2).mean(axis=0)
    main = weights.argmax(axis=1)  # the most weighted feature stands for the job
    verdicts = judge[1](images).numpy() if judge is not None and classes else None
    rows = []
    for b in range(batch):
        row = {"objective": float(objective[b]), "robustness": _ratio(moved[b], objective[b])}
        if classes:
            mine = final.probabilities[b]
            row.update(target_probability=float(mine[main[b]]), target_rank=int((mine > mine[main[b]]).sum()) + 1)
        else:
            channels = at_image[b]
            row["specificity_z"] = float((channels[main[b]] - channels.mean()) / (channels.std() + 1e-12))
        if verdicts is not None:
            row.update(judge=judge[0], judge_agrees=bool(verdicts[b][main[b]] >= JUDGE_SEES),
                       judge_probability=float(verdicts[b][main[b]]))
        rows.append(row)
    return rows


def gram_similarity(probe: Callable, images: np.ndarray) -> float:
    """Mean cosine similarity of the images' Gram matrices at the target layer, over all pairs (at least 2 images).

    1: the same style everywhere; lucid's diversity term pushes it down.
    """
    count = len(images)
    return float(probe.features(images)[1].numpy().mean() * count / (count - 1))


def _ratio(moved: float, at_image: float) -> float:
    return float(moved / at_image) if abs(at_image) > 1e-12 else 0.0


def feature_probe(network, preprocess: Callable, image_shape: tuple[int, int, int],
                  classes: tuple[keras.Model, Callable] | None = None) -> Probe:
    """The target layer's per-feature values (channel means, or logits), compiled once per layer: with each
    image's objectives.diversity in the batch (on the layer the step compares); and the final read.

    `classes`: the model's logits network (sharing `network`'s input) and what makes them probabilities. The
    final read runs the full network once at the pictures for both their classes and the target's values (the
    target is on the way to the logits), and the truncated network only on the held-out moves: a job's last
    prediction and its scores were two passes at the picture before."""

    @tf.function(input_signature=[tf.TensorSpec([None, *image_shape], tf.float32)])
    def values_and_diversity(images):
        outputs, style = objectives.target_and_style(network(preprocess(images), training=False))
        return _per_feature(outputs), objectives.diversity(style)

    target = keras.Model(network.inputs[0], objectives.target_and_style(network.outputs)[0])
    moves = _held_out_moves(tuple(image_shape))
    if classes is None:
        @tf.function(input_signature=[tf.TensorSpec([None, *image_shape], tf.float32)])
        def final(images):
            return None, _per_feature(target(preprocess(tf.concat([images, moves(images)], axis=0)), training=False))
    else:
        with_classes = keras.Model(network.inputs[0], [classes[0].output, target.output])

        @tf.function(input_signature=[tf.TensorSpec([None, *image_shape], tf.float32)])
        def final(images):
            logits, values = with_classes(preprocess(images), training=False)
            moved = _per_feature(target(preprocess(moves(images)), training=False))
            return classes[1](logits), tf.concat([_per_feature(values), moved], axis=0)

    values_and_diversity(tf.zeros([1, *image_shape]))
    final(tf.zeros([1, *image_shape]))
    return Probe(values_and_diversity, final)


def _per_feature(outputs: tf.Tensor) -> tf.Tensor:
    return outputs if len(outputs.shape) == 2 else tf.reduce_mean(outputs, axis=[1, 2])


@lru_cache(maxsize=None)
def _held_out_moves(image_shape: tuple[int, int, int]) -> Callable:
    """The images' SAMPLES held-out moves, one after another, in a graph (eager, the moves cost a third of the
    scoring) traced once per image shape, so a model's later layers pay nothing for it. Every image of a
    sample shares one seed, so one draw serves them all (transform.standard's per-image draws, tiled)."""
    moves = held_out(max(image_shape[:2]))

    @tf.function(input_signature=[tf.TensorSpec([None, *image_shape], tf.float32)])
    def held_out_moves(images):
        batch = tf.shape(images)[0]
        return tf.concat([transform.move(images, tf.tile(transform.draw(HELD_OUT_SEED + sample, sample)[None],
                                                         [batch, 1]), moves)
                          for sample in range(SAMPLES)], axis=0)

    held_out_moves(tf.zeros([1, *image_shape]))
    return held_out_moves
