"""The dataset beside a model: natural images an atlas ranks each unit's examples from. TensorFlow-free.

A registered model may have one, stored in the registry's layout beside its file:

    models/<name>/<version>/dataset.npy     uint8 (n, height, width, channels), the model's input size
    models/<name>/<version>/dataset.json    {"sha256", "size", "source"}: the fingerprint names its examples

It comes from a `.npz` (its `images` array, or its only one) or a folder of
PNG/JPEG files (resized to the model's input). Stored as `.npy` so a worker
maps it from disk and streams it in batches: memory stays bounded whatever its
size. The built-in shapes models need no upload: their dataset is drawn from a fixed
seed by the generator each learnt from (featurevis/shapes.py for shapes_cnn and
shapes_cnn_b, featurevis/shapes_judge.py for the judge), the same on every machine.
"""
from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from featurevis import registry, shapes, shapes_judge
from featurevis.registry import ModelRefused
from featurevis.store import DATASET, DATASET_INFO

# The built-in models' datasets: drawn from a fixed seed by the generator each learnt from (its module).
GENERATORS = {"shapes": shapes.generate, "shapes_judge": shapes_judge.generate}
DRAWN_BY = {"shapes_cnn": "shapes", "shapes_cnn_b": "shapes", "shapes_judge": "shapes_judge",
            "shapes_judge_clean": "shapes_judge"}
DRAWN_SIZE, DRAWN_SEED = 320, 20_261_129  # a few hundred images, drawn apart from training's seeds
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass(frozen=True)
class Dataset:
    images: np.ndarray  # (n, h, w, c) 0..255, possibly a read-only map of the file
    fingerprint: str  # names the examples computed from it: a new dataset gives new examples
    source: str


def fingerprint(models: registry.Registry, info: registry.ModelInfo) -> str | None:
    """The model's dataset's fingerprint, None when it has none, read without its images (the contract
    names the dataset a maco job's magnitude spectrum comes from)."""
    if _generator(info):
        return drawn_fingerprint(_generator(info))
    described = _described(models, info)
    return None if described is None else _uploaded_fingerprint(described)


def for_model(models: registry.Registry, info: registry.ModelInfo) -> Dataset | None:
    """The model's dataset, or None when it has none."""
    if _generator(info):
        return drawn(_generator(info))
    described = _described(models, info)
    if described is None:
        return None
    store, key = models.store, models.key(info.name, info.sha256)
    if store.local:
        images = np.load(store.path(key, DATASET), mmap_mode="r")
    else:  # a worker copies it once per version, as it does the model file
        local = registry.model_cache_dir() / info.name / info.sha256 / DATASET
        if not local.is_file():
            local.parent.mkdir(parents=True, exist_ok=True)
            store.fs.get_file(store.path(key, DATASET), str(local))
        images = np.load(local, mmap_mode="r")
    return Dataset(images, _uploaded_fingerprint(described), described["source"])


def _generator(info: registry.ModelInfo) -> str | None:
    """The generator a built-in model's dataset is drawn by; None for a model with an uploaded one, or none."""
    return DRAWN_BY.get(info.source.get("architecture")) if info.source.get("builtin") else None


def _uploaded_fingerprint(described: dict) -> str:
    """An uploaded dataset's name in examples' keys and maco jobs' ids: its file's sha256, shortened."""
    return described["sha256"][:16]


def drawn_fingerprint(generator: str) -> str:
    return f"{generator}-{DRAWN_SIZE}-{DRAWN_SEED}"


def _described(models: registry.Registry, info: registry.ModelInfo) -> dict | None:
    """dataset.json beside the model version: {sha256, size, source}; None when it has no dataset."""
    try:
        return json.loads(models.store.read_bytes(models.key(info.name, info.sha256), DATASET_INFO))
    except FileNotFoundError:
        return None


@lru_cache(maxsize=len(GENERATORS))
def drawn(generator: str) -> Dataset:
    """A built-in model's dataset, the same on every machine."""
    images, _ = GENERATORS[generator](DRAWN_SIZE, DRAWN_SEED)
    images = np.round(images).astype(np.uint8)
    images.setflags(write=False)
    return Dataset(images, drawn_fingerprint(generator),
                   f"featurevis.{generator}.generate({DRAWN_SIZE}, seed={DRAWN_SEED})")


def load(path: str | Path, input_shape: tuple[int, int, int]) -> np.ndarray:
    """A dataset file or folder as uint8 (n, h, w, c) at the model's input size; ModelRefused, one line, otherwise."""
    path = Path(path)
    height, width, channels = input_shape
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ModelRefused(f"dataset: no PNG or JPEG file in {str(path)[:120]}")
        mode = {1: "L", 3: "RGB"}.get(channels)
        if mode is None:
            raise ModelRefused(f"dataset: a folder of pictures serves 1- or 3-channel models; this one takes {channels}")
        images = np.empty((len(files), height, width, channels), np.uint8)
        for index, file in enumerate(files):
            try:
                with Image.open(file) as picture:
                    resized = picture.convert(mode).resize((width, height), Image.Resampling.BILINEAR)
            except OSError as error:
                raise ModelRefused(f"dataset: {file.name} is not a readable picture: {error}") from None
            images[index] = np.asarray(resized).reshape(height, width, channels)
        return images
    if path.suffix.lower() != ".npz" or not path.is_file():
        raise ModelRefused(f"dataset: must be a .npz file or a folder of PNG/JPEG files, got {str(path)[:120]}")
    with np.load(path) as archive:
        names = list(archive.files)
        name = "images" if "images" in names else (names[0] if len(names) == 1 else None)
        if name is None:
            raise ModelRefused(f"dataset: {path.name} holds {', '.join(names[:5])}; name the array 'images'")
        images = archive[name]
    if images.ndim != 4 or tuple(images.shape[1:]) != tuple(input_shape) or not len(images):
        raise ModelRefused(f"dataset: must be images of the model's input, (n, {height}, {width}, {channels}) with "
                           f"n >= 1, got {tuple(images.shape)}")
    if not np.issubdtype(images.dtype, np.number) or images.min() < 0 or images.max() > 255:
        raise ModelRefused("dataset: pixels must be numbers in 0..255, as the model's jobs see them")
    return np.round(images).astype(np.uint8)


def put(models: registry.Registry, info: registry.ModelInfo, path: str | Path) -> dict:
    """Store a dataset beside a registered model version; its description ({sha256, size, source})."""
    images = load(path, info.input_shape)
    raw = io.BytesIO()
    np.save(raw, images)
    data = raw.getvalue()
    described = {"sha256": hashlib.sha256(data).hexdigest(), "size": int(len(images)), "source": Path(path).name}
    key = models.key(info.name, info.sha256)
    models.store.put(key, DATASET, data)
    models.store.put(key, DATASET_INFO, json.dumps(described).encode())  # last: its presence means "complete"
    return described
