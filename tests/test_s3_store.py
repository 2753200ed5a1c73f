"""RESULTS_DIR as an S3 URL: workers publish there through fsspec/s3fs (moto's S3 server stands in)."""
from __future__ import annotations

import json
import posixpath
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from devstack.redis_server import free_port
from devstack.stack import REPO_ROOT, LocalStack, wait_until
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

    s3fs.S3FileSystem.clear_instance_cache()  # fsspec reuses instances: one made for an earlier server's port
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
        assert again.wait(timeout=120).cached is True  # the cache check reads S3 too
    assert not (tmp_path / "unused").exists()


def test_keys_cannot_escape_an_s3_root(s3):
    store = ResultStore("s3://featurevis-results/runs")
    with pytest.raises(ValueError, match="escapes"):
        store.write("../elsewhere", {"image.png": b"x"}, {})


def test_a_model_registered_through_s3_is_fetched_once_and_served(s3, tmp_path):
    import keras

    url = "s3://featurevis-results/runs"
    pixels = keras.Input((24, 24, 3))
    features = keras.layers.Conv2D(6, 3, name="edges")(pixels)
    model = keras.Model(pixels, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(features)))
    model.save(tmp_path / "mine.keras")
    cache = tmp_path / "worker-cache"
    with LocalStack(results_dir=tmp_path / "unused", log_dir=tmp_path / "logs", redis_dir=tmp_path / "redis",
                    extra_env={**s3, "RESULTS_DIR": url, "FEATUREVIS_MODEL_CACHE": str(cache)}) as stack:
        env = {**stack.env(), "RESULTS_DIR": url}

        def cli(*args):
            return subprocess.run([sys.executable, "-m", "producer", *args], cwd=REPO_ROOT, env=env,
                                  capture_output=True, text=True, timeout=300)

        registered = cli("models", "register", "mine", "--file", str(tmp_path / "mine.keras"))
        assert registered.returncode == 0, registered.stderr
        version = registered.stdout.split()[1]
        store = ResultStore(url)
        assert store.read_bytes(f"models/mine/{version}", "model.keras") == (tmp_path / "mine.keras").read_bytes()
        for feature in (1, 2):
            done = cli("enqueue", "--model", "mine", "--layer", "edges", "--feature", str(feature), "--iterations", "3",
                       "--wait")
            assert done.returncode == 0, done.stderr
            key = done.stdout.strip().splitlines()[-1].split("/runs/", 1)[1].rsplit("/", 1)[0]
            assert store.read_meta(key)["model_sha256"] == version
        cached = list(cache.rglob("model.keras"))
        assert [path.parent.name for path in cached] == [version]  # one copy per version, for both jobs
        # A dataset stored beside it on S3: a worker copies it once, as the model, and ranks it for an atlas.
        folder = tmp_path / "pictures"
        folder.mkdir()
        for index in range(3):
            Image.fromarray(np.full((24, 24, 3), 60 * index, np.uint8)).save(folder / f"{index}.png")
        assert cli("models", "dataset", "mine", str(folder)).returncode == 0
        assert store.exists(f"models/mine/{version}", "dataset.npy")
        atlas = cli("atlas", "--model", "mine", "--layers", "edges", "--units", "2", "--iterations", "2", "--seed", "1",
                    "--wait")
        assert atlas.returncode == 0, atlas.stderr
        unit = store.read_bytes(f"atlases/{atlas.stdout.split()[0]}/edges", "unit_0000.html").decode()
        assert unit.count('class="example"') == 6  # the top and bottom 3: all the dataset has
        assert [path.parent.name for path in cache.rglob("dataset.npy")] == [version]


def test_an_atlas_on_s3_ranks_its_dataset_and_publishes_pages_whose_images_are_there(s3, tmp_path):
    """The atlas's pages, progress.json and dataset examples go through the same store: on S3, every
    image a page shows is an object beside it (its relative link resolves), and nothing lands on disk."""
    url = "s3://featurevis-results/runs"
    with LocalStack(results_dir=tmp_path / "unused", preload="shapes_cnn", log_dir=tmp_path / "logs",
                    redis_dir=tmp_path / "redis", extra_env={**s3, "RESULTS_DIR": url}) as stack:
        done = subprocess.run([sys.executable, "-m", "producer", "atlas", "--model", "shapes_cnn", "--layers", "conv1",
                               "--units", "2", "--iterations", "2", "--seed", "4", "--wait"], cwd=REPO_ROOT,
                              env={**stack.env(), "RESULTS_DIR": url}, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
    atlas_id, page = done.stdout.split()[0], done.stdout.split()[-1]
    assert page == f"{url}/atlases/{atlas_id}/index.html"
    store = ResultStore(url)
    assert json.loads(store.read_bytes(f"atlases/{atlas_id}", "progress.json"))["state"] == "done"
    for key, name in ((f"atlases/{atlas_id}", "index.html"), (f"atlases/{atlas_id}/conv1", "index.html"),
                      (f"atlases/{atlas_id}/conv1", "unit_0000.html")):
        html = store.read_bytes(key, name).decode()
        sources = re.findall(r'<img[^>]* src="([^"]+)"', html)
        assert sources or name == "index.html" and key.count("/") == 1  # the atlas's own page shows no image
        for source in sources:
            assert store.exists(posixpath.normpath(posixpath.join(key, source))), (key, source)
    assert not (tmp_path / "unused").exists()
