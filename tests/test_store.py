"""The object-store directory: atomic publication, meta.json last, nothing outside the root."""
import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from featurevis import images, store as store_module
from featurevis.store import IMAGE_NPY, IMAGE_PNG, META, ResultStore, image_result

KEY = "inception_v3_untrained/conv2d_8/feature_0002/abc123"


def _image():
    return (np.random.default_rng(0).random((8, 8, 3)) * 255).astype(np.float32)


def test_a_written_result_is_complete_and_leaves_no_temporaries(tmp_path):
    store = ResultStore(tmp_path)
    image = _image()
    store.write_all([image_result(KEY, image, images.png_bytes(image), {"job_id": "abc123"})])
    folder = tmp_path / KEY
    assert sorted(os.listdir(folder)) == [IMAGE_NPY, IMAGE_PNG, META]
    assert store.read_meta(KEY) == {"job_id": "abc123"}
    np.testing.assert_array_equal(np.load(folder / IMAGE_NPY), image)
    png = np.asarray(Image.open(folder / IMAGE_PNG))
    assert png.min() == 0 and png.max() == 255  # the tutorial's min-max view


def test_meta_json_is_published_last_so_a_crash_leaves_no_result(tmp_path, monkeypatch):
    store = ResultStore(tmp_path)
    published = []
    real_replace = os.replace

    def replace_then_crash_before_meta(source, target):
        if str(target).endswith(META):
            raise OSError("disk full")
        published.append(os.path.basename(target))
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", replace_then_crash_before_meta)
    with pytest.raises(OSError):
        store.write_all([image_result(KEY, _image(), images.png_bytes(_image()), {"job_id": "abc123"})])
    assert published == [IMAGE_PNG, IMAGE_NPY]
    assert store.read_meta(KEY) is None  # a reader (and the cache check) sees no result
    assert not [name for name in os.listdir(tmp_path / KEY) if name.endswith(".tmp")]


def _batch_of_results(count: int) -> list:
    return [image_result(f"{KEY}{index}", _image(), images.png_bytes(_image()), {"job_id": f"abc{index}"})
            for index in range(count)]


def test_a_batch_of_results_is_synced_once_before_any_file_takes_its_place(tmp_path, monkeypatch):
    store, events = ResultStore(tmp_path), []
    real_sync, real_replace = store_module._sync_filesystem, os.replace
    monkeypatch.setattr(store_module, "_sync_filesystem", lambda path: (events.append("sync"), real_sync(path)))
    monkeypatch.setattr(os, "replace", lambda source, target: (events.append(os.path.relpath(target, tmp_path)),
                                                               real_replace(source, target)))
    store.write_all(_batch_of_results(3))
    assert events[0] == "sync" and events.count("sync") == 1
    for index in range(3):
        key = f"{KEY}{index}"
        assert store.read_meta(key) == {"job_id": f"abc{index}"}
        assert sorted(os.listdir(tmp_path / key)) == [IMAGE_NPY, IMAGE_PNG, META]
        mine = [event for event in events if event.startswith(key + "/")]
        assert mine[-1] == f"{key}/{META}"  # each result's meta.json after its own files


def test_a_batch_whose_sync_fails_publishes_nothing(tmp_path, monkeypatch):
    store = ResultStore(tmp_path)

    def sync_fails(path):
        raise OSError("I/O error")

    monkeypatch.setattr(store_module, "_sync_filesystem", sync_fails)
    with pytest.raises(OSError, match="I/O error"):
        store.write_all(_batch_of_results(3))
    assert [path for path in tmp_path.rglob("*") if path.is_file()] == []  # no result, no temporary


def test_a_batch_that_fails_halfway_through_writing_its_files_leaves_none_of_them(tmp_path, monkeypatch):
    store, real_stage, calls = ResultStore(tmp_path), ResultStore._stage, []

    def disk_full_at_the_fifth_file(self, key, name, data, durable=False, reserved=None):
        calls.append(name)
        if len(calls) == 5:
            raise OSError("No space left on device")
        return real_stage(self, key, name, data, durable, reserved)

    monkeypatch.setattr(ResultStore, "_stage", disk_full_at_the_fifth_file)
    with pytest.raises(OSError, match="No space"):
        store.write_all(_batch_of_results(3))
    assert [path for path in tmp_path.rglob("*") if path.is_file()] == []


def test_without_syncfs_a_batch_is_synced_by_sync(tmp_path, monkeypatch):
    synced = []
    monkeypatch.setattr(store_module, "_syncfs", lambda: None)
    monkeypatch.setattr(os, "sync", lambda: synced.append(True))
    store = ResultStore(tmp_path)
    store.write_all(_batch_of_results(2))
    assert synced == [True] and store.read_meta(f"{KEY}1") == {"job_id": "abc1"}


def test_folders_made_for_results_are_taken_back_where_empty_and_never_above_the_root(tmp_path):
    fresh = ResultStore(tmp_path / "volume" / "results")  # neither the root nor its parent exists yet
    made = fresh.make_folders(["m/l/feature_0001/mine"])
    assert made == [fresh.path(key) for key in ("m", "m/l", "m/l/feature_0001", "m/l/feature_0001/mine")]
    fresh.remove_empty(made)
    assert sorted(path.name for path in tmp_path.rglob("*")) == ["results", "volume"]

    (tmp_path / "volume" / "results" / "m" / "l" / "feature_0001" / "other").mkdir(parents=True)
    made = fresh.make_folders(["m/l/feature_0001/mine", "m/l/feature_0002/mine"])
    assert made == [fresh.path(key) for key in ("m/l/feature_0001/mine", "m/l/feature_0002", "m/l/feature_0002/mine")]
    fresh.remove_empty(made)
    assert sorted(path.relative_to(tmp_path).as_posix() for path in tmp_path.rglob("*"))[-1] == \
        "volume/results/m/l/feature_0001/other"
    assert not (tmp_path / "volume" / "results" / "m" / "l" / "feature_0002").exists()


def test_temporaries_a_killed_writer_left_are_cleared_once_older_than_any_live_writer_keeps_one(tmp_path):
    store = ResultStore(tmp_path)
    store.write_all(_batch_of_results(1))
    folder = tmp_path / f"{KEY}0"
    left, live = folder / ".image.png.0123.tmp", folder / ".meta.json.4567.tmp"
    left.write_bytes(b"half")
    live.write_bytes(b"being written")
    os.utime(left, (left.stat().st_mtime - 120,) * 2)
    store.remove_stale_temporaries([f"{KEY}0", f"{KEY}9"], older_than_s=60)  # the second key has no folder
    assert sorted(path.name for path in folder.iterdir()) == [live.name, IMAGE_NPY, IMAGE_PNG, META]


def _temporaries(root) -> list:
    return [path for path in root.rglob(".*.tmp")]


def test_reserved_temporaries_become_the_files_and_those_not_written_are_released(tmp_path):
    store = ResultStore(tmp_path)
    keys = [f"{KEY}0", f"{KEY}1"]
    store.make_folders(keys)
    reserved = store.reserve(keys, owner="task-1")
    assert sorted(path.name.split(".")[1] for path in _temporaries(tmp_path)) == ["image"] * 4 + ["meta"] * 2
    made = {name: os.stat(temporary).st_ino for (key, name), (temporary, _) in reserved.items() if key == keys[0]}
    store.write_all(_batch_of_results(1), reserved)
    assert {name: os.stat(tmp_path / keys[0] / name).st_ino for name in made} == made  # filled, not made anew
    assert store.read_meta(keys[0]) == {"job_id": "abc0"}
    assert sorted(key for key, _ in reserved) == [keys[1]] * 3  # what write_all took is no longer reserved
    store.release(reserved)
    assert _temporaries(tmp_path) == [] and os.listdir(tmp_path / keys[1]) == []


def test_a_batch_whose_sync_fails_leaves_its_reserved_temporaries_to_release(tmp_path, monkeypatch):
    store = ResultStore(tmp_path)
    store.make_folders([f"{KEY}0"])
    reserved = store.reserve([f"{KEY}0"])

    def sync_fails(path):
        raise OSError("I/O error")

    monkeypatch.setattr(store_module, "_sync_filesystem", sync_fails)
    with pytest.raises(OSError, match="I/O error"):
        store.write_all(_batch_of_results(1), reserved)
    store.release(reserved)
    assert [path for path in tmp_path.rglob("*") if path.is_file()] == []


def test_an_owners_next_run_clears_its_temporaries_at_any_age_and_others_only_when_stale(tmp_path):
    store = ResultStore(tmp_path)
    store.make_folders([KEY])
    store.reserve([KEY], owner="killed-task")  # a pool child killed mid-climb leaves these
    others = store.reserve([KEY], owner="live-task")
    store.remove_stale_temporaries([KEY], older_than_s=60, owner="killed-task")
    assert sorted(str(path) for path in _temporaries(tmp_path)) == sorted(temporary for temporary, _ in others.values())


def test_a_task_id_that_looks_like_a_path_names_no_temporary_outside_the_folder(tmp_path):
    store = ResultStore(tmp_path / "results")
    store.make_folders([KEY])
    reserved = store.reserve([KEY], owner="../../../../escaped")
    assert {os.path.dirname(temporary) for temporary, _ in reserved.values()} == {store.path(KEY)}
    store.remove_stale_temporaries([KEY], older_than_s=60, owner="../../../../escaped")
    assert _temporaries(tmp_path) == []


def test_rewriting_a_result_replaces_it_whole(tmp_path):
    store = ResultStore(tmp_path)
    store.write(KEY, {"image.png": b"old"}, {"v": 1})
    store.write(KEY, {"image.png": b"new"}, {"v": 2})
    assert (tmp_path / KEY / "image.png").read_bytes() == b"new"
    assert json.loads((tmp_path / KEY / META).read_text()) == {"v": 2}


@pytest.mark.parametrize("key", ["../outside", "a/../../outside", "/etc/passwd-x"])
def test_keys_cannot_escape_the_root(tmp_path, key):
    store = ResultStore(tmp_path / "results")
    with pytest.raises(ValueError, match="escapes"):
        store.write(key, {"image.png": b"x"}, {})
    assert not (tmp_path / "outside").exists()


def test_a_link_inside_the_store_cannot_lead_writes_out_of_it(tmp_path):
    """Keys are checked by where their paths lead: a folder inside the store that is a link to another
    place inside it is followed, one that leads out is refused and nothing is written there."""
    root, outside = tmp_path / "results", tmp_path / "outside"
    (root / "m" / "real").mkdir(parents=True)
    outside.mkdir()
    (root / "m" / "inside").symlink_to(root / "m" / "real")
    (root / "m" / "away").symlink_to(outside)
    store = ResultStore(root)
    store.write("m/inside/k", {"image.png": b"x"}, {"v": 1})
    assert (root / "m" / "real" / "k" / "image.png").read_bytes() == b"x"
    with pytest.raises(ValueError, match="escapes"):
        store.write("m/away/k", {"image.png": b"x"}, {"v": 1})
    assert list(outside.iterdir()) == []


def test_contact_sheet_is_a_grid_of_views():
    sheet = Image.open(io.BytesIO(images.contact_sheet([_image()] * 6, columns=3, gap=4)))
    assert sheet.size == (3 * 8 + 2 * 4, 2 * 8 + 4)
