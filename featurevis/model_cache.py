"""A worker process's built models: each registered model version built once, kept in an LRU by weight.

Models are kept per (name, version) in an LRU bounded by their weights' size
(`FEATUREVIS_MODEL_CACHE_MB`, default 8192): a model evicted and asked for again
is built once more, not per job. A user's file reaches Keras only through
zoo.build, after the static check passes again (featurevis/admission.py).
"""
from __future__ import annotations

import os
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import Callable

import keras

from featurevis import registry, targets, zoo
from featurevis.optvis import render
from featurevis.registry import ModelInfo

DEFAULT_MODEL_CACHE_MB = 8192


@dataclass
class LoadedModel:
    info: ModelInfo
    network: keras.Model
    logits: keras.Model | None  # the network up to the value its final activation takes (targets.class_head)
    preprocess: Callable
    classify: render.Classifier | None  # None: the model has no classes
    build_s: float
    weight_bytes: int
    build_reported: bool = False

    def classes(self) -> tuple[keras.Model, Callable] | None:
        """The logits network and what makes its values probabilities (scoring.feature_probe's final read)."""
        return None if self.logits is None else (self.logits, render.class_probabilities(self.info.multi_label))

    def layer_output(self, name: str) -> keras.KerasTensor:
        """A described layer's output in the network's graph, nested layers included (zoo.live_target)."""
        return zoo.live_target(self.network, self.info, name)


class ModelCache:
    def __init__(self, models: registry.Registry | None, builds: Counter, cache_mb: float | None = None):
        self.registry = models
        self.builds = builds
        self.cache_bytes = 2**20 * (cache_mb or float(os.environ.get("FEATUREVIS_MODEL_CACHE_MB",
                                                                     DEFAULT_MODEL_CACHE_MB)))
        self._models: OrderedDict[tuple[str, str], LoadedModel] = OrderedDict()
        self.on_evict: Callable[[tuple[str, str]], None] = lambda key: None

    def info(self, name: str, version: str | None = None) -> ModelInfo:
        return self.store_registry().get(name, version)

    def get(self, name: str, version: str | None = None) -> LoadedModel:
        info = self.info(name, version)
        if info.source.get("builtin") and info.sha256 != registry.builtin_description(name)["sha256"]:
            raise registry.WeightsUnavailable(
                f"model {name}: version {info.sha256[:12]} is another featurevis release's built-in; this worker "
                f"serves {registry.builtin_description(name)['sha256'][:12]} (roll every worker to one release)")
        key = (info.name, info.sha256)
        if key in self._models:
            self._models.move_to_end(key)
            return self._models[key]
        self._models[key] = self._build(info)
        self.builds["model"] += 1
        self._evict(keep=key)
        return self._models[key]

    def judge(self, name: str) -> tuple[str, render.Classifier] | None:
        """The independent model that judges `name`'s class visualizations, with its classifier."""
        judge = registry.JUDGES.get(name)
        return (judge, self.get(judge).classify) if judge else None

    def cached(self) -> list[tuple[str, str]]:
        return list(self._models)

    def store_registry(self) -> registry.Registry:
        return self.registry or registry.Registry.from_env()

    def _build(self, info: ModelInfo) -> LoadedModel:
        started = time.perf_counter()
        network = zoo.build(info, self.store_registry())
        head = targets.class_head(network) if info.classes else None
        logits = keras.Model(network.inputs[0], head.logits) if head is not None else None
        preprocess = zoo.preprocessor(info.preprocess)
        classify = render.classifier(logits, preprocess, info.input_shape, info.multi_label) \
            if logits is not None else None
        return LoadedModel(info=info, network=network, logits=logits, preprocess=preprocess, classify=classify,
                           build_s=time.perf_counter() - started, weight_bytes=4 * network.count_params())

    def _evict(self, keep: tuple[str, str]) -> None:
        """Drop the least recently used models while the cache holds more than its bound; their steps follow
        (on_evict)."""
        while sum(model.weight_bytes for model in self._models.values()) > self.cache_bytes:
            oldest = next(iter(self._models))
            if oldest == keep:
                return  # one model over the bound alone is still served
            del self._models[oldest]
            self.on_evict(oldest)
