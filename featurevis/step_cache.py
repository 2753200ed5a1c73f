"""A worker process's compiled steps: each (model version, layer, method) traced once, kept in an LRU.

Steps are kept in an LRU of `FEATUREVIS_STEP_CACHE` entries (default 32), which
bounds memory when jobs wander over many layers; a model's steps leave with it
(ModelCache.on_evict).
"""
from __future__ import annotations

import os
from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import Callable

import keras
import numpy as np

from featurevis import datasets, registry, scoring
from featurevis.contract import METHOD_DEFAULTS
from featurevis.model_cache import LoadedModel
from featurevis.optvis import methods, objectives, param, render
from featurevis.registry import LOGITS, ModelInfo

DEFAULT_STEP_CACHE = 32


@dataclass(frozen=True)
class Compiled:
    """What is compiled once per (model, layer, method): the step, and the probe scores read."""

    step: render.CompiledStep
    probe: scoring.Probe


class StepCache:
    def __init__(self, models: Callable[[], registry.Registry], builds: Counter, size: int | None = None):
        self.registry = models
        self.builds = builds
        self.size = size or int(os.environ.get("FEATUREVIS_STEP_CACHE", DEFAULT_STEP_CACHE))
        self._steps: OrderedDict[tuple[str, str, str, str], Compiled] = OrderedDict()

    def get(self, loaded: LoadedModel, layer: str, step_name: str) -> tuple[Compiled, bool]:
        """The compiled step of a layer (a name, or LOGITS) and method; and whether this call built it."""
        key = (loaded.info.name, loaded.info.sha256, layer, step_name)
        if key in self._steps:
            self._steps.move_to_end(key)
            return self._steps[key], False
        self._steps[key] = self._compile(loaded, layer, step_name)
        self.builds["step"] += 1
        while len(self._steps) > self.size:
            self._steps.popitem(last=False)
        return self._steps[key], True

    def forget_model(self, model: tuple[str, str]) -> None:
        for key in [key for key in self._steps if key[:2] == model]:
            del self._steps[key]

    def cached(self) -> list[tuple[str, str, str, str]]:
        return list(self._steps)

    def _compile(self, loaded: LoadedModel, layer: str, step_name: str) -> Compiled:
        """`step_name` is a method's name, or a method and a variant of it (contract.JobSpec.step): "robust+alpha"
        (a state with an opacity plane), "maco+dataset-<fingerprint>" (that dataset's magnitude spectrum). A
        variant is a step of its own, compiled once like the others."""
        method_name, _, variant = step_name.partition("+")
        method = methods.BY_NAME[method_name]
        network, objective = target_network(loaded, layer, with_style=method.needs_style,
                                            class_objective=METHOD_DEFAULTS[method_name].class_objective)
        shape = loaded.info.input_shape
        options = {"magnitude": self.dataset_magnitude(loaded.info, variant.removeprefix("dataset-"))} \
            if variant.startswith("dataset-") else {variant: True} if variant else {}
        return Compiled(method.compile_step(network, loaded.preprocess, objective, shape, **options),
                        scoring.feature_probe(network, loaded.preprocess, shape, loaded.classes()))

    def dataset_magnitude(self, info: ModelInfo, fingerprint: str | None = None) -> np.ndarray:
        """The mean magnitude spectrum of the model's dataset (the contract checked it has one). With the
        `fingerprint` a job was validated with, a ValueError of one line if the dataset was replaced since."""
        dataset = datasets.for_model(self.registry(), info)
        if fingerprint is not None and dataset.fingerprint != fingerprint:
            raise ValueError(f"magnitude: {info.name}'s dataset changed since this job was validated "
                             f"({fingerprint} -> {dataset.fingerprint}); submit it again")
        return param.mean_magnitude(dataset.images)


def target_network(loaded: LoadedModel, layer: str, with_style: bool = False,
                   class_objective: str = "logit") -> tuple[keras.Model, Callable]:
    """The model truncated at the target layer (at the logits for classes), and its objective.

    `with_style`: the logits come with the model's last Conv2D layer (or last spatial layer) as a
    second output, for the diversity term (objectives.target_and_style); a spatial target is its own style layer.
    `class_objective` (contract.CLASS_OBJECTIVES, a method's contract.Defaults): what a class target climbs, its
    logit or its log-probability. A sigmoid model's classes do not share a softmax, so they keep their logits.
    """
    if layer == LOGITS:
        log_probability = class_objective == "log_probability" and not loaded.info.multi_label
        objective = objectives.weighted_log_probabilities if log_probability else objectives.weighted_logits
        if with_style:
            style_layer = (loaded.info.conv_layers or loaded.info.layers)[-1]
            style = loaded.layer_output(style_layer.name)
            return keras.Model(loaded.network.inputs[0], [loaded.logits.output, style]), objective
        return loaded.logits, objective
    return keras.Model(loaded.network.inputs[0], loaded.layer_output(layer)), objectives.weighted_channels
