"""The object-store directory: one folder of finished artefacts per result key.

A result is complete exactly when its `meta.json` exists. Artefacts are written
under temporary names and renamed into place, `meta.json` last, so a reader
(the cache check, a gallery, another host on a shared mount) never sees half a
result. Keys come from the validated contract, and every path is checked to
stay inside the root anyway.
"""
from __future__ import annotations

import io
import json
import os
import uuid
from pathlib import Path

import numpy as np

META = "meta.json"
IMAGE_PNG = "image.png"
IMAGE_NPY = "image.npy"
DEFAULT_ROOT = "./results"


class ResultStore:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).resolve()

    @classmethod
    def from_env(cls) -> "ResultStore":
        return cls(os.environ.get("RESULTS_DIR", DEFAULT_ROOT))

    def path(self, key: str, name: str = "") -> Path:
        """Absolute path of a key (or a file in it); refuses anything that escapes the root."""
        path = (self.root / key / name).resolve()
        if path != self.root and self.root not in path.parents:
            raise ValueError(f"result key {key!r} escapes the results directory")
        return path

    def read_meta(self, key: str) -> dict | None:
        """The meta of a complete result, or None when there is none (yet)."""
        try:
            return json.loads(self.path(key, META).read_text())
        except FileNotFoundError:
            return None

    def write(self, key: str, artefacts: dict[str, bytes], meta: dict) -> None:
        """Publish artefacts then meta.json, each by atomic rename."""
        for name, data in artefacts.items():
            self._put(key, name, data)
        self._put(key, META, json.dumps(meta, indent=1, sort_keys=True).encode())

    def write_image_result(self, key: str, image: np.ndarray, png: bytes, meta: dict) -> None:
        raw = io.BytesIO()
        np.save(raw, image.astype(np.float32))
        self.write(key, {IMAGE_PNG: png, IMAGE_NPY: raw.getvalue()}, meta)

    def _put(self, key: str, name: str, data: bytes) -> None:
        target = self.path(key, name)
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_name(f".{name}.{uuid.uuid4().hex}.tmp")
        try:
            with open(temporary, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, target)
        finally:
            temporary.unlink(missing_ok=True)
