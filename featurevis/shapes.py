"""A synthetic, seeded data set of shapes and textures. TensorFlow-free (numpy + PIL).

It trains the two small models that ship with their weights (`shapes_cnn`,
`shapes_cnn_b`), so the service has trained networks that need no download,
and its classes are simple enough to judge a visualization by eye. The same
seed gives the same images on every machine: the training script and the
tests generate their data instead of storing it.

Every image is a noisy background in one colour with a pattern drawn on top in
another, clearly different, colour. Classes 0-3 are one filled shape, 16-48 px
across (the diameter of its circumscribed circle), at a random position and,
but for the circle, a random rotation. Classes 4-9 are textures over the whole
image with a period of 6-16 px and a random phase.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw

CLASS_NAMES = (
    "circle", "square", "triangle", "cross",
    "horizontal_stripes", "vertical_stripes", "diagonal_stripes", "checkerboard", "dots", "rings",
)
SIZE = 64
SHAPE_DIAMETERS = (16.0, 48.0)
PERIODS = (6.0, 16.0)
MIN_COLOUR_DISTANCE = 120.0  # RGB distance of pattern from background: a clear contrast whatever the hues
NOISE_STDS = (2.0, 16.0)
SUPERSAMPLE = 4  # shapes are drawn this much larger and box-filtered down, for anti-aliased edges

Masks = Callable[[np.random.Generator, int], np.ndarray]


def generate(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n images, float32 0..255 of shape (n, 64, 64, 3), and their int64 labels.

    Labels are balanced (each class n // 10 or one more times) and shuffled.
    """
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % len(CLASS_NAMES))
    masks = np.empty((n, SIZE, SIZE), np.float32)
    for label, make_masks in enumerate(_MASKS):
        where = np.flatnonzero(labels == label)
        masks[where] = make_masks(rng, len(where))
    return _paint(rng, masks), labels


def _paint(rng: np.random.Generator, masks: np.ndarray) -> np.ndarray:
    """Noisy background colour where a mask is 0, pattern colour where it is 1, blended between."""
    n = len(masks)
    background, pattern = _contrasting_colours(rng, n)
    images = rng.standard_normal((n, SIZE, SIZE, 3), dtype=np.float32)  # float32 and in place: 20k images are 1 GB
    images *= _uniform(rng, *NOISE_STDS, (n, 1, 1, 1))
    images += background[:, None, None]
    images += masks[..., None] * (pattern[:, None, None] - images)
    return np.clip(images, 0.0, 255.0, out=images)


def _contrasting_colours(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Background and pattern colours, redrawn until every pair is MIN_COLOUR_DISTANCE apart."""
    background, pattern = _uniform(rng, 0, 255, (n, 3)), _uniform(rng, 0, 255, (n, 3))
    while (close := np.linalg.norm(pattern - background, axis=1) < MIN_COLOUR_DISTANCE).any():
        pattern[close] = rng.uniform(0, 255, (close.sum(), 3))
    return background, pattern


# Shapes: polygon vertices on the unit circle (the shape's circumscribed circle), before rotation.

def _regular_polygon(corners: int) -> np.ndarray:
    angles = 2 * np.pi * np.arange(corners) / corners
    return np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _cross(half_width: float = 0.3) -> np.ndarray:
    """A plus sign whose arm tips' corners touch the unit circle."""
    w, a = half_width, np.sqrt(1.0 - half_width**2)
    quarter = [(w, a), (w, w), (a, w)]  # clockwise: an arm tip's corner, the inner corner, the next arm's
    return np.concatenate([np.array(quarter) @ _rotation(-k * np.pi / 2) for k in range(4)])


def _rotation(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, s], [-s, c]])


def _shape_masks(outline: np.ndarray | None) -> Masks:
    """Masks of one filled shape per image: a polygon `outline`, or a circle when None."""

    def masks(rng: np.random.Generator, n: int) -> np.ndarray:
        radii = rng.uniform(*SHAPE_DIAMETERS, n) / 2
        centres = rng.uniform(radii[:, None], SIZE - radii[:, None], (n, 2))
        angles = rng.uniform(0, 2 * np.pi, n)
        return np.stack([_draw(outline, c, r, a) for c, r, a in zip(centres, radii, angles)])

    return masks


def _draw(outline: np.ndarray | None, centre: np.ndarray, radius: float, angle: float) -> np.ndarray:
    big = SIZE * SUPERSAMPLE
    canvas = Image.new("L", (big, big))
    draw = ImageDraw.Draw(canvas)
    centre, radius = centre * SUPERSAMPLE, radius * SUPERSAMPLE
    if outline is None:
        draw.ellipse([*(centre - radius), *(centre + radius)], fill=255)
    else:
        draw.polygon([tuple(p) for p in centre + radius * outline @ _rotation(angle)], fill=255)
    small = canvas.resize((SIZE, SIZE), Image.Resampling.BOX)
    return np.asarray(small, np.float32) / 255.0


# Textures: a signed distance (px) into the pattern per pixel, vectorised over the batch;
# clip(distance + 0.5, 0, 1) turns it into a mask anti-aliased over one pixel.

_Y, _X = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) + 0.5


SignedDistance = Callable[[np.random.Generator, np.ndarray], np.ndarray]  # (rng, periods (n, 1, 1)) -> (n, 64, 64)


def _texture_masks(signed_distance: SignedDistance) -> Masks:
    def masks(rng: np.random.Generator, n: int) -> np.ndarray:
        periods = _uniform(rng, *PERIODS, (n, 1, 1))
        return np.clip(signed_distance(rng, periods) + 0.5, 0.0, 1.0)

    return masks


def _uniform(rng: np.random.Generator, low: float, high: float, shape: tuple[int, ...]) -> np.ndarray:
    """rng.uniform in float32, so a batch of textures is computed in float32 throughout."""
    return rng.uniform(low, high, shape).astype(np.float32)


def _bands(position: np.ndarray, periods: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Half-period bands across `position` (px), at a random phase: the profile of stripes and rings."""
    phases = _uniform(rng, 0, 1, periods.shape) * periods
    return np.abs((position + phases) % periods - periods / 2) - periods / 4


def _horizontal_stripes(rng, periods):
    return _bands(_Y, periods, rng)


def _vertical_stripes(rng, periods):
    return _bands(_X, periods, rng)


def _diagonal_stripes(rng, periods):
    """At 45 or 135 degrees, the period measured across the stripes."""
    direction = rng.choice([-1.0, 1.0], periods.shape).astype(np.float32)
    return _bands((_X + direction * _Y) / math.sqrt(2), periods, rng)


def _checkerboard(rng, periods):
    across, down = _bands(_X, periods, rng), _bands(_Y, periods, rng)
    return np.sign(across * down) * np.minimum(np.abs(across), np.abs(down))


def _dots(rng, periods):
    """A square grid of discs, radius 0.2-0.3 of the period."""
    across, down = ((axis + _uniform(rng, 0, 1, periods.shape) * periods) % periods - periods / 2 for axis in (_X, _Y))
    radii = _uniform(rng, 0.2, 0.3, periods.shape) * periods
    return radii - np.hypot(across, down)


def _rings(rng, periods):
    """Concentric rings around a random point of the image."""
    centres = _uniform(rng, 0, SIZE, (len(periods), 2, 1, 1))
    return _bands(np.hypot(_X - centres[:, 0], _Y - centres[:, 1]), periods, rng)


_MASKS: tuple[Masks, ...] = (
    _shape_masks(None), _shape_masks(_regular_polygon(4)), _shape_masks(_regular_polygon(3)), _shape_masks(_cross()),
    *(_texture_masks(f) for f in (_horizontal_stripes, _vertical_stripes, _diagonal_stripes,
                                  _checkerboard, _dots, _rings)),
)
