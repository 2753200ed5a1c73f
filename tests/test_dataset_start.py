"""A job's dataset start (issue 28): the contract's ids and refusals, robust's start under each seed's noise, the
mean of a unit's best dataset examples or of its seed's facet of them, and jobs, a set and a sweep through a real
worker that start from them."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from featurevis import contract, dataset_starts, datasets, examples, registry
from featurevis.contract import JobError, normalize, normalize_sweep
from featurevis.optvis import objectives, robust
from featurevis.registry import LOGITS
from tests.test_objective_contract import producer, uploaded  # noqa: F401 - fixtures
from tests.test_robust import SHAPE, preprocess, tiny  # noqa: F401 - tiny is a fixture
from tests.test_start_image import picture

CROSS = {"model": "shapes_cnn", "class": "cross", "method": "robust", "iterations": 5, "seed": 1}
SHAPES = datasets.drawn_fingerprint("shapes")
FACETS = contract.FACETS_PREFIX


# The contract.

def test_a_dataset_start_names_its_dataset_in_the_id_and_travels_as_dataset():
    """Robust's default (its facets) where a job can have it; a noise start keeps the id it always had and says so
    on the wire, so the worker's normalize does not give it the default; every spec survives the wire."""
    plain, started = normalize({**CROSS, "start": "noise"}), normalize({**CROSS, "start": "dataset"})
    faceted = FACETS + SHAPES
    assert contract.METHOD_DEFAULTS["robust"].start == "facets" and normalize(CROSS).start == faceted
    assert plain.start is None and plain.fields()["start"] == "noise" and normalize(plain.fields()) == plain
    assert started.start == SHAPES and started.job_id != plain.job_id
    assert started.fields()["start"] == "dataset" and normalize(started.fields()) == started
    swept = normalize_sweep({"model": "shapes_cnn", "conv_id": 2, "features": [1, 4], "method": "robust", "seed": 1})
    assert [spec.start for spec in swept] == [faceted, faceted]
    # A target given as one channel of weight 1 is the plain job, so it starts from the dataset too.
    one = normalize({**CROSS, "class": None, "targets": [{"feature": 3}]})
    assert one.start == faceted and one.feature == 3
    # Where the default cannot be had, noise, and the id robust jobs had: a composed objective, no dataset.
    for cannot in ({"model": "shapes_cnn", "conv_id": 2, "method": "robust", "seed": 1,
                    "targets": [{"feature": 1}, {"feature": 2, "weight": -0.5}]},
                   {"model": "inception_v3_untrained", "conv_id": 3, "feature": 1, "method": "robust", "seed": 1}):
        spec = normalize(cannot)
        assert spec.start is None and spec.job_id == normalize({**cannot, "start": "noise"}).job_id
        assert normalize(spec.fields()) == spec
    assert "start" not in normalize({**CROSS, "method": "maco"}).fields()


def test_a_facets_start_names_its_dataset_in_an_id_of_its_own_and_travels_as_facets():
    started, faceted = normalize({**CROSS, "start": "dataset"}), normalize({**CROSS, "start": "facets"})
    assert faceted.start == FACETS + SHAPES and contract.dataset_start(faceted.start) == ("facets", SHAPES)
    assert contract.dataset_start(started.start) == ("dataset", SHAPES)
    assert faceted.job_id not in (started.job_id, normalize({**CROSS, "start": "noise"}).job_id)
    assert faceted.fields()["start"] == "facets" and normalize(faceted.fields()) == faceted
    swept = normalize_sweep({"model": "shapes_cnn", "conv_id": 2, "features": [1, 4], "method": "robust", "seed": 1,
                             "start": "facets"})
    assert [spec.start for spec in swept] == [faceted.start] * 2


@pytest.mark.parametrize("fields, message", [
    ({**CROSS, "method": "maco", "start": "dataset"},
     "start: 'dataset' needs method robust (its start takes the seeds' noise), got method maco"),
    ({"model": "inception_v3_untrained", "conv_id": 3, "feature": 1, "method": "robust", "start": "dataset"},
     "start: 'dataset' needs a model with a dataset; inception_v3_untrained has none (`python -m producer models "
     "dataset inception_v3_untrained PATH`), or use noise"),
    ({"model": "shapes_cnn", "conv_id": 2, "method": "robust", "targets": [{"feature": 1}, {"feature": 2}],
      "start": "dataset"},
     "start: 'dataset' needs one target, a class or a channel (`feature`): the dataset's best examples are a unit's"),
    ({**CROSS, "method": "gradient_ascent", "start": "facets"},
     "start: 'facets' needs method robust (its start takes the seeds' noise), got method gradient_ascent"),
    ({**CROSS, "start": "photo"}, f"start: must be {contract.FIELD_RANGES['start']}, got \"photo\""),
])
def test_a_dataset_start_it_cannot_have_is_refused_in_one_line(fields, message):
    with pytest.raises(JobError) as refused:
        normalize(fields)
    assert str(refused.value) == message


def test_a_job_starts_from_one_picture_not_an_upload_and_the_dataset(producer, uploaded):  # noqa: F811
    with pytest.raises(JobError) as refused:
        normalize({"conv_id": 5, "seed": 1, "method": "robust", "start_image": uploaded, "start": "dataset"},
                  models=producer.registry)
    assert str(refused.value) == "start: give start or start_image, not both: a climb starts from one picture"


# Robust's start, on test_robust's small network.

def test_robusts_start_puts_each_seeds_noise_on_the_picture_and_takes_one_picture_per_image(tiny):
    step = robust.compile_step(tiny[0], preprocess, objectives.weighted_channels, SHAPE)
    first, second = picture(1), picture(2)
    exact = step.pixels(step.start([4, 5], np.stack([first, second]))).numpy()
    np.testing.assert_allclose(exact, np.stack([first, second]), atol=0.5 + 1e-3)
    noisy = step.pixels(step.start([4, 5], first, contract.START_NOISE)).numpy()
    assert np.abs(noisy[0] - noisy[1]).mean() > 5.0  # each seed its own start
    for start in noisy:  # still the picture's layout under the noise
        assert np.corrcoef(start.ravel(), first.ravel())[0, 1] > 0.5
        assert abs(np.corrcoef(start.ravel(), second.ravel())[0, 1]) < 0.5


# The dataset's best examples of a unit.

def test_a_units_dataset_start_is_the_mean_of_its_best_examples_ranked_once_per_layer(factory):
    loaded, dataset = factory.model("shapes_cnn"), datasets.drawn("shapes")
    ranked = examples.ranking(loaded, dataset, LOGITS, contract.START_EXAMPLES)
    built = factory.builds["dataset start"]
    starts = {feature: factory.dataset_starts.picture(loaded, LOGITS, feature, 0, SHAPES) for feature in range(10)}
    assert factory.builds["dataset start"] == built + 1  # one pass ranks every class
    for feature, start in starts.items():
        best = ranked["top"]["indices"][feature]
        assert len(best) == contract.START_EXAMPLES
        np.testing.assert_allclose(start, dataset.images[best].astype(np.float32).mean(axis=0), atol=1e-3)


def test_facets_are_the_clusters_of_alike_images_best_first_whatever_their_order():
    """Three prototypes, each image one of them plus a little noise, given in a shuffled order: three facets,
    each one prototype's images, the first holding the best (position 0); repeated images give fewer facets."""
    rng = np.random.default_rng(0)
    prototypes = rng.uniform(0, 255, (3, 8, 8, 3))
    drawn = rng.permutation(np.repeat(np.arange(3), [5, 3, 1]))
    images = prototypes[drawn] + rng.normal(0, 5, (len(drawn), 8, 8, 3))
    found = dataset_starts.facets(images, 3)
    assert [group[0] for group in found] == sorted(group[0] for group in found) and found[0][0] == 0
    assert sorted(sorted(group.tolist()) for group in found) == sorted(
        np.flatnonzero(drawn == prototype).tolist() for prototype in range(3))
    assert len(dataset_starts.facets(np.repeat(images[:1], 4, axis=0), 3)) == 1


def test_a_units_facets_start_is_its_seeds_facet_of_its_best_examples(factory):
    """Seed s starts from the mean of facet s mod START_FACETS; the facets share out the unit's
    START_FACETS x START_EXAMPLES best, and the first holds the best example."""
    loaded, dataset = factory.model("shapes_cnn"), datasets.drawn("shapes")
    best = examples.ranking(loaded, dataset, LOGITS, contract.START_FACETS * contract.START_EXAMPLES)["top"]["indices"][4]
    start = FACETS + SHAPES
    starts = [factory.dataset_starts.picture(loaded, LOGITS, 4, seed, start) for seed in range(contract.START_FACETS + 1)]
    found = factory.dataset_starts.facets_of(loaded, LOGITS, 4, SHAPES)
    assert len(found) == contract.START_FACETS and found[0][0] == best[0]
    assert sorted(index for facet in found for index in facet) == sorted(best)
    for seed, facet in enumerate(found):
        np.testing.assert_allclose(starts[seed], dataset.images[sorted(facet)].astype(np.float32).mean(axis=0),
                                   atol=1e-3)
    np.testing.assert_array_equal(starts[contract.START_FACETS], starts[0])
    assert min(np.abs(starts[0] - starts[seed]).mean() for seed in range(1, contract.START_FACETS)) > 10


def test_a_dataset_replaced_after_a_job_was_validated_fails_its_start_in_one_line(tmp_path):
    from featurevis.factory import ModelFactory
    from featurevis.store import ResultStore

    models = registry.Registry(ResultStore(tmp_path / "results"))
    info = models.get("inception_v3_untrained")
    fingerprints = []
    for colour in ((255, 0, 0), (0, 0, 255)):
        folder = tmp_path / f"pictures-{colour}"
        folder.mkdir()
        Image.new("RGB", (40, 30), colour).save(folder / "only.png")
        datasets.put(models, info, folder)
        fingerprints.append(datasets.fingerprint(models, info))
    factory = ModelFactory(models=models)
    with pytest.raises(ValueError) as refused:
        factory.dataset_starts.picture(factory.model("inception_v3_untrained"), "conv2d_3", 1, 0, fingerprints[0])
    assert str(refused.value) == (f"start: inception_v3_untrained's dataset changed since this job was validated "
                                  f"({fingerprints[0]} -> {fingerprints[1]}); submit it again")


# Through a real worker.

def test_a_job_and_a_sweep_start_from_their_targets_dataset_examples(stack, producer_api, factory):
    """A few steps from the dataset start leave each picture with its own unit's start's layout (correlated with
    it, where the same job from noise is not, nor a picture with another unit's start); meta.json names the
    dataset."""
    results = Path(stack.results_dir)
    loaded = factory.model("shapes_cnn")

    def likeness(result, layer: str, feature: int) -> float:
        start = factory.dataset_starts.picture(loaded, layer, feature, 0, SHAPES)
        return float(np.corrcoef(np.load(results / result.array).ravel(), start.ravel())[0, 1])

    from_noise = producer_api.enqueue({**CROSS, "start": "noise"}).wait(timeout=300)
    from_data = producer_api.enqueue({**CROSS, "start": "dataset"}).wait(timeout=300)
    assert json.loads((results / from_data.meta).read_text())["spec"]["start"] == SHAPES
    assert likeness(from_data, LOGITS, 3) > 0.5 > 0.2 > abs(likeness(from_noise, LOGITS, 3))
    swept = producer_api.sweep({"model": "shapes_cnn", "conv_id": 3, "features": [2, 5], "method": "robust",
                                "iterations": 5, "seed": 1, "start": "dataset"}).wait(timeout=300)
    layer = loaded.info.target_layer(3)
    first, second = swept.jobs
    assert likeness(first, layer, 2) > 0.5 > 0.2 > likeness(first, layer, 5)
    assert likeness(second, layer, 5) > 0.5 > 0.2 > likeness(second, layer, 2)


def test_jobs_of_one_class_start_from_their_seeds_facets(stack, producer_api, factory):
    """Two seeds of a class from the facets start, robust's default: each picture keeps its own facet's layout, more
    than the other seed's facet; meta.json names the facets start."""
    results = Path(stack.results_dir)
    loaded, start = factory.model("shapes_cnn"), FACETS + SHAPES
    done = {seed: producer_api.enqueue({**CROSS, "seed": seed}).wait(timeout=300) for seed in (1, 2)}  # the default
    assert json.loads((results / done[1].meta).read_text())["spec"]["start"] == start

    def likeness(seed: int, facet_seed: int) -> float:
        facet = factory.dataset_starts.picture(loaded, LOGITS, 3, facet_seed, start)
        return float(np.corrcoef(np.load(results / done[seed].array).ravel(), facet.ravel())[0, 1])

    assert likeness(1, 1) > 0.5 and likeness(1, 1) > likeness(1, 2) + 0.2
    assert likeness(2, 2) > 0.5 and likeness(2, 2) > likeness(2, 1) + 0.2
