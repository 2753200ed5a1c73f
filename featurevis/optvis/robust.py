"""lucid's robust method: Adam on a decorrelated Fourier parameterization, seen through random moves."""
from __future__ import annotations

from typing import Callable, NamedTuple

import keras
import numpy as np
import tensorflow as tf

from featurevis.contract import METHOD_DEFAULTS, SETTLE_AFTER
from featurevis.optvis import objectives, param, transform
from featurevis.optvis.render import CompiledStep, Method, Objective, StepStats

DEFAULTS = METHOD_DEFAULTS["robust"]  # Adam's rate and the transforms' strength, chosen with the iterations
# With alpha, the loss also pays this share of the objective's size times the mean opacity, so a pixel stays
# opaque only where it earns it; scaled by the objective, as the diversity term is, to mean the same on any layer.
# Set by hand on shapes_cnn's logits, not by `make quality-defaults` (bench/RESULTS.md, "Measurements behind
# defaults").
OPACITY_COST = 0.3


class RobustState(NamedTuple):
    """Spectra and their Adam moments, passed into and out of the robust step.

    Keeping them as tensors rather than variables (a Keras optimizer's slots
    are variables) leaves the step pure, so it takes any batch size.
    """

    spectrum: tf.Tensor
    m: tf.Tensor
    v: tf.Tensor
    updates: tf.Tensor  # int64 scalar: Adam steps taken, also the transforms' step number

    @classmethod
    def start(cls, spectrum: np.ndarray) -> RobustState:
        spectrum = tf.convert_to_tensor(spectrum, tf.float32)
        return cls(spectrum, tf.zeros_like(spectrum), tf.zeros_like(spectrum), tf.constant(0, tf.int64))


def compile_step(network: keras.Model, preprocess: Callable, objective: Objective, image_shape: tuple[int, int, int],
                 learning_rate: float = DEFAULTS.learning_rate, moves: transform.Moves | None = None,
                 alpha: bool = False, settled_rate: float | None = DEFAULTS.settled_rate,
                 coarse_steps: int | None = DEFAULTS.coarse_steps) -> CompiledStep:
    """lucid's render step, compiled once: one Adam update of FFT spectra, the loss seen through random moves.

    pixels = fft_to_pixels(spectrum), moved by transform.standard, then
    preprocess and `network` (ending at the target layer); the loss per image is
    objective - diversity * |objective| * objectives.diversity(style), where the
    style layer is the target itself or, for class logits, a second output of
    `network` (objectives.target_and_style), and Adam climbs it (the same as
    minimizing its negative). lucid subtracts a fixed multiple of the diversity,
    but the objective's size differs a hundredfold between models and layers
    (bench/RESULTS.md), and Adam only sees the gradients' ratio: a fixed weight either does nothing
    or drowns the objective. Scaled by the objective (held constant for the
    gradient), one weight means the same everywhere. `objective` takes dense
    (batch, channels) weights (objectives.weighted_channels or weighted_logits)
    and objectives.total adds the other kinds of term, the loss gradient_ascent
    climbs too; with any batch, objectives.Terms and seeds as tensor arguments
    nothing retraces.
    The stats' gradient figures are of the spectra, which is what Adam moves;
    their step size is the rate of that update (scheduled_rate: `learning_rate`, then `settled_rate`
    after contract.SETTLE_AFTER updates where one is given). With `coarse_steps`, the first that many updates
    see the spectrum through param.coarse_mask (`seen`). With `alpha`, see `transparent`. Regularizers
    (objectives.penalty) are taken on the picture itself, not on the moved copy. `moves` defaults to
    lucid's at the strength DEFAULTS names.
    """
    moves = moves or transform.Moves.lucid(max(image_shape[:2]), DEFAULTS.moves)
    planes = (*image_shape[:2], image_shape[2] + alpha)  # with alpha, one more plane: the opacity
    spectrum_spec = tf.TensorSpec([None, *param.fft_spectrum_shape(planes)], tf.float32)
    state_spec = RobustState(spectrum_spec, spectrum_spec, spectrum_spec, tf.TensorSpec([], tf.int64))

    def seen(state):
        """The spectrum the picture is made of: the state's, held to its coarse frequencies at the start."""
        if coarse_steps is None:
            return state.spectrum
        return state.spectrum * param.coarse_mask(state.updates, coarse_steps, *image_shape[:2])[..., None]

    @tf.function(input_signature=[state_spec])
    def pixels(state):
        return transparent(seen(state), image_shape)[0] if alpha else param.fft_to_pixels(seen(state), image_shape)

    @tf.function(input_signature=[state_spec])
    def extras(state):
        return {"alpha": transparent(seen(state), image_shape)[1][..., 0]}

    compiled = CompiledStep(advance=None, pixels=pixels, extras=extras if alpha else None,
                            start=lambda seeds, picture=None, noise=0.0: RobustState.start(
                                start_spectrum(planes, seeds, picture, noise)))

    @tf.function(input_signature=[
        state_spec,
        objectives.SPEC,  # the objective's terms, per image
        tf.TensorSpec([None], tf.int64),  # seeds: one per image, for its transforms
        tf.TensorSpec([], tf.float32),  # diversity weight
    ])
    def step(state, terms, seeds, diversity):
        compiled.traces += 1  # runs at trace time only
        with tf.GradientTape() as tape:
            tape.watch(state.spectrum)
            if alpha:
                images, opacity = transparent(seen(state), image_shape)
                images = over_noise(images, opacity, seeds, state.updates)
            else:
                images = param.fft_to_pixels(seen(state), image_shape)
            moved = transform.standard(images, seeds, state.updates, moves)
            activations, style = objectives.target_and_style(network(preprocess(moved), training=False))
            target = objectives.total(objective, activations, terms)
            loss = target - diversity * tf.stop_gradient(tf.abs(target)) * objectives.diversity(style) \
                - objectives.penalty(images, terms)
            if alpha:
                loss -= OPACITY_COST * tf.stop_gradient(tf.abs(target)) * tf.reduce_mean(opacity, axis=[1, 2, 3])
            total = tf.reduce_sum(loss)
        grads = tape.gradient(total, state.spectrum)
        axes = [1, 2, 3, 4]
        rate = scheduled_rate(state.updates, learning_rate, settled_rate)
        stats = StepStats(loss, tf.reduce_min(grads, axis=axes), tf.reduce_max(grads, axis=axes),
                          tf.fill(tf.shape(loss), rate))
        return adam_ascent(state, grads, rate), stats

    compiled.advance = lambda state, terms, seeds, diversity: step(state, objectives.as_terms(terms), seeds, diversity)
    start = RobustState.start(np.zeros([1, *spectrum_spec.shape[1:]], np.float32))
    # Trace and run once, as gradient_ascent.compile_step does.
    step(start, objectives.as_terms(tf.zeros([1, network.outputs[0].shape[-1]])), tf.zeros([1], tf.int64),
         tf.constant(0.0))
    pixels(start)
    if alpha:
        extras(start)
    return compiled


def start_spectrum(planes: tuple[int, int, int], seeds: list[int], picture: np.ndarray | None,
                   noise: float = 0.0) -> np.ndarray:
    """lucid's noise spectra, one per seed; with a start picture (h, w, channels), or one per image, its colours
    in their place, with `noise` times the seed's noise on them (0: exactly the picture; a dataset start,
    contract.START_NOISE, so each seed still draws its own picture).

    An opacity plane (alpha) stays the seed's noise, a half-transparent start as without a picture:
    a fully opaque one would sit where the sigmoid is flat, and the opacity would hardly move.
    """
    spectrum = param.fft_spectrum_init(planes, seeds)
    if picture is not None:
        channels = picture.shape[-1]
        spectrum[:, :channels] = param.pixels_to_fft(param.tiled(picture, len(seeds)), (*planes[:2], channels)) \
            + noise * spectrum[:, :channels]
    return spectrum


def transparent(spectrum: tf.Tensor, image_shape: tuple[int, int, int]) -> tuple[tf.Tensor, tf.Tensor]:
    """Spectra with one plane more than the image has channels -> (pixels in 0..255, opacity (batch, h, w, 1) in 0..1).

    lucid's and Xplique's transparent images: the opacity is parameterized like the
    colours (1/f spectrum, sigmoid), so it is as smooth as they are. The colour planes
    are drawn first from a job's seed, so a transparent picture starts from the colours
    the same job without alpha starts from.
    """
    h, w, channels = image_shape
    opacity = param.fft_to_pixels(spectrum[:, channels:], (h, w, 1)) / 255.0
    return param.fft_to_pixels(spectrum[:, :channels], image_shape), opacity


def over_noise(images: tf.Tensor, opacity: tf.Tensor, seeds: tf.Tensor, step: tf.Tensor) -> tf.Tensor:
    """The images composited over uniform noise in 0..255, each image's own at each step (lucid's
    collapse_alpha_random): the network cannot see through a transparent pixel to anything that
    helps it twice, so only the opaque parts can carry the objective. Drawn from (seed, -1 - step), a
    key the transforms (which use (seed, step)) never use."""
    shape = images.shape[1:]
    draw = lambda seed: tf.random.stateless_uniform(shape, tf.stack([seed, -1 - tf.cast(step, tf.int64)]), maxval=255.0)
    noise = tf.map_fn(draw, tf.cast(seeds, tf.int64), fn_output_signature=tf.float32)
    return images * opacity + noise * (1.0 - opacity)


def scheduled_rate(updates: tf.Tensor, learning_rate: float, settled_rate: float | None) -> tf.Tensor:
    """Adam's rate for the update after `updates` of them: `learning_rate` for the first contract.SETTLE_AFTER,
    then `settled_rate` (None: `learning_rate` throughout). A fast climb forms the picture and a slower one
    settles it without the big steps' grain; counted in steps, the schedule never depends on the job's length."""
    if settled_rate is None:
        return tf.constant(learning_rate, tf.float32)
    return tf.where(updates < SETTLE_AFTER, tf.constant(learning_rate, tf.float32), settled_rate)


def adam_ascent(state: RobustState, grads: tf.Tensor, learning_rate: float | tf.Tensor,
                beta_1: float = 0.9, beta_2: float = 0.999, epsilon: float = 1e-8) -> RobustState:
    """One Adam step up the gradient, with Kingma & Ba's (and lucid's) defaults."""
    updates = state.updates + 1
    m = beta_1 * state.m + (1 - beta_1) * grads
    v = beta_2 * state.v + (1 - beta_2) * tf.square(grads)
    t = tf.cast(updates, tf.float32)
    m_hat, v_hat = m / (1 - tf.pow(beta_1, t)), v / (1 - tf.pow(beta_2, t))
    return RobustState(state.spectrum + learning_rate * m_hat / (tf.sqrt(v_hat) + epsilon), m, v, updates)


# Its step needs a style layer beside a class target, for the diversity term between a set's images.
METHOD = Method("robust", compile_step, needs_style=True)
