"""A local stack of real processes: Redis (embedded unless REDIS_URL is set), workers, Flower.

Used by `make demo` and the tests, so both exercise what production runs:
`python -m worker` processes and `celery flower`, talking over Redis.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from celery import Celery

from featurevis.redis_server import RedisServer

REPO_ROOT = Path(__file__).resolve().parent.parent


class LocalStack:
    def __init__(self, results_dir: str | os.PathLike, workers: int = 1, flower_port: int | None = None,
                 redis_url: str | None = None, redis_dir: str | os.PathLike | None = None,
                 preload: str = "", log_dir: str | os.PathLike | None = None, extra_env: dict | None = None):
        self.results_dir = Path(results_dir).resolve()
        self.workers = workers
        self.flower_port = flower_port
        self.preload = preload
        self.log_dir = Path(log_dir or self.results_dir.parent / "logs").resolve()
        self.extra_env = extra_env or {}
        self.redis = None if redis_url else RedisServer(data_dir=redis_dir)
        self.redis_url = redis_url or self.redis.url
        self.processes: dict[str, subprocess.Popen] = {}

    def env(self) -> dict[str, str]:
        """The environment every process of the stack (and a producer talking to it) uses."""
        return {**os.environ, "REDIS_URL": self.redis_url, "RESULTS_DIR": str(self.results_dir),
                "PYTHONPATH": str(REPO_ROOT), **self.extra_env}

    def start(self, timeout: float = 120) -> "LocalStack":
        self.log_dir.mkdir(parents=True, exist_ok=True)
        if self.redis:
            self.redis.start()
        for index in range(1, self.workers + 1):
            self.start_worker(f"w{index}")
        if self.flower_port:
            self._spawn("flower", [sys.executable, "-m", "celery", "-A", "worker.app", "flower",
                                   f"--address=127.0.0.1", f"--port={self.flower_port}"])
        self.wait_for_workers(self.workers, timeout)
        return self

    def start_worker(self, name: str) -> subprocess.Popen:
        return self._spawn(name, [sys.executable, "-m", "worker", f"--hostname={name}@%h",
                                  f"--preload={self.preload}"])

    def wait_for_workers(self, count: int, timeout: float) -> None:
        app = Celery(broker=self.redis_url)
        deadline = time.monotonic() + timeout
        while len(app.control.ping(timeout=0.5) or []) < count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{count} worker(s) not up after {timeout} s; logs in {self.log_dir}")
            time.sleep(0.2)

    def stop_process(self, name: str, sig: int = signal.SIGTERM, timeout: float = 60) -> None:
        process = self.processes.pop(name)
        if process.poll() is None:
            process.send_signal(sig)
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def stop(self) -> None:
        for name in list(self.processes):
            self.stop_process(name)
        if self.redis:
            self.redis.stop()

    def _spawn(self, name: str, command: list[str]) -> subprocess.Popen:
        log = open(self.log_dir / f"{name}.log", "ab")
        self.processes[name] = subprocess.Popen(command, cwd=REPO_ROOT, env=self.env(),
                                                stdout=log, stderr=subprocess.STDOUT)
        log.close()
        return self.processes[name]

    def __enter__(self) -> "LocalStack":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *_) -> None:
        self.stop()
