"""Queueing an atlas and following it (`python -m producer atlas`, `Producer.atlas`). TensorFlow-free.

An atlas goes out as one Celery chord: a group of `featurevis.atlas_batch`
tasks, each up to `batch` units of one layer, and `featurevis.atlas_finish` as
its callback, whose task id is the atlas id (so `status ATLAS_ID` and a
resubmission find it). Before queueing, the producer writes the atlas's
progress.json and page, so both exist from the first second. Only units the
atlas has not recorded yet are queued: a finished atlas submitted again queues
nothing, a partly finished one only the rest.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

from celery import chord, group, states
from celery.result import AsyncResult

from featurevis import atlas as atlases
from featurevis import atlas_pages
from featurevis.store import ResultStore

POLL_SECONDS = 0.5


@dataclass
class AtlasJob:
    id: str
    atlas: atlases.Atlas
    queued: int  # units sent to workers by this submission; 0 when the atlas was complete or already running
    store: ResultStore
    result: AsyncResult

    @property
    def page(self) -> str:
        return f"{self.atlas.key}/{atlas_pages.INDEX}"

    def progress(self) -> dict:
        return atlas_pages.read_progress(self.store, self.id)

    def wait(self, on_progress: Callable[[dict], None] | None = None, timeout: float | None = None) -> dict:
        """Block until the atlas is finished; its final progress, or JobFailed with the reason a batch failed."""
        from producer.client import JobFailed, _one_line

        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            progress = self.progress()
            if on_progress:
                on_progress(progress)
            if self.result.ready() or progress["state"] != "running":
                break
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"atlas {self.id} not done after {timeout} s ({progress['done']} of "
                                   f"{progress['total']} units)")
            time.sleep(POLL_SECONDS)
        if self.result.ready():
            self.result.get(propagate=False)  # consumes the callback's answer, which ends its subscription
            if self.result.state != states.SUCCESS:
                raise JobFailed(_one_line(self.result.result))
        progress = self.progress()
        if progress["state"] != "done":
            raise JobFailed(f"atlas {self.id} finished with {progress['done']} of {progress['total']} units")
        return progress


def submit(producer, fields: dict[str, Any]) -> AtlasJob:
    """Validate an atlas request and queue what it lacks; JobError (one line) before anything is sent."""
    atlas = atlases.normalize(fields, models=producer.registry)
    store = producer.registry.store
    producer._check_broker()
    result = producer.app.AsyncResult(atlas.atlas_id)
    with atlases.page_lock(producer.app.backend.client, atlas.atlas_id):
        previous = atlas_pages.read_progress(store, atlas.atlas_id)
        if previous is not None and previous["state"] == "running" and result.state not in states.READY_STATES:
            return AtlasJob(atlas.atlas_id, atlas, 0, store, result)  # in flight: its batches will finish it
        recorded = {entry["layer"]: entry["done"] for entry in previous["layers"]} if previous else {}
        wanted = {layer.layer: [f for f in layer.features if f not in set(recorded.get(layer.layer, []))]
                  for layer in atlas.layers}
        progress = atlases.initial_progress(atlas, recorded)
        queued = sum(map(len, wanted.values()))
        if not queued:
            progress.update(state="done", finished_at=(previous or {}).get("finished_at"))
        atlas_pages.publish_progress(store, progress)
    if not queued:
        return AtlasJob(atlas.atlas_id, atlas, 0, store, result)
    if result.state in states.READY_STATES:
        result.forget()  # a finished or failed earlier run: the callback's new state replaces it
    header = group(producer.app.signature("featurevis.atlas_batch", kwargs=kwargs)
                   for kwargs in atlas.batches(wanted))
    finish = producer.app.signature("featurevis.atlas_finish", kwargs={"atlas_id": atlas.atlas_id})
    result = chord(header, app=producer.app)(finish.set(task_id=atlas.atlas_id))
    return AtlasJob(atlas.atlas_id, atlas, queued, store, result)
