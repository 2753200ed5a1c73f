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
  generator's images, also sees the target class.
- for a diverse set, gram_similarity: how alike the images' styles are at the
  target layer, the quantity the diversity term lowers.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Callable, NamedTuple

import numpy as np
import tensorflow as tf

from featurevis.optvis import objectives, transform

# Each is a forward pass of the truncated network: on short jobs four of them took a large share of the
# budget for everything around the step, so two (bench/RESULTS.md has the measurements).
SAMPLES = 2
HELD_OUT_SEED = 10_007  # not a seed any job's own transforms use: they draw from the job seed


def held_out(size: int) -> transform.Moves:
    return transform.Moves(pad=0.0, jitter=size / 16, scale=(0.8, 1.2), degrees=15.0, jitter_after=0.0)


class Probe(NamedTuple):
    """The compiled passes scores take: `features(images)` -> (per-feature values, diversity), and
    `held_out(images)` -> per-feature values at the images, then at each of SAMPLES held-out moves."""

    features: Callable
    held_out: Callable


def scores(probe: Probe, images: np.ndarray, weights: np.ndarray, probabilities: np.ndarray | None,
           classes: bool, judge: tuple[str, Callable] | None = None) -> list[dict]:
    """One dict of scores per image.

    `probe(images)` gives (batch, features) of the target layer; `classes` says
    whether those are the class logits; `probabilities` are the model's class
    probabilities at the images (the job's last prediction).
    """
    batch = images.shape[0]
    features = probe.held_out(tf.constant(images)).numpy()
    at_image = features[:batch]
    objective = (at_image * weights).sum(axis=1)
    moved = (features[batch:].reshape(SAMPLES, batch, -1) * weights).sum(axis=2).mean(axis=0)
    main = weights.argmax(axis=1)  # the most weighted feature stands for the job
    rows = []
    for b in range(batch):
        row = {"objective": float(objective[b]), "robustness": _ratio(moved[b], objective[b])}
        if classes:
            mine = probabilities[b]
            row.update(target_probability=float(mine[main[b]]), target_rank=int((mine > mine[main[b]]).sum()) + 1)
        else:
            channels = at_image[b]
            row["specificity_z"] = float((channels[main[b]] - channels.mean()) / (channels.std() + 1e-12))
        if judge is not None and classes:
            name, judged = judge
            verdict = judged(images[b:b + 1]).numpy()[0]
            row.update(judge=name, judge_agrees=bool(verdict.argmax() == main[b]),
                       judge_probability=float(verdict[main[b]]))
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


def feature_probe(network, preprocess: Callable, image_shape: tuple[int, int, int]) -> Probe:
    """The target layer's per-feature values (channel means, or logits), compiled once per layer:
    with each image's objectives.diversity in the batch (on the layer the step compares), and at the
    images and their held-out moves in one pass (the network is traced once, for both). The held-out pass,
    over three times the batch, skips the diversity's Gram matrices, which it does not use."""

    @tf.function(input_signature=[tf.TensorSpec([None, *image_shape], tf.float32), tf.TensorSpec([], tf.bool)])
    def values_and_diversity(images, with_diversity):
        outputs, style = objectives.target_and_style(network(preprocess(images), training=False))
        values = outputs if len(outputs.shape) == 2 else tf.reduce_mean(outputs, axis=[1, 2])
        return values, tf.cond(with_diversity, lambda: objectives.diversity(style),
                               lambda: tf.zeros(tf.shape(values)[:1], values.dtype))

    values_and_diversity(tf.zeros([1, *image_shape]), tf.constant(True))
    with_moves = _with_held_out_moves(tuple(image_shape))
    return Probe(lambda images: values_and_diversity(images, tf.constant(True)),
                 lambda images: values_and_diversity(with_moves(images), tf.constant(False))[0])


@lru_cache(maxsize=None)
def _with_held_out_moves(image_shape: tuple[int, int, int]) -> Callable:
    """Images followed by their SAMPLES held-out moves, in a graph (eager, the moves cost a third of the
    scoring) traced once per image shape, so a model's later layers pay nothing for it. Every image of a
    sample shares one seed, so one draw serves them all (transform.standard's per-image draws, tiled)."""
    moves = held_out(max(image_shape[:2]))

    @tf.function(input_signature=[tf.TensorSpec([None, *image_shape], tf.float32)])
    def with_moves(images):
        batch = tf.shape(images)[0]
        return tf.concat([images] + [transform.move(images, tf.tile(transform.draw(HELD_OUT_SEED + sample, sample)[None],
                                                                    [batch, 1]), moves)
                                     for sample in range(SAMPLES)], axis=0)

    with_moves(tf.zeros([1, *image_shape]))
    return with_moves
