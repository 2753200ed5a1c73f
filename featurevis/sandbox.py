"""A disposable process that loads a new model once and describes it, so no serving process ever has to.

Registration must load a model to describe it (its layers, shapes and classes
come from Keras), and loading is where a hostile file acts: code through a
Lambda reference, a setter that changes process-wide Keras state, a bomb. So
a worker never loads an upload itself: it runs the static check
(featurevis/modelcheck.py), then starts a fresh interpreter for this one
model (`python -m featurevis.describe_model`: spawned, not forked from a
TensorFlow process) and waits for its verdict. The process gets:

- a folder of its own (HOME, TMPDIR and the working directory), with a copy of
  the file and nothing else, removed afterwards, its size bounded;
- an address-space limit, a CPU-time limit, a file-size limit and a
  wall-clock deadline (FEATUREVIS_SANDBOX_MEMORY_MB, FEATUREVIS_SANDBOX_CPU_S,
  FEATUREVIS_SANDBOX_TIMEOUT_S), set before TensorFlow is imported;
- an environment without the worker's secrets (no Redis URL, no store
  credentials), and for a user's file no network where the kernel lets an
  unprivileged process take it away (Kubernetes: deploy/k8s/networkpolicy.yaml);
- nothing to talk back with but the verdict file it writes, which is read
  as untrusted input too: bounded, parsed, checked.

It ends after the verdict; whatever it changed dies with it. TensorFlow-free
on this side: the worker's pool child calls it, the child imports Keras.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from featurevis import modelcheck
from featurevis.registry import ModelRefused

DEFAULT_MEMORY_MB = 6144  # TensorFlow and a 200 M-parameter model (FEATUREVIS_MODEL_MAX_PARAMS) with room to convert
DEFAULT_CPU_S = 300
DEFAULT_TIMEOUT_S = 600
REQUEST = "request.json"
VERDICT = "verdict.json"
LOG = "describe.log"
CONVERTED = "converted.keras"
VERDICT_MAX_BYTES = 32 * 2**20
POLL_S = 0.05
# What the child keeps of the worker's environment: how to find Python and its libraries, nothing else.
PASSED_ENV = ("PATH", "LANG", "LC_ALL", "VIRTUAL_ENV", "LD_LIBRARY_PATH")


@dataclass(frozen=True)
class Limits:
    memory_mb: int
    cpu_s: int
    timeout_s: float
    root: str | None  # where the sandboxes' folders are made (FEATUREVIS_SANDBOX_DIR; default the system's temp)

    @classmethod
    def from_env(cls) -> Limits:
        return cls(memory_mb=int(os.environ.get("FEATUREVIS_SANDBOX_MEMORY_MB", DEFAULT_MEMORY_MB)),
                   cpu_s=int(os.environ.get("FEATUREVIS_SANDBOX_CPU_S", DEFAULT_CPU_S)),
                   timeout_s=float(os.environ.get("FEATUREVIS_SANDBOX_TIMEOUT_S", DEFAULT_TIMEOUT_S)),
                   root=os.environ.get("FEATUREVIS_SANDBOX_DIR") or None)


@dataclass(frozen=True)
class Verdict:
    """A model the disposable process described: its description, and for a Keras 2 file the `.keras` file it
    was converted to (in the sandbox's folder, gone when the `described` block ends)."""

    description: dict
    converted: Path | None
    network_isolated: bool  # whether the process ran without network (a user's file, where the kernel allowed it)
    seconds: float  # from starting the process to its verdict
    peak_rss_mb: float  # the process's largest resident memory


@contextmanager
def described(request: dict, file: Path | None, limits: Limits | None = None) -> Iterator[Verdict]:
    """Describe a registration request's model in a disposable process; ModelRefused (one line) when it is
    refused, RuntimeError when the process failed for a reason that is not the model's."""
    limits = limits or Limits.from_env()
    folder = Path(tempfile.mkdtemp(prefix="featurevis-sandbox-", dir=limits.root))
    try:
        yield _run(folder, request, file, limits)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _run(folder: Path, request: dict, file: Path | None, limits: Limits) -> Verdict:
    copied = None
    disk_bound = 64 * 2**20
    if file is not None:
        kind = modelcheck.file_format(file)
        copied = folder / modelcheck.UPLOAD_NAMES[kind]  # the loaders route by name, as in the store
        shutil.copyfile(file, copied)
        disk_bound += 3 * file.stat().st_size  # the copy, its conversion, and room for Keras' own unpacking
    (folder / REQUEST).write_text(json.dumps({"request": request, "file": copied and copied.name,
                                              "isolate_network": file is not None, "memory_mb": limits.memory_mb,
                                              "cpu_s": limits.cpu_s, "max_file_bytes": disk_bound}))
    started = time.perf_counter()
    with open(folder / LOG, "wb") as log:
        # -I: isolated, so neither the folder it runs in nor any PYTHON* variable puts code on its path.
        process = subprocess.Popen([sys.executable, "-I", "-m", "featurevis.describe_model", str(folder)],
                                   cwd=folder, env=_environment(folder, file is None), stdin=subprocess.DEVNULL,
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        ended = _wait(process, folder, disk_bound, limits)
    seconds = time.perf_counter() - started
    verdict = _read_verdict(folder, process.returncode, ended, limits)
    if "refused" in verdict:
        raise ModelRefused(verdict["refused"])
    converted = folder / CONVERTED if verdict.get("converted") else None
    if converted is not None:
        modelcheck.check_file(converted)  # what the process wrote is read as untrusted as what it was given
    return Verdict(_checked_description(verdict.get("description"), request), converted,
                   bool(verdict.get("network_isolated")), seconds, float(verdict.get("peak_rss_mb") or 0))


def _environment(folder: Path, trusted_source: bool) -> dict[str, str]:
    """The child's whole environment: the interpreter's paths, its own folder as home and temp, no secrets.
    A Keras Application (not a file) may need the worker's Keras cache for its ImageNet weights."""
    env = {key: os.environ[key] for key in PASSED_ENV if key in os.environ}
    env.update(HOME=str(folder), TMPDIR=str(folder), KERAS_HOME=str(folder / "keras"), TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONDONTWRITEBYTECODE="1", CUDA_VISIBLE_DEVICES="")  # describing needs no GPU
    if trusted_source and "KERAS_HOME" in os.environ:
        env["KERAS_HOME"] = os.environ["KERAS_HOME"]
    elif trusted_source:
        env["KERAS_HOME"] = os.path.join(os.path.expanduser("~"), ".keras")
    return env


def _wait(process: subprocess.Popen, folder: Path, disk_bound: int, limits: Limits) -> str | None:
    """Wait for the child; kill its whole session when it runs past the deadline or its folder past its bound.
    Returns why it was killed, or None when it ended by itself."""
    deadline = time.monotonic() + limits.timeout_s
    while process.poll() is None:
        reason = None
        if time.monotonic() > deadline:
            reason = f"took more than {limits.timeout_s:.0f} s (FEATUREVIS_SANDBOX_TIMEOUT_S)"
        elif _folder_bytes(folder) > disk_bound:
            reason = f"wrote more than {disk_bound} bytes while loading"
        if reason:
            _kill(process)
            return reason
        time.sleep(POLL_S)
    _kill(process)  # anything it left running in its session
    return None


def _kill(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    process.wait()


def _folder_bytes(folder: Path) -> int:
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def _read_verdict(folder: Path, returncode: int, killed: str | None, limits: Limits) -> dict:
    path = folder / VERDICT
    if killed:
        return {"refused": f"file: loading it {killed}; refused"}
    if returncode == -signal.SIGXCPU or returncode == -signal.SIGKILL and not path.exists():
        return {"refused": f"file: loading it used more than {limits.cpu_s} s of CPU (FEATUREVIS_SANDBOX_CPU_S) "
                           f"or was killed; refused"}
    if returncode == -signal.SIGXFSZ:
        return {"refused": "file: loading it wrote a file past the sandbox's bound; refused"}
    try:
        with open(path, "rb") as handle:
            data = handle.read(VERDICT_MAX_BYTES + 1)
        verdict = json.loads(data) if len(data) <= VERDICT_MAX_BYTES else None
    except (OSError, ValueError):
        verdict = None
    if not isinstance(verdict, dict) or not (isinstance(verdict.get("refused"), str) or "description" in verdict):
        tail = _log_tail(folder)
        raise RuntimeError(f"the process describing the model ended with code {returncode} and no verdict"
                           f"{f' ({tail})' if tail else ''}")
    if "refused" in verdict:
        verdict["refused"] = " ".join(verdict["refused"].split())[:400]
    return verdict


def _log_tail(folder: Path) -> str:
    try:
        lines = (folder / LOG).read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " ".join(lines[-1].split())[:200] if lines else ""


def _checked_description(description, request: dict) -> dict:
    """The child's description, held to what a description is before anything trusts it."""
    from featurevis.registry import info_from_description

    if not isinstance(description, dict) or description.get("name") != request["name"] or \
            description.get("sha256") != request["sha256"]:
        raise RuntimeError("the process describing the model answered for another model")
    try:
        info_from_description(description)
    except (KeyError, TypeError, ValueError) as error:
        raise RuntimeError(f"the process describing the model gave a malformed description ({error})") from None
    return description
