"""The Celery tasks: thin wiring of contract, factory, math and store.

`featurevis.optimize` runs one job, `featurevis.sweep` several features of one
layer as one batched pass, `featurevis.register_model` validates and describes
a model for the registry. All take JSON keyword arguments, so any system can
send them by name.
"""
from __future__ import annotations

import os
import socket
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Callable, Iterator, NamedTuple

import celery
import numpy as np
from celery.exceptions import SoftTimeLimitExceeded

import featurevis
from featurevis import admission, contract, gallery, images, registry
from featurevis.contract import JobSpec
from featurevis.registry import LOGITS, ModelRefused, WeightsUnavailable
from featurevis.store import (ALPHA, ANIMATION, CONTACT_SHEET, IMAGE_NPY, IMAGE_PNG, META, Reserved, Result,
                              ResultStore, image_result, set_png)
from worker import runtime
from worker.app import app
from worker.progress import ProgressPublisher

if TYPE_CHECKING:  # the TensorFlow side is imported in pool children only, when the first job runs
    from featurevis import batch

SET_COLUMNS = 4  # a diverse set's image.png: up to 4 pictures a row


@app.task(bind=True, name="featurevis.optimize", pydantic=True, pydantic_dump_kwargs={"exclude_none": True})
def optimize(self, **fields) -> contract.JobSummary:
    spec = contract.normalize(fields)
    store = ResultStore.from_env()
    meta = _read_meta(store, spec)
    if meta is not None:
        return _summary(spec, meta, cached=True)
    with runtime.job_lock(spec.job_id):  # a duplicate waits here, then finds the first run's result
        meta = _read_meta(store, spec)
        cached = meta is not None
        if not cached:
            [(meta, _)] = _render_safely(self, store, [spec])
    if not cached:
        gallery.try_rebuild(store)  # before SUCCESS: whoever gets the answer finds the result on the page
    return _summary(spec, meta, cached)


@app.task(bind=True, name="featurevis.sweep", pydantic=True, pydantic_dump_kwargs={"exclude_none": True})
def sweep(self, **fields) -> contract.SweepSummary:
    """Every feature's job (those already in the store are not computed again), and their contact sheet."""
    specs = contract.normalize_sweep(fields)
    store = ResultStore.from_env()
    found = {spec.job_id: _read_meta(store, spec) for spec in specs}
    missing = [spec for spec in specs if found[spec.job_id] is None]
    rendered = dict(zip((spec.job_id for spec in missing), _render_safely(self, store, missing) if missing else []))
    key = contract.sweep_key(specs)
    sheet = images.contact_sheet([rendered[spec.job_id].picture if spec.job_id in rendered
                                  else store.read_image(spec.key) for spec in specs])
    jobs = [_summary(spec, rendered[spec.job_id].meta if spec.job_id in rendered else found[spec.job_id],
                     cached=spec.job_id not in rendered) for spec in specs]
    meta = contract.SweepMeta(sweep_id=contract.sweep_id(specs), model=specs[0].model, layer=specs[0].layer,
                             features=[spec.feature for spec in specs], jobs=jobs)
    store.write(key, {CONTACT_SHEET: sheet}, meta.model_dump(mode="json", exclude_none=True))
    gallery.try_rebuild(store)
    return contract.SweepSummary(sweep_id=meta.sweep_id, key=key, contact_sheet=f"{key}/{CONTACT_SHEET}",
                                meta=f"{key}/{META}", jobs=jobs)


@app.task(bind=True, name="featurevis.register_model", pydantic=True)
def register_model(self, **fields) -> contract.Registration:
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
            description = _describe_safely(models, request)
        except ModelRefused:
            models.remove_version(name, version)
            raise
    elif changed := registry.changed_options(description, request):
        raise ModelRefused(f"request: this file is registered as {name} with {changed}; register it under "
                           f"another name to serve it differently")
    models.publish(description)
    return registration(description)


def registration(description: dict) -> contract.Registration:
    return contract.Registration(name=description["name"], sha256=description["sha256"],
                                input_shape=description["input_shape"], layers=len(description["layers"]),
                                classes=description["classes"],
                                conv_layers=sum(layer["conv_id"] is not None for layer in description["layers"]))


def _describe_safely(models: registry.Registry, request: dict) -> dict:
    """admission.admit: the static check, then a disposable process's description (featurevis/sandbox.py).

    A failure that is not the model's fault (no memory on this host, the store unreachable, the time limit)
    fails the task as a plain error and the upload stays for a retry.
    """
    try:
        return admission.admit(models, request)
    except (ModelRefused, SoftTimeLimitExceeded):
        raise
    except Exception as error:
        raise RuntimeError(f"{type(error).__name__}: {' '.join(str(error).split())[:300]}") from None


def _read_meta(store: ResultStore, spec: JobSpec) -> contract.JobMeta | None:
    meta = store.read_meta(spec.key)
    return None if meta is None else contract.JobMeta.model_validate(meta)


def _render_safely(task: celery.Task, store: ResultStore, specs: list[JobSpec]) -> list[Published]:
    """_render, with TensorFlow's exceptions turned into plain ones (plain_errors)."""
    return plain_errors(_render, task, store, specs)


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


def _render(task: celery.Task, store: ResultStore, specs: list[JobSpec]) -> list[Published]:
    """Optimize specs of one layer as one batch, then publish each job's result."""
    with results_folders(store, specs, task.request.id) as reserved:
        return publish(task, store, climb(task, specs), reserved())


def climb(task: celery.Task, specs: list[JobSpec]) -> batch.Batch:
    """One batched pass (featurevis.batch.run), its progress published for the task."""
    from featurevis import batch  # noqa: F811 - the TensorFlow side, imported here in pool children only

    return batch.run(runtime.factory(), specs, ProgressPublisher(task).publish)


class Prepared(NamedTuple):
    folders: list[str]  # the folders made, for a failed batch to take back
    reserved: Reserved  # an empty temporary for each file of each result (ResultStore.reserve)


@contextmanager
def results_folders(store: ResultStore, specs: list[JobSpec],
                    task_id: str | None) -> Iterator[Callable[[], Reserved]]:
    """The jobs' result folders, and an empty temporary for each of their files, made on another thread while
    the body climbs: making a folder or a file costs more than writing a small file into one, and during the
    climb Python only waits on TensorFlow, which leaves the cores room. The same thread clears what a killed
    run of these jobs left there, at once where that run was an earlier delivery of this task (`task_id`).
    The body gets a function that waits for them and returns the temporaries, for publish to fill. A body
    that fails takes back the temporaries and the folders that are still empty, so a failed job leaves no
    trace."""
    with ThreadPoolExecutor(1) as folders:
        made = folders.submit(_prepare_folders, store, [spec.key for spec in specs], task_id or "")
        try:
            yield lambda: made.result().reserved
        except BaseException:
            if made.exception() is None:  # the body's error is the one to report, not the folders'
                store.release(made.result().reserved)
                store.remove_empty(made.result().folders)
            raise
        store.release(made.result().reserved)  # the ones no file was written into


def _prepare_folders(store: ResultStore, keys: list[str], task_id: str) -> Prepared:
    folders = store.make_folders(keys)
    store.remove_stale_temporaries(keys, older_than_s=app.conf.task_time_limit, owner=task_id)
    return Prepared(folders, store.reserve(keys, owner=task_id))


class Published(NamedTuple):
    meta: contract.JobMeta
    picture: np.ndarray  # the job's (first) picture: what a sweep's contact sheet shows


def publish(task: celery.Task, store: ResultStore, rendered: batch.Batch,
            reserved: Reserved | None = None) -> list[Published]:
    """Write every job of a batch, each one's meta.json after its files, with one disk sync for them all,
    into the temporaries `reserved` has for them (results_folders).

    The jobs' files are made on the host's cores together: encoding a batch's PNGs was the largest share of
    publishing it, and Pillow lets go of the interpreter lock while it compresses."""
    worker = _worker(task)  # here: a task's request is its thread's, the encoders would see none
    with ThreadPoolExecutor(min(len(rendered.jobs), os.cpu_count() or 1)) as encoders:
        results = list(encoders.map(lambda job: _result(worker, job, rendered), rendered.jobs))
    store.write_all([result for result, _ in results], reserved)
    return [published for _, published in results]


def _result(worker: contract.WorkerInfo, job: batch.Rendered, rendered: batch.Batch) -> tuple[Result, Published]:
    """One job's files: a picture (and its alpha.png), or a set as a sheet, its array and each PNG."""
    spec, pictures = job.spec, job.pictures
    meta = _meta(worker, job, rendered)
    animation = {ANIMATION: images.animation_bytes([_sheet_or_picture(frame) for frame in job.frames])} \
        if spec.animate else {}
    if spec.images == 1:
        alpha = {ALPHA: images.alpha_png(job.extras["alpha"][0])} if spec.saves_alpha else {}
        result = image_result(spec.key, pictures[0], images.png_bytes(pictures[0]), meta.to_json(),
                              {**animation, **alpha})
    else:
        each = {set_png(index): images.png_bytes(picture) for index, picture in enumerate(pictures)}
        result = image_result(spec.key, pictures, images.contact_sheet(list(pictures), SET_COLUMNS),
                              meta.to_json(), {**each, **animation})
    return result, Published(meta, pictures[0])


def _sheet_or_picture(frame: np.ndarray) -> np.ndarray:
    """An animation frame: the picture, or a set's pictures tiled as its image.png is."""
    return frame[0] if len(frame) == 1 else images.tile(list(frame), SET_COLUMNS)


def _worker(task: celery.Task) -> contract.WorkerInfo:
    from featurevis import factory  # loaded by runtime.factory() before any job gets here

    return contract.WorkerInfo(hostname=task.request.hostname or socket.gethostname(), pid=os.getpid(),
                               device=factory.device_name())


def _meta(worker: contract.WorkerInfo, job: batch.Rendered, rendered: batch.Batch) -> contract.JobMeta:
    from featurevis import factory  # loaded by runtime.factory() before any job gets here

    spec, info, counts = job.spec, rendered.acquired.model.info, runtime.factory().builds
    return contract.JobMeta(
        job_id=spec.job_id, key=spec.key, spec=spec.model_dump(), model=spec.model, model_sha256=spec.model_sha256,
        model_source=info.source, untrained=info.untrained, layer_name=spec.layer,
        layer_type=_layer_type(info, spec.layer), tutorial_layer_name=_tutorial_name(info, spec.layer),
        conv_id=spec.conv_id, feature=spec.feature, iterations=spec.iterations, seed=spec.seed, method=spec.method,
        loss=job.steps["loss"], final_loss=job.steps["loss"][-1], grad_min=job.steps["grad_min"],
        grad_max=job.steps["grad_max"], step_size=job.steps["step_size"], predictions=job.predictions,
        timings=rendered.timings,
        worker=worker,
        versions={**factory.versions(), "celery": celery.__version__, "featurevis": featurevis.__version__},
        created_at=datetime.now(timezone.utc).isoformat(), quality=job.scores[0],
        factory=contract.FactoryCounts(models_built=counts["model"], steps_built=counts["step"],
                                      step_traces=rendered.acquired.step.traces),
        set=_diverse_set(spec, job.scores, job.gram_similarity) if spec.images > 1 else None,
    )


def _diverse_set(spec: JobSpec, scores: list[contract.Scores], similarity: float) -> contract.DiverseSet:
    return contract.DiverseSet(images=spec.images, diversity=spec.diversity, gram_similarity=similarity,
                              members=[contract.SetMember(png=set_png(index), seed=seed, quality=row)
                                       for index, (seed, row) in enumerate(zip(spec.seeds, scores))])


def _layer_type(info: registry.ModelInfo, layer: str) -> str:
    return info.logits_type if layer == LOGITS else info.layer(layer).type


def _tutorial_name(info: registry.ModelInfo, layer: str) -> str | None:
    """The tutorial's name of the layer (its conv_names entry, with /Conv2D), where the model has one."""
    named = None if layer == LOGITS else info.layer(layer).tutorial_name
    return f"{named}/Conv2D" if named else None


def _summary(spec: JobSpec, meta: contract.JobMeta, cached: bool) -> contract.JobSummary:
    return contract.JobSummary(
        job_id=spec.job_id, key=spec.key, image=f"{spec.key}/{IMAGE_PNG}", array=f"{spec.key}/{IMAGE_NPY}",
        meta=f"{spec.key}/{META}", final_loss=meta.final_loss, untrained=meta.untrained, cached=cached,
        set=[f"{spec.key}/{set_png(index)}" for index in range(spec.images)] if spec.images > 1 else None,
        alpha=f"{spec.key}/{ALPHA}" if spec.saves_alpha else None)
