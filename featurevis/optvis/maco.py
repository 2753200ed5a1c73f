"""MACO (Fel et al. 2023, "Unlocking Feature Visualization for Deeper Networks with MAgnitude Constrained
Optimization"; Xplique's `maco`): Adam on the Fourier phase of an image whose magnitude spectrum is fixed.

Why a third method: the robust method moves magnitude and phase together, and on deep layers the ascent
spends its budget on magnitude, pushing energy into whatever frequencies fire the feature until the picture
is texture. MACO's authors observe that natural images carry their structure in the phase and share
nearly one magnitude spectrum, so they fix the magnitude and let the ascent move only the phase: the
picture keeps natural image statistics however far the optimization goes.

As Xplique does, the step also sums the gradient's size at each pixel over the steps: where the
objective looks. It comes back as `alpha` (CompiledStep.extras), published as alpha.png.

Where this differs from Xplique, and why:
- The magnitude is 1/f (lucid's spectrum_scale, in the decorrelated colour space) by default, or, with
  a job's `magnitude: dataset`, the mean spectrum of the model's registered dataset (param.mean_magnitude;
  the factory passes it). Xplique loads ImageNet's mean spectrum for every model. On the shapes models
  their dataset's spectrum is recognized less often than 1/f, so 1/f is the default `make
  quality-defaults` keeps (docs/methods-and-quality.md).
- Pixels are the decorrelated planes mixed through ImageNet's colour correlation, then min-max
  normalized into 0..255 per image, not standardized and squashed by a sigmoid: every step from the
  phase to the pixels is affine, so the magnitude spectrum of the picture itself is the fixed one,
  up to one contrast factor per image (tests/test_maco.py holds it to float tolerance). A sigmoid
  would let the ascent buy back magnitude through saturation.
- The network sees the picture through the robust method's transforms (transform.standard: pad,
  jitter, scale, rotate, seeded per image and step), not Xplique's 32 random crops a step: one view
  per image keeps a step's cost that of the other methods, and batching never changes an image.
- On shapes_cnn its class pictures transfer to the judge far less often than the robust method's; the
  docs/methods-and-quality.md ("What MACO does not do yet") has the figures and what was ruled out.
- The phase of the self-conjugate frequencies (the first column and, for even widths, the last of the
  half-spectrum) is made antisymmetric, so the half-spectrum is that of a real image. Otherwise
  irfft2d keeps only the Hermitian part of those columns and their magnitude would depend on the phase.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import keras
import numpy as np
import tensorflow as tf

from featurevis.contract import METHOD_DEFAULTS
from featurevis.optvis import objectives, param, robust, transform
from featurevis.optvis.render import CompiledStep, Method, Objective, StepStats

DEFAULTS = METHOD_DEFAULTS["maco"]  # Adam's rate on the phase (radians a step) and the transforms' strength


class MacoState(NamedTuple):
    """The phases and their Adam moments (the first four fields are robust.RobustState's, so its Adam
    update serves both), and where the objective has looked so far."""

    phase: tf.Tensor  # (batch, channels, h, w//2+1), radians
    m: tf.Tensor
    v: tf.Tensor
    updates: tf.Tensor  # int64 scalar: Adam steps taken, also the transforms' step number
    looked: tf.Tensor  # (batch, h, w): |d objective / d pixel| summed over channels and steps

    @classmethod
    def start(cls, phase: np.ndarray, image_shape: tuple[int, int, int]) -> MacoState:
        phase = tf.convert_to_tensor(phase, tf.float32)
        h, w, _ = image_shape
        return cls(phase, tf.zeros_like(phase), tf.zeros_like(phase), tf.constant(0, tf.int64),
                   tf.zeros([phase.shape[0], h, w]))


def phase_init(shape: tuple[int, int, int], seeds: list[int]) -> np.ndarray:
    """Uniform random phases, one set per image from its own seed, so batching never changes an image:
    with a fixed 1/f magnitude, the start is 1/f noise."""
    channels, h, w_half, _ = param.fft_spectrum_shape(shape)
    return np.stack([np.random.default_rng(seed).uniform(-np.pi, np.pi, (channels, h, w_half))
                     for seed in seeds]).astype(np.float32)


def picture_phase(images: np.ndarray) -> np.ndarray:
    """The phase (batch, channels, h, w//2+1) of 0..255 images' decorrelated planes, as phase_to_pixels reads it:
    a start picture's layout (natural images keep their structure in the phase, which is why MACO moves it alone)."""
    return np.angle(np.fft.rfft2(param.decorrelated_planes(np.asarray(images, np.float64)))).astype(np.float32)


def one_over_f(shape: tuple[int, int, int]) -> np.ndarray:
    """The default magnitude (channels, h, w//2+1): 1/frequency in every decorrelated channel, no DC.

    The DC term would only shift every pixel, which the min-max normalization undoes.
    """
    h, w, channels = shape
    magnitude = np.repeat(param.spectrum_scale(h, w)[None], channels, axis=0)
    magnitude[:, 0, 0] = 0.0
    return magnitude


def phase_to_pixels(phase: tf.Tensor, magnitude: tf.Tensor, shape: tuple[int, int, int]) -> tf.Tensor:
    """Phases (batch, channels, h, w//2+1) -> images (batch, h, w, channels) in 0..255.

    magnitude x exp(i phase), made Hermitian (see the module's docstring), through irfft2d, mixed
    through the colour correlation (param.correlated_channels_last), min-max normalized per image.
    Every step after the exponential is affine, so the picture's magnitude spectrum is `magnitude`
    times one factor per image.
    """
    h, w, _ = shape
    phase = _hermitian(phase, w)
    planes = tf.signal.irfft2d(tf.complex(magnitude * tf.cos(phase), magnitude * tf.sin(phase)), fft_length=[h, w])
    mixed = param.correlated_channels_last(planes)
    low = tf.reduce_min(mixed, axis=[1, 2, 3], keepdims=True)
    high = tf.reduce_max(mixed, axis=[1, 2, 3], keepdims=True)
    return 255.0 * (mixed - low) / tf.maximum(high - low, 1e-12)


def _hermitian(phase: tf.Tensor, w: int) -> tf.Tensor:
    """The phase with its self-conjugate columns made antisymmetric in the vertical frequency.

    In the half-spectrum of a real image, column 0 (and column w/2 for even w) holds frequency
    ky and -ky alike, which must be complex conjugates: phase(-ky) = -phase(ky), and 0 where ky = -ky.
    """
    mirrored = tf.roll(tf.reverse(phase, axis=[2]), shift=1, axis=2)  # row k holds row -k mod h
    columns = np.zeros(w // 2 + 1, bool)
    columns[0] = True
    columns[-1] |= w % 2 == 0
    return tf.where(columns, (phase - mirrored) / 2.0, phase)


def compile_step(network: keras.Model, preprocess: Callable, objective: Objective, image_shape: tuple[int, int, int],
                 learning_rate: float = DEFAULTS.learning_rate, moves: transform.Moves | None = None,
                 magnitude: np.ndarray | None = None,
                 settled_rate: float | None = DEFAULTS.settled_rate,
                 coarse_steps: int | None = DEFAULTS.coarse_steps) -> CompiledStep:
    """MACO's step, compiled once: one Adam update of the phases, the loss seen through random moves.

    pixels = phase_to_pixels(phase, magnitude), moved by transform.standard, then preprocess and
    `network` (ending at the target layer); Adam climbs the objective on the phase alone (robust's
    adam_ascent, at robust.scheduled_rate's rate). The gradient at the unmoved pixels is summed into the
    state's `looked` map.
    `objective` takes dense (batch, channels) weights; with any batch, weights and seeds as tensor
    arguments nothing retraces. There is no diversity term (the contract refuses sets for maco:
    Xplique's MACO renders one image per objective, and how a fixed magnitude and the Gram-matrix
    term trade off is unmeasured), so the step takes the diversity argument and ignores it.
    `magnitude` (channels, h, w//2+1) defaults to one_over_f; a dataset's mean spectrum goes here.
    A start picture (a job's `start_image`) gives the start its phase alone (picture_phase): the magnitude
    stays `magnitude`, since fixing it is the method, so the first picture is the image's layout, not the image.
    With `coarse_steps`, the first that many updates see the magnitude through param.coarse_mask.
    `moves` defaults to lucid's at the strength DEFAULTS names.
    """
    moves = moves or transform.Moves.lucid(max(image_shape[:2]), DEFAULTS.moves)
    magnitude = tf.constant(one_over_f(image_shape) if magnitude is None else magnitude, tf.float32)
    channels, h, w_half, _ = param.fft_spectrum_shape(image_shape)
    phase_spec = tf.TensorSpec([None, channels, h, w_half], tf.float32)
    state_spec = MacoState(phase_spec, phase_spec, phase_spec, tf.TensorSpec([], tf.int64),
                           tf.TensorSpec([None, *image_shape[:2]], tf.float32))

    def seen(state):
        """The magnitude the picture is made with: the fixed one, held to its coarse frequencies at the start."""
        if coarse_steps is None:
            return magnitude
        return magnitude * param.coarse_mask(state.updates, coarse_steps, *image_shape[:2])

    @tf.function(input_signature=[state_spec])
    def pixels(state):
        return phase_to_pixels(state.phase, seen(state), image_shape)

    @tf.function(input_signature=[state_spec])
    def extras(state):
        """Where the objective looked, as 0..1 per image (its largest sum is 1)."""
        peak = tf.reduce_max(state.looked, axis=[1, 2], keepdims=True)
        return {"alpha": state.looked / tf.maximum(peak, 1e-30)}

    def starting(seeds, picture=None):
        phase = phase_init(image_shape, seeds) if picture is None else picture_phase(param.tiled(picture, len(seeds)))
        return MacoState.start(phase, image_shape)

    compiled = CompiledStep(advance=None, pixels=pixels, extras=extras, start=starting)

    @tf.function(input_signature=[
        state_spec,
        objectives.SPEC,  # the objective's terms, per image
        tf.TensorSpec([None], tf.int64),  # seeds: one per image, for its transforms
        tf.TensorSpec([], tf.float32),  # diversity weight: unused (see above)
    ])
    def step(state, terms, seeds, diversity):
        compiled.traces += 1  # runs at trace time only
        with tf.GradientTape() as tape:
            tape.watch(state.phase)
            images = phase_to_pixels(state.phase, seen(state), image_shape)
            moved = transform.standard(images, seeds, state.updates, moves)
            loss = objectives.total(objective, network(preprocess(moved), training=False), terms) \
                - objectives.penalty(images, terms)
            total = tf.reduce_sum(loss)  # images are independent, so d(total)/d(image b) = d(loss b)/d(image b)
        grads, looked = tape.gradient(total, [state.phase, images])
        axes = [1, 2, 3]
        rate = robust.scheduled_rate(state.updates, learning_rate, settled_rate)
        stats = StepStats(loss, tf.reduce_min(grads, axis=axes), tf.reduce_max(grads, axis=axes),
                          tf.fill(tf.shape(loss), rate))
        adam = robust.adam_ascent(robust.RobustState(*state[:4]), grads, rate)
        return MacoState(*adam, state.looked + tf.reduce_sum(tf.abs(looked), axis=-1)), stats

    compiled.advance = lambda state, terms, seeds, diversity: step(state, objectives.as_terms(terms), seeds, diversity)
    start = MacoState.start(np.zeros([1, channels, h, w_half], np.float32), image_shape)
    # Trace and run once, as gradient_ascent.compile_step does.
    step(start, objectives.as_terms(tf.zeros([1, network.outputs[0].shape[-1]])), tf.zeros([1], tf.int64),
         tf.constant(0.0))
    pixels(start)
    extras(start)
    return compiled


METHOD = Method("maco", compile_step)
