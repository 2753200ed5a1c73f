"""A local stack of real processes: Redis (embedded unless REDIS_URL is set), workers, Flower, queue metrics.

Used by `make demo`, `make up`/`make down` and the tests, so all of them run
what production runs: `python -m worker` processes and `celery flower`,
talking over Redis.

    python -m devstack.stack up     start and leave running (state in .featurevis/)
    python -m devstack.stack down   warm-stop workers (running jobs finish), Flower, then Redis;
                                    queued jobs stay in Redis' append-only file for the next `up`

`up` records each process's identity (PID, start time, command line); `down` signals a process
only while all three still match, so a PID reused after a reboot or a crash is left alone.
"""
from __future__ import annotations

import argparse
import ipaddress
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import kombu.exceptions
import psutil
import redis
from celery import Celery

from devstack.redis_server import RedisServer, free_port
from featurevis.metrics import DEFAULT_PORT as METRICS_PORT

REPO_ROOT = Path(__file__).resolve().parent.parent
STATE_DIR = REPO_ROOT / ".featurevis"


class LocalStack:
    def __init__(self, results_dir: str | os.PathLike, workers: int = 1, flower_port: int | None = None,
                 redis_url: str | None = None, redis_dir: str | os.PathLike | None = None,
                 redis_port: int | None = None, preload: str = "", log_dir: str | os.PathLike | None = None,
                 extra_env: dict | None = None, flower_address: str = "127.0.0.1",
                 flower_auth: str | None = None, detached: bool = False, metrics_port: int | None = None):
        self.results_dir = Path(results_dir).resolve()
        self.workers = workers
        self.flower_port, self.flower_address, self.flower_auth = flower_port, flower_address, flower_auth
        self.metrics_port = metrics_port
        self.preload = preload
        self.log_dir = Path(log_dir or self.results_dir.parent / "logs").resolve()
        self.extra_env = extra_env or {}
        self.detached = detached
        self.redis = None if redis_url else RedisServer(data_dir=redis_dir, port=redis_port, detached=detached)
        self.redis_url = redis_url or self.redis.url
        self.processes: dict[str, subprocess.Popen] = {}

    def env(self) -> dict[str, str]:
        """The environment every process of the stack (and a producer talking to it) uses."""
        return {**os.environ, "REDIS_URL": self.redis_url, "RESULTS_DIR": str(self.results_dir), **self.extra_env}

    def start(self, timeout: float = 120) -> "LocalStack":
        self.log_dir.mkdir(parents=True, exist_ok=True)
        if self.redis:
            self.redis.start()
        for index in range(1, self.workers + 1):
            self.start_worker(f"w{index}")
        if self.flower_port:
            self.start_flower()
        if self.metrics_port:
            self.start_metrics()
        self.wait_for_workers(self.workers, timeout)
        return self

    def start_worker(self, name: str) -> subprocess.Popen:
        return self._spawn(name, [sys.executable, "-m", "worker", f"--hostname={name}@%h",
                                  f"--preload={self.preload}"])

    def start_flower(self) -> subprocess.Popen:
        """Flower with the app (so async-apply works); a login wherever it listens beyond loopback.

        The login goes in FLOWER_BASIC_AUTH, which Flower reads, not on the command line, where `ps` shows it.
        """
        command = [sys.executable, "-m", "celery", "-A", "worker.app", "flower", f"--address={self.flower_address}",
                   f"--port={self.flower_port}", "--purge_offline_workers=60"]
        env = {}
        if self.flower_auth:
            env["FLOWER_BASIC_AUTH"] = self.flower_auth
        elif ipaddress.ip_address(self.flower_address).is_loopback:
            env["FLOWER_UNAUTHENTICATED_API"] = "true"  # loopback only: the API needs no login
        else:
            raise ValueError(f"Flower on {self.flower_address} must have a login: set basic auth (user:password)")
        process = self._spawn("flower", command, env)
        wait_until(lambda: _http_ok(f"http://127.0.0.1:{self.flower_port}/healthcheck"), 30, "Flower did not start")
        return process

    def start_metrics(self) -> subprocess.Popen:
        """The queue-length exporter for Prometheus, on loopback."""
        process = self._spawn("metrics", [sys.executable, "-m", "featurevis.metrics", "--address=127.0.0.1",
                                          f"--port={self.metrics_port}"])
        wait_until(lambda: _http_ok(f"http://127.0.0.1:{self.metrics_port}/metrics"), 30, "the exporter did not start")
        return process

    def wait_for_workers(self, count: int, timeout: float) -> None:
        app = Celery(broker=self.redis_url)
        wait_until(lambda: pongs(app) >= count, timeout,
                   f"{count} worker(s) not up after {timeout} s; logs in {self.log_dir}")

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

    def identities(self) -> dict[str, dict]:
        """Each process's identity, for `down` to check before it signals anything."""
        pids = {name: process.pid for name, process in self.processes.items()}
        if self.redis:
            pids["redis"] = self.redis.process.pid
        return {name: identity(pid) for name, pid in pids.items()}

    def _spawn(self, name: str, command: list[str], env: dict | None = None) -> subprocess.Popen:
        log = open(self.log_dir / f"{name}.log", "ab")
        self.processes[name] = subprocess.Popen(command, cwd=REPO_ROOT, env={**self.env(), **(env or {})},
                                                stdout=log, stderr=subprocess.STDOUT,
                                                start_new_session=self.detached)
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


def wait_until(condition, timeout: float, message: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(message)
        time.sleep(0.2)


def pongs(app: Celery) -> int:
    """Workers answering a ping; 0 while Redis is unreachable.

    kombu's producer pools are process-global, so after a Redis restart the
    first ping can meet a pooled connection the old server closed.
    """
    try:
        return len(app.control.ping(timeout=0.5) or [])
    except (OSError, redis.RedisError, kombu.exceptions.OperationalError):
        return 0


def _http_ok(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


# `make up` / `make down`: a stack that outlives the command that started it.

def up(state_dir: Path = STATE_DIR, flower_port: int = 5555, workers: int = 1,
       metrics_port: int = METRICS_PORT) -> dict:
    state_file = state_dir / "stack.json"
    state = json.loads(state_file.read_text()) if state_file.exists() else {}
    if any(is_running(record) for record in state.get("processes", {}).values()):
        raise SystemExit(f"the stack is already up ({state_file}); `make down` first")
    auth_file = state_dir / "flower-auth"
    if not auth_file.exists():
        state_dir.mkdir(parents=True, exist_ok=True)
        auth_file.write_text(f"featurevis:{secrets.token_urlsafe(12)}")
        auth_file.chmod(0o600)
    port = state.get("redis_port") if state.get("redis_port") and _port_free(state["redis_port"]) else free_port()
    stack = LocalStack(results_dir=os.environ.get("RESULTS_DIR", REPO_ROOT / "results"), workers=workers,
                       flower_port=flower_port, redis_url=os.environ.get("REDIS_URL"), redis_dir=state_dir / "redis",
                       redis_port=port, log_dir=state_dir / "logs", flower_auth=auth_file.read_text().strip(),
                       preload=os.environ.get("FEATUREVIS_PRELOAD", ""), detached=True, metrics_port=metrics_port)
    try:
        stack.start()
    except BaseException:
        stack.stop()
        raise
    state = {"redis_url": stack.redis_url, "redis_port": port, "processes": stack.identities(),
             "flower": f"http://127.0.0.1:{flower_port}", "flower_auth_file": str(auth_file),
             "metrics": f"http://127.0.0.1:{metrics_port}/metrics", "results_dir": str(stack.results_dir)}
    state_file.write_text(json.dumps(state, indent=1))
    return state


def down(state_dir: Path = STATE_DIR, timeout: float = 600) -> list[str]:
    """Workers first (warm shutdown: the running job finishes, queued ones stay queued), Redis last.

    Returns the names of recorded processes left alone because they are gone or their PID now
    belongs to another process.
    """
    state_file = state_dir / "stack.json"
    if not state_file.exists():
        return []
    state = json.loads(state_file.read_text())
    records = state.get("processes", {})
    skipped = []
    for name in sorted(records, key=lambda n: n == "redis"):
        if not is_running(records[name]):
            skipped.append(name)
            continue
        if name == "redis":
            _shutdown_redis(state["redis_url"])
        _terminate(records[name], timeout)
    state["processes"] = {}
    state_file.write_text(json.dumps(state, indent=1))
    return skipped


def _shutdown_redis(url: str) -> None:
    try:
        redis.Redis.from_url(url, socket_connect_timeout=2).shutdown()  # fsyncs the append-only file
    except redis.ConnectionError:
        pass  # SHUTDOWN closes the connection; or Redis was already gone


def _terminate(record: dict, timeout: float) -> None:
    """SIGTERM (SIGKILL after timeout), each sent only while the PID is still the recorded process."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not is_running(record):
            return
        os.kill(record["pid"], sig)
        try:
            wait_until(lambda: not is_running(record), timeout, "")
        except RuntimeError:
            continue


def identity(pid: int) -> dict:
    """What tells a process from a later one with the same PID: its start time and command line."""
    process = psutil.Process(pid)
    return {"pid": pid, "started": process.create_time(), "cmdline": process.cmdline()}


def is_running(record) -> bool:
    """Whether the recorded process still runs (a zombie counts as gone); False for an unverifiable record."""
    try:
        return (isinstance(record, dict) and identity(record["pid"]) == record
                and psutil.Process(record["pid"]).status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack.stack")
    parser.add_argument("command", choices=["up", "down"])
    parser.add_argument("--workers", type=int, default=int(os.environ.get("WORKERS", 1)))
    args = parser.parse_args(argv)
    if args.command == "down":
        for name in down():
            print(f"{name}: not signalled (gone, or its PID now belongs to another process)")
        print("stack stopped; queued jobs are kept in .featurevis/redis")
        return 0
    state = up(workers=args.workers)
    user, password = Path(state["flower_auth_file"]).read_text().strip().split(":", 1)
    print(f"Redis:   export REDIS_URL={state['redis_url']} RESULTS_DIR={state['results_dir']}")
    print(f"Flower:  {state['flower']}  (user {user}, password {password}; stored in {state['flower_auth_file']})")
    print(f"metrics: {state['metrics']}  (queue length for Prometheus; Flower's own: {state['flower']}/metrics)")
    print("stop with `make down`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
