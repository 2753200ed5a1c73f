"""The figures `make quality` prints beside the judges' (quality/run.py), on pictures whose answer is known."""
import numpy as np

from quality.run import seeds_alike

CLASSES, SEEDS, SHAPE = 3, 4, (8, 8, 3)


def test_seeds_alike_is_one_where_every_seed_draws_one_picture_and_near_zero_for_independent_ones():
    rng = np.random.default_rng(0)
    per_class = rng.uniform(0, 255, (CLASSES, *SHAPE))
    same = np.concatenate([per_class] * SEEDS)  # every class of one seed, then the next seed's
    assert seeds_alike(same, CLASSES) > 0.999
    brighter = np.concatenate([per_class * (1 + 0.1 * seed) + 20 * seed for seed in range(SEEDS)])
    assert seeds_alike(brighter, CLASSES) > 0.999  # a correlation: contrast and brightness do not count
    independent = rng.uniform(0, 255, (SEEDS * CLASSES, *SHAPE))
    assert seeds_alike(independent, CLASSES) < 0.15
    negatives = np.concatenate([per_class * (-1) ** seed for seed in range(SEEDS)])
    assert seeds_alike(negatives, CLASSES) > 0.999  # a picture and its negative share a layout
    half = np.concatenate([0.5 * per_class + 0.5 * rng.uniform(0, 255, (CLASSES, *SHAPE)) for _ in range(SEEDS)])
    assert 0.3 < seeds_alike(half, CLASSES) < 0.7
