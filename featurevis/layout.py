"""The store's layout: every key and file name results, sweeps, models and the gallery live under. TF-free.

    <model>/<layer>/feature_0002/<job_id>/            one job (features_0002_0007: a composed objective)
        image.png  image.npy  [animation.webp]  [image_<i>.png: each picture of a diverse set]  meta.json
    <model>/<layer>/sweeps/<sweep_id>/                one sweep
        contact_sheet.png  meta.json
    models/<name>/<version>/                          a registered model version
        [model.keras]  description.json
    models/<name>/current.json                        the version a job on <name> gets
    models/<name>/<version>/dataset.npy, dataset.json  the model's dataset, for atlases' examples
    models/<name>/<version>/examples/<dataset>/       <layer>.json: each unit's top and bottom images; <index>.png
    atlases/<atlas_id>/                               an atlas: progress.json, index.html
    atlases/<atlas_id>/<layer>/                       index.html, units.json, unit_<NNNN>.html
    index.html                                        the gallery

A folder is complete exactly when its meta.json exists (store.py says how that
holds on each filesystem). Keys are built here and nowhere else; readers (the
gallery) take a result's model, layer and features from its meta.json, not
from its path.
"""
from __future__ import annotations

from collections.abc import Iterable

META = "meta.json"
IMAGE_PNG = "image.png"
IMAGE_NPY = "image.npy"
ANIMATION = "animation.webp"
CONTACT_SHEET = "contact_sheet.png"
GALLERY = "index.html"
GALLERY_LOCK = ".gallery.lock"

MODELS = "models"
MODEL_FILE = "model.keras"
DESCRIPTION = "description.json"
CURRENT = "current.json"

# Results and sweeps both sit this many folders below the root: a listing need go no deeper.
RECORD_DEPTH = 4


def job_key(model: str, layer: str, features: Iterable[int], composed: bool, job_id: str) -> str:
    """A job's folder: its model, layer and feature(s) make the store browsable, its id makes it unique."""
    numbers = "_".join(f"{feature:04d}" for feature in features)
    return f"{model}/{layer}/{'features' if composed else 'feature'}_{numbers}/{job_id}"


def sweep_key(model: str, layer: str, sweep_id: str) -> str:
    return f"{model}/{layer}/sweeps/{sweep_id}"


def model_key(name: str, version: str = "") -> str:
    return "/".join(part for part in (MODELS, name, version) if part)


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
    return "/".join(part for part in (ATLASES, atlas_id, layer) if part)


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
    return model, layer
