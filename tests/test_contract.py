"""The job contract: defaults, normalization, job ids, and one-line errors field by field."""
import pytest

from featurevis import registry
from featurevis.contract import DEFAULT_DIVERSITY, JobError, normalize, normalize_sweep

# Contract version 2 (tutorial conv_ids, model versions in job ids): this job's id from then on.
PINNED_JOB_ID = "2795febb28d1a58568989cba"

BAD_JOBS = [
    ({"model": "resnet"}, "model", "registered: inception_v3, inception_v3_untrained"),
    ({"model": 3}, "model", "a registered model's name"),
    ({"model": "../x"}, "model", "[a-z0-9_-]{1,64}"),
    ({"model_sha256": "abc"}, "model_sha256", "64-hex sha256"),
    ({"model_sha256": "0" * 64}, "model_sha256", "is not a registered version of inception_v3"),
    ({"conv_id": 94}, "conv_id", "0..93"),
    ({"conv_id": -1}, "conv_id", "0..93"),
    ({"conv_id": "5"}, "conv_id", "integer"),
    ({"conv_id": 5.0}, "conv_id", "integer"),
    ({"conv_id": float("nan")}, "conv_id", "integer"),
    ({"conv_id": True}, "conv_id", "integer"),
    ({"conv_id": 5, "feature": 64}, "feature", "0..63"),
    ({"conv_id": 0, "feature": 32}, "feature", "0..31"),
    ({"feature": 1000}, "feature", "0..999"),
    ({"feature": -1}, "feature", ">= 0"),
    ({"feature": "2"}, "feature", "integer"),
    ({"iterations": 0}, "iterations", "1..10000"),
    ({"iterations": 10001}, "iterations", "1..10000"),
    ({"iterations": 2.5}, "iterations", "1..10000"),
    ({"iterations": None}, "iterations", "1..10000"),
    ({"seed": -5}, "seed", "0..4294967295"),
    ({"seed": 2**40}, "seed", "0..4294967295"),
    ({"method": "deepdream"}, "method", "gradient_ascent"),
    ({"layer": "../../x"}, "layer", "a layer with a (height, width, channels) output"),
    ({"layer": "mixed/nope"}, "layer", "unknown layer"),
    ({"layer": "predictions"}, "layer", "unknown layer"),
    ({"class": "kit"}, "class", "several classes start with it in inception_v3; near matches: kite, kit fox"),
    ({"class": "kit foxx"}, "class", "no class has that name in inception_v3; near matches: kit fox"),
    ({"class": "kit fox", "conv_id": 5}, "class", "names a class of the logits; the job's layer is conv2d_5"),
    ({"class": 2, "feature": 3}, "class", "give one of class, feature and targets"),
    ({"class": 1000}, "feature", "0..999"),
    ({"class": 2.5}, "class", "a class index or a class name"),
    ({"layer": "conv2d_8", "conv_id": 4}, "layer", "not conv_id 4"),
    ({"colour": "red"}, "colour", "unknown field"),
    ({"targets": []}, "targets", "list of 1..16"),
    ({"targets": [{"feature": 1, "weight": "x"}]}, "targets", "weight: number in -100..100"),
    ({"targets": [{"feature": 1, "weight": float("inf")}]}, "targets", "-100..100"),
    ({"targets": [{"feature": 1}, {"feature": 1}]}, "targets", "distinct features"),
    ({"targets": [{"feature": 1, "weight": 0.0}]}, "targets", "nonzero weight"),
    ({"targets": [{"feature": 1, "colour": 2}]}, "targets", "list of 1..16"),
    ({"targets": [{"feature": 1000}]}, "feature", "0..999"),
    ({"feature": 1, "targets": [{"feature": 2}]}, "feature", "either feature or targets"),
    ({"animate": "yes"}, "animate", "true or false"),
    ({"method": "robust", "iterations": 0}, "iterations", "1..10000"),
    ({"line\nbreak": 1}, "line\\nbreak", "unknown field"),
]


@pytest.mark.parametrize("fields,field,valid_range", BAD_JOBS)
def test_each_bad_field_gets_one_line_naming_field_and_range(fields, field, valid_range):
    with pytest.raises(JobError) as caught:
        normalize(fields)
    message = str(caught.value)
    assert caught.value.field == field
    assert message.startswith(f"{field}: ")
    assert valid_range in message
    assert "\n" not in message and len(message) < 300


def test_defaults_follow_the_tutorial():
    spec = normalize({})
    assert (spec.model, spec.conv_id, spec.layer, spec.feature, spec.iterations, spec.method) == \
        ("inception_v3", None, "logits", 0, 30, "gradient_ascent")
    assert 0 <= spec.seed <= 2**32 - 1


def test_conv_id_keras_name_and_tutorial_name_are_three_ways_to_one_target():
    by_id = normalize({"conv_id": 5, "feature": 2, "seed": 7})
    assert by_id.layer == "conv2d_5"  # the tutorial's conv_names[5], mixed/conv: creation order
    for name in ("conv2d_5", "mixed/conv", "mixed/conv/Conv2D"):
        assert normalize({"layer": name, "feature": 2, "seed": 7}) == by_id
    assert normalize({"layer": "mixed_10/tower_2/conv", "seed": 1}).conv_id == 93
    assert normalize({"layer": "logits", "seed": 1}).conv_id is None


def test_any_spatial_layer_is_a_target_and_conv_id_counts_conv2d_only():
    mixed = normalize({"layer": "mixed0", "feature": 255, "seed": 1})
    assert (mixed.layer, mixed.conv_id) == ("mixed0", None)
    with pytest.raises(JobError, match="^feature: must be a channel in 0..255 for layer mixed0 of inception_v3"):
        normalize({"layer": "mixed0", "feature": 256})


def test_a_class_by_name_or_index_is_its_feature_on_the_logits():
    by_name = normalize({"class": "kit fox", "seed": 1})
    assert (by_name.layer, by_name.feature) == ("logits", 278)
    assert normalize({"class": "Kit Fox", "seed": 1}) == by_name == normalize({"class": 278, "seed": 1})
    assert normalize({"class": "goldfis", "seed": 1}).feature == 1  # a unique prefix (goldfish, not goldfinch)
    assert normalize({"model": "shapes_cnn", "class": "rings", "seed": 1}).feature == 9


def test_job_id_is_a_function_of_the_normalized_spec_seed_included():
    first = normalize({"conv_id": 5, "feature": 2, "seed": 1})
    assert normalize({"feature": 2, "conv_id": 5, "seed": 1, "iterations": 30}).job_id == first.job_id
    assert normalize({"conv_id": 5, "feature": 2, "seed": 2}).job_id != first.job_id
    assert normalize({"conv_id": 5, "feature": 3, "seed": 1}).job_id != first.job_id
    assert first.key == f"inception_v3/conv2d_5/feature_0002/{first.job_id}"
    assert first.model_sha256 == registry.builtin_description("inception_v3")["sha256"]
    assert first.fields()["model_sha256"] == first.model_sha256  # the wire pins the version it was checked against


def test_composed_targets_are_sorted_and_plain_jobs_keep_their_ids():
    plain = normalize({"conv_id": 5, "feature": 2, "seed": 1})
    assert plain.job_id == PINNED_JOB_ID
    assert normalize({"conv_id": 5, "targets": [{"feature": 2}], "seed": 1}) == plain
    mixed = normalize({"conv_id": 5, "seed": 1, "targets": [{"feature": 7, "weight": -0.5}, {"feature": 2}]})
    assert mixed.targets == ((2, 1.0), (7, -0.5)) and mixed.weights == {2: 1.0, 7: -0.5}
    assert mixed.key == f"inception_v3/conv2d_5/features_0002_0007/{mixed.job_id}"
    assert normalize(mixed.fields()) == mixed and normalize(plain.fields()) == plain
    assert normalize({"conv_id": 5, "feature": 2, "seed": 1, "method": "robust"}).job_id != plain.job_id


def test_a_diverse_set_names_its_images_and_diversity_and_plain_jobs_stay_as_they_were():
    plain = normalize({"conv_id": 5, "feature": 2, "seed": 1})
    assert normalize({"conv_id": 5, "feature": 2, "seed": 1, "images": 1}) == plain
    assert "images" not in plain.fields() and "diversity" not in plain.fields() and plain.seeds == [1]
    diverse = normalize({"conv_id": 5, "feature": 2, "seed": 1, "method": "robust", "images": 4})
    assert diverse.diversity == DEFAULT_DIVERSITY and diverse.seeds == [1, 2, 3, 4]
    independent = normalize({**diverse.fields(), "diversity": 0.0})
    assert independent.diversity == 0.0 and normalize(independent.fields()) == independent  # 0 survives the wire
    assert len({plain.job_id, diverse.job_id, independent.job_id}) == 3


@pytest.mark.parametrize("fields, message", [
    ({"images": 3}, "^images: more than 1 needs method robust"),
    ({"diversity": 5.0, "method": "robust"}, "^diversity: needs images > 1"),
    ({"images": 9, "method": "robust"}, "^images: must be an integer in 1..8"),
    ({"images": 2, "method": "robust", "diversity": -1.0}, "^diversity: must be null or a number in 0..100:"),
    ({"images": 2.0, "method": "robust"}, "^images: must be an integer"),
])
def test_bad_diverse_sets_are_one_line_naming_the_field(fields, message):
    with pytest.raises(JobError, match=message):
        normalize({"conv_id": 5, **fields})


def test_an_absent_seed_is_drawn_and_recorded():
    drawn = {normalize({"conv_id": 1}).seed for _ in range(5)}
    assert len(drawn) > 1
    with pytest.raises(JobError, match="^seed: required"):
        normalize({"conv_id": 1}, draw_seed=False)


def test_a_sweep_is_one_job_per_feature_sharing_the_seed():
    specs = normalize_sweep({"conv_id": 5, "features": [1, 2, 3], "iterations": 4})
    assert [s.feature for s in specs] == [1, 2, 3]
    assert len({s.seed for s in specs}) == 1
    assert specs[1] == normalize({"conv_id": 5, "feature": 2, "iterations": 4, "seed": specs[0].seed})
    for bad, field in [({"conv_id": 5, "features": []}, "features"), ({"conv_id": 5, "features": [1, 1]}, "features"),
                       ({"conv_id": 5, "features": [1, 64]}, "feature"), ({"conv_id": 5, "features": "1-6"}, "features")]:
        with pytest.raises(JobError) as caught:
            normalize_sweep(bad)
        assert caught.value.field == field


def test_every_built_in_model_has_a_description_and_class_names():
    for name in registry.BUILTINS:
        info = registry.builtin_info(name)
        assert len(info.class_names) == info.classes and info.sha256 == registry.builtin_description(name)["sha256"]
    assert {name: registry.builtin_info(name).untrained for name in registry.BUILTINS} == \
        {name: name == "inception_v3_untrained" for name in registry.BUILTINS}
    assert len(registry.builtin_info("inception_v3").conv_layers) == 94
    assert registry.builtin_info("inception_v3").sha256 != registry.builtin_info("inception_v3_untrained").sha256
