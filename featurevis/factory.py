"""A worker process's model factory: its built models, their compiled steps and the uploads jobs fit to them.

A worker process owns exactly one factory, made in that process (Celery's
`worker_process_init`), never in a parent that forks: TensorFlow state
inherited across fork hangs the child on its first call. Each concern has a
room of its own, and data flows one way, from the registry to a model to its
steps:

- featurevis/model_cache.py: each registered model version built once
  (a user's file only after the static check passes again), in an LRU by weight;
- featurevis/step_cache.py: each (model, layer, method) step traced once, in an
  LRU; a model's steps leave with it;
- featurevis/uploads.py: caricature targets and start pictures, fitted to the model;
- featurevis/dataset_starts.py: the pictures a climb starts from when a job asks for its dataset's best examples.

Describing a new model is none of these: it happens in a disposable process
(featurevis/sandbox.py), never in the factory's.
"""
from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from featurevis import registry, scoring
from featurevis.dataset_starts import DatasetStarts
from featurevis.model_cache import LoadedModel, ModelCache
from featurevis.optvis import render
from featurevis.registry import ModelInfo
from featurevis.step_cache import StepCache
from featurevis.uploads import Uploads


@dataclass(frozen=True)
class Acquired:
    """What a job gets from the factory, and what getting it cost this job."""

    model: LoadedModel
    step: render.CompiledStep
    probe: scoring.Probe
    model_load_s: float
    compile_s: float


class ModelFactory:
    def __init__(self, step_cache_size: int | None = None, model_cache_mb: float | None = None,
                 models: registry.Registry | None = None):
        self.builds: Counter[str] = Counter()  # "model", "step", "caricature": how often each was built
        self.models = ModelCache(models, self.builds, model_cache_mb)
        self.steps = StepCache(self.models.store_registry, self.builds, step_cache_size)
        self.uploads = Uploads(self.models.store_registry, self.builds)
        self.dataset_starts = DatasetStarts(self.models.store_registry, self.builds)
        self.models.on_evict = self.steps.forget_model

    def model(self, name: str, version: str | None = None) -> LoadedModel:
        return self.models.get(name, version)

    def acquire(self, name: str, target: str | int | None, method: str = "gradient_ascent",
                version: str | None = None) -> Acquired:
        """Model and compiled step for a target (a layer name, a conv_id, or None for the logits) and method
        (or a method's variant, JobSpec.step: "robust+alpha").

        A second call for the same ones builds nothing.
        """
        loaded = self.models.get(name, version)
        model_load_s = 0.0 if loaded.build_reported else loaded.build_s
        loaded.build_reported = True  # a preloaded model's build time lands on its first job
        started = time.perf_counter()
        compiled, built = self.steps.get(loaded, loaded.info.target_layer(target), method)
        compile_s = time.perf_counter() - started if built else 0.0
        return Acquired(loaded, compiled.step, compiled.probe, model_load_s, compile_s)

    def judge(self, name: str):
        return self.models.judge(name)

    def dataset_magnitude(self, info: ModelInfo, fingerprint: str | None = None) -> np.ndarray:
        return self.steps.dataset_magnitude(info, fingerprint)

    def cached_models(self) -> list[tuple[str, str]]:
        return self.models.cached()

    def cached_steps(self) -> list[tuple[str, str, str, str]]:
        return self.steps.cached()


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
