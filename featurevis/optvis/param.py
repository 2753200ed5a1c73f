"""Image parameterizations: where the ascent starts."""
import numpy as np


def tutorial_noise(shape: tuple[int, int, int], seed: int) -> np.ndarray:
    """uniform[0,1) + 128: a nearly flat mid-grey, as in the tutorial, drawn from the job's seed."""
    return (np.random.default_rng(seed).random(shape) + 128.0).astype(np.float32)


def batch(shape: tuple[int, int, int], seeds: list[int]) -> np.ndarray:
    """One start image per job, each from its own seed, so batching never changes a job's result."""
    return np.stack([tutorial_noise(shape, seed) for seed in seeds])
