"""Queue metrics for Prometheus: how many jobs wait, and how many workers hold, in Redis.

    python -m featurevis.metrics [--address 127.0.0.1] [--port 9808] [--queue celery ...]

Flower's /metrics counts events, not queued messages, so autoscaling on queue length had nothing
to read. Each scrape asks Redis directly (LLEN, HLEN), so the numbers are never stale; while Redis
is unreachable the scrape still answers, with featurevis_redis_up 0 and no queue samples.

kombu keeps a queue in one Redis list, plus one list per priority step (`celery\\x06\\x163`, ...) for
messages sent with a priority; the gauge sums them. Unacknowledged messages (jobs a worker has
taken and not yet finished) sit in kombu's `unacked` hash.
"""
from __future__ import annotations

import argparse
import sys
import time

import redis
from kombu.transport.redis import PRIORITY_STEPS, Channel
from prometheus_client import start_http_server
from prometheus_client.core import REGISTRY, GaugeMetricFamily

UNACKED_HASH = Channel.unacked_key
DEFAULT_PORT = 9808


def priority_lists(queue: str) -> list[str]:
    """The Redis lists kombu spreads one queue over (the plain name holds priority 0)."""
    return [queue] + [f"{queue}{Channel.sep}{step}" for step in PRIORITY_STEPS if step]


class QueueCollector:
    """A Prometheus collector that reads the queues from Redis at every scrape."""

    def __init__(self, redis_url: str, queues: list[str]):
        self.client = redis.Redis.from_url(redis_url, socket_connect_timeout=2, socket_timeout=5)
        self.queues = queues

    def collect(self):
        up = GaugeMetricFamily("featurevis_redis_up", "1 when the last scrape could read Redis")
        try:
            lengths, unacked = self._read()
        except redis.RedisError:
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        waiting = GaugeMetricFamily("featurevis_queue_length", "messages waiting in a Celery queue", labels=["queue"])
        for queue, length in lengths.items():
            waiting.add_metric([queue], length)
        yield waiting
        yield GaugeMetricFamily("featurevis_unacked_messages",
                                "messages taken by a worker and not yet acknowledged (running or prefetched jobs)",
                                value=unacked)

    def _read(self) -> tuple[dict[str, int], int]:
        lists = {queue: priority_lists(queue) for queue in self.queues}
        pipe = self.client.pipeline(transaction=False)
        for key in (key for keys in lists.values() for key in keys):
            pipe.llen(key)
        pipe.hlen(UNACKED_HASH)
        *counts, unacked = pipe.execute()
        counted = iter(counts)
        return {queue: sum(next(counted) for _ in keys) for queue, keys in lists.items()}, unacked


def serve(redis_url: str, queues: list[str], address: str, port: int):
    """Serve /metrics from a thread (prometheus_client's server); returns (server, thread)."""
    REGISTRY.register(QueueCollector(redis_url, queues))
    return start_http_server(port, addr=address)


def main(argv: list[str] | None = None) -> int:
    from featurevis import celeryconfig

    parser = argparse.ArgumentParser(prog="python -m featurevis.metrics", description=__doc__.splitlines()[0])
    parser.add_argument("--address", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"listen port (default {DEFAULT_PORT})")
    parser.add_argument("--queue", action="append", help="a Celery queue to report (repeatable; default: celery)")
    args = parser.parse_args(argv)
    serve(celeryconfig.broker_url, args.queue or [celeryconfig.task_default_queue], args.address, args.port)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    sys.exit(main())
