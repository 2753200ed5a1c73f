"""`python -m worker health --node NAME`: healthy means the node answers a ping AND its models preloaded.

Celery's `inspect ping` is answered by the worker's parent process, while models are built in the
pool child (`worker_process_init`): a worker whose preload failed (weights missing) answered pings
and looked healthy while every job on that model failed. So each pool child reports how its
preload went under `featurevis:health:<node>` in Redis (where any probe can read it, in a container
or not), and this command checks both. The parent marks the node `starting` before its pool forks
and deletes the report when it shuts down.

Exit codes: 0 healthy, 1 not (one line says why).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys

import kombu.exceptions
import redis
from celery.utils.nodenames import host_format

READY, STARTING, FAILED = "ready", "starting", "failed"
log = logging.getLogger(__name__)


def _key(node: str) -> str:
    return f"featurevis:health:{node}"


def _client(app) -> redis.Redis:
    return redis.Redis.from_url(app.conf.broker_url, socket_connect_timeout=3, socket_timeout=5)


def report(app, node: str, preload: str, errors: dict[str, str] | None = None) -> None:
    """Record this node's preload state; a worker that cannot reach Redis logs it and goes on."""
    try:
        _client(app).set(_key(node), json.dumps({"preload": preload, "errors": errors or {}, "pid": os.getpid()}))
    except redis.RedisError as error:
        log.warning("could not report preload state %s of %s: %s", preload, node, error)


def forget(app, node: str) -> None:
    try:
        _client(app).delete(_key(node))
    except redis.RedisError:
        pass  # Redis is away; a later start of this node overwrites the report


def read(app, node: str) -> dict | None:
    raw = _client(app).get(_key(node))
    return json.loads(raw) if raw else None


def problem(app, node: str, timeout: float) -> str | None:
    """Why the node is not healthy, or None when it is."""
    if not app.control.ping(destination=[node], timeout=timeout):
        return f"{node} did not answer a ping within {timeout:g} s"
    state = read(app, node)
    if state is None:
        return f"{node} answers but reported no preload state (not a featurevis worker?)"
    if state["preload"] == STARTING:
        return f"{node} is still preloading its models"
    if state["preload"] == FAILED:
        return f"{node} could not preload " + "; ".join(f"{model}: {error}" for model, error in state["errors"].items())
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker health", description=__doc__.splitlines()[0])
    parser.add_argument("--node", required=True, help="the worker's node name; %%h is this host's name, e.g. gpu0@%%h")
    parser.add_argument("--timeout", type=float, default=10, help="seconds to wait for the ping (default 10)")
    args = parser.parse_args(argv)
    from worker.app import app

    node = host_format(args.node)
    try:
        reason = problem(app, node, args.timeout)
    except (OSError, redis.RedisError, kombu.exceptions.OperationalError) as error:
        reason = f"Redis unreachable: {error}"
    print(reason or f"{node}: healthy", file=sys.stderr if reason else sys.stdout)
    return 1 if reason else 0
