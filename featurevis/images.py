"""Turning raw 0..255 float images into pictures people look at. TF-free."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image


def normalized_view(image: np.ndarray) -> np.ndarray:
    """The tutorial's min-max view: the full range of what the optimizer made, as uint8.

    Plain clipping would show a grey square for early iterations, whose
    pixels stay within a few levels of 128.
    """
    low, high = float(image.min()), float(image.max())
    scaled = (image - low) / (high - low) if high > low else np.zeros_like(image)
    return np.round(scaled * 255.0).astype(np.uint8)


def png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(normalized_view(image)).save(buffer, format="PNG")
    return buffer.getvalue()


def contact_sheet(images: list[np.ndarray], columns: int = 3, gap: int = 4) -> bytes:
    """A grid of normalized views, row by row, as the tutorial's 2x3 plots show a layer."""
    height, width = images[0].shape[:2]
    rows = -(-len(images) // columns)
    sheet = np.full((rows * height + (rows - 1) * gap, columns * width + (columns - 1) * gap, 3), 255, np.uint8)
    for index, image in enumerate(images):
        top, left = (index // columns) * (height + gap), (index % columns) * (width + gap)
        sheet[top:top + height, left:left + width] = normalized_view(image)
    buffer = io.BytesIO()
    Image.fromarray(sheet).save(buffer, format="PNG")
    return buffer.getvalue()
