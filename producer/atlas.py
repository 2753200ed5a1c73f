"""Queueing an atlas and following it (`python -m producer atlas`, `Producer.atlas`). TensorFlow-free.

The producer validates the request (its id is known before anything is sent)
and sends one `featurevis.atlas` task; the worker that takes it publishes the
atlas's progress.json and page and sends the batches as a chord whose callback
has the atlas id as task id. A finished atlas submitted again sends nothing, nor
does one whose batches are still out; a partly finished one queues only the rest.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import celery.exceptions
from celery import states
from celery.result import AsyncResult

from featurevis import atlas as atlases
from featurevis import atlas_pages
from featurevis.store import ResultStore

POLL_SECONDS = 0.25  # as a job's --wait: an atlas of a few units is done in seconds


@dataclass
class AtlasJob:
    id: str
    atlas: atlases.Atlas
    queued: int  # units this submission sends to workers: 0 when the atlas is complete or already running
    store: ResultStore
    result: AsyncResult  # the chord callback's, by the atlas id
    start: AsyncResult | None = None  # the featurevis.atlas task this submission sent

    @property
    def page(self) -> str:
        return f"{self.atlas.key}/{atlas_pages.INDEX}"

    def progress(self) -> atlases.AtlasProgress:
        """progress.json; before a worker has started the atlas, what is known here."""
        return (atlas_pages.read_progress(self.store, self.id)
                or atlases.initial_progress(self.atlas).model_copy(update={"state": "queued"}))

    def wait(self, on_progress: Callable[[atlases.AtlasProgress], None] | None = None,
             timeout: float | None = None) -> atlases.AtlasProgress:
        """Block until the atlas is finished; its final progress, or JobFailed with the reason a batch failed."""
        from producer.client import JobFailed, _one_line

        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while True:
                progress = self.progress()
                if on_progress:
                    on_progress(progress)
                if self.result.ready() or progress.state == "done":
                    break
                if self.start is not None and self.start.failed():  # refused by the worker: no chord was sent
                    raise JobFailed(_one_line(self.start.result))
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"atlas {self.id} not done after {timeout} s ({progress.done} of "
                                       f"{progress.total} units)")
                _finished_within(self.result, POLL_SECONDS)
        finally:
            # The waits subscribed to the callback's result: unsubscribe now, while Redis answers, not when the
            # result is collected (after a test's or the bench's Redis has stopped, that fails noisily).
            self.result.backend.remove_pending_result(self.result)
        if self.result.ready() and self.result.state != states.SUCCESS:
            raise JobFailed(_one_line(self.result.result))
        progress = self.progress()
        if progress.state != "done":
            raise JobFailed(f"atlas {self.id} finished with {progress.done} of {progress.total} units")
        return progress


def _finished_within(result: AsyncResult, seconds: float) -> None:
    """Wait up to `seconds` for the atlas's callback, through the result backend: a wait returns when the
    atlas finishes, not at the next poll."""
    try:
        result.get(timeout=seconds, propagate=False, disable_sync_subtasks=False)
    except celery.exceptions.TimeoutError:
        pass


def submit(producer, fields: dict[str, Any]) -> AtlasJob:
    """Validate an atlas request and queue what it lacks; JobError (one line) before anything is sent."""
    atlas = atlases.normalize(fields, models=producer.registry)
    store = producer.registry.store
    producer._check_broker()
    result = producer.app.AsyncResult(atlas.atlas_id)
    previous = atlas_pages.read_progress(store, atlas.atlas_id)
    if previous is not None and (previous.state == "done" or not atlas.force and
                                 previous.state == "running" and result.state not in states.READY_STATES):
        return AtlasJob(atlas.atlas_id, atlas, 0, store, result)
    if result.state in states.READY_STATES:
        result.forget()  # an earlier run's answer must not end this run's wait
    recorded = previous.done if previous else 0
    start = producer.app.send_task("featurevis.atlas", kwargs=atlas.request())
    return AtlasJob(atlas.atlas_id, atlas, atlas.total - recorded, store, result, start)
