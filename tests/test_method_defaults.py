"""Per-method defaults (contract.METHOD_DEFAULTS): what a job, a sweep or an atlas without `iterations` gets, and
that naming the iterations keeps the ids jobs had before defaults depended on the method. TensorFlow-free."""
import json
from pathlib import Path

import jsonschema
import pytest

from featurevis import atlas, celeryconfig, contract
from featurevis.contract import FASTEST_STEP_SECONDS, METHOD_DEFAULTS, METHODS, JobError, normalize
from producer import cli

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schema"
CHANNEL_JOB = {"model": "shapes_cnn", "conv_id": 2, "feature": 1, "seed": 3}
# Made by the contract before defaults depended on the method (commit 50a0d7d): naming the iterations keeps them.
# Since robust starts from the dataset by default (issue 28; its facets since 2026-12-08), the dataset's fingerprint is
# in a robust job's id where the job can start there; a job that asks for the noise start it had keeps its id.
IDS_BEFORE = {
    "robust class, 30 iterations": ({"model": "shapes_cnn", "class": "circle", "method": "robust", "iterations": 30,
                                     "seed": 3, "start": "noise"}, "986e810e05f9a50dc75df7cc"),
    "maco channel, 30 iterations": ({**CHANNEL_JOB, "method": "maco", "iterations": 30}, "96caddad4794cbe1124cf4f6"),
    "gradient_ascent class, no iterations": ({"model": "shapes_cnn", "class": "circle", "seed": 3},
                                             "92cc623a11416d1bdb410254"),
}
ATLAS_IDS_BEFORE = {
    "robust, 30 iterations": ({"model": "shapes_cnn", "units": 2, "method": "robust", "iterations": 30, "seed": 3},
                              "28c9565fab0c7edeff829c76"),
    "gradient_ascent, no iterations": ({"model": "shapes_cnn", "units": 2, "seed": 3}, "36aa81ae13de8f7d6c9739f8"),
}


def test_every_method_has_defaults_and_the_tutorials_keep_its_30_iterations_and_step_rule():
    assert set(METHOD_DEFAULTS) == set(METHODS)
    assert METHOD_DEFAULTS["gradient_ascent"] == contract.Defaults(iterations=30)
    for method in set(METHODS) - {"gradient_ascent"}:  # Adam, through transforms
        assert METHOD_DEFAULTS[method].learning_rate > 0 and METHOD_DEFAULTS[method].moves >= 0


@pytest.mark.parametrize("method", METHODS)
def test_a_job_without_iterations_gets_its_methods_default_and_is_the_job_that_names_them(method):
    spec = normalize({**CHANNEL_JOB, "method": method})
    assert spec.iterations == METHOD_DEFAULTS[method].iterations
    assert spec == normalize({**CHANNEL_JOB, "method": method, "iterations": spec.iterations})
    assert spec.fields()["iterations"] == spec.iterations  # the worker is told, not left to work it out
    assert normalize({**CHANNEL_JOB, "method": method, "iterations": 7}).iterations == 7


@pytest.mark.parametrize("name", IDS_BEFORE)
def test_jobs_that_name_their_iterations_and_default_tutorial_jobs_keep_their_ids(name):
    fields, job_id = IDS_BEFORE[name]
    assert normalize(fields).job_id == job_id


@pytest.mark.parametrize("name", ATLAS_IDS_BEFORE)
def test_atlases_that_name_their_iterations_and_default_tutorial_atlases_keep_their_ids(name):
    fields, atlas_id = ATLAS_IDS_BEFORE[name]
    assert atlas.normalize(fields).atlas_id == atlas_id


@pytest.mark.parametrize("method", METHODS)
def test_a_sweep_and_an_atlas_without_iterations_get_the_methods_default(method):
    iterations = METHOD_DEFAULTS[method].iterations
    sweep = contract.normalize_sweep({"model": "shapes_cnn", "conv_id": 2, "features": [1, 2], "method": method})
    assert [spec.iterations for spec in sweep] == [iterations, iterations]
    request = atlas.normalize({"model": "shapes_cnn", "units": 1, "method": method, "seed": 3})
    assert request.iterations == iterations
    assert all(spec.iterations == iterations for spec in request.specs(request.layers[0]))


def test_the_duration_check_counts_the_default_a_job_will_run(monkeypatch):
    """A service whose time limit fits one step fewer than robust's default refuses a robust job that leaves
    its iterations out, and runs one that asks for that one fewer."""
    most = METHOD_DEFAULTS["robust"].iterations - 1
    monkeypatch.setattr(celeryconfig, "task_soft_time_limit", FASTEST_STEP_SECONDS * (most + 0.5))
    with pytest.raises(JobError, match=f"^iterations: must be at most {most} under .* got {most + 1}$"):
        normalize({**CHANNEL_JOB, "method": "robust"})
    assert normalize({**CHANNEL_JOB, "method": "robust", "iterations": most}).iterations == most


@pytest.mark.parametrize("method", METHODS)
def test_null_iterations_are_refused_not_taken_for_the_default(method):
    with pytest.raises(JobError, match="^iterations: must be an integer in 1..10000, got null$"):
        normalize({**CHANNEL_JOB, "method": method, "iterations": None})


@pytest.mark.parametrize("task, request_fields", [("featurevis.optimize", {}), ("featurevis.sweep", {"features": [1]}),
                                                   ("featurevis.atlas", {})])
def test_the_schemas_name_no_one_default_for_iterations_but_each_methods(task, request_fields):
    schema = json.loads((SCHEMA_DIR / f"{task}.schema.json").read_text())
    iterations = schema["properties"]["iterations"]
    assert "default" not in iterations
    assert iterations["description"] == f"default: the method's ({contract.ITERATIONS_BY_METHOD})"
    validator = jsonschema.Draft202012Validator(schema)
    assert validator.is_valid({**request_fields, "method": "robust"})
    assert not validator.is_valid({**request_fields, "iterations": None})


@pytest.mark.parametrize("command", ["enqueue", "sweep", "atlas"])
def test_the_cli_says_the_default_depends_on_the_method(command, capsys):
    with pytest.raises(SystemExit):
        cli.main([command, "--help"])
    assert f"default the method's: {contract.ITERATIONS_BY_METHOD}" in " ".join(capsys.readouterr().out.split())
