"""The per-process model factory: every model, sub-model and compiled step built once.

A worker process owns exactly one factory, made in that process (Celery's
`worker_process_init`), never in a parent that forks: TensorFlow state
inherited across fork hangs the child on its first call.

Models are kept per (name, version) in an LRU bounded by their weights' size
(`FEATUREVIS_MODEL_CACHE_MB`, default 8192): a model evicted and asked for again
is built once more, not per job. Compiled steps are kept per (model, version,
layer, method) in an LRU of `FEATUREVIS_STEP_CACHE` entries (default 32), which
bounds memory when jobs wander over many layers; a model's steps leave with it.
"""
from __future__ import annotations

import os
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import Callable

import keras
import numpy as np
import tensorflow as tf

from featurevis import datasets, images, registry, scoring, zoo
from featurevis.optvis import methods, objectives, param, render
from featurevis.registry import LOGITS, ModelInfo
from featurevis.store import MODEL_FILE

DEFAULT_STEP_CACHE = 32
DEFAULT_MODEL_CACHE_MB = 8192
CARICATURE_CACHE = 16  # (model, layer, image) activations a process keeps: each is one layer's map


@dataclass
class LoadedModel:
    info: ModelInfo
    network: keras.Model
    logits: keras.Model | None  # the network up to the last Dense layer's pre-activation values
    preprocess: Callable
    classify: render.Classifier | None  # None: the model has no Dense layer, so no classes
    build_s: float
    weight_bytes: int
    build_reported: bool = False

    def layer_output(self, name: str):
        return zoo.live_layer(self.network, self.info, name).output


@dataclass(frozen=True)
class Compiled:
    """What is compiled once per (model, layer, method): the step, and the probe scores read."""

    step: render.CompiledStep
    probe: scoring.Probe


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
        self.step_cache_size = step_cache_size or int(os.environ.get("FEATUREVIS_STEP_CACHE", DEFAULT_STEP_CACHE))
        self.model_cache_bytes = 2**20 * (model_cache_mb or float(os.environ.get("FEATUREVIS_MODEL_CACHE_MB",
                                                                                  DEFAULT_MODEL_CACHE_MB)))
        self.registry = models
        self._models: OrderedDict[tuple[str, str], LoadedModel] = OrderedDict()
        self._steps: OrderedDict[tuple[str, str, str, str], Compiled] = OrderedDict()
        self._caricatures: OrderedDict[tuple[str, str, str, str], np.ndarray] = OrderedDict()
        self.builds: Counter[str] = Counter()  # "model", "step", "caricature": how often each was built

    def info(self, name: str, version: str | None = None) -> ModelInfo:
        return self._registry().get(name, version)

    def model(self, name: str, version: str | None = None) -> LoadedModel:
        info = self.info(name, version)
        if info.source.get("builtin") and info.sha256 != registry.builtin_description(name)["sha256"]:
            raise registry.WeightsUnavailable(
                f"model {name}: version {info.sha256[:12]} is another featurevis release's built-in; this worker "
                f"serves {registry.builtin_description(name)['sha256'][:12]} (roll every worker to one release)")
        key = (info.name, info.sha256)
        if key in self._models:
            self._models.move_to_end(key)
            return self._models[key]
        started = time.perf_counter()
        network = zoo.build(info, self._registry())
        logits = keras.Model(network.inputs[0], zoo.logits_output(network)) if info.classes else None
        preprocess = zoo.preprocessor(info.preprocess)
        self._models[key] = LoadedModel(
            info=info, network=network, logits=logits, preprocess=preprocess,
            classify=render.classifier(logits, preprocess, info.input_shape) if logits is not None else None,
            build_s=time.perf_counter() - started, weight_bytes=4 * network.count_params(),
        )
        self.builds["model"] += 1
        self._evict_models(keep=key)
        return self._models[key]

    def acquire(self, name: str, target: str | int | None, method: str = "gradient_ascent",
                version: str | None = None) -> Acquired:
        """Model and compiled step for a target (a layer name, a conv_id, or None for the logits) and method
        (or a method's variant, JobSpec.step: "robust+alpha").

        A second call for the same ones builds nothing.
        """
        loaded = self.model(name, version)
        layer = loaded.info.target_layer(target)
        model_load_s = 0.0 if loaded.build_reported else loaded.build_s
        loaded.build_reported = True  # a preloaded model's build time lands on its first job
        key = (loaded.info.name, loaded.info.sha256, layer, method)
        compile_s = 0.0
        if key in self._steps:
            self._steps.move_to_end(key)
        else:
            started = time.perf_counter()
            self._steps[key] = self._compile(loaded, layer, method)
            compile_s = time.perf_counter() - started
            self.builds["step"] += 1
            while len(self._steps) > self.step_cache_size:
                self._steps.popitem(last=False)
        compiled = self._steps[key]
        return Acquired(loaded, compiled.step, compiled.probe, model_load_s, compile_s)

    def caricature(self, loaded: LoadedModel, layer: str, key: str) -> np.ndarray:
        """The activations (h, w, channels) an uploaded image gives at a layer: a caricature's target.

        Computed once per (model version, layer, image) in this process and kept
        in a small LRU, so a repeated caricature reads neither the store nor the network.
        The image is resized to the model's input (images.fit).
        """
        cache_key = (loaded.info.name, loaded.info.sha256, layer, key)
        if cache_key in self._caricatures:
            self._caricatures.move_to_end(cache_key)
            return self._caricatures[cache_key]
        pixels = self._fitted_upload(key, loaded.info.input_shape, "targets: caricature image")
        network = keras.Model(loaded.network.inputs[0], loaded.layer_output(layer))
        activations = network(loaded.preprocess(tf.constant(pixels[None])), training=False)
        self._caricatures[cache_key] = np.asarray(tf.cast(activations, tf.float32))[0]
        self.builds["caricature"] += 1
        while len(self._caricatures) > CARICATURE_CACHE:
            self._caricatures.popitem(last=False)
        return self._caricatures[cache_key]

    def start_image(self, loaded: LoadedModel, key: str) -> np.ndarray:
        """The picture a job starts from, resized to the model's input (images.fit). Not cached: one read
        and resize per batch is nothing beside the climb."""
        return self._fitted_upload(key, loaded.info.input_shape, "start_image:")

    def _fitted_upload(self, key: str, shape: tuple[int, int, int], named: str) -> np.ndarray:
        """An uploaded image resized to `shape`; a ValueError of one line, `named` first, when it cannot be one
        (the producer checked that it exists, not that it fits the model)."""
        try:
            return images.fit(images.decode_upload(self._registry().store.read_bytes(key, ""), key.rsplit(".", 1)[1]),
                              shape)
        except ValueError as error:
            raise ValueError(f"{named} {key[:24]}...: {error}") from None

    def describe(self, request: dict) -> dict:
        """Load a registration request's model the way jobs will, and describe it; ModelRefused, one line, if it can't serve."""
        name, version, source = request["name"], request["sha256"], request["source"]
        if "file" in source:
            try:
                path = self._registry().model_file(name, version)
            except FileNotFoundError:
                path = None
            if path is None or not path.is_file():
                raise registry.ModelRefused(f"file: nothing uploaded at {self._registry().key(name, version)}/"
                                            f"{MODEL_FILE}; put the file there first")
            if path.stat().st_size > registry.max_model_bytes():
                raise registry.ModelRefused(f"file: {path.stat().st_size} bytes, over the limit of "
                                            f"{registry.max_model_bytes()} (FEATUREVIS_MODEL_MAX_BYTES)")
            if registry.version_of_file(path) != version:
                raise registry.ModelRefused(f"sha256: the stored file's hash is not {version}")
            network, default_preprocess = zoo.load_file(path), "unit"
        else:
            try:
                network = zoo.application(name, source["keras_app"], source["weights"])
            except registry.WeightsUnavailable as error:
                raise registry.ModelRefused(f"weights: {error}") from None
            default_preprocess = zoo.application_preprocess(source["keras_app"])
        class_names = request["class_names"]
        if class_names is None and "keras_app" in source and zoo.logits_layer(network).units == 1000:
            class_names = list(registry.builtin_info("inception_v3").class_names)  # Keras' ImageNet order
        return zoo.describe(network, name, version, source, request["preprocess"], class_names, default_preprocess)

    def judge(self, name: str) -> tuple[str, Callable] | None:
        """The independent model that judges `name`'s class visualizations, with its classifier."""
        judge = registry.JUDGES.get(name)
        return (judge, self.model(judge).classify) if judge else None

    def cached_models(self) -> list[tuple[str, str]]:
        return list(self._models)

    def cached_steps(self) -> list[tuple[str, str, str, str]]:
        return list(self._steps)

    def _registry(self) -> registry.Registry:
        return self.registry or registry.Registry.from_env()

    def _evict_models(self, keep: tuple[str, str]) -> None:
        """Drop the least recently used models, and their steps, while the cache holds more than its bound."""
        while sum(model.weight_bytes for model in self._models.values()) > self.model_cache_bytes:
            oldest = next(iter(self._models))
            if oldest == keep:
                return  # one model over the bound alone is still served
            del self._models[oldest]
            for step in [step for step in self._steps if step[:2] == oldest]:
                del self._steps[step]

    def _compile(self, loaded: LoadedModel, layer: str, step_name: str) -> Compiled:
        """`step_name` is a method's name, or a method and a variant of it (contract.JobSpec.step): "robust+alpha"
        (a state with an opacity plane), "maco+dataset-<fingerprint>" (that dataset's magnitude spectrum). A
        variant is a step of its own, compiled once like the others."""
        method_name, _, variant = step_name.partition("+")
        method = methods.BY_NAME[method_name]
        network, objective = target_network(loaded, layer, with_style=method.needs_style)
        shape = loaded.info.input_shape
        options = {"magnitude": self.dataset_magnitude(loaded.info, variant.removeprefix("dataset-"))} \
            if variant.startswith("dataset-") else {variant: True} if variant else {}
        return Compiled(method.compile_step(network, loaded.preprocess, objective, shape, **options),
                        scoring.feature_probe(network, loaded.preprocess, shape))

    def dataset_magnitude(self, info: ModelInfo, fingerprint: str | None = None) -> np.ndarray:
        """The mean magnitude spectrum of the model's dataset (the contract checked it has one). With the
        `fingerprint` a job was validated with, a ValueError of one line if the dataset was replaced since."""
        dataset = datasets.for_model(self._registry(), info)
        if fingerprint is not None and dataset.fingerprint != fingerprint:
            raise ValueError(f"magnitude: {info.name}'s dataset changed since this job was validated "
                             f"({fingerprint} -> {dataset.fingerprint}); submit it again")
        return param.mean_magnitude(dataset.images)


def target_network(loaded: LoadedModel, layer: str, with_style: bool = False) -> tuple[keras.Model, Callable]:
    """The model truncated at the target layer (at the logits for classes), and its objective.

    `with_style`: the logits come with the model's last Conv2D layer (or last spatial layer) as a
    second output, for the diversity term (objectives.target_and_style); a spatial target is its own style layer.
    """
    if layer == LOGITS:
        if with_style:
            style_layer = (loaded.info.conv_layers or loaded.info.layers)[-1]
            style = loaded.layer_output(style_layer.name)
            return keras.Model(loaded.network.inputs[0], [loaded.logits.output, style]), objectives.weighted_logits
        return loaded.logits, objectives.weighted_logits
    return keras.Model(loaded.network.inputs[0], loaded.layer_output(layer)), objectives.weighted_channels


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
