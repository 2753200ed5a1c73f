"""Reshaping the code changes no job: the same fields give the same job ids, keys and pictures as before.

tests/data/pinned_jobs.json holds what a real worker answered for a few jobs (see its `made_by`): a
tutorial conv job, a channel, a class by name with the robust method (from noise, from the dataset's one mean, and from its facets, robust's
default start since issue 28), a composed objective with a negative weight, a diverse set and a sweep. The ids and keys must match exactly (they address the
store); the pictures must be the same pixels (tests/cpu.pinned_png_sha256) on a CPU of the vendor they were
pinned on. The robust jobs' pictures changed on purpose when robust began climbing a class's
log-probability, when `make quality-defaults` chose its new rate and moves (twice), and when the transforms'
scale stage began to scale (issue 28): they were pinned again then, each time on the one kind of CPU at hand,
and for an Intel AVX-512 CPU when one was at hand later.
"""
import json
from pathlib import Path

import pytest

from featurevis import contract
from tests.cpu import pinned, pinned_png_sha256

PINNED = json.loads((Path(__file__).parent / "data" / "pinned_jobs.json").read_text())
JOBS = [name for name in PINNED if name not in ("made_by", "sweep")]


def _png_sha256(stack, relative: str) -> str:
    return pinned_png_sha256(Path(stack.results_dir) / relative)


@pytest.mark.parametrize("name", JOBS)
def test_a_pinned_job_keeps_its_id_and_key(name):
    spec = contract.normalize(PINNED[name]["fields"])
    assert (spec.job_id, spec.key) == (PINNED[name]["job_id"], PINNED[name]["key"])


def test_a_pinned_sweep_keeps_its_ids_and_key():
    specs = contract.normalize_sweep(PINNED["sweep"]["fields"])
    assert [spec.job_id for spec in specs] == PINNED["sweep"]["job_ids"]
    assert (contract.sweep_id(specs), contract.sweep_key(specs)) == (PINNED["sweep"]["sweep_id"], PINNED["sweep"]["key"])


@pytest.mark.parametrize("name", JOBS)
def test_a_pinned_job_gives_the_same_picture(stack, producer_api, name):
    result = producer_api.enqueue(PINNED[name]["fields"]).wait(timeout=300)
    assert result.job_id == PINNED[name]["job_id"]
    assert _png_sha256(stack, result.image) == pinned(PINNED[name]["png_sha256"])


def test_a_pinned_sweep_gives_the_same_pictures(stack, producer_api):
    result = producer_api.sweep(PINNED["sweep"]["fields"]).wait(timeout=300)
    assert [_png_sha256(stack, job.image) for job in result.jobs] == pinned(PINNED["sweep"]["png_sha256"])
