"""The one model factory of this worker process.

Made in `worker_process_init`, i.e. in the pool child after the fork, never
in the parent: TensorFlow state inherited across fork hangs the child on its
first call. Models named in FEATUREVIS_PRELOAD (comma-separated) are built
there too, so the first job does not wait for them; their build time is still
reported, in the start-up log and in the first job's `timings.model_load_s`.
"""
from __future__ import annotations

import logging
import os

from celery.signals import worker_process_init

log = logging.getLogger(__name__)
_factory = None


@worker_process_init.connect
def _start(**_):
    factory()
    for name in filter(None, os.environ.get("FEATUREVIS_PRELOAD", "").split(",")):
        try:
            loaded = factory().model(name.strip())
            log.info("preloaded model %s in %.2f s", name, loaded.build_s)
        except Exception as error:  # a job on this model will report the reason
            log.warning("could not preload model %s: %s", name, error)


def factory():
    """This process's factory, created on first use (the solo pool never sends worker_process_init)."""
    global _factory
    if _factory is None:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # hide C++ notices; speed unaffected
        from featurevis.factory import ModelFactory, grow_gpu_memory  # TensorFlow loads here, in this process only

        grow_gpu_memory()
        _factory = ModelFactory()
    return _factory
