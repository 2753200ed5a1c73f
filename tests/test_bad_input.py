"""Fuzzed bad input: one-line errors, no worker dies, nothing written outside RESULTS_DIR, no pickle."""
from __future__ import annotations

import math
import re
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from featurevis import contract
from featurevis.contract import JobError
from featurevis.store import (
    ANIMATION,
    CONTACT_SHEET,
    CURRENT,
    DESCRIPTION,
    GALLERY,
    GALLERY_LOCK,
    IMAGE_NPY,
    IMAGE_PNG,
    META,
    MODEL_FILE,
    UPLOADS,
)
from tests.conftest import UNTRAINED

FIELDS = list(contract.FIELD_RANGES)
NASTY_NAMES = ["../../x", "..", "/etc/passwd", "a\x00b", "conv2d_8\n", "ünïcødé", "🙂", "x" * 100_000, "", " "]
values = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([math.nan, math.inf, -math.inf]),
    st.text(max_size=30), st.sampled_from(NASTY_NAMES),
    st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)
keys = st.one_of(st.sampled_from(FIELDS), st.sampled_from(["features", "__class__", "model\x00", "é"]),
                 st.text(max_size=10))
jobs = st.dictionaries(keys, values, max_size=6)


def _outcome(fields) -> str:
    """'ok' or the error line; anything else (a crash, a multi-line error) fails the test."""
    try:
        contract.normalize(fields)
        return "ok"
    except JobError as error:
        message = str(error)
        assert "\n" not in message and len(message) < 400, message
        assert message.split(": ", 1)[0] == error.field
        return message


@settings(max_examples=400, deadline=None)
@given(jobs)
def test_the_contract_answers_any_input_with_a_job_or_one_line(fields):
    _outcome(fields)


@settings(max_examples=200, deadline=None)
@given(jobs)
def test_the_producer_api_refuses_bad_input_before_touching_redis(fields):
    from producer import Producer

    offline = Producer("redis://127.0.0.1:1/0")  # nothing listens: only validation may answer
    expected = _outcome(fields)
    try:
        offline.enqueue(fields)
    except JobError as error:
        assert str(error) == expected
    except ConnectionError:
        assert expected == "ok"  # valid jobs get as far as the (absent) broker


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(jobs)
def test_bad_jobs_sent_by_name_fail_with_one_line_and_the_worker_survives(stack, producer_api, fields):
    expected = _outcome(fields)
    if expected == "ok":
        return
    outcome = producer_api.app.send_task("featurevis.optimize", kwargs=fields)
    with pytest.raises(Exception) as caught:
        outcome.get(timeout=60)
    assert str(caught.value) == expected
    assert stack.processes["w1"].poll() is None


def test_nothing_was_written_outside_the_results_dir(stack):
    # Runs after the fuzzing above (same session stack): every file is a job's artefact or a sweep's.
    root = stack.results_dir
    outside = [p for p in root.parent.rglob("*") if p.is_file() and root not in p.parents
               and not any(part in ("logs", "redis", "keras-home") for part in p.relative_to(root.parent).parts)]
    assert outside == []
    named = {META, IMAGE_PNG, IMAGE_NPY, ANIMATION, CONTACT_SHEET, GALLERY,
             GALLERY_LOCK, DESCRIPTION, CURRENT, MODEL_FILE}
    for path in root.rglob("*"):
        if path.is_file():  # results, the gallery, the registry: only names the layout gives
            assert path.name in named or re.fullmatch(r"image_\d+\.png", path.name) \
                or (path.parent.name == UPLOADS and re.fullmatch(r"[0-9a-f]{64}\.(png|jpg|npy)", path.name)), path


def test_an_oversized_payload_gets_a_short_error(producer_api, stack):
    outcome = producer_api.app.send_task("featurevis.optimize", kwargs={"model": "m" * 5_000_000})
    with pytest.raises(Exception) as caught:
        outcome.get(timeout=120)
    assert str(caught.value).startswith("model: must be a registered model's name") and len(str(caught.value)) < 200


def test_a_pickled_message_is_refused_unrun(stack, producer_api):
    # The producer side may pickle (it's the sender's choice); the worker accepts JSON only.
    marker = {"model": UNTRAINED, "conv_id": 0, "feature": 31, "iterations": 1, "seed": 99}
    sent = producer_api.app.send_task("featurevis.optimize", kwargs=marker, serializer="pickle")
    time.sleep(3)
    assert sent.state == "PENDING"  # never started, never finished
    assert not list(stack.results_dir.glob(f"{UNTRAINED}/conv2d/feature_0031/*"))
    log = (stack.log_dir / "w1.log").read_text(errors="replace")
    assert "Refusing to deserialize untrusted content of type pickle" in log
    assert stack.processes["w1"].poll() is None
    assert producer_api.enqueue({**marker, "feature": 30}).wait(timeout=120).cached is False
