"""The model atlas: a whole shapes_cnn on two workers, a worker's pool child killed mid-atlas, resubmission,
the pages in Chromium; and the TF-free parts (request, ranking, incremental pages, datasets) alone.

Iterations are few and batches large: shapes_cnn's 176 Conv2D units take seconds, not minutes.
"""
from __future__ import annotations

import gc
import json
import re
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import redis
from PIL import Image

from featurevis import atlas, atlas_pages, contract, datasets, examples, registry
from featurevis.contract import JobError
from devstack.stack import REPO_ROOT, LocalStack, wait_until
from featurevis.store import ResultStore
from producer import JobFailed, Producer
from producer.atlas import AtlasJob
from tests.events import EventLog

SHAPES_UNITS = {"conv1": 16, "conv2": 32, "conv3": 64, "conv4": 64}
KILL_ITERATIONS = 100  # a batch lasts seconds: long enough to be killed in the middle
FULL = ["--model", "shapes_cnn", "--iterations", "4", "--seed", "11", "--batch", "32"]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    base = tmp_path_factory.mktemp("atlas")
    with LocalStack(results_dir=base / "results", workers=2, preload="shapes_cnn", log_dir=base / "logs",
                    redis_dir=base / "redis") as running:
        running.events = EventLog(running.redis_url)
        yield running
        gc.collect()  # producers' results unsubscribe when collected: while Redis is still there to answer


def _cli(fleet, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "producer", *args], cwd=REPO_ROOT, env=fleet.env(),
                          capture_output=True, text=True, timeout=300)


# An atlas batch's result as the task-succeeded event carries it (its repr).
_BATCH = re.compile(r"'atlas_id': '(?P<atlas_id>[0-9a-f]{24})'.*'computed': (?P<computed>\d+)")


def _batch_results(fleet, ids=None) -> dict[str, list[dict]]:
    """Each succeeded atlas batch's results by task id (a task succeeding twice shows two)."""
    found: dict[str, list[dict]] = {}
    for event in list(fleet.events.events):
        match = _BATCH.search(str(event.get("result"))) if event.get("type") == "task-succeeded" else None
        if match and (ids is None or match["atlas_id"] in ids):
            found.setdefault(event["uuid"], []).append({"atlas_id": match["atlas_id"],
                                                        "computed": int(match["computed"])})
    return found


def _check_every_unit_once(fleet, atlas_id: str, expected_batches: int) -> dict:
    """Every unit recorded once, its meta.json there with the dataset comparison, every batch succeeded once."""
    store = ResultStore(fleet.results_dir)
    progress = atlas_pages.read_progress(store, atlas_id)
    assert progress.state == "done" and progress.done == progress.total == 176
    request = atlas.normalize(progress.request, draw_seed=False)
    for entry, layer in zip(progress.layers, request.layers):
        assert entry.done == list(range(SHAPES_UNITS[entry.layer]))  # each unit once, none missing
        for spec in request.specs(layer):
            meta = store.read_meta(spec.key)
            assert meta is not None and meta["job_id"] == spec.job_id
            quality = meta["quality"]
            assert ("activation_vs_dataset" in quality) == (quality["dataset_best"] > 0)
    # A task's event leaves the worker just after its result is stored: let the last ones arrive.
    wait_until(lambda: len(_batch_results(fleet, {atlas_id})) >= expected_batches, 30, "batch events missing")
    results = _batch_results(fleet, {atlas_id})
    assert len(results) == expected_batches and all(len(runs) == 1 for runs in results.values()), results
    assert sum(run["computed"] for runs in results.values() for run in runs) <= 176
    return progress


@pytest.fixture(scope="module")
def finished(fleet):
    done = _cli(fleet, "atlas", *FULL, "--wait")
    assert done.returncode == 0, done.stderr
    return done


def test_a_full_shapes_cnn_atlas_on_two_workers_computes_every_unit_once(fleet, finished):
    lines = finished.stdout.split()
    wanted = atlas.normalize({"model": "shapes_cnn", "iterations": 4, "seed": 11, "batch": 32})
    assert lines[0] == wanted.atlas_id and wanted.total == 176
    assert lines[-1] == str(fleet.results_dir / "atlases" / wanted.atlas_id / "index.html") and Path(lines[-1]).exists()
    assert "176/176" in finished.stderr and "queued 176 of 176 units" in finished.stderr  # one bar over all units
    assert "Traceback" not in finished.stderr and "Exception ignored" not in finished.stderr
    _check_every_unit_once(fleet, wanted.atlas_id, expected_batches=6)  # 16 + 32 + 2x32 + 2x32 units
    results = _batch_results(fleet, {wanted.atlas_id})
    assert sum(run["computed"] for runs in results.values() for run in runs) == 176  # nothing computed twice
    assert set(fleet.events.hostnames("task-succeeded")) >= {"w1", "w2"}  # the fleet shared it
    progressed = {e["uuid"] for e in list(fleet.events.events) if e.get("type") == "task-progress"}
    assert set(results) <= progressed  # Flower saw each batch's progress, as it sees a job's
    store = ResultStore(fleet.results_dir)
    for layer in SHAPES_UNITS:  # ranked once per layer, beside the model
        info = registry.builtin_info("shapes_cnn")
        ranked = examples.read(store, info, datasets.drawn("shapes"), layer)
        assert ranked["images"] == datasets.DRAWN_SIZE and len(ranked["top"]["indices"]) == SHAPES_UNITS[layer]
    status = json.loads(_cli(fleet, "status", wanted.atlas_id).stdout)
    assert status["state"] == "done" and status["info"]["done"] == 176


def test_resubmitting_a_finished_atlas_queues_nothing(fleet, finished):
    sent_before = fleet.events.count("task-sent")
    again = _cli(fleet, "atlas", *FULL)
    assert again.returncode == 0 and again.stdout.split() == finished.stdout.split()[:1]
    assert "atlas complete; nothing queued" in again.stderr
    assert redis.Redis.from_url(fleet.redis_url).llen("celery") == 0
    assert fleet.events.count("task-sent") == sent_before
    # Fewer units of the same layers is another atlas, but its units are the same jobs: nothing to compute
    # there; the class logits are new units, ranked by their logit over the dataset.
    smaller = Producer(fleet.redis_url, fleet.results_dir).atlas(
        {"model": "shapes_cnn", "iterations": 4, "seed": 11, "units": 3, "layers": ["conv1", 3, "logits"]})
    assert smaller.id != again.stdout.split()[0] and smaller.queued == 9
    assert smaller.wait(timeout=120).done == 9
    wait_until(lambda: len(_batch_results(fleet, {smaller.id})) == 3, 30, "batch events missing")
    results = _batch_results(fleet, {smaller.id})
    assert sorted(run["computed"] for runs in results.values() for run in runs) == [0, 0, 3]
    circle = (fleet.results_dir / smaller.atlas.key / "logits" / "unit_0000.html").read_text()
    assert circle.count('class="example"') == 18 and "activation_vs_dataset" in circle


def test_an_atlas_whose_chord_was_lost_waits_for_nothing_until_forced(fleet):
    """Redis lost the chord (flushed, or restarted without its data): progress.json still says running and no
    callback will come. A plain resubmission cannot tell it from a run in flight and queues nothing; --force
    queues what is missing, and the atlas completes under the same id."""
    fields = {"model": "shapes_cnn", "iterations": 3, "seed": 77, "units": 2, "layers": ["conv2"]}
    store = ResultStore(fleet.results_dir)
    lost = atlas.normalize(fields)
    assert atlas_pages.begin(store, lost, lambda: False, run="a run whose chord was lost") == {"conv2": [0, 1]}
    producer = Producer(fleet.redis_url, fleet.results_dir)
    assert producer.atlas(fields).queued == 0 and atlas_pages.read_progress(store, lost.atlas_id).state == "running"
    forced = _cli(fleet, "atlas", "--model", "shapes_cnn", "--iterations", "3", "--seed", "77", "--units", "2",
                  "--layers", "conv2", "--force", "--wait")
    assert forced.returncode == 0, forced.stderr
    assert forced.stdout.split()[0] == lost.atlas_id and "queued 2 of 2 units" in forced.stderr
    progress = atlas_pages.read_progress(store, lost.atlas_id)
    assert progress.state == "done" and progress.layers[0].done == [0, 1]


def test_atlas_tasks_sent_by_name_refuse_bad_fields_in_one_line(fleet):
    app = Producer(fleet.redis_url, fleet.results_dir).app
    for task, kwargs, message in (
            ("featurevis.atlas", {"model": "shapes_cnn", "layers": [9]},
             "conv_id: must be in 0..3 for shapes_cnn (or null for the class logits), got 9"),
            ("featurevis.atlas_batch", {"atlas_id": "0" * 24, "layer": "conv1", "features": [0],
                                        "request": {"model": "shapes_cnn", "seed": 1}},
             "atlas_id: \"000000000000000000000000\" is not the id of this request"),
            ("featurevis.atlas_finish", {"atlas_id": "../../etc"}, "atlas_id: must be an atlas id, 24 hex digits")):
        with pytest.raises(Exception) as caught:
            app.send_task(task, kwargs=kwargs).get(timeout=120)
        assert str(caught.value).startswith(message) and "\n" not in str(caught.value), str(caught.value)
    # A start the worker refuses (here a request no producer would send) ends the wait, in one line.
    wanted = atlas.normalize({"model": "shapes_cnn", "seed": 5, "units": 1})
    refused = app.send_task("featurevis.atlas", kwargs={**wanted.request(), "layers": [9]})
    job = AtlasJob(wanted.atlas_id, wanted, 4, ResultStore(fleet.results_dir), app.AsyncResult(wanted.atlas_id), refused)
    with pytest.raises(JobFailed, match=r"^conv_id: must be in 0\.\.3 for shapes_cnn"):
        job.wait(timeout=60)


def test_killing_a_pool_child_mid_atlas_still_completes_every_unit_once(fleet):
    producer = Producer(fleet.redis_url, fleet.results_dir)
    seen = len(fleet.events.events)
    job = producer.atlas({"model": "shapes_cnn", "iterations": KILL_ITERATIONS, "seed": 12, "batch": 32})
    assert job.queued == 176

    def early_progress() -> list[dict]:  # a batch well before its last iteration: killing it loses work
        return [e for e in list(fleet.events.events)[seen:] if e.get("type") == "task-progress"
                and e["progress"]["iteration"] <= KILL_ITERATIONS // 3]

    wait_until(early_progress, 120, "no atlas batch reported early progress")
    victim = early_progress()[0]
    node = victim["hostname"].split("@")[0]
    [child] = [int(pid) for pid in Path(f"/proc/{fleet.processes[node].pid}/task/{fleet.processes[node].pid}/children")
               .read_text().split()]
    os.kill(child, signal.SIGKILL)
    job.wait(timeout=300)
    progress = _check_every_unit_once(fleet, job.id, expected_batches=6)
    assert victim["uuid"] in _batch_results(fleet, {job.id})  # the killed batch was delivered again and finished
    assert fleet.events.count("task-received")[victim["uuid"]] == 2
    assert progress.done == 176


def test_the_pages_show_every_image_in_chromium(fleet, finished, tmp_path):
    """No broken image on the atlas, a layer and a unit page: every <img> loaded with a size, lazy ones too."""
    root = fleet.results_dir / "atlases" / finished.stdout.split()[0]
    for page, least in ((root / "index.html", 0), (root / "conv3" / "index.html", 64 * 4),
                        (root / "conv3" / "unit_0005.html", 1 + 18)):
        verdict = _images_in_chromium(page, tmp_path)
        assert verdict["broken"] == [] and verdict["images"] >= least, (page, verdict)
    layer = (root / "conv3" / "index.html").read_text()
    assert layer.count('class="unit"') == 64 and "unit_0063.html" in layer
    unit = (root / "conv3" / "unit_0005.html").read_text()
    assert "meta.json" in unit and "image.npy" in unit and "activation_vs_dataset" in unit
    assert "<script" not in unit + layer + (root / "index.html").read_text()


_CHECK = """<script>
addEventListener('load', () => {
  const images = [...document.images];
  images.forEach(image => { image.loading = 'eager'; });
  Promise.all(images.map(image => image.complete ? null : new Promise(done => {
    image.addEventListener('load', done); image.addEventListener('error', done); }))).then(() => {
    const broken = images.filter(image => !image.naturalWidth).map(image => image.getAttribute('src'));
    document.body.insertAdjacentHTML('beforeend', '<pre id="verdict">' +
      JSON.stringify({images: images.length, broken: broken}) + '</pre>');
  });
});
</script>"""


def _images_in_chromium(page: Path, tmp_path: Path) -> dict:
    """Open a copy of the page with a checking script added, beside it (so its relative links resolve)."""
    browser = shutil.which("chromium")
    assert browser, "Debian's chromium is needed for this test: `make setup` installs it"
    checked = page.with_name(f".check-{page.name}")
    checked.write_text(page.read_text().replace("</body>", _CHECK + "</body>"))
    try:
        dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                              "--disable-background-networking", "--disable-component-update", "--disable-sync",
                              f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000",
                              "--dump-dom", checked.as_uri()], capture_output=True, text=True, timeout=90).stdout
    finally:
        checked.unlink()
    assert '<pre id="verdict">{' in dom, dom[-2000:]  # the script's own text has the tag too, without the {
    return json.loads("{" + dom.split('<pre id="verdict">{')[1].split("</pre>")[0])


# The TF-free parts, alone.

def test_an_atlas_request_normalizes_to_one_id_and_bad_fields_get_one_line():
    first = atlas.normalize({"model": "shapes_cnn", "seed": 1, "layers": ["conv2", 0], "units": 5})
    assert [(layer.layer, layer.conv_id, layer.features) for layer in first.layers] == \
        [("conv2", 1, tuple(range(5))), ("conv1", 0, tuple(range(5)))]
    assert atlas.normalize({**first.request(), "batch": 7}, draw_seed=False).atlas_id == first.atlas_id
    forced = atlas.normalize({**first.request(), "force": True}, draw_seed=False)
    assert forced.atlas_id == first.atlas_id and forced.request()["force"] is True and "force" not in first.request()
    assert atlas.normalize({**first.request(), "iterations": 31}).atlas_id != first.atlas_id
    spec = first.specs(first.layers[0], [3])[0]
    assert spec.job_id == contract.normalize({"model": "shapes_cnn", "conv_id": 1, "feature": 3, "seed": 1}).job_id
    assert [task["features"] for task in first.batches({"conv2": [0, 1, 2, 3, 4]})] == [[0, 1, 2, 3, 4]]
    assert len(atlas.normalize({"model": "shapes_cnn", "seed": 1, "batch": 2}).batches(
        {"conv1": list(range(16))})) == 8
    for fields, message in (
            ({"units": 0}, "units: must be null (every unit) or an integer >= 1: the first that many units of each "
                           "layer, got 0"),
            ({"batch": 257}, "batch: must be an integer in 1..256: units of one layer per task, got 257"),
            ({"force": "yes"}, f"force: must be {atlas.FIELD_RANGES['force']}, got \"yes\""),
            ({"layers": [7]}, "conv_id: must be in 0..3 for shapes_cnn (or null for the class logits), got 7"),
            ({"layers": ["nope"]}, "layer: unknown layer"),
            ({"layers": ["conv1", 0]}, "layers: names a layer twice"),
            ({"feature": 1}, "feature: unknown field; valid fields are model, model_sha256, layers, units"),
            ({"iterations": "5"}, "iterations: must be an integer in 1..10000, got \"5\"")):
        with pytest.raises(JobError) as caught:
            atlas.normalize({"model": "shapes_cnn", **fields})
        assert str(caught.value).startswith(message) and "\n" not in str(caught.value)


def test_the_checked_in_schema_of_featurevis_atlas_equals_the_request_and_checks_it():
    import jsonschema

    schema = json.loads((REPO_ROOT / "schema" / "featurevis.atlas.schema.json").read_text())
    assert schema == atlas.json_schema(), "run scripts/write_schemas.py"
    validator = jsonschema.Draft202012Validator(schema)
    assert validator.is_valid({"model": "shapes_cnn", "layers": ["conv1", 3], "units": 4, "seed": 1})
    for bad in ({"layers": "some"}, {"units": 0}, {"batch": 257}, {"iterations": "5"}, {"feature": 1}):
        assert not validator.is_valid(bad), bad


def test_the_bad_atlas_is_refused_by_the_cli_before_anything_is_queued(tmp_path):
    env = {**os.environ, "RESULTS_DIR": str(tmp_path), "REDIS_URL": "redis://127.0.0.1:1/0"}
    done = subprocess.run([sys.executable, "-m", "producer", "atlas", "--model", "shapes_cnn", "--layers", "conv1,9"],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip() == "error: conv_id: must be in 0..3 for shapes_cnn (or null for the class logits), got 9"


def test_streaming_top_k_is_the_full_sort_in_bounded_memory():
    values = np.random.default_rng(0).normal(size=(1000, 7)).astype(np.float32)
    values[10:20, 0] = values[5, 0]  # ties: the earlier image first
    ranked = examples.rank(lambda batch: batch[:, 0, 0, :], values[:, None, None, :], k=9, batch=64)
    for unit in range(7):
        assert ranked["top"]["indices"][unit] == np.argsort(-values[:, unit], kind="stable")[:9].tolist()
        assert ranked["bottom"]["indices"][unit] == np.argsort(values[:, unit], kind="stable")[:9].tolist()
        np.testing.assert_allclose(ranked["bottom"]["values"][unit], np.sort(values[:, unit])[:9])
    top = examples.StreamingTopK(7, 9)
    for first in range(0, 1000, 64):
        top.update(values[first:first + 64], first)
        assert top.values.shape[0] <= 9  # never more than k rows kept between batches


def test_a_batch_rewrites_only_its_layer_and_the_atlas_page(tmp_path, monkeypatch):
    store = ResultStore(tmp_path)
    request = atlas.normalize({"model": "shapes_cnn", "seed": 1, "units": 4, "iterations": 3})
    atlas_pages.publish_progress(store, atlas.initial_progress(request))
    for name in ("find", "glob", "walk", "du"):  # no scan of the store, ever
        monkeypatch.setattr(store.fs, name, lambda *a, **k: (_ for _ in ()).throw(AssertionError("scanned the store")))

    def records(layer, features):
        specs = request.specs(request.layer(layer), features)
        return [atlas_pages.unit_record(spec, {"spec": spec.model_dump(), "quality": {"objective": 1.5}}, None, None)
                for spec in specs]

    atlas_pages.publish(store, request, "conv2", records("conv2", [0, 1]))
    conv2 = Path(store.path(request.key, "conv2/index.html"))
    before = conv2.stat().st_mtime_ns
    progress = atlas_pages.publish(store, request, "conv3", records("conv3", [2, 3]))
    assert conv2.stat().st_mtime_ns == before and not Path(store.path(request.key, "conv1")).exists()
    assert progress.done == 4 and [entry.done for entry in progress.layers] == [[], [0, 1], [2, 3], []]
    progress = atlas_pages.publish(store, request, "conv3", records("conv3", [3, 0]))  # redelivered: once
    assert progress.layer("conv3").done == [0, 2, 3] and progress.done == 5
    unit_0 = Path(store.path(request.key, "conv3/unit_0000.html")).read_text()
    assert "unit_0002.html" in unit_0 and "no dataset" in unit_0  # its next neighbour, and no examples
    page = Path(store.path(request.key, "index.html")).read_text()
    assert "5 of 16 units" in page and 'href="conv3/index.html"' in page and 'href="conv1/index.html"' not in page


def test_a_dataset_is_stored_beside_a_model_from_a_folder_or_refused_in_one_line(tmp_path):
    store = ResultStore(tmp_path / "results")
    models = registry.Registry(store)
    info = models.get("inception_v3_untrained")
    folder = tmp_path / "pictures"
    folder.mkdir()
    for index, colour in enumerate(((255, 0, 0), (0, 255, 0))):
        Image.new("RGB", (40, 30), colour).save(folder / f"{index}.png")
    described = datasets.put(models, info, folder)
    assert described["size"] == 2
    stored = datasets.for_model(models, info)
    assert stored.images.shape == (2, 299, 299, 3) and stored.images[1, 5, 5].tolist() == [0, 255, 0]
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, images=np.zeros((3, 64, 64, 3), np.uint8))
    with pytest.raises(registry.ModelRefused) as caught:
        datasets.put(models, info, wrong)
    assert str(caught.value) == "dataset: must be images of the model's input, (n, 299, 299, 3) with n >= 1, got (3, 64, 64, 3)"
    shapes = datasets.for_model(models, registry.builtin_info("shapes_cnn"))
    assert shapes.images.shape == (datasets.DRAWN_SIZE, 64, 64, 3)
    assert np.array_equal(shapes.images, datasets.drawn("shapes").images)  # drawn, the same every time
    # The judge's is drawn by the generator it learnt from, not shapes_cnn's.
    judge = datasets.for_model(models, registry.builtin_info("shapes_judge"))
    assert judge.images.shape == shapes.images.shape and not np.array_equal(judge.images, shapes.images)
    assert judge.fingerprint == datasets.fingerprint(models, registry.builtin_info("shapes_judge")) != shapes.fingerprint


def test_a_run_queues_what_the_atlas_lacks_once_and_a_redelivered_start_still_queues(tmp_path):
    store = ResultStore(tmp_path)
    request = atlas.normalize({"model": "shapes_cnn", "seed": 1, "units": 2, "layers": ["conv1", "conv2"]})
    assert atlas_pages.begin(store, request, lambda: True, run="first") == {"conv1": [0, 1], "conv2": [0, 1]}
    assert atlas_pages.read_progress(store, request.atlas_id).state == "running"
    assert atlas_pages.begin(store, request, lambda: True, run="second") == {}  # the first run's batches are out
    assert atlas_pages.begin(store, request, lambda: True, run="first") != {}  # the first, delivered again
    progress = atlas_pages.read_progress(store, request.atlas_id)
    atlas_pages.publish_progress(store, atlas.record_done(progress, "conv1", [0, 1]))
    assert atlas_pages.begin(store, request, lambda: False, run="third") == {"conv2": [0, 1]}  # the first failed
    progress = atlas_pages.read_progress(store, request.atlas_id)
    atlas_pages.publish_progress(store, atlas.record_done(progress, "conv2", [1, 0]))
    assert atlas_pages.begin(store, request, lambda: False, run="fourth") == {}
    assert atlas_pages.read_progress(store, request.atlas_id).state == "done"


def test_models_dataset_stores_a_folder_beside_a_model_and_refuses_a_bad_one_in_one_line(tmp_path):
    env = {**os.environ, "RESULTS_DIR": str(tmp_path / "results")}
    folder = tmp_path / "pictures"
    folder.mkdir()
    for index in range(3):
        Image.new("RGB", (64, 64), (80 * index, 0, 0)).save(folder / f"{index}.jpg")
    (folder / "notes.txt").write_text("not a picture: skipped")
    stored = subprocess.run([sys.executable, "-m", "producer", "models", "dataset", "inception_v3_untrained",
                             str(folder)], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert stored.returncode == 0 and "dataset of 3 images stored beside inception_v3_untrained" in stored.stderr
    models = registry.Registry(ResultStore(tmp_path / "results"))
    assert datasets.for_model(models, models.get("inception_v3_untrained")).images.shape == (3, 299, 299, 3)
    refused = subprocess.run([sys.executable, "-m", "producer", "models", "dataset", "inception_v3_untrained",
                              str(tmp_path / "nothing.csv")], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                             timeout=60)
    assert refused.returncode == 2 and refused.stderr.strip().startswith(
        "error: dataset: must be a .npz file or a folder of PNG/JPEG files, got ")
