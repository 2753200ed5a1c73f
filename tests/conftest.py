"""Shared fixtures: a real stack (Redis on a free port, a prefork worker) and a TF factory in this process."""
from __future__ import annotations

import gc
import subprocess
import sys

import pytest

from devstack.redis_server import free_port
from devstack.stack import REPO_ROOT, LocalStack

UNTRAINED = "inception_v3_untrained"
FLOWER_AUTH = "operator:s3cret-for-tests"


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    base = tmp_path_factory.mktemp("stack")
    # An empty Keras cache: the ImageNet weights must be reported missing, whatever this machine has cached.
    keras_home = base / "keras-home"
    with LocalStack(results_dir=base / "results", preload=UNTRAINED, log_dir=base / "logs",
                    redis_dir=base / "redis", extra_env={"KERAS_HOME": str(keras_home)},
                    flower_port=free_port(), flower_auth=FLOWER_AUTH) as running:
        yield running
        gc.collect()  # results that waited on this Redis unsubscribe when collected: before it stops


@pytest.fixture(scope="session")
def producer_api(stack):
    from producer import Producer

    return Producer(stack.redis_url, stack.results_dir)


@pytest.fixture(scope="session")
def run_cli(stack):
    """Run `python -m producer ...` as a user would; returns the CompletedProcess."""

    def run(*args: str, redis_url: str | None = None, timeout: float = 300,
            env: dict | None = None) -> subprocess.CompletedProcess:
        env = {**stack.env(), "REDIS_URL": redis_url or stack.redis_url, **(env or {})}
        return subprocess.run([sys.executable, "-m", "producer", *args], cwd=REPO_ROOT, env=env,
                              capture_output=True, text=True, timeout=timeout)

    return run


@pytest.fixture(scope="session")
def factory():
    """A model factory in the test process, for the math and for comparing with the worker."""
    from featurevis.factory import ModelFactory

    return ModelFactory()
