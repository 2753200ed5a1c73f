"""A second, independently written generator of the ten shapes classes: the judge's data. numpy only.

`shapes_cnn` and `shapes_cnn_b` both learn from featurevis/shapes.py, so their
agreement on a picture can be agreement about that generator's quirks (its
colour pairs, its fixed cross and band profiles, its noise). The judge
(`shapes_judge`) learns from this module alone, which shares no code with
shapes.py and draws the same ten classes, in the same order, otherwise:

- every shape and texture is an inside/outside test on a grid twice as fine as
  the image (half-planes for polygons, distances for circles and rings,
  thresholded cosines for stripes and checkerboards), averaged down 2x2;
- shapes 14-58 px across (their circumscribed circle), and in 40% of the shape
  images 2-4 smaller ones (12-28 px) of the same class that do not overlap;
  the cross's arms are 0.18-0.32 of its size wide, not one fixed ratio;
- textures have a period of 4.5-20 px, a duty cycle (the share of a period the
  pattern covers) of 0.3-0.7 and a tilt of up to 8 degrees;
- the background is a linear gradient between two colours; the pattern's colour
  differs from both ends by at least MIN_LUMINANCE_GAP in luminance, on the
  same side, or by MIN_CHROMA_GAP in chroma (YCbCr's Cb-Cr plane), so some
  patterns differ from their background in hue alone (shapes.py asks for an
  RGB distance instead);
- noise: Gaussian (std 0-10), salt and pepper in half the images (up to 3% of
  the pixels), and a blur of up to 0.25 of a pixel's weight to each neighbour.

Seeded and deterministic: the same seed gives the same images everywhere.
"""
from __future__ import annotations

import math

import numpy as np

CLASS_NAMES = (
    "circle", "square", "triangle", "cross",
    "horizontal_stripes", "vertical_stripes", "diagonal_stripes", "checkerboard", "dots", "rings",
)
SIZE = 64
FINE = 2  # the inside tests run on a grid this much finer, averaged down: anti-aliased edges
SINGLE_RADII = (7.0, 29.0)  # circumradius of a lone shape, px
SEVERAL_RADII = (6.0, 14.0)  # of each of several
SEVERAL_SHARE = 0.4  # of the shape images, those with several shapes
SEVERAL_COUNT = (2, 4)
PERIODS = (4.5, 20.0)
DUTY = (0.3, 0.7)
TILT_DEGREES = 8.0
MIN_LUMINANCE_GAP = 55.0
MIN_CHROMA_GAP = 60.0
GRADIENT_SPREAD = 60.0  # per channel, between the background's two ends
GAUSSIAN_STD = (0.0, 10.0)
SALT_PEPPER = 0.03
BLUR = 0.25

_FINE_SIZE = SIZE * FINE
_V, _U = (np.mgrid[0:_FINE_SIZE, 0:_FINE_SIZE].astype(np.float64) + 0.5) / FINE  # y, x in image pixels


def generate(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n images, float32 0..255 of shape (n, 64, 64, 3), and their int64 labels, balanced and shuffled."""
    images, labels, _ = generate_with_counts(n, seed)
    return images, labels


def generate_with_counts(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """generate(n, seed), and how many shapes each image holds (0 for a texture)."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % len(CLASS_NAMES)).astype(np.int64)
    images = np.empty((n, SIZE, SIZE, 3), np.float32)
    counts = np.zeros(n, np.int64)
    for index, label in enumerate(labels):
        images[index], counts[index] = _image(rng, int(label))
    return images, labels, counts


def _image(rng: np.random.Generator, label: int) -> tuple[np.ndarray, int]:
    placed = []
    if label < 4:
        placed = _placements(rng)
        inside = np.zeros((_FINE_SIZE, _FINE_SIZE), bool)
        for cx, cy, radius in placed:
            inside |= _SHAPES[label](rng, cx, cy, radius)
    else:
        inside = _TEXTURES[label - 4](rng)
    coverage = inside.reshape(SIZE, FINE, SIZE, FINE).mean(axis=(1, 3))
    return _colour(rng, coverage), len(placed)


def _placements(rng: np.random.Generator) -> list[tuple[float, float, float]]:
    """(x, y, circumradius) of one shape, or of several that keep 2 px apart; all inside the image."""
    if rng.random() >= SEVERAL_SHARE:
        radius = rng.uniform(*SINGLE_RADII)
        return [(rng.uniform(radius, SIZE - radius), rng.uniform(radius, SIZE - radius), radius)]
    wanted = int(rng.integers(SEVERAL_COUNT[0], SEVERAL_COUNT[1] + 1))
    placed: list[tuple[float, float, float]] = []
    for _ in range(60):  # tries; a crowded draw keeps what fitted (at least one)
        radius = rng.uniform(*SEVERAL_RADII)
        x, y = rng.uniform(radius, SIZE - radius, 2)
        if all(math.hypot(x - px, y - py) > radius + pr + 2 for px, py, pr in placed):
            placed.append((x, y, radius))
            if len(placed) == wanted:
                break
    return placed


# Shapes: boolean inside tests on the fine grid.

def _local(cx: float, cy: float, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """The fine grid in a frame centred on (cx, cy), turned by `angle`."""
    dx, dy = _U - cx, _V - cy
    c, s = math.cos(angle), math.sin(angle)
    return c * dx + s * dy, -s * dx + c * dy


def _convex(x: np.ndarray, y: np.ndarray, corners: int, inradius: float) -> np.ndarray:
    """Inside a regular polygon given by its edges' half-planes."""
    inside = np.ones(x.shape, bool)
    for k in range(corners):
        theta = 2 * math.pi * k / corners
        inside &= x * math.cos(theta) + y * math.sin(theta) <= inradius
    return inside


def _circle(rng, cx, cy, radius):
    return (_U - cx) ** 2 + (_V - cy) ** 2 <= radius**2


def _square(rng, cx, cy, radius):
    x, y = _local(cx, cy, rng.uniform(0, math.pi / 2))
    half = radius / math.sqrt(2)
    return (np.abs(x) <= half) & (np.abs(y) <= half)


def _triangle(rng, cx, cy, radius):
    x, y = _local(cx, cy, rng.uniform(0, 2 * math.pi))
    return _convex(x, y, 3, radius / 2)


def _cross(rng, cx, cy, radius):
    """Two bars across each other; their width a random share of the length."""
    x, y = _local(cx, cy, rng.uniform(0, math.pi / 2))
    width = rng.uniform(0.18, 0.32)  # half-width over circumradius
    arm = radius * math.sqrt(1 - width**2)
    half_width = radius * width
    return ((np.abs(x) <= arm) & (np.abs(y) <= half_width)) | ((np.abs(y) <= arm) & (np.abs(x) <= half_width))


_SHAPES = (_circle, _square, _triangle, _cross)


# Textures: a thresholded cosine along a direction, or distances to a lattice or a centre.

def _texture_parameters(rng):
    period = rng.uniform(*PERIODS)
    duty = rng.uniform(*DUTY)
    tilt = math.radians(rng.uniform(-TILT_DEGREES, TILT_DEGREES))
    phase = rng.uniform(0, 2 * math.pi)
    return period, duty, tilt, phase


def _wave(position: np.ndarray, period: float, duty: float, phase: float) -> np.ndarray:
    """Bands `duty` of a period wide: cos above cos(pi * duty)."""
    return np.cos(2 * math.pi * position / period + phase) >= math.cos(math.pi * duty)


def _stripes_at(angle: float):
    def stripes(rng):
        period, duty, tilt, phase = _texture_parameters(rng)
        theta = angle + tilt
        return _wave(_U * math.cos(theta) + _V * math.sin(theta), period, duty, phase)

    return stripes


def _diagonal(rng):
    period, duty, tilt, phase = _texture_parameters(rng)
    theta = (math.pi / 4 if rng.random() < 0.5 else 3 * math.pi / 4) + tilt
    return _wave(_U * math.cos(theta) + _V * math.sin(theta), period, duty, phase)


def _checkerboard(rng):
    period, _, tilt, phase = _texture_parameters(rng)
    x, y = _local(0.0, 0.0, tilt)
    other = rng.uniform(0, 2 * math.pi)
    return np.cos(math.pi * x / period + phase) * np.cos(math.pi * y / period + other) >= 0


def _dots(rng):
    """Discs on a square lattice: radius 0.18-0.35 of the period, period 5-16 px."""
    period = rng.uniform(5.0, 16.0)
    radius = rng.uniform(0.18, 0.35) * period
    _, _, tilt, _ = _texture_parameters(rng)
    x, y = _local(*rng.uniform(0, SIZE, 2), tilt)
    x, y = (x / period) - np.round(x / period), (y / period) - np.round(y / period)
    return np.hypot(x, y) * period <= radius


def _rings(rng):
    """Concentric rings around a point up to a quarter of the image outside it."""
    period, duty, _, phase = _texture_parameters(rng)
    cx, cy = rng.uniform(-SIZE / 4, SIZE * 1.25, 2)
    return _wave(np.hypot(_U - cx, _V - cy), period, duty, phase)


_TEXTURES = (_stripes_at(math.pi / 2), _stripes_at(0.0), _diagonal, _checkerboard, _dots, _rings)
# horizontal stripes vary along y (the wave runs along theta = 90 degrees), vertical ones along x


# Colour and noise.

_LUMA = np.array([0.299, 0.587, 0.114])
_CHROMA = np.array([[-0.1687, -0.3313, 0.5], [0.5, -0.4187, -0.0813]])  # RGB to YCbCr's Cb and Cr


def _visible(pattern: np.ndarray, start: np.ndarray, end: np.ndarray) -> bool:
    """Whether a pattern colour stands out from both ends of the background: lighter than both or darker than
    both by MIN_LUMINANCE_GAP, or MIN_CHROMA_GAP away from each in hue and saturation."""
    gaps = np.array([(pattern - start) @ _LUMA, (pattern - end) @ _LUMA])
    if np.all(np.abs(gaps) >= MIN_LUMINANCE_GAP) and np.sign(gaps[0]) == np.sign(gaps[1]):
        return True
    return min(np.linalg.norm(_CHROMA @ (pattern - start)), np.linalg.norm(_CHROMA @ (pattern - end))) >= MIN_CHROMA_GAP


def _colour(rng: np.random.Generator, coverage: np.ndarray) -> np.ndarray:
    """A gradient background and a pattern colour that stands out from both its ends (_visible), then noise."""
    start = rng.uniform(0, 255, 3)
    end = np.clip(start + rng.uniform(-GRADIENT_SPREAD, GRADIENT_SPREAD, 3), 0, 255)
    while True:
        pattern = rng.uniform(0, 255, 3)
        if _visible(pattern, start, end):
            break
        if rng.random() < 0.2:  # a background with no room for a pattern: draw another one
            start = rng.uniform(0, 255, 3)
            end = np.clip(start + rng.uniform(-GRADIENT_SPREAD, GRADIENT_SPREAD, 3), 0, 255)
    direction = rng.uniform(0, 2 * math.pi)
    ys, xs = np.mgrid[0:SIZE, 0:SIZE] + 0.5
    along = xs * math.cos(direction) + ys * math.sin(direction)
    along = (along - along.min()) / (along.max() - along.min())
    background = start + along[..., None] * (end - start)
    image = background + coverage[..., None] * (pattern - background)
    image += rng.normal(0, rng.uniform(*GAUSSIAN_STD), image.shape)
    if rng.random() < 0.5:
        hit = rng.random((SIZE, SIZE)) < rng.uniform(0, SALT_PEPPER)
        image[hit] = np.where(rng.random((int(hit.sum()), 1)) < 0.5, 0.0, 255.0)
    weight = rng.uniform(0, BLUR)
    padded = np.pad(image, ((1, 1), (1, 1), (0, 0)), mode="edge")
    image = (1 - 2 * weight) * padded[1:-1] + weight * (padded[:-2] + padded[2:])
    image = (1 - 2 * weight) * image[:, 1:-1] + weight * (image[:, :-2] + image[:, 2:])
    return np.clip(image, 0, 255).astype(np.float32)
