"""The object-store directory: one folder of finished artefacts per result key.

`RESULTS_DIR` is a local directory (a shared mount when workers span hosts)
or an S3-compatible URL, `s3://bucket/prefix`, reached through fsspec/s3fs
(credentials and endpoint from the usual AWS variables, e.g. AWS_ENDPOINT_URL).

A result is complete exactly when its `meta.json` exists. Artefacts go in
first and `meta.json` last; on a local filesystem each is written under a
temporary name and renamed into place, on S3 each object appears whole when
its upload completes. So a reader (the cache check, a gallery, another host)
never sees half a result. Keys come from the validated contract, and every
path is checked to stay inside the root anyway.
"""
from __future__ import annotations

import io
import json
import os
import posixpath
import uuid
from pathlib import Path

import fsspec
import numpy as np
from fsspec.implementations.local import LocalFileSystem

from featurevis.layout import IMAGE_NPY, IMAGE_PNG, META

DEFAULT_ROOT = "./results"


class ResultStore:
    def __init__(self, root: str | os.PathLike):
        self.fs, path = fsspec.core.url_to_fs(str(root))
        self.local = isinstance(self.fs, LocalFileSystem)
        self.root = str(Path(path).resolve()) if self.local else path.rstrip("/")

    @classmethod
    def from_env(cls) -> "ResultStore":
        return cls(os.environ.get("RESULTS_DIR", DEFAULT_ROOT))

    def path(self, key: str, name: str = "") -> str:
        """The filesystem path of a key (or a file in it); refuses anything that escapes the root."""
        joined = posixpath.normpath(posixpath.join(self.root, key, name))
        if self.local:
            joined = str(Path(joined).resolve())
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

    def read_bytes(self, key: str, name: str) -> bytes:
        return self.fs.cat_file(self.path(key, name))

    def read_image(self, key: str) -> np.ndarray:
        return np.load(io.BytesIO(self.read_bytes(key, IMAGE_NPY)))

    def write(self, key: str, artefacts: dict[str, bytes], meta: dict) -> None:
        """Publish artefacts, then meta.json."""
        for name, data in artefacts.items():
            self.put(key, name, data)
        self.put(key, META, json.dumps(meta, indent=1, sort_keys=True).encode())

    def write_image_result(self, key: str, image: np.ndarray, png: bytes, meta: dict,
                           extra: dict[str, bytes] | None = None) -> None:
        """A job's picture, its raw pixels, any extra artefacts (an animation), then its meta."""
        raw = io.BytesIO()
        np.save(raw, image.astype(np.float32))
        self.write(key, {IMAGE_PNG: png, IMAGE_NPY: raw.getvalue(), **(extra or {})}, meta)

    def put(self, key: str, name: str, data: bytes, content_type: str | None = None, durable: bool = True) -> None:
        """One file, whole or not at all: a temporary name and a rename locally, one upload on S3.

        `durable`: synced to disk before the rename, so a crash never leaves a renamed empty file. Files
        rebuilt from others (an atlas's pages) skip the sync, which cost more than writing them
        (bench/RESULTS.md, Atlas).
        """
        target = self.path(key, name)
        if not self.local:
            self.fs.pipe_file(target, data, **({"ContentType": content_type} if content_type else {}))
            return
        os.makedirs(os.path.dirname(target), exist_ok=True)
        temporary = os.path.join(os.path.dirname(target), f".{name}.{uuid.uuid4().hex}.tmp")
        try:
            with open(temporary, "wb") as handle:
                handle.write(data)
                if durable:
                    handle.flush()
                    os.fsync(handle.fileno())
            os.replace(temporary, target)
        finally:
            if os.path.exists(temporary):
                os.unlink(temporary)
