"""The per-process model factory: every model, sub-model and compiled step built once.

A worker process owns exactly one factory, made in that process (Celery's
`worker_process_init`), never in a parent that forks: TensorFlow state
inherited across fork hangs the child on its first call.

Models are kept for the life of the process. Compiled steps are kept per
(model, layer) in an LRU of `FEATUREVIS_STEP_CACHE` entries (default 32), which
bounds memory when jobs wander over many layers.
"""
from __future__ import annotations

import os
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import Callable

import keras
import tensorflow as tf

from featurevis import catalog, quality, zoo
from featurevis.optvis import objectives, render

DEFAULT_STEP_CACHE = 32


@dataclass
class LoadedModel:
    info: catalog.ModelInfo
    network: keras.Model
    preprocess: Callable
    conv_layers: list[keras.layers.Layer]
    classify: Callable
    build_s: float
    build_reported: bool = False


@dataclass(frozen=True)
class Compiled:
    """What is compiled once per (model, layer, method): the step, and the probe quality scores read."""

    step: render.CompiledStep
    probe: Callable


@dataclass(frozen=True)
class Acquired:
    """What a job gets from the factory, and what getting it cost this job."""

    model: LoadedModel
    step: render.CompiledStep
    probe: Callable
    model_load_s: float
    compile_s: float


class ModelFactory:
    def __init__(self, step_cache_size: int | None = None):
        self.step_cache_size = step_cache_size or int(os.environ.get("FEATUREVIS_STEP_CACHE", DEFAULT_STEP_CACHE))
        self._models: dict[str, LoadedModel] = {}
        self._steps: OrderedDict[tuple[str, int | None, str], Compiled] = OrderedDict()
        self.builds: Counter[str] = Counter()  # "model", "step": how often each was built

    def model(self, name: str) -> LoadedModel:
        if name not in self._models:
            started = time.perf_counter()
            info = catalog.get(name)
            architecture = zoo.ARCHITECTURES[info.architecture]
            network = zoo.build(info)
            self._models[name] = LoadedModel(
                info=info, network=network, preprocess=architecture.preprocess,
                conv_layers=zoo.conv_layers_in_graph_order(network),
                classify=render.classifier(network, architecture.preprocess, info.input_shape),
                build_s=time.perf_counter() - started,
            )
            self.builds["model"] += 1
        return self._models[name]

    def acquire(self, name: str, conv_id: int | None, method: str = "gradient_ascent") -> Acquired:
        """Model and compiled step for a target and method; a second call for the same ones builds nothing."""
        loaded = self.model(name)
        model_load_s = 0.0 if loaded.build_reported else loaded.build_s
        loaded.build_reported = True  # a preloaded model's build time lands on its first job
        key = (name, conv_id, method)
        compile_s = 0.0
        if key in self._steps:
            self._steps.move_to_end(key)
        else:
            started = time.perf_counter()
            self._steps[key] = self._compile(loaded, conv_id, method)
            compile_s = time.perf_counter() - started
            self.builds["step"] += 1
            while len(self._steps) > self.step_cache_size:
                self._steps.popitem(last=False)
        compiled = self._steps[key]
        return Acquired(loaded, compiled.step, compiled.probe, model_load_s, compile_s)

    def judge(self, name: str) -> tuple[str, Callable] | None:
        """The independent model that judges `name`'s class visualizations, with its classifier."""
        judge = catalog.JUDGES.get(name)
        return (judge, self.model(judge).classify) if judge else None

    def cached_steps(self) -> list[tuple[str, int | None, str]]:
        return list(self._steps)

    @staticmethod
    def _compile(loaded: LoadedModel, conv_id: int | None, method: str) -> Compiled:
        network, objective = target_network(loaded, conv_id, with_style=method == "robust")
        shape = loaded.info.input_shape
        return Compiled(render.STEPS[method](network, loaded.preprocess, objective, shape),
                        quality.feature_probe(network, loaded.preprocess, shape))


def target_network(loaded: LoadedModel, conv_id: int | None, with_style: bool = False) -> tuple[keras.Model, Callable]:
    """The model truncated at the target layer (the whole model for the logits), and its objective.

    `with_style`: the logits come with the last conv layer as a second output, for the diversity
    term (objectives.target_and_style); a conv target is its own style layer.
    """
    if conv_id is None:
        if with_style:
            return (keras.Model(loaded.network.input, [loaded.network.output, loaded.conv_layers[-1].output]),
                    objectives.weighted_logits)
        return loaded.network, objectives.weighted_logits
    return keras.Model(loaded.network.input, loaded.conv_layers[conv_id].output), objectives.weighted_channels


def grow_gpu_memory() -> None:
    """Allocate GPU memory as needed instead of all at once; must run before TensorFlow's runtime starts."""
    for gpu in tf.config.list_physical_devices("GPU"):
        tf.config.experimental.set_memory_growth(gpu, True)


def device_name() -> str:
    """The device TensorFlow places ops on by default in this process, and how it was pinned."""
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return "CPU"
    details = tf.config.experimental.get_device_details(gpus[0])
    pinned = os.environ.get("CUDA_VISIBLE_DEVICES")
    return f"GPU:0 ({details.get('device_name', 'GPU')}){f' CUDA_VISIBLE_DEVICES={pinned}' if pinned else ''}"


def versions() -> dict[str, str]:
    return {"tensorflow": tf.__version__, "keras": keras.__version__}
