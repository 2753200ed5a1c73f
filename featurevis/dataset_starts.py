"""Dataset starts: the picture a job's climb starts from when it asks for its dataset's best examples (`start`).

Multifaceted feature visualization (Nguyen, Yosinski and Clune, 2016) starts a class's climb from the mean of
its best training images rather than from noise, so the ascent begins near a picture the model already answers
to and keeps its layout. Here the start of a unit (a class, or a channel) is the mean of the
contract.START_EXAMPLES images of the model's registered dataset that excite it most, ranked as an atlas ranks
its examples (examples.ranking); the method puts each seed's noise on it (contract.START_NOISE). One pass over
the dataset ranks every unit of a layer, so it is made once per (model version, dataset, layer) in this process
and its best indices are kept in a small LRU; the pictures are read from the dataset's map per job.
"""
from __future__ import annotations

from collections import Counter, OrderedDict
from typing import Callable

import numpy as np

from featurevis import datasets, examples, registry
from featurevis.contract import START_EXAMPLES, START_NOISE
from featurevis.model_cache import LoadedModel

RANKING_CACHE = 16  # (model version, dataset, layer) rankings a process keeps: each is units x START_EXAMPLES


class DatasetStarts:
    def __init__(self, models: Callable[[], registry.Registry], builds: Counter):
        self.registry = models
        self.builds = builds
        self._best: OrderedDict[tuple[str, str, str, str], tuple[datasets.Dataset, list[list[int]]]] = OrderedDict()

    def arguments(self, loaded: LoadedModel, layer: str, features: list[int], fingerprint: str | None) -> tuple:
        """A compiled step's start arguments after the seeds, one image per feature: none where there is no
        dataset start (each seed's noise), else each feature's start and START_NOISE (render.CompiledStep)."""
        if fingerprint is None:
            return ()
        return np.stack([self.picture(loaded, layer, feature, fingerprint) for feature in features]), START_NOISE

    def picture(self, loaded: LoadedModel, layer: str, feature: int, fingerprint: str) -> np.ndarray:
        """The mean (h, w, channels) in 0..255 of the dataset's best examples of `feature` at `layer` (a name,
        or LOGITS); a ValueError of one line if the dataset was replaced since the job was validated with
        `fingerprint`."""
        dataset, best = self._ranked(loaded, layer, fingerprint)
        return np.asarray(dataset.images[sorted(best[feature])], np.float32).mean(axis=0)

    def _ranked(self, loaded: LoadedModel, layer: str, fingerprint: str) -> tuple[datasets.Dataset, list[list[int]]]:
        cache_key = (loaded.info.name, loaded.info.sha256, fingerprint, layer)
        if cache_key in self._best:
            self._best.move_to_end(cache_key)
            return self._best[cache_key]
        dataset = datasets.for_model(self.registry(), loaded.info)
        if dataset is None or dataset.fingerprint != fingerprint:
            raise ValueError(f"start: {loaded.info.name}'s dataset changed since this job was validated "
                             f"({fingerprint} -> {dataset and dataset.fingerprint}); submit it again")
        ranked = examples.ranking(loaded, dataset, layer, START_EXAMPLES)
        self._best[cache_key] = dataset, ranked["top"]["indices"]
        self.builds["dataset start"] += 1
        while len(self._best) > RANKING_CACHE:
            self._best.popitem(last=False)
        return self._best[cache_key]
