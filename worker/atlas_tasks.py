"""The atlas's tasks: starting an atlas, a batch of one layer's units, and the chord callback that finishes it.

`featurevis.atlas` takes an atlas request (JSON keyword arguments, as every
task: any system can send it by name), publishes its progress.json and page,
and sends what the atlas lacks as one chord: a group of batches and the callback,
whose task id is the atlas id. Sent from a worker, the chord's hundreds of
tasks cost the producer one message and leave it no result subscriptions.

`featurevis.atlas_batch` runs up to `batch` units of one layer through the path
every job takes (featurevis.batch and tasks.publish: one batched pass, each unit an ordinary
job with its own meta.json). Units whose meta.json exists are not computed again,
so a batch redelivered after its worker died finishes only what is missing, and
units single jobs already made cost nothing. When the model has a dataset,
the batch first ranks it for the layer (once per model version, dataset and
layer, stored beside the model) and each new unit's quality block gets
`activation_vs_dataset`. Last, it publishes its pages under the atlas's lock.

`featurevis.atlas_finish` is the chord's callback: it runs once every batch has
succeeded, marks the atlas done and rebuilds the gallery, once per atlas instead
of once per batch.
"""
from __future__ import annotations

import dataclasses
from datetime import datetime, timezone

from celery import chord, group, states

from featurevis import atlas, atlas_pages, datasets, examples, gallery, registry
from featurevis.contract import JobError
from featurevis.store import ResultStore
from worker import runtime, tasks
from worker.app import app


@app.task(bind=True, name="featurevis.atlas")
def atlas_start(self, **fields) -> dict:
    request = atlas.normalize(fields)
    store = ResultStore.from_env()
    callback = app.AsyncResult(request.atlas_id)
    with atlas.page_lock(runtime.redis_client(), request.atlas_id):
        wanted = atlas_pages.begin(store, request, lambda: not request.force and callback.state not in states.READY_STATES,
                                   run=self.request.id)
    if wanted:
        if callback.state in states.READY_STATES:
            callback.forget()  # an earlier run's answer: this run's callback will give the new one
        batches = group(atlas_batch.s(**kwargs) for kwargs in request.batches(wanted))
        chord(batches)(atlas_finish.s(atlas_id=request.atlas_id).set(task_id=request.atlas_id))
    return {"atlas_id": request.atlas_id, "queued": sum(map(len, wanted.values())), "total": request.total,
            "page": f"{request.key}/{atlas_pages.INDEX}", "progress": f"{request.key}/{atlas.PROGRESS}"}


@app.task(bind=True, name="featurevis.atlas_batch")
def atlas_batch(self, **fields) -> dict:
    request, layer, specs = atlas.batch_request(fields)
    store = ResultStore.from_env()
    ranked, examples_key = tasks.plain_errors(_examples, store, request, layer.layer)
    metas = {spec.job_id: store.read_meta(spec.key) for spec in specs}
    missing = [spec for spec in specs if metas[spec.job_id] is None]
    if missing:
        published = tasks.plain_errors(_render, self, store, missing, ranked)
        metas.update({spec.job_id: done.meta.to_json() for spec, done in zip(missing, published)})
    records = []
    for spec in specs:
        unit = examples.unit(ranked, spec.feature) if ranked else None
        record = atlas_pages.unit_record(spec, metas[spec.job_id], unit, examples_key)
        if ranked:  # a unit a single job made has no comparison in its meta.json; its page still shows one
            record["quality"] = {**_versus(record["quality"], ranked, spec.feature), **record["quality"]}
        records.append(record)
    with atlas.page_lock(runtime.redis_client(), request.atlas_id):
        progress = atlas_pages.publish(store, request, layer.layer, records)
    return {"atlas_id": request.atlas_id, "layer": layer.layer, "features": [spec.feature for spec in specs],
            "computed": len(missing), "done": progress.done, "total": progress.total}


@app.task(bind=True, name="featurevis.atlas_finish")
def atlas_finish(self, batches: list | None = None, atlas_id: str = "") -> dict:
    """The chord's callback: `batches` are the batches' results, which progress.json already holds."""
    store = ResultStore.from_env()
    if not isinstance(atlas_id, str) or not atlas.ID.fullmatch(atlas_id):
        raise JobError("atlas_id", f"must be an atlas id, 24 hex digits, got {str(atlas_id)[:40]!r}")
    with atlas.page_lock(runtime.redis_client(), atlas_id):
        progress = atlas_pages.read_progress(store, atlas_id)
        if progress is None:
            raise JobError("atlas_id", f"no atlas {atlas_id} in {store.locate('')}")
        progress.state = "done" if progress.done == progress.total else "incomplete"
        progress.finished_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
        atlas_pages.publish_progress(store, progress)
    gallery.try_rebuild(store)
    return {"atlas_id": atlas_id, "state": progress.state, "done": progress.done, "total": progress.total,
            "page": f"{atlas.key(atlas_id)}/{atlas_pages.INDEX}", "progress": f"{atlas.key(atlas_id)}/{atlas.PROGRESS}"}


def _render(task, store: ResultStore, specs: list, ranked: dict | None) -> list:
    """tasks._render for an atlas's units: one batched pass, each unit's scores compared with its dataset
    examples before its meta.json is written."""
    with tasks.results_folders(store, specs, task.request.id) as reserved:
        rendered = tasks.climb(task, specs)
        if ranked:
            rendered = dataclasses.replace(rendered, jobs=[
                dataclasses.replace(job, scores=[{**row, **_versus(row, ranked, job.spec.feature)} for row in job.scores])
                for job in rendered.jobs])
        return tasks.publish(task, store, rendered, reserved())


def _examples(store: ResultStore, request: atlas.Atlas, layer: str) -> tuple[dict | None, str | None]:
    """The layer's dataset ranking and where its pictures are, computed here if no worker has yet; (None, None)
    for a model without a dataset. A lock per ranking: the workers sharing a layer's batches rank it once."""
    models = registry.Registry.from_env()
    info = models.get(request.model, request.model_sha256)
    dataset = datasets.for_model(models, info)
    if dataset is None:
        return None, None
    ranked = examples.read(store, info, dataset, layer)
    if ranked is None:
        with runtime.job_lock(f"examples:{examples.key(info, dataset)}/{layer}"):
            ranked = examples.read(store, info, dataset, layer)
            if ranked is None:
                ranked = examples.compute(store, runtime.factory().model(info.name, info.sha256), dataset, layer)
    return ranked, examples.key(info, dataset)


def _versus(quality: dict, ranked: dict, feature: int) -> dict:
    return examples.versus(quality["objective"], examples.unit(ranked, feature)["best"])
