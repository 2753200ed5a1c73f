"""The Python API of the producer.

Jobs go out by task name (`featurevis.optimize`, `featurevis.sweep`) with
JSON keyword arguments, exactly as any other system would send them.

The Celery task id is the job id. So `status JOB_ID` and a second submission
of the same job find the same task. A finished or failed task's stored state
is forgotten when the job is submitted again, so a job that once failed is
run again instead of answering FAILURE forever.
"""
from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from functools import lru_cache
from typing import Any, Callable

import pydantic
from celery import Celery, states
from celery.exceptions import TimeoutError as CeleryTimeout
from celery.result import AsyncResult
from kombu.utils.url import maybe_sanitize_url

from featurevis import atlas, atlas_pages, contract, images, modelcheck, registry, store
from featurevis.contract import JobError
from featurevis.registry import ModelRefused
from featurevis.store import ResultStore

POLL_SECONDS = 0.25
REGISTER_SECONDS = 600  # a verdict needs a worker to load the model: allow for a queue ahead of it


class BrokerUnavailable(ConnectionError):
    """Redis could not be reached; nothing was queued."""


class JobFailed(RuntimeError):
    """The worker ran the job and it failed; str() is the worker's one-line reason."""


@dataclass
class Job:
    id: str
    task: str
    specs: list[contract.JobSpec]
    result: AsyncResult

    def state(self) -> str:
        return self.result.state

    def progress(self) -> contract.Progress | None:
        """The latest progress, or None before the first (or once the job is done)."""
        info = self.result.info
        if self.result.state != "PROGRESS" or not isinstance(info, dict):
            return None
        try:
            return contract.Progress.model_validate(info)
        except pydantic.ValidationError:  # the state and the info are two reads: a redelivery's STARTED came between
            return None

    def wait(self, on_progress: Callable[[contract.Progress], None] | None = None,
             timeout: float | None = None) -> contract.JobSummary | contract.SweepSummary:
        """Block until the job is done; the task's answer, or JobFailed with the worker's reason."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.result.ready():
            progress = self.progress()
            if progress and on_progress:
                on_progress(progress)
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {self.id} not done after {timeout} s (state {self.result.state})")
            time.sleep(POLL_SECONDS)
        if self.result.state != states.SUCCESS:
            raise JobFailed(_one_line(self.result.result)) from self.result.result
        return ANSWERS[self.task].model_validate(self.result.result)


# What each task answers: Celery sends it as JSON, the producer reads it typed again.
ANSWERS = {"featurevis.optimize": contract.JobSummary, "featurevis.sweep": contract.SweepSummary}


class Producer:
    def __init__(self, redis_url: str | None = None, results_dir: str | os.PathLike | None = None):
        """A producer for the Redis at `redis_url` and the store at `results_dir` (defaults: REDIS_URL, RESULTS_DIR)."""
        self.app = Celery("featurevis-producer")
        self.app.config_from_object("featurevis.celeryconfig")
        if redis_url:
            self.app.conf.update(broker_url=redis_url, result_backend=redis_url)
        self.registry = registry.Registry(ResultStore(results_dir)) if results_dir else registry.Registry.from_env()

    def enqueue(self, fields: dict[str, Any]) -> Job:
        """Validate and queue one job; raises contract.JobError before anything is sent."""
        spec = contract.normalize(fields, models=self.registry)
        return self._send("featurevis.optimize", spec.job_id, [spec], spec.fields())

    def sweep(self, fields: dict[str, Any]) -> Job:
        """Queue several features of one layer as one batched job (`features` is a list)."""
        specs = contract.normalize_sweep(fields, models=self.registry)
        kwargs = {**specs[0].fields(), "features": [s.feature for s in specs]}
        del kwargs["feature"]
        return self._send("featurevis.sweep", contract.sweep_id(specs), specs, kwargs)

    def upload_image(self, path: str | os.PathLike, field: str = "image") -> str:
        """Put a PNG, JPEG or .npy image into the store for a caricature term or a job's `start_image`; its key,
        `uploads/<sha256>.<fmt>`.

        The file is decoded here first (images.decode_upload), so a broken one is
        refused in one line (JobError on `field`, the job field it is for) before anything
        is stored; the worker resizes it to the model's input. Content-addressed: the same
        file twice is one key, stored once.
        """
        path = Path(path)
        try:
            fmt = images.upload_format(path.name)
            if not path.is_file():
                raise ValueError(f"{str(path)[-120:]} is not a file")
            if path.stat().st_size > images.MAX_UPLOAD_BYTES:
                raise ValueError(f"{path.stat().st_size} bytes, over the limit of {images.MAX_UPLOAD_BYTES}")
            data = path.read_bytes()
            images.decode_upload(data, fmt)
        except ValueError as error:
            raise JobError(field, str(error)) from None
        key = store.upload_key(hashlib.sha256(data).hexdigest(), fmt)
        if not self.registry.store.exists(key):
            self.registry.store.put(*key.rsplit("/", 1), data)
        return key
    def atlas(self, fields: dict[str, Any]):
        """Queue an atlas: every unit of a model's layers, batched (producer/atlas.py); returns an AtlasJob."""
        from producer.atlas import submit

        return submit(self, fields)

    def register_model(self, name: str, file: str | os.PathLike | None = None, keras_app: str | None = None,
                       weights: str = "imagenet", preprocess: str | dict | None = None,
                       class_names: list[str] | None = None, input_size: list[int] | None = None, wait: bool = True,
                       timeout: float = REGISTER_SECONDS) -> dict:
        """Put a model into the registry: a `.keras`, Keras 2 `.h5` or `.onnx` `file` (`input_size`: an ONNX
        graph's [height, width], where its export left them open), or a Keras Application by name (`keras_app`).

        A Keras file is checked here first (featurevis/modelcheck.py: it is read as data, never loaded), an
        ONNX file by its kind and size (the worker checks its graph); then the file goes into the store under
        its sha256, and a worker validates and describes it (`featurevis.register_model`, in a disposable
        process). With `wait`, returns the verdict's summary or raises ModelRefused (one line);
        registering what is already the name's current version returns at once and queues nothing.
        """
        request = self._registration(name, file, keras_app, weights, preprocess, class_names, input_size)
        models, version = self.registry, request["sha256"]
        described = models.description(name, version)
        if described is not None:
            if changed := registry.changed_options(described, request):
                raise ModelRefused(f"request: this file is registered as {name} with {changed}; register it under "
                                   f"another name to serve it differently")
            if models.current_version(name) == version:
                return {"name": name, "sha256": version, "registered": True, "already": True}
        self._check_broker()
        if file is not None and described is None:
            models.store.put(models.key(name, version), request["source"]["file"], Path(file).read_bytes())
        result = self.app.send_task("featurevis.register_model", kwargs=request)
        if not wait:
            return {"name": name, "sha256": version, "registered": None, "task_id": result.id}
        try:
            verdict = result.get(timeout=timeout)
        except CeleryTimeout:
            raise TimeoutError(f"no worker gave a verdict on {name} within {timeout} s (task {result.id})") from None
        except ModelRefused:
            raise
        except Exception as error:  # noqa: BLE001 - any other failure of the task refuses the model too
            raise ModelRefused(_one_line(error)) from None
        return {**verdict, "registered": True, "already": False}

    def add_dataset(self, name: str, path: str | os.PathLike, version: str | None = None) -> dict:
        """Store a dataset (.npz, or a folder of PNG/JPEG files) beside a registered model, for its atlases'
        dataset examples; ModelRefused (one line) when it does not fit the model. Needs no worker."""
        from featurevis import datasets

        return datasets.put(self.registry, self.model(name, version), path)

    def models(self) -> list[registry.ModelInfo]:
        """Every registered model at its current version. Reads the store only."""
        return [self.registry.get(name) for name in self.registry.names()]

    def model(self, name: str, version: str | None = None) -> registry.ModelInfo:
        """One registered model's description; ModelRefused when there is none."""
        if version is not None and not registry.SHA256.fullmatch(version):
            raise ModelRefused(f"version: must be a registered sha256, 64 lowercase hex digits, got {version[:70]!r}")
        try:
            return self.registry.get(registry.check_name(name), version)
        except KeyError:
            raise ModelRefused(f"model: no registered model {name}{f' at {version}' if version else ''}") from None

    @staticmethod
    def _registration(name, file, keras_app, weights, preprocess, class_names, input_size=None) -> dict:
        """The register_model request, after every check that needs no worker (nothing is uploaded yet)."""
        registry.check_name(name)
        if (file is None) == (keras_app is None):
            raise ModelRefused("file: give a model file or a Keras Application (keras_app), one of the two")
        if file is None:
            source, version = {"keras_app": keras_app, "weights": weights}, None
        else:
            path = Path(file)
            if not path.is_file():
                raise ModelRefused(f"file: {str(path)[:120]} is not a file")
            upload = modelcheck.UPLOAD_NAMES[modelcheck.check_upload(path)]  # before anything is uploaded
            source, version = {"file": upload}, registry.version_of_file(path)
            if input_size is not None:
                source["input_size"] = input_size
        return registry.registration_request({"name": name, "sha256": version, "source": source,
                                              "preprocess": preprocess, "class_names": class_names})

    def status(self, job_id: str) -> dict:
        """A job's Celery state; for an atlas id, its progress.json as `info`."""
        self._check_broker()
        result = self.app.AsyncResult(job_id)
        progress = atlas_pages.read_progress(self.registry.store, job_id) if atlas.ID.fullmatch(job_id) else None
        if progress is not None:
            return {"atlas_id": job_id, "state": progress.state, "info": progress.model_dump(mode="json")}
        info = result.info
        if isinstance(info, BaseException):
            info = _one_line(info)
        return {"job_id": job_id, "state": result.state, "info": info}

    def _send(self, task: str, task_id: str, specs: list[contract.JobSpec], kwargs: dict) -> Job:
        self._check_broker()
        previous = self.app.AsyncResult(task_id)
        if previous.state in states.READY_STATES:
            previous.forget()
        result = self.app.send_task(task, kwargs=kwargs, task_id=task_id)
        return Job(id=task_id, task=task, specs=specs, result=result)

    def _check_broker(self) -> None:
        url = self.app.conf.broker_url
        try:
            with self.app.connection_for_write() as connection:
                connection.ensure_connection(max_retries=1, interval_start=0, timeout=3)
            self.app.backend.client.ping()
        except Exception as error:
            raise BrokerUnavailable(f"cannot reach Redis at {maybe_sanitize_url(url)}: "
                                    f"{_one_line(error)}") from None


def _one_line(error: Any) -> str:
    return " ".join(str(error).split()) or type(error).__name__


@lru_cache(maxsize=1)
def _default() -> Producer:
    return Producer()


def enqueue(fields: dict[str, Any]) -> Job:
    return _default().enqueue(fields)


def sweep(fields: dict[str, Any]) -> Job:
    return _default().sweep(fields)


def status(job_id: str) -> dict:
    return _default().status(job_id)


def register_model(name: str, **options) -> dict:
    return _default().register_model(name, **options)
