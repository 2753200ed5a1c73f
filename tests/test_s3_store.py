"""RESULTS_DIR as an S3 URL: workers publish there through fsspec/s3fs (moto's S3 server stands in)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from featurevis.redis_server import free_port
from featurevis.stack import REPO_ROOT, LocalStack, wait_until
from featurevis.store import ResultStore
from producer import Producer
from tests.conftest import UNTRAINED


@pytest.fixture
def s3(monkeypatch):
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    import s3fs

    wait_until(lambda: _answers(port), 30, "moto's S3 server did not start")
    s3fs.S3FileSystem(skip_instance_cache=True).mkdir("featurevis-results")
    yield env
    server.terminate()
    server.wait()


def _answers(port: int) -> bool:
    import urllib.request

    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1)
        return True
    except OSError as error:
        return getattr(error, "code", None) is not None


def test_a_worker_publishes_results_to_s3(s3, tmp_path):
    url = "s3://featurevis-results/runs"
    with LocalStack(results_dir=tmp_path / "unused", preload=UNTRAINED, log_dir=tmp_path / "logs",
                    redis_dir=tmp_path / "redis", extra_env={**s3, "RESULTS_DIR": url}) as stack:
        done = subprocess.run([sys.executable, "-m", "producer", "enqueue", "--model", UNTRAINED, "--conv-id", "1",
                               "--iterations", "2", "--seed", "3", "--wait"], cwd=REPO_ROOT,
                              env={**stack.env(), "RESULTS_DIR": url}, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        picture = done.stdout.strip().splitlines()[-1]
        assert picture.startswith("s3://featurevis-results/runs/inception_v3_untrained/conv2d_1/feature_0000/")
        store = ResultStore(url)
        key = picture.split("/runs/", 1)[1].rsplit("/", 1)[0]
        meta = store.read_meta(key)
        assert meta["job_id"] == done.stdout.splitlines()[0]
        assert store.read_image(key).shape == (299, 299, 3)
        assert store.read_bytes(key, "image.png").startswith(b"\x89PNG")
        assert "testing" not in json.dumps(meta)
        again = Producer(stack.redis_url).enqueue({"model": UNTRAINED, "conv_id": 1, "iterations": 2, "seed": 3})
        assert again.wait(timeout=120)["cached"] is True  # the cache check reads S3 too
    assert not (tmp_path / "unused").exists()


def test_keys_cannot_escape_an_s3_root(s3):
    store = ResultStore("s3://featurevis-results/runs")
    with pytest.raises(ValueError, match="escapes"):
        store.write("../elsewhere", {"image.png": b"x"}, {})
