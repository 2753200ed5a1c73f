"""Image parameterizations: where the ascent starts, and what it moves."""
import numpy as np
import tensorflow as tf


def tutorial_noise(shape: tuple[int, int, int], seeds: list[int]) -> np.ndarray:
    """uniform[0,1) + 128, a nearly flat mid-grey as in the tutorial: one start image per seed, each drawn
    from its own, so batching never changes a job's result."""
    return np.stack([np.random.default_rng(seed).random(shape) + 128.0 for seed in seeds]).astype(np.float32)


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
    h, w, channels = shape
    scaled = tf.complex(spectrum[..., 0], spectrum[..., 1]) * tf.cast(_spectrum_scale(h, w), tf.complex64)
    planes = tf.signal.irfft2d(scaled, fft_length=[h, w]) / 4.0  # lucid's /4: a comfortable range for the sigmoid
    if channels == 3:
        return 255.0 * tf.sigmoid(tf.einsum("bchw,dc->bhwd", planes, _COLOR_CORRELATION))
    return 255.0 * tf.sigmoid(tf.transpose(planes, [0, 2, 3, 1]))


def _spectrum_scale(h: int, w: int) -> np.ndarray:
    """lucid's spectrum_scale, decay power 1: 1/frequency, floored at one cycle per image.

    The sqrt(h*w) factor makes irfft2d (which divides by h*w) orthonormal, so
    the pixel scale does not depend on the image size.
    """
    frequencies = np.sqrt(np.fft.fftfreq(h)[:, None] ** 2 + np.fft.rfftfreq(w)[None, :] ** 2)
    return (np.sqrt(h * w) / np.maximum(frequencies, 1.0 / max(h, w))).astype(np.float32)
