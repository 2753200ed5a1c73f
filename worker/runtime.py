"""Per-process state of a worker: its one model factory, and a Redis client for job locks.

The factory is made in `worker_process_init`, i.e. in the pool child after the fork, never
in the parent: TensorFlow state inherited across fork hangs the child on its
first call. Models named in FEATUREVIS_PRELOAD (comma-separated) are built
there too, so the first job does not wait for them; their build time is still
reported, in the start-up log and in the first job's `timings.model_load_s`.
"""
from __future__ import annotations

import logging
import os

import redis
from celery.signals import worker_process_init

from worker.app import app

log = logging.getLogger(__name__)
_factory = None
_redis = None


@worker_process_init.connect
def _start(**_):
    factory()
    for name in filter(None, os.environ.get("FEATUREVIS_PRELOAD", "").split(",")):
        try:
            loaded = factory().model(name.strip())
            log.info("preloaded model %s in %.2f s", name, loaded.build_s)
        except Exception as error:  # a job on this model will report the reason
            log.warning("could not preload model %s: %s", name, error)


def job_lock(job_id: str):
    """A Redis lock per job id, so concurrent duplicates of one job compute it once.

    It expires with the hard time limit, so a worker that dies holding it
    blocks nobody for longer than its job could have run.
    """
    global _redis
    if _redis is None:
        _redis = redis.Redis.from_url(app.conf.broker_url)
    limit = app.conf.task_time_limit
    return _redis.lock(f"featurevis:job:{job_id}", timeout=limit, blocking_timeout=limit)


def factory():
    """This process's factory, created on first use (the solo pool never sends worker_process_init)."""
    global _factory
    if _factory is None:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # hide C++ notices; speed unaffected
        from featurevis.factory import ModelFactory, grow_gpu_memory  # TensorFlow loads here, in this process only

        grow_gpu_memory()
        _factory = ModelFactory()
    return _factory
