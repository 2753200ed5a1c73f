"""Dataset starts: the picture a job's climb starts from when it asks for its dataset's best examples (`start`).

Multifaceted feature visualization (Nguyen, Yosinski and Clune, 2016) starts a class's climb from the mean of
its best training images rather than from noise, so the ascent begins near a picture the model already answers
to and keeps its layout. Here the start of a unit (a class, or a channel) is the mean of the
contract.START_EXAMPLES images of the model's registered dataset that excite it most, ranked as an atlas ranks
its examples (examples.ranking); the method puts each seed's noise on it (contract.START_NOISE). The facets
start is the paper's in full: the START_FACETS x START_EXAMPLES best fall into START_FACETS clusters of alike
images (k-means, on the pixels rather than the paper's fc7 codes, so any model's dataset clusters the same way
without a second pass), and seed s starts from the mean of facet s mod START_FACETS: one mean pulls every seed to
one picture, the facets give a class its several. One pass over the dataset ranks every unit of a layer, so it
is made once per (model version, dataset, layer) in this process and its best indices are kept in a small LRU
with each unit's facets; the pictures are read from the dataset's map per job.
"""
from __future__ import annotations

from collections import Counter, OrderedDict
from typing import Callable, NamedTuple

import numpy as np

from featurevis import datasets, examples, registry
from featurevis.contract import START_EXAMPLES, START_FACETS, START_NOISE, dataset_start
from featurevis.model_cache import LoadedModel

RANKING_CACHE = 16  # (model version, dataset, layer) rankings a process keeps: each is units x the facets' examples
FACET_ROUNDS = 20  # k-means rounds: a few dozen images settle in a handful


class Ranked(NamedTuple):
    """A layer's ranking of one dataset: each unit's best START_FACETS x START_EXAMPLES, best first, and the
    facets of the units asked for so far (facets_of)."""

    dataset: datasets.Dataset
    best: list[list[int]]
    facets: dict[int, list[np.ndarray]]


class DatasetStarts:
    def __init__(self, models: Callable[[], registry.Registry], builds: Counter):
        self.registry = models
        self.builds = builds
        self._ranked_cache: OrderedDict[tuple[str, str, str, str], Ranked] = OrderedDict()

    def arguments(self, loaded: LoadedModel, layer: str, features: list[int], seeds: list[int],
                  start: str | None) -> tuple:
        """A compiled step's start arguments after the seeds, one image per (feature, seed): none where there is
        no dataset start (each seed's noise), else each image's start and START_NOISE (render.CompiledStep).
        `start` is a JobSpec's (contract.dataset_start)."""
        if start is None:
            return ()
        return np.stack([self.picture(loaded, layer, feature, seed, start)
                         for feature, seed in zip(features, seeds)]), START_NOISE

    def picture(self, loaded: LoadedModel, layer: str, feature: int, seed: int, start: str) -> np.ndarray:
        """The mean (h, w, channels) in 0..255 of the dataset's best examples of `feature` at `layer` (a name,
        or LOGITS), or of the seed's facet of them; a ValueError of one line if the dataset was replaced since
        the job was validated."""
        kind, fingerprint = dataset_start(start)
        ranked = self._ranked(loaded, layer, fingerprint)
        if kind == "dataset":
            chosen = ranked.best[feature][:START_EXAMPLES]
        else:
            unit_facets = _facets(ranked, feature)
            chosen = unit_facets[seed % len(unit_facets)]
        return np.asarray(ranked.dataset.images[np.sort(chosen)], np.float32).mean(axis=0)

    def facets_of(self, loaded: LoadedModel, layer: str, feature: int, fingerprint: str) -> list[np.ndarray]:
        """The dataset indices of each facet of `feature`'s START_FACETS x START_EXAMPLES best (facets), the best
        example's facet first."""
        return _facets(self._ranked(loaded, layer, fingerprint), feature)

    def _ranked(self, loaded: LoadedModel, layer: str, fingerprint: str) -> Ranked:
        cache_key = (loaded.info.name, loaded.info.sha256, fingerprint, layer)
        if cache_key in self._ranked_cache:
            self._ranked_cache.move_to_end(cache_key)
            return self._ranked_cache[cache_key]
        dataset = datasets.for_model(self.registry(), loaded.info)
        if dataset is None or dataset.fingerprint != fingerprint:
            raise ValueError(f"start: {loaded.info.name}'s dataset changed since this job was validated "
                             f"({fingerprint} -> {dataset and dataset.fingerprint}); submit it again")
        ranked = examples.ranking(loaded, dataset, layer, START_FACETS * START_EXAMPLES)
        self._ranked_cache[cache_key] = Ranked(dataset, ranked["top"]["indices"], {})
        self.builds["dataset start"] += 1
        while len(self._ranked_cache) > RANKING_CACHE:
            self._ranked_cache.popitem(last=False)
        return self._ranked_cache[cache_key]


def _facets(ranked: Ranked, feature: int) -> list[np.ndarray]:
    """A unit's facets as dataset indices, clustered once while its ranking is kept."""
    if feature not in ranked.facets:
        best = np.asarray(ranked.best[feature])
        groups = facets(np.asarray(ranked.dataset.images[best], np.float32), START_FACETS)
        ranked.facets[feature] = [best[group] for group in groups]
    return ranked.facets[feature]


def facets(images: np.ndarray, count: int) -> list[np.ndarray]:
    """`count` clusters of alike `images` (best first) as lists of their positions, each best first, ordered by
    their best image: k-means on the pixels from a farthest-point start at the best image, so the first facet
    holds the best example and the same images give the same facets on every run. Fewer where images repeat."""
    points = images.reshape(len(images), -1).astype(np.float64)
    squared = (points ** 2).sum(axis=1)
    centres = points[:1]
    while len(centres) < min(count, len(points)):
        farthest = _distances(points, squared, centres).min(axis=1).argmax()
        centres = np.concatenate([centres, points[farthest:farthest + 1]])
    for _ in range(FACET_ROUNDS):
        nearest = _distances(points, squared, centres).argmin(axis=1)
        groups = [np.flatnonzero(nearest == centre) for centre in range(len(centres))]
        groups = [group for group in groups if len(group)]
        centres = np.stack([points[group].mean(axis=0) for group in groups])
    return sorted(groups, key=lambda group: group[0])


def _distances(points: np.ndarray, squared: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Squared distances (points, centres), without the (points, centres, pixels) difference a 299-px
    dataset's few dozen images would make a gigabyte of."""
    return squared[:, None] - 2 * points @ centres.T + (centres ** 2).sum(axis=1)[None]
