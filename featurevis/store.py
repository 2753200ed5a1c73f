"""The object-store directory: one folder of finished artefacts per result key.

`RESULTS_DIR` is a local directory (a shared mount when workers span hosts)
or an S3-compatible URL, `s3://bucket/prefix`, reached through fsspec/s3fs
(credentials and endpoint from the usual AWS variables, e.g. AWS_ENDPOINT_URL).

A result is complete exactly when its `meta.json` exists. Artefacts go in
first and `meta.json` last; on a local filesystem each is written under a
temporary name and renamed into place once the batch's files are synced to
disk; on S3 each object appears whole when its upload completes. So a reader
(the cache check, a gallery, another host) never sees half a result. Keys come
from the validated contract, and every path is checked to stay inside the root
anyway, links below it included.

The layout, built here and nowhere else:

    <model>/<layer>/feature_0002/<job_id>/            one job (features_0002_0007: a composed objective)
        image.png  image.npy  [animation.webp]  [image_<i>.png: each picture of a diverse set]
        [alpha.png: the picture's transparency (robust, alpha: true) or where the objective looked (maco)]  meta.json
    <model>/<layer>/objectives_<terms>/<job_id>/      a job whose objective has terms other than channels
                                                      (e.g. objectives_0002_neuron0003_layer)
    <model>/<layer>/sweeps/<sweep_id>/                one sweep
        contact_sheet.png  meta.json
    models/<name>/<version>/                          a registered model version
        [model.keras]  description.json
    models/<name>/current.json                        the version a job on <name> gets
    uploads/<sha256>.<png|jpg|npy>                    a user's image (a caricature's), by its content's hash
    models/<name>/<version>/dataset.npy, dataset.json  the model's dataset, for atlases' examples
    models/<name>/<version>/examples/<dataset>/       <layer>.json: each unit's top and bottom images; <index>.png
    atlases/<atlas_id>/                               an atlas: progress.json, index.html
    atlases/<atlas_id>/<layer>/                       index.html, units.json, unit_<NNNN>.html
    index.html                                        the gallery

Readers (the gallery) take a result's model, layer and features from its
meta.json, not from its path.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import glob
import hashlib
import io
import json
import os
import posixpath
import stat
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import NamedTuple

import fsspec
import numpy as np
import pydantic_core
from fsspec.implementations.local import LocalFileSystem

META = "meta.json"
IMAGE_PNG = "image.png"
IMAGE_NPY = "image.npy"
ANIMATION = "animation.webp"
ALPHA = "alpha.png"
CONTACT_SHEET = "contact_sheet.png"
RESULT_FILES = (IMAGE_PNG, IMAGE_NPY, META)  # what every job's result has (image_result, and write_all's meta.json)
GALLERY = "index.html"
GALLERY_LOCK = ".gallery.lock"

MODELS = "models"
MODEL_FILE = "model.keras"  # the file every worker serves
LEGACY_MODEL_FILE = "model.h5"  # a Keras 2 upload, kept beside the model.keras it was converted to
ONNX_MODEL_FILE = "model.onnx"  # an ONNX upload, served as it is (featurevis/onnxgraph.py builds it)
DESCRIPTION = "description.json"
CURRENT = "current.json"

UPLOADS = "uploads"
UPLOAD_FORMATS = ("png", "jpg", "npy")
# An uploaded image's key: content-addressed, so the same file is one key and a job naming it names its pixels.
UPLOAD_PATTERN = rf"^{UPLOADS}/[0-9a-f]{{64}}\.({'|'.join(UPLOAD_FORMATS)})$"

# Results and sweeps both sit this many folders below the root: a listing need go no deeper.
RECORD_DEPTH = 4


def layer_folder(layer: str) -> str:
    """A layer's name as one folder: a nested layer's path (`backbone/block_6_expand`) keeps its parts apart
    with '~', which no served layer name holds (zoo.describe refuses it)."""
    return layer.replace("/", "~")


def job_key(model: str, layer: str, features: Iterable[int], composed: bool, job_id: str) -> str:
    """A job's folder: its model, layer and feature(s) make the store browsable, its id makes it unique."""
    numbers = "_".join(f"{feature:04d}" for feature in features)
    return f"{model}/{layer_folder(layer)}/{'features' if composed else 'feature'}_{numbers}/{job_id}"


def objective_key(model: str, layer: str, labels: Iterable[str], job_id: str) -> str:
    """A job with other objectives than channels: each term's label (its feature, or its kind) in the folder name."""
    return f"{model}/{layer_folder(layer)}/objectives_{'_'.join(labels)}/{job_id}"


def sweep_key(model: str, layer: str, sweep_id: str) -> str:
    return f"{model}/{layer_folder(layer)}/sweeps/{sweep_id}"


def model_key(name: str, version: str = "") -> str:
    return "/".join(part for part in (MODELS, name, version) if part)


def upload_key(sha256: str, fmt: str) -> str:
    return f"{UPLOADS}/{sha256}.{fmt}"


def set_png(index: int) -> str:
    """One picture of a diverse set (image.png holds them all as a sheet)."""
    return f"image_{index}.png"


# Atlases (featurevis/atlas.py, atlas_pages.py) and the datasets beside models (datasets.py, examples.py).
ATLASES = "atlases"
PROGRESS = "progress.json"
ATLAS_PAGE = "index.html"  # the atlas's, and each layer's in its folder
ATLAS_UNITS = "units.json"
DATASET, DATASET_INFO = "dataset.npy", "dataset.json"


def atlas_key(atlas_id: str, layer: str = "") -> str:
    """An atlas's folder (progress.json, its page), or one layer's (its page, units.json, unit pages)."""
    return "/".join(part for part in (ATLASES, atlas_id, layer_folder(layer)) if part)


def unit_page(feature: int) -> str:
    return f"unit_{feature:04d}.html"


def examples_key(name: str, version: str, dataset: str) -> str:
    """A model version's dataset ranked per layer (<layer>.json) and the dataset images the rankings show."""
    return f"{model_key(name, version)}/examples/{dataset}"


def example_png(index: int) -> str:
    return f"{index:06d}.png"


def model_and_layer(key: str) -> tuple[str, str]:
    """The model and layer a job's or sweep's key belongs to (metas older than 0.2.0's sweeps do not say)."""
    model, layer, *_ = key.split("/")
    return model, layer.replace("~", "/")

DEFAULT_ROOT = "./results"


# (key, file name) -> (its temporary, its place): files whose temporaries were made ahead (ResultStore.reserve).
Reserved = dict[tuple[str, str], tuple[str, str]]


class ResultStore:
    def __init__(self, root: str | os.PathLike):
        # No listings cache on object stores: other processes write there, and s3fs answers a read of a
        # file its cached listing of the folder lacks with FileNotFoundError (a worker would not see a
        # dataset, a model or another worker's result stored after it first looked).
        remote = "://" in str(root) and not str(root).startswith("file://")
        self.fs, path = fsspec.core.url_to_fs(str(root), **({"use_listings_cache": False} if remote else {}))
        self.local = isinstance(self.fs, LocalFileSystem)
        self.root = str(Path(path).resolve()) if self.local else path.rstrip("/")

    @classmethod
    def from_env(cls) -> "ResultStore":
        return cls(os.environ.get("RESULTS_DIR", DEFAULT_ROOT))

    def path(self, key: str, name: str = "") -> str:
        """The filesystem path of a key (or a file in it); refuses anything that escapes the root."""
        joined = posixpath.normpath(posixpath.join(self.root, key, name))
        if self.local and _link_below(self.root, joined):
            joined = os.path.realpath(joined)
        if joined != self.root and not joined.startswith(self.root.rstrip("/") + "/"):
            raise ValueError(f"result key {key!r} escapes the results directory")
        return joined

    def locate(self, key: str, name: str = "") -> str:
        """Where a person or another program finds it: an absolute path, or an s3:// URL."""
        path = self.path(key, name)
        return path if self.local else self.fs.unstrip_protocol(path)

    def read_meta(self, key: str) -> dict | None:
        """The meta of a complete result, or None when there is none (yet)."""
        try:
            return json.loads(self.read_bytes(key, META))
        except FileNotFoundError:
            return None

    def exists(self, key: str, name: str = "") -> bool:
        return self.fs.exists(self.path(key, name))

    def read_bytes(self, key: str, name: str) -> bytes:
        return self.fs.cat_file(self.path(key, name))

    def read_image(self, key: str) -> np.ndarray:
        return np.load(io.BytesIO(self.read_bytes(key, IMAGE_NPY)))

    def write(self, key: str, artefacts: dict[str, bytes], meta: dict) -> None:
        """Publish artefacts, then meta.json."""
        self.write_all([Result(key, artefacts, meta)])

    def write_all(self, results: Iterable[Result], reserved: Reserved | None = None) -> None:
        """Publish results together, each one's meta.json after its artefacts.

        Locally every file is written under a temporary name, the filesystem synced once, and each file
        renamed into place: a batch's results cost one sync, where a sync per file made writing an atlas
        batch's files take about twice as long (bench/RESULTS.md, Atlas, runs O and G). A file `reserved`
        has a temporary for (see `reserve`) is written into it, and taken out of `reserved`.
        """
        files = [(result.key, name, data) for result in results
                 for name, data in {**result.artefacts, META: _meta_bytes(result.meta)}.items()]
        if not self.local:
            for key, name, data in files:
                self.put(key, name, data)
            return
        reserved = {} if reserved is None else reserved
        staged = []
        try:
            for key, name, data in files:  # one by one: a failure leaves the ones before it to discard
                staged.append(self._stage(key, name, data, durable=False, reserved=reserved.pop((key, name), None)))
            if staged:
                _sync_filesystem(staged[0][0])
            for temporary, target in staged:
                os.replace(temporary, target)
        except BaseException:
            for temporary, _ in staged:
                _discard(temporary)
            raise

    def reserve(self, keys: Iterable[str], owner: str = "") -> Reserved:
        """An empty temporary beside each file every job's result has (RESULT_FILES), in the keys' folders
        (make_folders): write_all fills them, `release` removes those it did not. Making a file costs most of
        writing a small one, so a batch makes its results' temporaries while it climbs. Each temporary names
        its `owner` (a task's id), so the owner's next run clears those a killed run left (see
        remove_stale_temporaries). Nothing on an object store, where there are no temporaries."""
        reserved: Reserved = {}
        if not self.local:
            return reserved
        try:
            for key in keys:
                for name in RESULT_FILES:
                    target = self.path(key, name)
                    temporary = _temporary(target, owner)
                    open(temporary, "xb").close()
                    reserved[(key, name)] = (temporary, target)
        except BaseException:
            self.release(reserved)
            raise
        return reserved

    def release(self, reserved: Reserved) -> None:
        """Reserved temporaries no file was written into, removed."""
        for temporary, _ in reserved.values():
            _discard(temporary)
        reserved.clear()

    def make_folders(self, keys: Iterable[str]) -> list[str]:
        """The results' folders, made before their files; returns those it made, all inside the root (an object
        store has no folders to make)."""
        if not self.local:
            return []
        made = []
        for key in keys:
            folder = Path(self.path(key))
            below_root = [folder, *folder.parents][:len(folder.relative_to(self.root).parts)]
            made.extend(str(path) for path in reversed(below_root) if not path.exists())
            folder.mkdir(parents=True, exist_ok=True)
        return made

    def remove_stale_temporaries(self, keys: Iterable[str], older_than_s: float, owner: str = "") -> None:
        """Temporary files a writer killed between making and renaming them left in the results' folders: those
        older than `older_than_s`, longer than any live writer keeps one (a task's hard time limit), and those
        `owner` made at any age. A task delivered again runs only once its delivery before is over (its worker
        died, or the message waited out the visibility timeout, past the hard limit), so what that run left is
        stale at once; a redelivery soon after a pool child was killed would otherwise keep its temporaries."""
        cutoff, owned = time.time() - older_than_s, f".{_owner_tag(owner)}.tmp" if owner else None
        for key in keys if self.local else ():
            for temporary in glob.glob(os.path.join(glob.escape(self.path(key)), ".*.tmp")):
                with contextlib.suppress(FileNotFoundError):  # another job took it first
                    if (owned and temporary.endswith(owned)) or os.path.getmtime(temporary) < cutoff:
                        os.unlink(temporary)

    def remove_empty(self, folders: Iterable[str]) -> None:
        """Take back folders make_folders made for results that never came, where they are still empty."""
        for folder in sorted(folders, reverse=True):  # a folder's children before it
            try:
                os.rmdir(folder)
            except OSError:  # not empty: a result, or another job's folder, is in it
                pass

    def put(self, key: str, name: str, data: bytes, content_type: str | None = None, durable: bool = True) -> None:
        """One file, whole or not at all: a temporary name and a rename locally, one upload on S3.

        `durable`: synced to disk before the rename, so a crash never leaves a renamed empty file. Files
        rebuilt from others (an atlas's pages) skip the sync, which cost more than writing them
        (bench/RESULTS.md, Atlas).
        """
        if not self.local:
            self.fs.pipe_file(self.path(key, name), data, **({"ContentType": content_type} if content_type else {}))
            return
        temporary, target = self._stage(key, name, data, durable)
        try:
            os.replace(temporary, target)
        except BaseException:
            _discard(temporary)
            raise

    def _stage(self, key: str, name: str, data: bytes, durable: bool,
               reserved: tuple[str, str] | None = None) -> tuple[str, str]:
        """The file written beside its place under a temporary name (synced if `durable`): (temporary, place).
        `reserved`: that pair, made by `reserve`; its temporary is filled instead of a new one made."""
        if reserved is None:
            target = self.path(key, name)
            temporary = _temporary(target)
        else:
            temporary, target = reserved
        try:
            try:
                handle = open(temporary, "wb")
            except FileNotFoundError:  # no folder yet, or a failed job of the same key just took it back
                os.makedirs(os.path.dirname(target), exist_ok=True)
                handle = open(temporary, "wb")
            with handle:
                handle.write(data)
                if durable:
                    handle.flush()
                    os.fsync(handle.fileno())
        except BaseException:
            _discard(temporary)
            raise
        return temporary, target


class Result(NamedTuple):
    """One result to publish: its key, its artefacts by file name, and its meta (meta.json, written last)."""

    key: str
    artefacts: dict[str, bytes]
    meta: dict


def image_result(key: str, image: np.ndarray, png: bytes, meta: dict, extra: dict[str, bytes] | None = None) -> Result:
    """A job's picture, its raw pixels (float32), any extra artefacts (an animation), then its meta."""
    raw = io.BytesIO()
    np.save(raw, image.astype(np.float32))
    return Result(key, {IMAGE_PNG: png, IMAGE_NPY: raw.getvalue(), **(extra or {})}, meta)


def _meta_bytes(meta: dict) -> bytes:
    """Indented for people, in the meta's own field order; pydantic's JSON writer, as the standard library's
    indents in pure Python, at about ten times the cost (a batch writes a meta.json per job)."""
    return pydantic_core.to_json(meta, indent=1)


def _link_below(root: str, path: str) -> bool:
    """Whether a folder or file between the resolved root and `path` is a symbolic link: then `path` is
    resolved before it is checked. Stops at the first missing one, as nothing below it exists. Cheaper than
    resolving every path whole, which lstat'ed the root's own folders again for each file of a batch."""
    base = root.rstrip("/")
    if not path.startswith(base + "/"):
        return False
    current = base
    for part in path[len(base) + 1:].split("/"):
        current = f"{current}/{part}"
        try:
            if stat.S_ISLNK(os.lstat(current).st_mode):
                return True
        except (FileNotFoundError, NotADirectoryError):
            return False
    return False


def _temporary(target: str, owner: str = "") -> str:
    """A name beside `target` that no other writer takes, that names its `owner` if it has one, and that
    remove_stale_temporaries knows."""
    tag = f".{_owner_tag(owner)}" if owner else ""
    return os.path.join(os.path.dirname(target), f".{os.path.basename(target)}.{uuid.uuid4().hex}{tag}.tmp")


def _owner_tag(owner: str) -> str:
    """An owner (a task id, which whoever sends a task may choose) as hex digits: never a path."""
    return hashlib.sha256(owner.encode()).hexdigest()[:16]


def _discard(temporary: str) -> None:
    """A temporary file that was not renamed into place, removed."""
    if os.path.exists(temporary):
        os.unlink(temporary)


def _sync_filesystem(path: str) -> None:
    """Everything written so far on `path`'s filesystem on disk: syncfs(2) where Linux has it, else sync(2).

    It waits for other writers' data on that filesystem too: a results volume of its own keeps it short.
    On a network or FUSE mount a result is as durable as that filesystem's syncfs makes it.
    """
    syncfs = _syncfs()
    if syncfs is None:
        os.sync()
        return
    descriptor = os.open(path, os.O_RDONLY)
    try:
        if syncfs(descriptor) != 0:
            number = ctypes.get_errno()
            raise OSError(number, f"syncfs: {os.strerror(number)}", path)
    finally:
        os.close(descriptor)


@functools.lru_cache(maxsize=None)
def _syncfs() -> Callable[[int], int] | None:
    """libc's syncfs(int fd) -> int, or None where the C library has none."""
    try:
        syncfs = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError, TypeError):
        return None
    syncfs.argtypes, syncfs.restype = [ctypes.c_int], ctypes.c_int
    return syncfs
