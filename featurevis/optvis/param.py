"""Image parameterizations: where the ascent starts, and what it moves."""
import numpy as np
import tensorflow as tf

from featurevis.contract import COARSE_CYCLES


def tutorial_noise(shape: tuple[int, int, int], seeds: list[int]) -> np.ndarray:
    """uniform[0,1) + 128, a nearly flat mid-grey as in the tutorial: one start image per seed, each drawn
    from its own, so batching never changes a job's result."""
    return np.stack([np.random.default_rng(seed).random(shape) + 128.0 for seed in seeds]).astype(np.float32)


def tiled(picture: np.ndarray, count: int) -> np.ndarray:
    """A start picture (h, w, channels) once for each of `count` images: a job's images, or a sweep's features,
    all start from the job's one start image. Pictures (count, h, w, channels), one per image (each feature's
    dataset start), are taken as they are."""
    picture = np.asarray(picture, np.float32)
    return picture if picture.ndim == 4 else np.repeat(picture[None], count, axis=0)


# lucid's colour decorrelation: the square root of ImageNet's colour covariance (from its SVD).
COLOR_CORRELATION_SVD_SQRT = np.array([[0.26, 0.09, 0.02],
                                       [0.27, 0.00, -0.05],
                                       [0.27, -0.09, 0.03]], np.float32)
_COLOR_CORRELATION = COLOR_CORRELATION_SVD_SQRT / np.max(np.linalg.norm(COLOR_CORRELATION_SVD_SQRT, axis=0))
SPECTRUM_SD = 0.01


def fft_spectrum_shape(shape: tuple[int, int, int]) -> tuple[int, int, int, int]:
    """(channels, h, w//2+1, real/imaginary): the half-spectrum irfft2d turns into an h x w image."""
    h, w, channels = shape
    return channels, h, w // 2 + 1, 2


def fft_spectrum_init(shape: tuple[int, int, int], seeds: list[int]) -> np.ndarray:
    """lucid's start spectra, N(0, 0.01), one per image from its own seed, so batching never changes an image."""
    return np.stack([np.random.default_rng(seed).normal(scale=SPECTRUM_SD, size=fft_spectrum_shape(shape))
                     for seed in seeds]).astype(np.float32)


def fft_to_pixels(spectrum: tf.Tensor, shape: tuple[int, int, int]) -> tf.Tensor:
    """Spectra (batch, channels, h, w//2+1, 2) -> images (batch, h, w, channels) in 0..255, after lucid's fft_image.

    Scaling each frequency by 1/f gives every frequency about the same
    gradient, so the ascent is not dominated by high-frequency noise; mixing
    colours through the ImageNet correlation lets it move luminance and
    chroma independently (RGB only: other channel counts have no known
    correlation and stay independent); the sigmoid keeps pixels in range
    without the dead gradients of clipping.
    """
    h, w, _ = shape
    scaled = tf.complex(spectrum[..., 0], spectrum[..., 1]) * tf.cast(spectrum_scale(h, w), tf.complex64)
    planes = tf.signal.irfft2d(scaled, fft_length=[h, w]) / 4.0  # lucid's /4: a comfortable range for the sigmoid
    return 255.0 * tf.sigmoid(correlated_channels_last(planes))


# How far from 0 and 255 a start picture's pixels are clipped before the sigmoid is inverted: half a level,
# the rounding an 8-bit picture has anyway, keeps its logits finite (about +-6.2).
PIXEL_MARGIN = 0.5


def pixels_to_fft(images: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """fft_to_pixels inverted: images (batch, h, w, channels) in 0..255 -> the spectra that give them back.

    So the robust method can start from a picture: the logit of pixels/255 (clipped
    PIXEL_MARGIN from either end, where the sigmoid never reaches), the colour mixing
    undone, rfft2d, x4 and / spectrum_scale. A real picture's half-spectrum is one irfft2d
    maps back to it exactly, so fft_to_pixels returns the picture to float32 precision
    wherever it lies inside the margin. Computed in float64: the start is made once.
    """
    h, w, _ = shape
    unit = np.clip(np.asarray(images, np.float64), PIXEL_MARGIN, 255.0 - PIXEL_MARGIN) / 255.0
    spectrum = np.fft.rfft2(4.0 * decorrelated_planes(np.log(unit / (1.0 - unit)))) / spectrum_scale(h, w)
    return np.stack([spectrum.real, spectrum.imag], axis=-1).astype(np.float32)


def mean_magnitude(images: np.ndarray, chunk: int = 64) -> np.ndarray:
    """The mean magnitude spectrum (channels, h, w//2+1) of 0..255 images' decorrelated planes, DC set to 0:
    what MACO fixes a picture's magnitude to, from the images a model was made for (optvis/maco.py).
    Streamed `chunk` images at a time, since a dataset may be a map of a large file."""
    total = sum(np.abs(np.fft.rfft2(decorrelated_planes(np.asarray(images[first:first + chunk], np.float64))))
                .sum(axis=0) for first in range(0, len(images), chunk))
    magnitude = (total / len(images)).astype(np.float32)
    magnitude[:, 0, 0] = 0.0  # the mean pixel: min-max normalization sets it anyway
    return magnitude


def decorrelated_planes(images: np.ndarray) -> np.ndarray:
    """correlated_channels_last inverted, in numpy: (batch, h, w, channels) -> (batch, channels, h, w)."""
    if images.shape[-1] == 3:
        return np.einsum("bhwd,cd->bchw", images, np.linalg.inv(_COLOR_CORRELATION.astype(np.float64)))
    return np.transpose(images, [0, 3, 1, 2])


def correlated_channels_last(planes: tf.Tensor) -> tf.Tensor:
    """Decorrelated planes (batch, channels, h, w) -> (batch, h, w, channels), mixed through ImageNet's
    colour correlation for RGB (other channel counts have no known correlation and stay as they are).

    A linear map: the robust method puts it before its sigmoid, MACO before its min-max (optvis/maco.py).
    """
    if planes.shape[1] == 3:
        return tf.einsum("bchw,dc->bhwd", planes, _COLOR_CORRELATION)
    return tf.transpose(planes, [0, 2, 3, 1])


def coarse_mask(updates: tf.Tensor, coarse_steps: int, h: int, w: int) -> tf.Tensor:
    """(h, w//2+1): what multiplies a picture's half-spectrum after `updates` steps of a climb that starts coarse.
    For the first `coarse_steps` it keeps only the frequencies up to contract.COARSE_CYCLES cycles per image (the
    rest of the spectrum is there, held out of the picture, so its gradient is 0 and Adam leaves it as it
    started); from then on, every frequency."""
    cycles = np.hypot(np.fft.fftfreq(h)[:, None] * h, np.fft.rfftfreq(w)[None, :] * w)
    coarse = tf.constant(cycles <= COARSE_CYCLES, tf.float32)
    return tf.where(updates < coarse_steps, coarse, tf.ones_like(coarse))


def spectrum_scale(h: int, w: int) -> np.ndarray:
    """lucid's spectrum_scale, decay power 1: 1/frequency, floored at one cycle per image.

    The sqrt(h*w) factor makes irfft2d (which divides by h*w) orthonormal, so
    the pixel scale does not depend on the image size.
    """
    frequencies = np.sqrt(np.fft.fftfreq(h)[:, None] ** 2 + np.fft.rfftfreq(w)[None, :] ** 2)
    return (np.sqrt(h * w) / np.maximum(frequencies, 1.0 / max(h, w))).astype(np.float32)
