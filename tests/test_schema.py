"""The checked-in JSON Schemas of the tasks' keyword arguments stay equal to the contract."""
import json
from pathlib import Path

import jsonschema
import pytest

from featurevis import contract

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schema"
TASKS = ("featurevis.optimize", "featurevis.sweep")


@pytest.mark.parametrize("task", TASKS)
def test_checked_in_schema_equals_the_contract(task):
    checked_in = json.loads((SCHEMA_DIR / f"{task}.schema.json").read_text())
    assert checked_in == contract.json_schema(task), "run scripts/write_schemas.py"


def _validates(task, job):
    schema = json.loads((SCHEMA_DIR / f"{task}.schema.json").read_text())
    return jsonschema.Draft202012Validator(schema).is_valid(job)


@pytest.mark.parametrize("job,valid", [
    ({}, True),
    ({"model": "inception_v3", "conv_id": 5, "feature": 2, "iterations": 30, "seed": 1}, True),
    ({"layer": "logits", "feature": 278}, True),
    ({"conv_id": "5"}, False),
    ({"iterations": 0}, False),
    ({"iterations": True}, False),
    ({"seed": -1}, False),
    ({"model": "Res Net"}, False),  # registered names are [a-z0-9_-]{1,64}; which exist, the registry says
    ({"model_sha256": "xyz"}, False),
    ({"class": "kit fox"}, True),
    ({"class": True}, False),
    ({"method": "deepdream"}, False),
    ({"colour": "red"}, False),
    ({"conv_id": 5, "method": "robust", "targets": [{"feature": 1, "weight": 2.0}, {"feature": 3}]}, True),
    ({"targets": [{"feature": 1, "weight": "x"}]}, False),
    ({"animate": True}, True),
    ({"conv_id": 5, "method": "maco"}, True),
    ({"conv_id": 5, "method": "robust", "alpha": True}, True),
    ({"alpha": "yes"}, False),
])
def test_schema_and_contract_agree(job, valid):
    assert _validates("featurevis.optimize", job) is valid
    try:
        contract.normalize(job)
        accepted = True
    except contract.JobError:
        accepted = False
    assert accepted is valid


def test_sweep_schema_wants_a_list_of_distinct_features():
    assert _validates("featurevis.sweep", {"conv_id": 5, "features": [1, 2, 3]})
    assert not _validates("featurevis.sweep", {"conv_id": 5, "features": [1, 1]})
    assert not _validates("featurevis.sweep", {"conv_id": 5, "feature": 1})
