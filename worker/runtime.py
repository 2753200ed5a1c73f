"""Per-process state of a worker: its one model factory, and a Redis client for job locks.

The factory is made in `worker_process_init`, i.e. in the pool child after the fork, never
in the parent: TensorFlow state inherited across fork hangs the child on its
first call. Models named in FEATUREVIS_PRELOAD (comma-separated) are built
there too, so the first job does not wait for them; their build time is still
reported, in the start-up log and in the first job's `timings.model_load_s`. How the preload
went is reported for `python -m worker health` (worker/health.py).
"""
from __future__ import annotations

import gc
import logging
import os
import threading

import redis
from redis.exceptions import LockError
from celery.signals import task_failure, worker_init, worker_process_init, worker_shutdown

from featurevis.registry import Registry
from worker import health
from worker.app import app

log = logging.getLogger(__name__)
_factory = None
_redis = None


@worker_init.connect
def _starting(sender, **_):
    """In the parent, before the pool forks: no child has preloaded yet."""
    health.report(app, sender.hostname, health.STARTING)


@worker_shutdown.connect
def _stopping(sender, **_):
    health.forget(app, sender.hostname)


@worker_process_init.connect
def _start(sender, **_):
    _install_builtin_models()
    factory()
    errors = {}
    for name in filter(None, (name.strip() for name in os.environ.get("FEATUREVIS_PRELOAD", "").split(","))):
        try:
            loaded = factory().model(name)
            log.info("preloaded model %s in %.2f s", name, loaded.build_s)
        except Exception as error:  # a job on this model will report the reason; the health check does now
            log.warning("could not preload model %s: %s", name, error)
            errors[name] = str(error)
    health.report(app, sender, health.FAILED if errors else health.READY, errors)


@task_failure.connect
def _collect_the_failure(**_):
    """A failed task's traceback (Celery's and billiard's exception info) leaves reference cycles that only a
    full collection frees, and with TensorFlow's millions of objects one seldom comes: without this, a worker
    grew with every refused registration or invalid job, for good (tests/test_untrusted_models.py). A full
    collection after each failure keeps a serving process where it was after any bad input."""
    gc.collect()


def _install_builtin_models() -> None:
    """The built-in models become ordinary registry entries in the store this worker serves.

    In the pool child, like every use of the store: an S3 filesystem made in the
    parent is not fork-safe.
    """
    try:
        Registry.from_env().install_builtins()
    except Exception as error:  # noqa: BLE001 - jobs still validate against the shipped descriptions
        log.warning("could not write the built-in models into the registry: %s", error)


LOCK_SECONDS = 30  # a dead worker's job lock frees itself at most this long after its last renewal


class JobLock:
    """A Redis lock per job id, so concurrent duplicates of one job compute it once.

    A thread renews it every third of its lifetime while the job runs. A
    SIGKILLed holder stops renewing, so the lock lapses within LOCK_SECONDS (a
    quarter of the soft time limit, when that is shorter) and the redelivered
    job gets it; a lock held for the hard limit instead made the redelivered job
    wait out most of its own time limit for a dead worker.
    """

    def __init__(self, client: redis.Redis, job_id: str, lifetime: float, wait: float):
        # thread_local=False: the renewing thread must see the token the job thread acquired.
        self._lock = client.lock(f"featurevis:job:{job_id}", timeout=lifetime, blocking_timeout=wait,
                                 thread_local=False)
        self._lifetime, self._stop = lifetime, threading.Event()
        self._renewer = threading.Thread(target=self._renew, name=f"lock-{job_id}", daemon=True)

    def __enter__(self) -> JobLock:
        if not self._lock.acquire():
            raise LockError(f"job lock {self._lock.name} still held after {self._lock.blocking_timeout} s")
        self._renewer.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._renewer.join()
        try:
            self._lock.release()
        except LockError:
            pass  # it lapsed (Redis was away longer than its lifetime): nothing left to release
        except redis.RedisError as error:  # Redis away as the job ends: its result is published, so it succeeded
            log.warning("could not release job lock %s (%s): it lapses within %.0f s", self._lock.name, error,
                        self._lifetime)

    def _renew(self) -> None:
        while not self._stop.wait(self._lifetime / 3):
            try:
                self._lock.reacquire()
            except LockError:
                log.warning("job lock %s lapsed; a duplicate of this job may run alongside", self._lock.name)
                return
            except redis.RedisError as error:  # Redis restarting: try again next round
                log.warning("could not renew job lock %s: %s", self._lock.name, error)


def job_lock(job_id: str) -> JobLock:
    lifetime = min(LOCK_SECONDS, app.conf.task_soft_time_limit / 4)
    return JobLock(redis_client(), job_id, lifetime, wait=app.conf.task_time_limit)


def redis_client() -> redis.Redis:
    """This process's client of the broker's Redis, for locks."""
    global _redis
    if _redis is None:
        _redis = redis.Redis.from_url(app.conf.broker_url)
    return _redis


def factory():
    """This process's factory, created on first use (the solo pool never sends worker_process_init)."""
    global _factory
    if _factory is None:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # hide C++ notices; speed unaffected
        from featurevis.factory import ModelFactory, grow_gpu_memory  # TensorFlow loads here, in this process only

        grow_gpu_memory()
        _factory = ModelFactory()
    return _factory

