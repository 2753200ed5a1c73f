"""Producer -> Redis -> prefork worker -> store, with real processes."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest
import redis
from PIL import Image

from devstack.redis_server import free_port
from featurevis import registry
from featurevis.contract import DEFAULT_DIVERSITY, normalize
from featurevis.optvis import objectives, render
from tests.conftest import UNTRAINED

META_FIELDS = {"job_id", "spec", "model_sha256", "layer_name", "tutorial_layer_name", "conv_id", "feature", "iterations", "seed", "method", "loss",
               "final_loss", "predictions", "timings", "worker", "versions", "created_at", "grad_min",
               "grad_max", "step_size", "untrained"}


def _meta(stack, key):
    return json.loads((stack.results_dir / key / "meta.json").read_text())


def test_enqueue_and_wait_through_the_cli(stack, run_cli):
    done = run_cli("enqueue", "--model", UNTRAINED, "--conv-id", "5", "--feature", "2",
                   "--iterations", "10", "--seed", "1", "--wait")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    job_id, picture = lines[0], lines[-1]
    spec = normalize({"model": UNTRAINED, "conv_id": 5, "feature": 2, "iterations": 10, "seed": 1})
    assert job_id == spec.job_id
    assert picture == str(stack.results_dir / spec.key / "image.png")
    assert Image.open(picture).size == (299, 299)
    raw = np.load(stack.results_dir / spec.key / "image.npy")
    assert raw.dtype == np.float32 and raw.shape == (299, 299, 3) and 0 <= raw.min() <= raw.max() <= 255
    meta = _meta(stack, spec.key)
    assert META_FIELDS <= set(meta)
    assert (meta["layer_name"], meta["conv_id"], meta["untrained"]) == ("conv2d_5", 5, True)
    assert meta["tutorial_layer_name"] == "mixed/conv/Conv2D" and meta["layer_type"] == "Conv2D"
    assert meta["model_sha256"] == spec.model_sha256 == meta["spec"]["model_sha256"]
    assert len(meta["loss"]) == 10 and meta["final_loss"] == meta["loss"][-1]
    assert [p["iteration"] for p in meta["predictions"]] == [10]
    assert set(meta["timings"]) >= {"model_load_s", "compile_s", "optimize_s"}
    assert meta["worker"]["device"] == "CPU" and meta["worker"]["hostname"].startswith("w1@")
    assert set(meta["versions"]) == {"featurevis", "tensorflow", "keras", "celery"}
    assert "100%" in done.stderr  # the progress bar ran to the end


def test_progress_is_visible_while_a_job_runs(producer_api):
    job = producer_api.enqueue({"model": UNTRAINED, "conv_id": 5, "feature": 9, "iterations": 40, "seed": 3})
    seen = []
    result = job.wait(on_progress=seen.append, timeout=240)
    assert seen, "no PROGRESS state was observed"
    assert seen[-1].job_ids == [job.id] and seen[-1].iterations == 40
    assert 1 <= seen[0].iteration <= seen[-1].iteration <= 40 and seen[-1].grad_min <= seen[-1].grad_max
    assert result.job_id == job.id and result.cached is False


def test_a_second_job_on_the_same_layer_builds_nothing(stack, producer_api):
    # mixed7 is a Concatenate, not a Conv2D. Whether its first job here compiles depends on what ran before
    # (another test, or an eviction from the step LRU), so that is read from the factory's count against a job
    # just before it, never assumed; the second job must build nothing either way.
    jobs = [{"model": UNTRAINED, "conv_id": 5, "feature": 0, "iterations": 1, "seed": 61_551},
            {"model": UNTRAINED, "layer": "mixed7", "feature": 1, "iterations": 2, "seed": 61_551},
            {"model": UNTRAINED, "layer": "mixed7", "feature": 2, "iterations": 2, "seed": 61_551}]
    results = [producer_api.enqueue(job).wait(timeout=240) for job in jobs]
    assert [result.cached for result in results] == [False] * 3  # a stored result would carry an old count
    earlier, before, after = (_meta(stack, result.key) for result in results)
    assert earlier["worker"]["pid"] == before["worker"]["pid"] == after["worker"]["pid"]  # one factory's counts
    built = before["factory"]["steps_built"] - earlier["factory"]["steps_built"]
    assert built in (0, 1) and before["layer_type"] == "Concatenate"
    assert (before["timings"]["compile_s"] > 0) == (built == 1)
    assert after["timings"]["compile_s"] == 0 and after["timings"]["model_load_s"] == 0
    assert after["factory"]["steps_built"] == before["factory"]["steps_built"]
    assert after["factory"]["models_built"] == before["factory"]["models_built"]
    assert after["factory"]["step_traces"] == 1


def test_the_same_job_twice_is_one_result(stack, producer_api):
    fields = {"model": UNTRAINED, "conv_id": 3, "feature": 4, "iterations": 3, "seed": 8}
    first = producer_api.enqueue(fields).wait(timeout=240)
    created = _meta(stack, first.key)["created_at"]
    second = producer_api.enqueue(fields).wait(timeout=240)
    assert (first.cached, second.cached) == (False, True)
    assert second.key == first.key and second.final_loss == first.final_loss
    assert _meta(stack, first.key)["created_at"] == created


def test_the_worker_computes_what_the_bare_math_computes(stack, producer_api, factory):
    fields = {"model": UNTRAINED, "conv_id": 5, "feature": 6, "iterations": 5, "seed": 42}
    result = producer_api.enqueue(fields).wait(timeout=240)
    weights = objectives.weights_matrix([{6: 1.0}], 64)
    local = render.run(factory.acquire(UNTRAINED, 5).step, [42], weights, 5).images
    np.testing.assert_allclose(np.load(stack.results_dir / result.array), local[0], atol=0.05)


def test_sweep_is_one_batched_job_with_a_contact_sheet(stack, run_cli):
    done = run_cli("sweep", "--model", UNTRAINED, "--conv-id", "5", "--features", "1-6",
                   "--iterations", "3", "--seed", "77", "--wait")
    assert done.returncode == 0, done.stderr
    sheet = done.stdout.strip().splitlines()[-1]
    assert sheet.endswith("contact_sheet.png")
    assert Image.open(sheet).size == (3 * 299 + 2 * 4, 2 * 299 + 4)
    for feature in range(1, 7):
        spec = normalize({"model": UNTRAINED, "conv_id": 5, "feature": feature, "iterations": 3, "seed": 77})
        assert _meta(stack, spec.key)["timings"]["batch_size"] == 6


def test_class_logit_job(stack, producer_api):
    result = producer_api.enqueue({"model": UNTRAINED, "feature": 278, "iterations": 2, "seed": 4}).wait(timeout=240)
    meta = _meta(stack, result.key)
    assert result.key.startswith(f"{UNTRAINED}/logits/feature_0278/")
    assert meta["conv_id"] is None and (meta["layer_name"], meta["feature"]) == ("logits", 278)
    last = meta["predictions"][-1]
    assert last["iteration"] == 2 and 0 < last["score"] <= 1
    assert last["class_name"] == registry.builtin_info(UNTRAINED).class_names[last["class_id"]]  # the id's own name


def test_invalid_input_is_refused_before_anything_is_queued(stack, run_cli):
    broker = redis.Redis.from_url(stack.redis_url)
    keys_before = set(broker.keys("celery-task-meta-*"))
    done = run_cli("enqueue", "--model", UNTRAINED, "--conv-id", "94", "--feature", "0")
    assert done.returncode == 2
    assert done.stderr.strip() == "error: conv_id: must be in 0..93 for inception_v3_untrained (or null for the class logits), got 94"
    assert done.stdout == ""
    assert broker.llen("celery") == 0 and set(broker.keys("celery-task-meta-*")) == keys_before
    # Validation does not even need Redis.
    offline = run_cli("enqueue", "--iterations", "0", redis_url=f"redis://127.0.0.1:{free_port()}/0")
    assert offline.returncode == 2 and offline.stderr.strip() == "error: iterations: must be an integer in 1..10000, got 0"


def test_unreachable_redis_fails_fast_with_one_line(run_cli):
    started = time.monotonic()
    done = run_cli("enqueue", "--model", UNTRAINED, "--conv-id", "5", redis_url=f"redis://127.0.0.1:{free_port()}/0")
    assert done.returncode == 3
    assert time.monotonic() - started < 15  # includes interpreter start-up; the connect itself is bounded at 3 s
    assert len(done.stderr.strip().splitlines()) == 1 and "cannot reach Redis" in done.stderr


def test_missing_weights_fail_the_job_with_one_line_naming_the_file(stack, run_cli):
    done = run_cli("enqueue", "--model", "inception_v3", "--conv-id", "5", "--iterations", "1", "--wait")
    assert done.returncode == 1
    error = done.stderr.strip().splitlines()[-1]
    assert error.startswith("error: job failed: model inception_v3: weights file "
                            "inception_v3_weights_tf_dim_ordering_tf_kernels.h5 is not in ")
    assert str(stack.env()["KERAS_HOME"]) in error


def test_a_bad_job_sent_by_name_fails_with_the_contract_error_and_the_worker_carries_on(producer_api):
    bad = producer_api.app.send_task("featurevis.optimize", kwargs={"model": UNTRAINED, "conv_id": 999})
    with pytest.raises(Exception) as caught:
        bad.get(timeout=120)
    assert str(caught.value) == "conv_id: must be in 0..93 for inception_v3_untrained (or null for the class logits), got 999"
    good = producer_api.enqueue({"model": UNTRAINED, "conv_id": 5, "feature": 0, "iterations": 1, "seed": 1})
    assert good.wait(timeout=240).job_id == good.id


def test_status_command(producer_api, run_cli):
    job = producer_api.enqueue({"model": UNTRAINED, "conv_id": 2, "feature": 0, "iterations": 1, "seed": 2})
    job.wait(timeout=240)
    done = run_cli("status", job.id)
    assert done.returncode == 0
    status = json.loads(done.stdout)
    assert status["state"] == "SUCCESS" and status["info"]["job_id"] == job.id


def test_the_worker_parent_never_loads_tensorflow(stack):
    # Run after jobs (including a failed one): the parent that forks pool children must stay TF-free.
    maps = open(f"/proc/{stack.processes['w1'].pid}/maps").read()
    assert "tensorflow" not in maps


def test_producer_never_imports_tensorflow(stack):
    import subprocess
    import sys

    code = ("import sys, producer; "
            f"job = producer.Producer({stack.redis_url!r}).enqueue({{'model': {UNTRAINED!r}, 'conv_id': 1, 'iterations': 1}}); "
            "job.wait(timeout=240); "
            "loaded = [m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras')]; "
            "print(loaded); sys.exit(1 if loaded else 0)")
    done = subprocess.run([sys.executable, "-c", code], env=stack.env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


def test_robust_composed_and_animated_jobs_run_on_the_same_worker_path(stack, producer_api):
    robust = producer_api.enqueue({"model": UNTRAINED, "conv_id": 8, "method": "robust", "iterations": 6, "seed": 1,
                                   "targets": [{"feature": 2}, {"feature": 7, "weight": -0.5}], "animate": True})
    result = robust.wait(timeout=240)
    assert result.key.startswith(f"{UNTRAINED}/conv2d_8/features_0002_0007/")
    meta = _meta(stack, result.key)
    assert meta["method"] == "robust" and meta["spec"]["targets"] == [[2, 1.0], [7, -0.5]]
    assert meta["loss"][-1] > meta["loss"][0]
    assert {"objective", "robustness", "specificity_z"} <= set(meta["quality"])
    animation = Image.open(stack.results_dir / result.key / "animation.webp")
    assert animation.n_frames >= 2
    plain = producer_api.enqueue({"model": UNTRAINED, "feature": 3, "iterations": 2, "seed": 1}).wait(timeout=240)
    quality = _meta(stack, plain.key)["quality"]
    assert {"robustness", "target_probability", "target_rank"} <= set(quality) and quality["target_rank"] >= 1


def test_a_diverse_set_comes_out_less_alike_than_the_same_set_without_diversity(stack, producer_api, run_cli):
    """lucid's diversity term, as a job field: `images` pictures of one feature, pushed apart in style."""
    job = {"model": "shapes_cnn", "conv_id": 2, "feature": 5, "method": "robust", "iterations": 60, "seed": 3,
           "images": 3}
    done = run_cli("enqueue", "--model", "shapes_cnn", "--conv-id", "2", "--feature", "5", "--method", "robust",
                   "--iterations", "60", "--seed", "3", "--images", "3", "--wait")
    assert done.returncode == 0, done.stderr
    spec = normalize(job)
    assert done.stdout.split() == [spec.job_id, str(stack.results_dir / spec.key / "image.png")]
    diverse = producer_api.enqueue(job).wait(timeout=240)  # the same job: the stored result comes back
    independent = producer_api.enqueue({**job, "diversity": 0.0}).wait(timeout=240)
    meta = _meta(stack, spec.key)
    assert meta["set"]["diversity"] == DEFAULT_DIVERSITY and [m["seed"] for m in meta["set"]["members"]] == [3, 4, 5]
    assert meta["set"]["gram_similarity"] < _meta(stack, independent.key)["set"]["gram_similarity"]
    assert diverse.cached and diverse.set == [f"{spec.key}/image_{index}.png" for index in range(3)]
    folder = stack.results_dir / spec.key
    assert np.load(folder / "image.npy").shape == (3, 64, 64, 3)
    assert [Image.open(folder / f"image_{index}.png").size for index in range(3)] == [(64, 64)] * 3
    assert Image.open(folder / "image.png").size == (3 * 64 + 2 * 4, 64)  # the set side by side
    assert meta["quality"] == meta["set"]["members"][0]["quality"]
    refused = run_cli("enqueue", "--model", "shapes_cnn", "--images", "2")
    assert refused.returncode == 2 and refused.stderr.strip() == \
        "error: images: more than 1 needs method robust (the diversity term is in its step), got method gradient_ascent"


def test_the_gallery_lists_finished_results(stack, producer_api):
    untrained = producer_api.enqueue({"model": UNTRAINED, "conv_id": 6, "feature": 1, "iterations": 1, "seed": 1}).wait(timeout=240)
    trained = producer_api.enqueue({"model": "shapes_cnn", "conv_id": 1, "feature": 1, "iterations": 1, "seed": 1}).wait(timeout=240)
    page = (stack.results_dir / "index.html").read_text()  # rebuilt before the answer: no waiting
    assert f'{untrained.key}/image.png' in page and f'{trained.key}/image.png' in page

    def card(result):
        image = page.index(f'{result.key}/image.png')
        return page[page.rindex("<figure", 0, image):page.index("</figure>", image)]

    badge = '<span class="untrained">untrained</span>'  # the card's badge, not the stylesheet's .untrained rule
    assert badge in card(untrained)
    assert badge not in card(trained)
