"""Transformation robustness, after lucid's `transform.standard_transforms`.

Each step shows the network a randomly padded, jittered, scaled and rotated
copy of the image, so only patterns that survive small moves pay off, not
high-frequency noise tuned to one exact pixel grid.

Lucid resamples the image at every stage. Each stage is an affine map of
pixel coordinates, so here they are composed into one map per image and the
image is resampled once, bilinearly, with `ImageProjectiveTransformV3` (the op
behind tensorflow_addons' rotate, which is not available): one blur instead
of three, and each image of a batch gets its own draw from its own seed. The
op's registered gradient warps the gradient back through the inverse map:
not the exact adjoint of bilinear sampling, but close for these small moves.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import tensorflow as tf

LUCID_SIZE = 224  # the image size lucid's pixel amounts are meant for
FILL = 127.5  # lucid pads with 0.5 of its 0..1 pixels: mid-grey


@dataclass(frozen=True)
class Moves:
    """How far lucid's stages may move an image: pad, jitter, scale, rotate, jitter again (pixels, degrees)."""

    pad: float
    jitter: float
    scale: tuple[float, float]
    degrees: float
    jitter_after: float

    @classmethod
    def lucid(cls, size: int, strength: float = 1.0) -> Moves:
        """lucid's defaults (pad 12, jitter 8, scale 0.9..1.1, rotate ±10°, jitter 4 at 224 px), with the
        pixel amounts scaled by size/224 so they move the picture as far relative to its size: a 299-px
        image gets pad 16, jitter 10.7, jitter 5.3. `strength` scales every amount (and the scale's distance
        from 1), so one number says how hard a method's transforms move (contract.Defaults.moves); 0: not at all."""
        factor = size / LUCID_SIZE * strength
        return cls(pad=12 * factor, jitter=8 * factor, scale=(1 - 0.1 * strength, 1 + 0.1 * strength),
                   degrees=10.0 * strength, jitter_after=4 * factor)


def standard(images: tf.Tensor, seeds: tf.Tensor, step: tf.Tensor, moves: Moves | None = None) -> tf.Tensor:
    """Images (batch, h, w, c) in 0..255, each moved by its own random draw; same shape, same range.

    Image b's draw depends only on (seeds[b], step), so a job is reproducible
    from its seed and batching never changes what one image sees. Needs a
    static h and w; `moves` defaults to `Moves.lucid(max(h, w))`.
    """
    step = tf.cast(step, tf.int64)
    draws = tf.map_fn(lambda seed: draw(seed, step), tf.cast(seeds, tf.int64), fn_output_signature=tf.float32)
    return move(images, draws, moves)


def draw(seed: tf.Tensor, step: tf.Tensor) -> tf.Tensor:
    """The six numbers in [0, 1) that place one image's moves, from its seed and the step number."""
    return tf.random.stateless_uniform([6], tf.stack([tf.cast(seed, tf.int64), tf.cast(step, tf.int64)]))


def move(images: tf.Tensor, draws: tf.Tensor, moves: Moves | None = None) -> tf.Tensor:
    """Images moved by their (batch, 6) draws (see `draw`); `standard` when each image draws from its own seed."""
    h, w = images.shape[1:3]
    moves = moves or Moves.lucid(max(h, w))
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images, transforms=_sampling_map(draws, h, w, moves), output_shape=[h, w],
        fill_value=FILL, interpolation="BILINEAR", fill_mode="CONSTANT")


def _sampling_map(draws: tf.Tensor, h: int, w: int, r: Moves) -> tf.Tensor:
    """The input point each output pixel samples, as the op's 8 projective parameters per image.

    Lucid's stages undone from the last: the model's h x w pixels cover the
    middle of the view lucid would show, cropped by the second jitter, rotated
    about its centre, scaled, cropped by the first jitter, and padded.
    `draws` is (batch, 6) in [0, 1).

    Lucid's models took any size; ours want their own. Every draw's view is
    resized by one factor, the one that fits the view at scale 1 to h x w,
    so a scale below 1 still shows the picture smaller (grey around it) and
    above 1 larger (its edge cut off). Resizing each draw's own view to h x w
    would undo the scale, leaving the patterns one size.
    """
    size = tf.constant([w, h], tf.float32)  # points are (x, y)
    first = draws[:, 0:2] * r.jitter
    zoom = r.scale[0] + draws[:, 2:3] * (r.scale[1] - r.scale[0])
    angle = math.radians(r.degrees) * (2 * draws[:, 3] - 1)
    second = draws[:, 4:6] * r.jitter_after
    canvas = size + 2 * r.pad - r.jitter  # after padding and the first crop
    scaled = canvas * zoom
    centre = (scaled - 1) / 2
    middle = (canvas - 1) * (zoom - 1) / 2  # where the unscaled view's width starts, centred in the scaled one

    def source(point: tf.Tensor) -> tf.Tensor:
        point = point * (canvas - r.jitter_after) / size + second + middle
        point = _rotate(point - centre, angle) + centre
        return point / zoom + first - r.pad

    unit = tf.ones_like(first)
    origin = source(0 * unit)
    x_axis, y_axis = source(unit * [1.0, 0.0]) - origin, source(unit * [0.0, 1.0]) - origin
    zeros = tf.zeros_like(angle)
    return tf.stack([x_axis[:, 0], y_axis[:, 0], origin[:, 0], x_axis[:, 1], y_axis[:, 1], origin[:, 1], zeros, zeros],
                    axis=1)


def _rotate(points: tf.Tensor, angle: tf.Tensor) -> tf.Tensor:
    """(batch, 2) points turned by angle[b] radians about the origin."""
    cos, sin = tf.cos(angle), tf.sin(angle)
    return tf.stack([cos * points[:, 0] - sin * points[:, 1], sin * points[:, 0] + cos * points[:, 1]], axis=1)
