"""The bare compiled loop: a job's compiled step called `iterations` times and nothing else, the limit a job
can reach. bench/run.py times it beside whole jobs, bench/peers.py beside the libraries people would use."""

from __future__ import annotations

from typing import Callable

import numpy as np

from featurevis.optvis import objectives, render


def compiled_loop(acquired, target, feature: int, iterations: int, seeds: tuple[int, ...] = (1,)
                  ) -> Callable[[], np.ndarray]:
    """A function that climbs channel (or class) `feature` of `target` from `seeds` for `iterations` steps
    of an acquired (model, layer, method) step and fetches the pixels: no queue, no prediction, no files. Its
    pictures are a job's (tests/test_optvis.py holds them equal to render.run's)."""
    weights = objectives.weights_matrix([{feature: 1.0}] * len(seeds), acquired.model.info.feature_count(target))
    arguments = render.step_arguments(weights, list(seeds))

    def loop() -> np.ndarray:
        state = acquired.step.start(list(seeds))
        for _ in range(iterations):
            state, _ = acquired.step.advance(state, *arguments)
        return acquired.step.pixels(state).numpy()

    return loop
