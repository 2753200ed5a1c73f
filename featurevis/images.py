"""Turning raw 0..255 float images into pictures people look at. TF-free."""
from __future__ import annotations

import io
import re

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


def displayed(image: np.ndarray) -> np.ndarray:
    """The channels a picture shows: one channel as grayscale (h, w), RGB as is, more than three: the first three.

    (Two channels show the first as grayscale.) image.npy always keeps every channel.
    """
    channels = image.shape[-1]
    return image[..., 0] if channels < 3 else image[..., :3]


# zlib's fastest level: Pillow's default (6) made encoding a job's picture most of writing its files, for
# pictures a little smaller (bench/RESULTS.md, "Issue 29 on a fast CPU"); image.npy keeps the values either way.
PNG_LEVEL = 1


def png_bytes(image: np.ndarray) -> bytes:
    """A job's picture as shown: normalized, its displayed channels, quickly compressed."""
    buffer = io.BytesIO()
    Image.fromarray(normalized_view(displayed(image))).save(buffer, format="PNG", compress_level=PNG_LEVEL)
    return buffer.getvalue()


def alpha_png(alpha: np.ndarray) -> bytes:
    """A (h, w) map in 0..1 as a grayscale PNG, 0 black, 1 white: not min-max normalized like a picture,
    so an opacity reads as itself (0.5 is mid-grey) and maps of one kind compare across jobs."""
    buffer = io.BytesIO()
    Image.fromarray(np.round(np.clip(alpha, 0.0, 1.0) * 255.0).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def contact_sheet(images: list[np.ndarray], columns: int = 3, gap: int = 4) -> bytes:
    """A grid of normalized views, row by row, as the tutorial's 2x3 plots show a layer."""
    buffer = io.BytesIO()
    Image.fromarray(tile(images, columns, gap)).save(buffer, format="PNG")
    return buffer.getvalue()


def tile(images: list[np.ndarray], columns: int = 3, gap: int = 4) -> np.ndarray:
    """contact_sheet's grid as uint8 pixels, white between the pictures: one frame of a set's animation."""
    height, width = images[0].shape[:2]
    columns = min(columns, len(images))
    rows = -(-len(images) // columns)
    sheet = np.full((rows * height + (rows - 1) * gap, columns * width + (columns - 1) * gap, 3), 255, np.uint8)
    for index, image in enumerate(images):
        top, left = (index // columns) * (height + gap), (index % columns) * (width + gap)
        view = normalized_view(displayed(image))
        sheet[top:top + height, left:left + width] = view[..., None] if view.ndim == 2 else view
    return sheet


ANIMATION_FORMATS = {"webp": "WEBP", "gif": "GIF"}


def animation_bytes(frames: list[np.ndarray], fmt: str = "webp", duration_ms: int = 100) -> bytes:
    """The optimization as a looping animation: each raw 0..255 frame through normalized_view, in order.

    fmt is "webp" (lossy, quality 85: a quarter of lossless's size on noisy frames) or "gif" (256
    colours a frame, larger and slower). Each frame is min-max normalised on its own, like
    image.png, so early near-grey frames stay visible.
    Both encoders fold a frame identical to the one before into it (one longer frame), so
    the frame count read back equals len(frames) only when consecutive frames differ.
    """
    if fmt not in ANIMATION_FORMATS:
        raise ValueError(f"animation format must be one of {', '.join(ANIMATION_FORMATS)}, got {fmt!r}")
    if not frames:
        raise ValueError("an animation needs at least one frame")
    if int(duration_ms) < 1:
        raise ValueError(f"duration_ms must be a positive number of milliseconds, got {duration_ms!r}")
    shapes = {np.shape(frame) for frame in frames}
    if len(shapes) != 1:
        raise ValueError(f"all frames must have one shape, got {sorted(shapes)}")
    pictures = [Image.fromarray(normalized_view(displayed(np.asarray(frame)))) for frame in frames]
    options = {"lossless": False, "quality": 85, "method": 4} if fmt == "webp" else {"optimize": False, "disposal": 1}
    buffer = io.BytesIO()
    pictures[0].save(buffer, format=ANIMATION_FORMATS[fmt], save_all=True, append_images=pictures[1:],
                     duration=int(duration_ms), loop=0, **options)
    return buffer.getvalue()


# A user's image (a caricature's target): PNG, JPEG or a .npy array of 0..255 pixels, at most this many per side.
MAX_UPLOAD_SIDE = 4096
MAX_UPLOAD_BYTES = 64 * 2**20
UPLOAD_SUFFIXES = {".png": "png", ".jpg": "jpg", ".jpeg": "jpg", ".npy": "npy"}


def upload_format(name: str) -> str:
    """The stored format (png, jpg, npy) of a file by its suffix; ValueError naming the ones taken."""
    suffix = name[name.rfind("."):].lower() if "." in name else ""
    if suffix not in UPLOAD_SUFFIXES:
        raise ValueError(f"must be a .png, .jpg/.jpeg or .npy file, got {name[-60:]!r}")
    return UPLOAD_SUFFIXES[suffix]


def decode_upload(data: bytes, fmt: str) -> np.ndarray:
    """An uploaded image as float32 (h, w, channels) pixels in 0..255; ValueError, one line, if it is not one.

    PNG and JPEG are read as RGB, or as one channel when they are grayscale; a
    .npy array must be (h, w) or (h, w, channels) of finite numbers in 0..255
    (pickled objects are refused: loading them runs code).
    """
    if len(data) > MAX_UPLOAD_BYTES:
        raise ValueError(f"{len(data)} bytes, over the limit of {MAX_UPLOAD_BYTES}")
    try:
        if fmt == "npy":
            try:
                pixels = np.load(io.BytesIO(data), allow_pickle=False)
            except ValueError as error:  # an object array, a truncated header
                raise ValueError(f"cannot be read as NPY: {' '.join(str(error).split())[:120]}") from None
        else:
            with Image.open(io.BytesIO(data)) as opened:
                if opened.format != {"png": "PNG", "jpg": "JPEG"}[fmt]:
                    raise ValueError(f"is not a {fmt.upper()} file")
                if max(opened.size) > MAX_UPLOAD_SIDE:
                    raise ValueError(f"is {opened.size[0]}x{opened.size[1]}, over {MAX_UPLOAD_SIDE} px a side")
                pixels = np.asarray(opened.convert("L" if opened.mode in ("1", "L", "I", "I;16", "F") else "RGB"))
    except ValueError:
        raise
    except Exception as error:  # noqa: BLE001 - whatever a broken file makes the decoder raise
        reason = " ".join(re.sub(r"<[^>]*>", "", str(error)).split())[:120]  # no object reprs in a user's line
        raise ValueError(f"cannot be read as {fmt.upper()}: {reason}") from None
    pixels = pixels[..., None] if pixels.ndim == 2 else pixels
    if pixels.ndim != 3 or not 1 <= pixels.shape[2] <= 4 or min(pixels.shape[:2]) < 1 \
            or max(pixels.shape[:2]) > MAX_UPLOAD_SIDE:
        raise ValueError(f"must be (height, width) or (height, width, 1..4 channels) up to {MAX_UPLOAD_SIDE} px a "
                         f"side, got shape {tuple(pixels.shape)}")
    if pixels.dtype.kind not in "uif":
        raise ValueError(f"must hold numbers, got dtype {pixels.dtype}")
    pixels = pixels.astype(np.float32)
    if not np.isfinite(pixels).all() or pixels.min() < 0 or pixels.max() > 255:
        raise ValueError("must hold finite pixel values in 0..255")
    return pixels


def fit(pixels: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """An uploaded image resized (bilinear, antialiased) to a model's (h, w, channels): users need not know the size.

    RGB becomes gray by its mean and gray is repeated into RGB; any other
    channel mismatch is a ValueError.
    """
    height, width, channels = shape
    have = pixels.shape[2]
    if have != channels:
        if have == 3 and channels == 1:
            pixels = pixels.mean(axis=2, keepdims=True)
        elif have == 1 and channels == 3:
            pixels = np.repeat(pixels, 3, axis=2)
        else:
            raise ValueError(f"has {have} channels; the model takes {channels}")
    if pixels.shape[:2] == (height, width):
        return pixels.astype(np.float32)
    planes = [np.asarray(Image.fromarray(np.ascontiguousarray(pixels[..., c]), mode="F")
                         .resize((width, height), Image.Resampling.BILINEAR)) for c in range(channels)]
    return np.clip(np.stack(planes, axis=-1), 0.0, 255.0).astype(np.float32)
