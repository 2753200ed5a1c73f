"""Celery settings shared by producers and workers (Celery's config-module convention).

Loaded with `app.config_from_object("featurevis.celeryconfig")`. Every host
that enqueues or works must use the same values: kombu re-delivers any
unacknowledged message older than the visibility timeout, and the shortest
timeout among the clients wins.
"""
import os
from urllib.parse import quote, urlsplit, urlunsplit


def _with_password(url: str) -> str:
    """REDIS_URL with the password from REDIS_PASSWORD_FILE or REDIS_PASSWORD, when the URL has none.

    Containers get the password as a mounted secret file (compose) or a Secret-backed variable
    (Kubernetes, where KEDA reads the same variable), so it is on no command line and in no URL
    that a manifest spells out.
    """
    parts = urlsplit(url)
    path = os.environ.get("REDIS_PASSWORD_FILE")
    password = open(path).read().strip() if path else os.environ.get("REDIS_PASSWORD")
    if not password or parts.password:
        return url
    netloc = f"{quote(parts.username or '', safe='')}:{quote(password, safe='')}@{parts.netloc.rpartition('@')[2]}"
    return urlunsplit(parts._replace(netloc=netloc))


REDIS_URL = _with_password(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))

broker_url = REDIS_URL
result_backend = REDIS_URL

# JSON only: other systems enqueue by name, and pickle from the wire runs code.
task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
result_accept_content = ["json"]

# A job is acknowledged when it finishes, not when it starts, so a worker that
# dies mid-job leaves it on the queue; each worker holds one job at a time.
task_acks_late = True
task_reject_on_worker_lost = True
worker_prefetch_multiplier = 1
task_track_started = True
# The one queue jobs go to; the queue-length exporter and KEDA's ScaledObject read this list.
task_default_queue = "celery"
# One pool process per worker, whoever starts it (`celery -A worker.app worker` included): a worker
# owns one device, and Celery's default of one process per CPU core would put that many TensorFlow
# runtimes on one GPU. More throughput means more workers, not more processes.
worker_concurrency = 1
# On a lost broker connection (a Redis restart), let the running job finish and publish
# (tests/test_reliability.py restarts Redis under one) rather than throw its work away and wait
# for the redelivery. Set explicitly: Celery warns while it is unset, and Celery 6 flips the default.
worker_cancel_long_running_tasks_on_connection_loss = False

# The rule that keeps a long job from running twice: soft limit < hard limit < visibility timeout.
# At the soft limit the job fails with a clear reason; at the hard limit the pool child is
# killed; only a message unacknowledged for longer than the visibility timeout is re-delivered
# (and a job whose worker died is, once that timeout has passed).
task_soft_time_limit = int(os.environ.get("FEATUREVIS_SOFT_TIME_LIMIT", 3000))
task_time_limit = int(os.environ.get("FEATUREVIS_TIME_LIMIT", task_soft_time_limit + 60))
visibility_timeout = int(os.environ.get("FEATUREVIS_VISIBILITY_TIMEOUT", task_time_limit + 540))
if not task_soft_time_limit < task_time_limit < visibility_timeout:
    raise ValueError(f"time limits must rise: FEATUREVIS_SOFT_TIME_LIMIT {task_soft_time_limit} < "
                     f"FEATUREVIS_TIME_LIMIT {task_time_limit} < FEATUREVIS_VISIBILITY_TIMEOUT {visibility_timeout}")
# A worker stopped with SIGTERM finishes its job (warm shutdown) only if whatever stops it waits
# longer than the hard limit: compose's stop_grace_period, Kubernetes' terminationGracePeriodSeconds.
# The deployments pass that number in FEATUREVIS_STOP_GRACE_PERIOD, so a time limit raised without it
# stops the worker from starting instead of having jobs killed at every rollout.
_grace = os.environ.get("FEATUREVIS_STOP_GRACE_PERIOD")
if _grace and not task_time_limit < int(_grace):
    raise ValueError(f"FEATUREVIS_TIME_LIMIT {task_time_limit} must be below FEATUREVIS_STOP_GRACE_PERIOD {_grace}, "
                     "the seconds a stopping worker is given to finish its job")
# kombu looks for unacknowledged messages past the timeout every 10 s but, by default, acts on
# every 10th look only; acting on each look brings a dead worker's job back within timeout + 10 s.
broker_transport_options = {"visibility_timeout": visibility_timeout, "unacked_restore_throttle": 1}
result_backend_transport_options = {"visibility_timeout": visibility_timeout}

# A Redis restart mid-job must not fail the job: results are written with retries.
result_backend_always_retry = True
result_backend_max_retries = 20

# Events, so Flower sees jobs from the moment they are queued.
worker_send_task_events = True
task_send_sent_event = True

# TensorFlow's import alone takes ~5 s; the default 4 s would kill every child at start.
worker_proc_alive_timeout = 120

# Fail fast when Redis is down instead of retrying for minutes: a producer
# must report an unreachable broker within seconds.
broker_connection_retry_on_startup = True
broker_connection_timeout = 3
redis_socket_connect_timeout = 3
redis_socket_timeout = 30
task_publish_retry_policy = {"max_retries": 2, "interval_start": 0, "interval_step": 0.5, "interval_max": 1}

result_expires = 7 * 24 * 3600
result_extended = True
