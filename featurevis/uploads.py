"""Uploaded images a job uses, fitted to its model: a caricature's target activations, a start picture.

The producer checked that an upload exists and decodes, not that it fits the
model: here it is resized to the model's input (images.fit), and a picture
that cannot be one is a ValueError of one line naming the job's field.
"""
from __future__ import annotations

from collections import Counter, OrderedDict
from typing import Callable

import keras
import numpy as np
import tensorflow as tf

from featurevis import images, registry
from featurevis.model_cache import LoadedModel

CARICATURE_CACHE = 16  # (model, layer, image) activations a process keeps: each is one layer's map


class Uploads:
    def __init__(self, models: Callable[[], registry.Registry], builds: Counter):
        self.registry = models
        self.builds = builds
        self._caricatures: OrderedDict[tuple[str, str, str, str], np.ndarray] = OrderedDict()

    def caricature(self, loaded: LoadedModel, layer: str, key: str) -> np.ndarray:
        """The activations (h, w, channels) an uploaded image gives at a layer: a caricature's target.

        Computed once per (model version, layer, image) in this process and kept
        in a small LRU, so a repeated caricature reads neither the store nor the network.
        """
        cache_key = (loaded.info.name, loaded.info.sha256, layer, key)
        if cache_key in self._caricatures:
            self._caricatures.move_to_end(cache_key)
            return self._caricatures[cache_key]
        pixels = self._fitted(key, loaded.info.input_shape, "targets: caricature image")
        network = keras.Model(loaded.network.inputs[0], loaded.layer_output(layer))
        activations = network(loaded.preprocess(tf.constant(pixels[None])), training=False)
        self._caricatures[cache_key] = np.asarray(tf.cast(activations, tf.float32))[0]
        self.builds["caricature"] += 1
        while len(self._caricatures) > CARICATURE_CACHE:
            self._caricatures.popitem(last=False)
        return self._caricatures[cache_key]

    def start_image(self, loaded: LoadedModel, key: str) -> np.ndarray:
        """The picture a job starts from. Not cached: one read and resize per batch is nothing beside the climb."""
        return self._fitted(key, loaded.info.input_shape, "start_image:")

    def _fitted(self, key: str, shape: tuple[int, int, int], named: str) -> np.ndarray:
        try:
            return images.fit(images.decode_upload(self.registry().store.read_bytes(key, ""), key.rsplit(".", 1)[1]),
                              shape)
        except ValueError as error:
            raise ValueError(f"{named} {key[:24]}...: {error}") from None
