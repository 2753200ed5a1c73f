"""The Python API of the producer.

Jobs go out by task name (`featurevis.optimize`, `featurevis.sweep`) with
JSON keyword arguments, exactly as any other system would send them.

The Celery task id is the job id. So `status JOB_ID` and a second submission
of the same job find the same task. A finished or failed task's stored state
is forgotten when the job is submitted again, so a job that once failed is
run again instead of answering FAILURE forever.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable

from celery import Celery, states
from celery.result import AsyncResult
from kombu.utils.url import maybe_sanitize_url

from featurevis import contract

POLL_SECONDS = 0.25


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

    def progress(self) -> dict | None:
        info = self.result.info
        return info if self.result.state == "PROGRESS" and isinstance(info, dict) else None

    def wait(self, on_progress: Callable[[dict], None] | None = None, timeout: float | None = None) -> dict:
        """Block until the job is done; its result dict, or JobFailed with the worker's reason."""
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
        return self.result.result


class Producer:
    def __init__(self, redis_url: str | None = None):
        self.app = Celery("featurevis-producer")
        self.app.config_from_object("featurevis.celeryconfig")
        if redis_url:
            self.app.conf.update(broker_url=redis_url, result_backend=redis_url)

    def enqueue(self, fields: dict[str, Any]) -> Job:
        """Validate and queue one job; raises contract.JobError before anything is sent."""
        spec = contract.normalize(fields)
        return self._send("featurevis.optimize", spec.job_id, [spec], spec.fields())

    def sweep(self, fields: dict[str, Any]) -> Job:
        """Queue several features of one layer as one batched job (`features` is a list)."""
        specs = contract.normalize_sweep(fields)
        kwargs = {**specs[0].fields(), "features": [s.feature for s in specs]}
        del kwargs["feature"]
        return self._send("featurevis.sweep", contract.sweep_id(specs), specs, kwargs)

    def status(self, job_id: str) -> dict:
        self._check_broker()
        result = self.app.AsyncResult(job_id)
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
