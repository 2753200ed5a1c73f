"""Dataset examples: per unit of a layer, the dataset images that excite it most (and least). TensorFlow side.

The dataset streams through the network truncated at the layer, in batches of
BATCH images, and each unit's score is what the visualization climbs: the
channel's mean over the map (the logit, for classes). A running top-K and
bottom-K per unit (StreamingTopK) keeps memory at K x channels plus one batch,
whatever the dataset's size: no activation matrix of the whole dataset is
ever held. The pass serves every unit of the layer at once, so it runs once per
(model version, dataset, layer) and its result is stored beside the model:

    models/<name>/<version>/examples/<dataset fingerprint>/<layer>.json   indices and activations
    models/<name>/<version>/examples/<dataset fingerprint>/<index>.png     each image some unit shows
"""
from __future__ import annotations

import io
import json
from collections import OrderedDict

import numpy as np
from PIL import Image

from featurevis import registry
from featurevis.datasets import Dataset
from featurevis.store import ResultStore, example_png, examples_key, layer_folder

K = 9
BATCH = 64
PROBE_CACHE = 32  # compiled per-layer passes a process keeps, as the factory's steps


class StreamingTopK:
    """The K largest values per column over a stream of (rows, columns) blocks, with their row indices."""

    def __init__(self, columns: int, k: int = K):
        self.k = k
        self.values = np.empty((0, columns), np.float32)
        self.indices = np.empty((0, columns), np.int64)

    def update(self, values: np.ndarray, first_row: int) -> None:
        rows = np.broadcast_to(np.arange(first_row, first_row + len(values))[:, None], values.shape)
        values = np.concatenate([self.values, values.astype(np.float32)])
        indices = np.concatenate([self.indices, rows])
        if len(values) > self.k:
            kept = np.argpartition(-values, self.k - 1, axis=0)[:self.k]
            values, indices = np.take_along_axis(values, kept, 0), np.take_along_axis(indices, kept, 0)
        self.values, self.indices = values, indices

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """(values, indices), each (columns, K), largest first; ties keep the earlier image first."""
        order = np.lexsort((self.indices, -self.values), axis=0)
        return np.take_along_axis(self.values, order, 0).T, np.take_along_axis(self.indices, order, 0).T


def rank(scores, images: np.ndarray, k: int = K, batch: int = BATCH) -> dict:
    """Stream `images` through `scores` (a batch -> (batch, units) function); top and bottom k per unit."""
    top = bottom = None
    for first in range(0, len(images), batch):
        values = np.asarray(scores(np.asarray(images[first:first + batch], np.float32)))
        if top is None:
            top, bottom = StreamingTopK(values.shape[1], k), StreamingTopK(values.shape[1], k)
        top.update(values, first)
        bottom.update(-values, first)
    (top_values, top_indices), (bottom_values, bottom_indices) = top.result(), bottom.result()
    return {"k": k, "images": len(images),
            "top": {"indices": top_indices.tolist(), "values": top_values.tolist()},
            "bottom": {"indices": bottom_indices.tolist(), "values": (-bottom_values).tolist()}}


def key(info: registry.ModelInfo, dataset: Dataset) -> str:
    return examples_key(info.name, info.sha256, dataset.fingerprint)


def read(store: ResultStore, info: registry.ModelInfo, dataset: Dataset, layer: str) -> dict | None:
    try:
        return json.loads(store.read_bytes(key(info, dataset), f"{layer_folder(layer)}.json"))
    except FileNotFoundError:
        return None


def ranking(loaded, dataset: Dataset, layer: str, k: int = K) -> dict:
    """The dataset ranked for every unit of `layer`, unpublished: `make quality` compares pictures with it too,
    and a job's dataset start (dataset_starts.py) starts from its best."""
    return rank(_scores(loaded, layer), dataset.images, k)


def compute(store: ResultStore, loaded, dataset: Dataset, layer: str) -> dict:
    """Rank the dataset for every unit of `layer` and publish it: the pictures first, the ranking last."""
    ranked = ranking(loaded, dataset, layer)
    ranked.update(dataset=dataset.fingerprint, source=dataset.source, layer=layer)
    folder = key(loaded.info, dataset)
    shown = {index for part in ("top", "bottom") for row in ranked[part]["indices"] for index in row}
    for index in sorted(shown):
        if not store.fs.exists(store.path(folder, example_png(index))):
            store.put(folder, example_png(index), _png(dataset.images[index]))
    store.put(folder, f"{layer_folder(layer)}.json", json.dumps(ranked).encode())
    return ranked


def unit(ranked: dict, feature: int) -> dict:
    """One unit's examples: [(image index, activation)] top and bottom, and the dataset's best."""
    top = list(zip(ranked["top"]["indices"][feature], ranked["top"]["values"][feature]))
    bottom = list(zip(ranked["bottom"]["indices"][feature], ranked["bottom"]["values"][feature]))
    return {"top": top, "bottom": bottom, "best": top[0][1]}


def versus(objective: float, best: float) -> dict:
    """A unit's picture against its dataset: the objective at the picture over the best example's.

    Above 1 the picture excites the unit more than any dataset image; below, it does not beat
    natural images (the pages warn). Left out when no dataset image excites the unit at all (best <= 0).
    """
    ratio = {"activation_vs_dataset": float(objective / best)} if best > 0 else {}
    return {**ratio, "dataset_best": float(best)}


def _png(image: np.ndarray) -> bytes:
    """The image as the model sees it, 0..255 as is (no min-max stretch: these are natural images)."""
    pixels = np.asarray(image, np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels[..., :3]).save(buffer, format="PNG")
    return buffer.getvalue()


_compiled: OrderedDict[tuple[str, str, str], object] = OrderedDict()


def _scores(loaded, layer: str):
    """The layer's per-unit objective for a batch of images, compiled once per (model version, layer) per process."""
    import tensorflow as tf

    from featurevis.step_cache import target_network

    cache_key = (loaded.info.name, loaded.info.sha256, layer)
    if cache_key in _compiled:
        _compiled.move_to_end(cache_key)
        return _compiled[cache_key]
    network, _ = target_network(loaded, layer)

    @tf.function(input_signature=[tf.TensorSpec([None, *loaded.info.input_shape], tf.float32)])
    def scores(images):
        outputs = network(loaded.preprocess(images), training=False)
        return outputs if len(outputs.shape) == 2 else tf.reduce_mean(outputs, axis=[1, 2])

    _compiled[cache_key] = lambda images: scores(images).numpy()
    while len(_compiled) > PROBE_CACHE:
        _compiled.popitem(last=False)
    return _compiled[cache_key]
