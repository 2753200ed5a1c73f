"""The gallery page (index.html at the store's root) and the optimization animation. TF-free and quick."""
from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageSequence

from devstack.redis_server import free_port
from featurevis import gallery, images
from featurevis.store import ResultStore, image_result

NASTY = "<script>alert('x')</script>"
RED, GREEN, BLUE, YELLOW = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)


def _solid(colour, size: int = 48) -> np.ndarray:
    """A raw 0..255 image whose min-max view (image.png) is exactly this pure colour."""
    return np.broadcast_to(np.array(colour, np.float32), (size, size, 3)).copy()


def _meta(key: str, **extra) -> dict:
    model, layer, feature, job_id = key.split("/")
    return {"job_id": job_id, "key": key, "model": model, "layer_name": layer, "feature": int(feature[8:]),
            "iterations": 50, "seed": 7, "method": "adam", "final_loss": -12.345678, "untrained": False,
            "loss": [-1.0] * 50, "predictions": [], "created_at": "2026-01-01T00:00:00+00:00", **extra}


RESULTS = {  # key -> (raw image, meta extras)
    "tiny_cnn/conv2d_2/feature_0003/aaaa1111": (_solid(RED), {
        "untrained": True, "seed": 11, "quality": {"diversity": 0.25, "<b>bold</b>": 3},
        "predictions": [{"iteration": 10, "class_id": 1, "class_name": "circle", "score": 0.5},
                        {"iteration": 50, "class_id": 2, "class_name": NASTY, "score": 0.875}]}),
    "tiny_cnn/conv2d_2/feature_0003/bbbb2222": (_solid(GREEN), {"seed": 12, "method": "octaves"}),
    "tiny_cnn/conv2d_10/feature_0000/cccc3333": (_solid(BLUE), {"iterations": 200}),
    "inception_v3_untrained/mixed5/feature_0012/dddd4444": (
        np.random.default_rng(0).random((48, 48, 3)).astype(np.float32) * 255, {"final_loss": 3.5}),
}
SWEEP = "tiny_cnn/conv2d_2/sweeps/eeee5555"


@pytest.fixture
def store(tmp_path):
    store = ResultStore(tmp_path / "results")
    _fill(store)
    # Half a result (no meta.json yet): not complete, so not in the gallery.
    os.makedirs(store.path("tiny_cnn/conv2d_2/feature_0009/ffff6666"))
    with open(store.path("tiny_cnn/conv2d_2/feature_0009/ffff6666", "image.png"), "wb") as handle:
        handle.write(images.png_bytes(_solid(RED)))
    return store


def _fill(store: ResultStore) -> None:
    for key, (image, extra) in RESULTS.items():
        store.write_all([image_result(key, image, images.png_bytes(image), _meta(key, **extra))])
    jobs = [{"key": f"tiny_cnn/conv2d_2/feature_{feature:04d}/x{feature}"} for feature in (3, 4, 5)]
    store.write(SWEEP, {"contact_sheet.png": images.contact_sheet([_solid(YELLOW)] * 3)},
                {"sweep_id": "eeee5555", "model": "tiny_cnn", "layer": "conv2d_2", "features": [3, 4, 5], "jobs": jobs})


def test_rebuild_lists_results_by_model_layer_feature_with_their_parameters(store):
    location = gallery.rebuild(store)
    assert location == store.path("", "index.html")
    page = open(location, encoding="utf-8").read()
    for heading in ("<h2>tiny_cnn</h2>", "<h3>tiny_cnn / conv2d_2</h3>", "<h3>tiny_cnn / conv2d_10</h3>",
                    "<h2>inception_v3_untrained</h2>", "<h3>inception_v3_untrained / mixed5</h3>",
                    "<h4>feature 3</h4>", "<h4>feature 0</h4>", "<h4>feature 12</h4>", "<h4>sweeps</h4>"):
        assert heading in page, heading
    assert page.index("<h2>inception_v3_untrained</h2>") < page.index("<h2>tiny_cnn</h2>")
    assert page.index("conv2d_2</h3>") < page.index("conv2d_10</h3>")  # natural order
    for key in RESULTS:
        assert f'<img src="{key}/image.png"' in page and f'href="{key}/meta.json"' in page
    assert f'<img src="{SWEEP}/contact_sheet.png"' in page and "<dd>3, 4, 5</dd>" in page
    assert "ffff6666" not in page  # no meta.json: not complete
    first = page[page.index("aaaa1111/image.png"):page.index("bbbb2222/image.png")]
    for shown in ("<dt>iterations</dt><dd>50</dd>", "<dt>seed</dt><dd>11</dd>", "<dt>method</dt><dd>adam</dd>",
                  "<dt>final loss</dt><dd>-12.35</dd>", '<span class="untrained">untrained</span>',
                  "<dt>q: diversity</dt><dd>0.25</dd>", "<dt>q: &lt;b&gt;bold&lt;/b&gt;</dt><dd>3</dd>"):
        assert shown in first, shown
    assert "(#2, 0.875 @ 50)" in first and "circle" not in first  # the last prediction only
    assert page.count('class="untrained"') == 1 and "<dt>method</dt><dd>octaves</dd>" in page
    assert "4 results, 1 sweeps" in page


def test_every_meta_string_is_escaped_and_the_page_is_self_contained(store):
    page = open(gallery.rebuild(store), encoding="utf-8").read()
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "<script" not in page.lower() and "<b>" not in page
    assert "http:" not in page and "https:" not in page and 'src="/' not in page and "@import" not in page


def test_rebuild_replaces_the_page_atomically_and_leaves_no_temporaries(store, monkeypatch):
    gallery.rebuild(store)
    before = open(store.path("", "index.html"), encoding="utf-8").read()
    store.write_all([image_result("tiny_cnn/conv2d_2/feature_0007/gggg7777", _solid(RED), images.png_bytes(_solid(RED)),
                                  _meta("tiny_cnn/conv2d_2/feature_0007/gggg7777"))])

    def crash(source, target):
        raise OSError("disk full")

    with monkeypatch.context() as patched:
        patched.setattr(os, "replace", crash)
        with pytest.raises(OSError):
            gallery.rebuild(store)
    assert open(store.path("", "index.html"), encoding="utf-8").read() == before  # the old page, whole
    assert "gggg7777" in open(gallery.rebuild(store), encoding="utf-8").read()
    leftovers = [os.path.join(folder, name) for folder, _, names in os.walk(store.root) for name in names
                 if name.endswith(".tmp") or name.startswith(".index.html")]
    assert not leftovers


def test_rebuilds_on_one_host_take_turns_so_the_last_page_is_the_last_scan(store, monkeypatch):
    import fcntl

    real_scan, seen = gallery._scan, []

    def scan_while_another_tries_the_lock(scanned):
        with open(os.path.join(scanned.root, ".gallery.lock"), "a") as other:
            with pytest.raises(BlockingIOError):
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        seen.append(True)
        return real_scan(scanned)

    monkeypatch.setattr(gallery, "_scan", scan_while_another_tries_the_lock)
    gallery.rebuild(store)
    assert seen == [True]


def test_an_empty_or_missing_store_gets_a_page_and_try_rebuild_never_raises(tmp_path, monkeypatch):
    empty = ResultStore(tmp_path / "not-yet")
    assert "No complete results yet" in open(gallery.rebuild(empty), encoding="utf-8").read()
    monkeypatch.setattr(gallery, "_publish", lambda *args: (_ for _ in ()).throw(PermissionError("read-only")))
    assert gallery.try_rebuild(empty) is None


def test_the_page_shows_every_thumbnail_from_disk_in_chromium(store, tmp_path):
    """Each result is a different pure colour: a wrong image path shows no pixels of its colour."""
    browser = shutil.which("chromium")
    assert browser, "Debian's chromium is needed for this test: `make setup` installs it"
    page = gallery.rebuild(store)
    shot = tmp_path / "shot.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    "--hide-scrollbars", "--force-device-scale-factor=1", f"--user-data-dir={tmp_path / 'profile'}",
                    "--virtual-time-budget=3000", "--window-size=1400,2400", f"--screenshot={shot}",
                    Path(page).as_uri()], capture_output=True, timeout=90, check=False)
    assert shot.exists(), "chromium wrote no screenshot"
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert pixels[-50:].min() == pixels[-50:].max() == 250  # page background at the bottom: it all fit
    thumbnail = 172 * 172  # a result's thumbnail is 172 CSS px wide
    sheet = 3 * (344 * 48 / (3 * 48 + 2 * 4)) ** 2  # a sweep's: 344 px wide, three 48 px tiles and two gaps
    for colour, expected in ((RED, thumbnail), (GREEN, thumbnail), (BLUE, thumbnail), (YELLOW, sheet)):
        count = int((np.abs(pixels - colour).max(axis=2) <= 2).sum())
        assert count >= 0.9 * expected, f"{colour}: {count} pixels, a thumbnail that did not load?"
    assert "ffff6666" not in open(page, encoding="utf-8").read()


@pytest.fixture
def s3(monkeypatch):
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    for name, value in {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
                        "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    import s3fs

    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1)
            break
        except OSError as error:
            if getattr(error, "code", None) is not None:
                break
            assert time.monotonic() < deadline, "moto's S3 server did not start"
            time.sleep(0.05)
    s3fs.S3FileSystem.clear_instance_cache()  # an instance cached by another test points at another endpoint
    s3fs.S3FileSystem(skip_instance_cache=True).mkdir("gallery-results")
    yield
    s3fs.S3FileSystem.clear_instance_cache()
    server.terminate()
    server.wait()


def test_rebuild_on_s3_puts_one_html_object_at_the_root(s3):
    store = ResultStore("s3://gallery-results/runs")
    _fill(store)
    assert gallery.rebuild(store) == "s3://gallery-results/runs/index.html"
    page = store.read_bytes("", "index.html").decode()
    assert all(f'<img src="{key}/image.png"' in page for key in RESULTS) and "&lt;script&gt;" in page
    assert store.fs.info(store.path("", "index.html"))["ContentType"] == "text/html; charset=utf-8"


def test_rebuild_time_for_200_results(tmp_path):
    """Not a benchmark gate, a sanity bound: 200 results of 500 iterations each rebuild well under a second."""
    store = ResultStore(tmp_path / "results")
    png = images.png_bytes(_solid(RED, 8))
    for index in range(200):
        key = f"model_{index % 2}/conv2d_{index % 5}/feature_{index % 20:04d}/job{index:05d}"
        history = [float(step) for step in range(500)]
        store.write(key, {"image.png": png}, _meta(key, loss=history, grad_min=history, grad_max=history,
                                                   step_size=history, quality={"diversity": 0.5}))
    started = time.perf_counter()
    page = open(gallery.rebuild(store), encoding="utf-8").read()
    elapsed = time.perf_counter() - started
    assert page.count("<figure") == 200
    assert elapsed < 3.0, f"rebuild of 200 results took {elapsed:.2f} s"


@pytest.mark.parametrize("fmt, pil_format", [("webp", "WEBP"), ("gif", "GIF")])
def test_animation_has_one_frame_per_iteration_snapshot(fmt, pil_format):
    rng = np.random.default_rng(1)
    start = rng.random((24, 24, 3)) * 255
    frames = [128 + (start - 128) * (step + 1) / 6 + rng.normal(0, 2, start.shape) for step in range(6)]
    animation = Image.open(io.BytesIO(images.animation_bytes(frames, fmt=fmt, duration_ms=80)))
    assert animation.format == pil_format and animation.n_frames == len(frames) and animation.is_animated
    durations = []
    for frame in ImageSequence.Iterator(animation):
        frame.load()
        durations.append(frame.info["duration"])
    assert animation.size == (24, 24) and durations == [80] * len(frames) and animation.info["loop"] == 0


def test_animation_frames_are_each_min_max_normalised():
    nearly_grey = np.full((8, 8, 3), 128.0, np.float32)
    nearly_grey[0, 0] = 131.0  # within a few levels of 128: would look flat grey clipped
    animation = Image.open(io.BytesIO(images.animation_bytes([nearly_grey, nearly_grey[::-1].copy()], "webp")))
    first = np.asarray(animation.convert("RGB")).astype(int)
    assert first.max() - first.min() > 200


def test_animation_refuses_bad_input():
    with pytest.raises(ValueError, match="format"):
        images.animation_bytes([_solid(RED)], fmt="mp4")
    with pytest.raises(ValueError, match="at least one frame"):
        images.animation_bytes([])
    with pytest.raises(ValueError, match="one shape"):
        images.animation_bytes([_solid(RED, 8), _solid(RED, 9)])



def test_a_rebuild_reads_each_meta_once_and_forgets_what_left_the_store(store, monkeypatch):
    gallery.rebuild(store)
    read = []
    cat = store.fs.cat
    monkeypatch.setattr(store.fs, "cat", lambda paths, **options: read.append(list(paths)) or cat(paths, **options))
    key = "shapes_cnn/conv1/feature_0001/newjob000001"
    store.write(key, {"image.png": b"png"}, _meta(key))
    page = open(gallery.rebuild(store), encoding="utf-8").read()
    assert [[path.rsplit("/", 2)[-2] for path in paths] for paths in read] == [["newjob000001"]]  # only the new one
    assert "newjob000001" in page
    shutil.rmtree(store.path(key))
    assert "newjob000001" not in open(gallery.rebuild(store), encoding="utf-8").read()
