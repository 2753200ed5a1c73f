"""The Celery tasks: thin wiring of contract, factory, math and store.

`featurevis.optimize` runs one job, `featurevis.sweep` several features of one
layer as one batched pass, `featurevis.register_model` validates and describes
a model for the registry. All take JSON keyword arguments, so any system can
send them by name.
"""
from __future__ import annotations

import os
import socket
import time
from datetime import datetime, timezone
from typing import Callable

import celery
import numpy as np
from celery.exceptions import SoftTimeLimitExceeded

import featurevis
from featurevis import contract, gallery, images, layout, registry
from featurevis.contract import JobSpec
from featurevis.registry import LOGITS, ModelRefused, WeightsUnavailable
from featurevis.layout import ANIMATION, CONTACT_SHEET, IMAGE_NPY, IMAGE_PNG, META
from featurevis.store import ResultStore
from worker import runtime
from worker.app import app
from worker.progress import ProgressPublisher

ANIMATION_FRAMES = 30
SET_COLUMNS = 4  # a diverse set's image.png: up to 4 pictures a row


@app.task(bind=True, name="featurevis.optimize")
def optimize(self, **fields) -> dict:
    spec = contract.normalize(fields)
    store = ResultStore.from_env()
    meta = store.read_meta(spec.key)
    if meta is not None:
        return _summary(spec, meta, cached=True)
    with runtime.job_lock(spec.job_id):  # a duplicate waits here, then finds the first run's result
        meta = store.read_meta(spec.key)
        cached = meta is not None
        if not cached:
            [meta] = _render_safely(self, store, [spec])
    if not cached:
        gallery.try_rebuild(store)  # before SUCCESS: whoever gets the answer finds the result on the page
    return _summary(spec, meta, cached)


@app.task(bind=True, name="featurevis.sweep")
def sweep(self, **fields) -> dict:
    specs = contract.normalize_sweep(fields)
    store = ResultStore.from_env()
    metas = {spec.job_id: store.read_meta(spec.key) for spec in specs}
    missing = [spec for spec in specs if metas[spec.job_id] is None]
    if missing:
        metas.update({spec.job_id: meta for spec, meta in zip(missing, _render_safely(self, store, missing))})
    key = contract.sweep_key(specs)
    sheet = images.contact_sheet([store.read_image(spec.key) for spec in specs])
    jobs = [_summary(spec, metas[spec.job_id], cached=spec not in missing) for spec in specs]
    store.write(key, {CONTACT_SHEET: sheet}, {"sweep_id": contract.sweep_id(specs), "model": specs[0].model,
                                              "layer": specs[0].layer, "features": [spec.feature for spec in specs],
                                              "jobs": jobs})
    gallery.try_rebuild(store)
    return {"sweep_id": contract.sweep_id(specs), "key": key, "contact_sheet": f"{key}/{CONTACT_SHEET}",
            "meta": f"{key}/{META}", "jobs": jobs}


@app.task(bind=True, name="featurevis.register_model")
def register_model(self, **fields) -> dict:
    """Validate a model the producer put in the store, describe it, and make it the name's current version.

    A refused model leaves the registry as it was: its upload is removed, and
    the task fails with ModelRefused's one line.
    """
    request = registry.registration_request(fields)
    models = registry.Registry.from_env()
    name, version = request["name"], request["sha256"]
    description = models.description(name, version)
    if description is None:
        try:
            description = _describe_safely(request)
        except ModelRefused:
            models.remove_version(name, version)
            raise
    elif changed := registry.changed_options(description, request):
        raise ModelRefused(f"request: this file is registered as {name} with {changed}; register it under "
                           f"another name to serve it differently")
    models.publish(description)
    return registration_summary(description)


def registration_summary(description: dict) -> dict:
    return {"name": description["name"], "sha256": description["sha256"], "input_shape": description["input_shape"],
            "layers": len(description["layers"]), "classes": description["classes"],
            "conv_layers": sum(layer["conv_id"] is not None for layer in description["layers"])}


def _describe_safely(request: dict) -> dict:
    """factory.describe, with what a malformed model makes Keras raise as a refusal.

    Anything else (no memory, the store unreachable, the time limit) is not the model's
    fault: it fails the task as a plain error and the upload stays for a retry.
    """
    try:
        return runtime.factory().describe(request)
    except (ModelRefused, SoftTimeLimitExceeded):
        raise
    except (ValueError, TypeError, KeyError, AttributeError, IndexError) as error:
        raise ModelRefused(f"file: {type(error).__name__}: {' '.join(str(error).split())[:200]}") from None
    except Exception as error:
        raise RuntimeError(f"{type(error).__name__}: {' '.join(str(error).split())[:300]}") from None


def _render_safely(task: celery.Task, store: ResultStore, specs: list[JobSpec],
                   annotate: Callable[[JobSpec, dict], None] | None = None) -> list[dict]:
    """_render, with TensorFlow's exceptions turned into plain ones (plain_errors)."""
    return plain_errors(_render, task, store, specs, annotate)


def plain_errors(function: Callable, *args):
    """function(*args), with TensorFlow's exceptions turned into plain ones.

    Celery unpickles a failed task's exception in the worker's parent process;
    a TensorFlow or Keras exception class would import TensorFlow there, and
    the parent must stay TF-free to fork healthy children.
    """
    try:
        return function(*args)
    except SoftTimeLimitExceeded:
        raise TimeoutError(f"job exceeded its time limit of {app.conf.task_soft_time_limit} s "
                           f"(FEATUREVIS_SOFT_TIME_LIMIT); ask for fewer iterations") from None
    except (WeightsUnavailable, ModelRefused):
        raise
    except Exception as error:
        if type(error).__module__ == "builtins":
            raise
        raise RuntimeError(f"{type(error).__name__}: {' '.join(str(error).split())[:300]}") from None


def _render(task: celery.Task, store: ResultStore, specs: list[JobSpec],
            annotate: Callable[[JobSpec, dict], None] | None = None) -> list[dict]:
    """Optimize specs of one layer as one batch, publish each result, return their metas.

    `annotate(spec, meta)` adds to a meta before it is published (an atlas adds its dataset comparison),
    so meta.json is still written once, whole.
    """
    from featurevis import scoring  # TensorFlow side: imported in pool children only
    from featurevis.optvis import objectives, render

    factory = runtime.factory()
    first = specs[0]
    acquired = factory.acquire(first.model, first.layer, first.method, first.model_sha256)
    info = acquired.model.info
    # One row per image: a plain job or a sweep's feature is one image, a diverse set is `images` of them.
    seeds = [seed for spec in specs for seed in spec.seeds]
    weights = objectives.weights_matrix([spec.weights for spec in specs for _ in spec.seeds],
                                        info.feature_count(first.layer))
    class_names = info.class_names
    publisher = ProgressPublisher(task)
    latest: dict | None = None
    started, started_at = time.perf_counter(), time.time()

    def on_progress(done: int, stats: render.StepStats, predicted: render.Prediction | None) -> None:
        nonlocal latest
        if predicted is not None:
            latest = _top_class(predicted, 0, class_names)
        publisher.publish({
            "job_ids": [spec.job_id for spec in specs], "iteration": done, "iterations": first.iterations,
            "loss": float(np.mean(stats.loss)), "grad_min": float(np.min(stats.grad_min)),
            "grad_max": float(np.max(stats.grad_max)), "step_size": float(np.mean(stats.step_size)),
            "prediction": latest,
        }, final=done == first.iterations)

    frame_every = max(1, first.iterations // ANIMATION_FRAMES) if first.animate else 0
    ascent = render.run(acquired.step, seeds, weights, first.iterations, first.diversity,
                        classify=acquired.model.classify, on_progress=on_progress, frame_every=frame_every)
    timings = {"model_load_s": acquired.model_load_s, "compile_s": acquired.compile_s,
               "optimize_s": time.perf_counter() - started, "started_at": started_at}
    final = ascent.predictions[-1].probabilities if ascent.predictions else None
    scores = scoring.scores(acquired.probe, ascent.images, weights, final, first.layer == LOGITS,
                            factory.judge(first.model))
    metas, first_row = [], 0
    for spec in specs:
        rows = slice(first_row, first_row + spec.images)
        first_row = rows.stop
        steps = {name: [float(np.mean(getattr(row, name)[rows])) for row in ascent.history]
                 for name in render.StepStats._fields}
        predictions = [_top_class(predicted, rows.start, class_names) for predicted in ascent.predictions]
        meta = _meta(task, spec, info, steps, predictions, timings, len(specs))
        meta["quality"] = scores[rows.start]
        meta["factory"] = {"models_built": factory.builds["model"], "steps_built": factory.builds["step"],
                           "step_traces": acquired.step.traces}
        raw, png, extra = _artefacts(spec, ascent.images[rows], [frame[rows] for frame in ascent.frames])
        if spec.images > 1:
            meta["set"] = _set_meta(spec, scores[rows], scoring.gram_similarity(acquired.probe, ascent.images[rows]))
        if annotate is not None:
            annotate(spec, meta)
        store.write_image_result(spec.key, raw, png, meta, extra)
        metas.append(meta)
    return metas


def _artefacts(spec: JobSpec, pictures: np.ndarray, frames: list[np.ndarray]) -> tuple:
    """A job's raw pixels, its PNG and extra files: one picture, or a set as a sheet, its array and each PNG."""
    animation = {}
    if spec.images == 1:
        if spec.animate:
            animation = {ANIMATION: images.animation_bytes([frame[0] for frame in frames])}
        return pictures[0], images.png_bytes(pictures[0]), animation
    if spec.animate:
        animation = {ANIMATION: images.animation_bytes([images.tile(list(frame), SET_COLUMNS) for frame in frames])}
    each = {layout.set_png(index): images.png_bytes(picture) for index, picture in enumerate(pictures)}
    return pictures, images.contact_sheet(list(pictures), SET_COLUMNS), {**each, **animation}


def _set_meta(spec: JobSpec, scores: list[dict], similarity: float) -> dict:
    """A diverse set: what pushed it apart, how alike it came out, and each image with its seed and scores.

    The job's own `quality` is its first image's, as image.png's first tile.
    """
    return {"images": spec.images, "diversity": spec.diversity, "gram_similarity": similarity,
            "members": [{"png": layout.set_png(index), "seed": seed, "quality": row}
                        for index, (seed, row) in enumerate(zip(spec.seeds, scores))]}


def _top_class(predicted, index: int, class_names: list[str]) -> dict:
    row = predicted.probabilities[index]
    top = int(row.argmax())
    return {"iteration": predicted.iteration, "class_id": top, "class_name": class_names[top], "score": float(row[top])}


def _meta(task, spec: JobSpec, info, steps: dict[str, list[float]], predictions: list[dict], timings: dict,
          batch_size: int) -> dict:
    from featurevis import factory  # loaded by runtime.factory() before any job gets here

    return {
        "job_id": spec.job_id, "key": spec.key, "spec": spec.model_dump(),
        "model": spec.model, "model_sha256": spec.model_sha256, "model_source": info.source,
        "untrained": info.untrained, "layer_name": spec.layer, "layer_type": _layer_type(info, spec.layer),
        "tutorial_layer_name": _tutorial_name(info, spec.layer), "conv_id": spec.conv_id, "feature": spec.feature,
        "iterations": spec.iterations, "seed": spec.seed, "method": spec.method,
        "loss": steps["loss"], "final_loss": steps["loss"][-1], "predictions": predictions,
        "grad_min": steps["grad_min"], "grad_max": steps["grad_max"], "step_size": steps["step_size"],
        "timings": {**timings, "batch_size": batch_size},
        "worker": {"hostname": task.request.hostname or socket.gethostname(), "pid": os.getpid(),
                   "device": factory.device_name()},
        "versions": {**factory.versions(), "celery": celery.__version__, "featurevis": featurevis.__version__},
        "created_at": datetime.now(timezone.utc).isoformat(),
    }


def _layer_type(info: registry.ModelInfo, layer: str) -> str:
    return "Dense (pre-activation)" if layer == LOGITS else info.layer(layer).type


def _tutorial_name(info: registry.ModelInfo, layer: str) -> str | None:
    """The tutorial's name of the layer (its conv_names entry, with /Conv2D), where the model has one."""
    named = None if layer == LOGITS else info.layer(layer).tutorial_name
    return f"{named}/Conv2D" if named else None


def _summary(spec: JobSpec, meta: dict, cached: bool) -> dict:
    summary = {"job_id": spec.job_id, "key": spec.key, "image": f"{spec.key}/{IMAGE_PNG}",
               "array": f"{spec.key}/{IMAGE_NPY}", "meta": f"{spec.key}/{META}",
               "final_loss": meta["final_loss"], "untrained": meta["untrained"], "cached": cached}
    if spec.images > 1:
        summary["set"] = [f"{spec.key}/{layout.set_png(index)}" for index in range(spec.images)]
    return summary
