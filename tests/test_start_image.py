"""A job's start image (issue 14): the contract's refusals and ids."""
from __future__ import annotations

import jsonschema
import pytest

from featurevis.contract import JobError, normalize, normalize_sweep
from tests.test_objective_contract import CONV5, PLAIN_ID, SCHEMA, producer, uploaded  # noqa: F401 - fixtures

MISSING = "uploads/" + "0" * 64 + ".png"


def plain(producer, **fields):
    return normalize({**CONV5, "feature": 2, **fields}, models=producer.registry)


# The contract.

def test_a_start_image_changes_the_id_only_when_given_and_round_trips(producer, uploaded):
    assert plain(producer).job_id == plain(producer, start_image=None).job_id == PLAIN_ID
    assert "start_image" not in plain(producer).fields()
    started = plain(producer, start_image=uploaded)
    assert started.job_id != PLAIN_ID and started.start_image == uploaded
    assert started.fields()["start_image"] == uploaded
    assert normalize(started.fields(), models=producer.registry) == started
    assert started.key.rsplit("/", 1)[0] == plain(producer).key.rsplit("/", 1)[0]  # the same folder, another id


def test_a_set_and_a_sweep_start_every_image_from_the_one_picture(producer, uploaded):
    diverse = plain(producer, start_image=uploaded, method="robust", images=3)
    assert (diverse.images, diverse.start_image, diverse.seeds) == (3, uploaded, [1, 2, 3])
    swept = normalize_sweep({**CONV5, "features": [1, 2], "start_image": uploaded}, models=producer.registry)
    assert [spec.start_image for spec in swept] == [uploaded, uploaded]


@pytest.mark.parametrize("value, message", [
    ("../etc/passwd", "must be null or an uploaded image's key uploads/<sha256>.<png|jpg|npy>"),
    ("uploads/" + "0" * 64 + ".gif", "must be null or an uploaded image's key"),
    ("uploads/" + "0" * 63 + ".png", "must be null or an uploaded image's key"),
    (5, "must be null or an uploaded image's key"),
    (["uploads/x.png"], "must be null or an uploaded image's key"),
    (True, "must be null or an uploaded image's key"),
    (MISSING, "start image uploads/0000000000000000... is not in the store; upload it first "
              "(`python -m producer enqueue --start-image FILE`, or Producer.upload_image)"),
])
def test_a_bad_start_image_gets_one_line_naming_it(producer, value, message):
    with pytest.raises(JobError) as caught:
        plain(producer, start_image=value)
    assert str(caught.value).startswith(f"start_image: {message}")
    assert "\n" not in str(caught.value) and len(str(caught.value)) < 300


@pytest.mark.parametrize("value, valid", [(None, True), ("uploaded", True), ("../etc/passwd", False), (5, False)])
def test_the_schema_and_the_contract_agree_on_start_image(producer, uploaded, value, valid):
    job = {**CONV5, "feature": 2, "start_image": uploaded if value == "uploaded" else value}
    assert jsonschema.Draft202012Validator(SCHEMA).is_valid(job) is valid
    try:
        normalize(job, models=producer.registry)
        accepted = True
    except JobError:
        accepted = False
    assert accepted is valid
