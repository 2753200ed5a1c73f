"""How a user's model file gets into the registry, and how a serving process may load it afterwards.

Admitting (the `featurevis.register_model` task): the uploaded file must be
the one the producer hashed, pass the static check (featurevis/modelcheck.py),
and be described by a disposable process (featurevis/sandbox.py); a Keras 2
`.h5` file comes back converted to `.keras`, which is checked again and
stored beside the original as the file every worker serves. The worker that
runs the task never loads the file.

Serving (featurevis/zoo.py, when a worker builds a registered model): the
file is the one whose sha256 the description records, and it passes the
static check again, before Keras reads it. A file changed in the store after
registration is refused, not loaded.

TensorFlow-free: the task's process imports it before any model is built.
"""
from __future__ import annotations

from pathlib import Path

from featurevis import modelcheck, registry, sandbox
from featurevis.registry import ModelRefused
from featurevis.store import MODEL_FILE, ONNX_MODEL_FILE

FORMAT_NAMES = {modelcheck.KERAS: ".keras", modelcheck.LEGACY_H5: "Keras 2 HDF5", modelcheck.ONNX: "ONNX"}


def admit(models: registry.Registry, request: dict) -> dict:
    """The description of a registration request's model, from the disposable process; ModelRefused, one line,
    when it may not be served."""
    name, version, source = request["name"], request["sha256"], request["source"]
    if "keras_app" in source:
        with sandbox.described(request, None) as verdict:
            return verdict.description
    path = _upload(models, name, version, source["file"])
    if registry.version_of_file(path) != version:
        raise ModelRefused(f"sha256: the stored file's hash is not {version}")
    checked = modelcheck.check_file(path, input_size=source.get("input_size"))
    if modelcheck.UPLOAD_NAMES[checked.format] != source["file"]:
        raise ModelRefused(f"file: its content is a {FORMAT_NAMES[checked.format]} file, uploaded as {source['file']}")
    with sandbox.described(request, path) as verdict:
        description = verdict.description
        if verdict.converted is not None:
            models.store.put(models.key(name, version), MODEL_FILE, verdict.converted.read_bytes())
            description["file_sha256"] = registry.version_of_file(verdict.converted)
        else:
            description["file_sha256"] = version
    description["parameters"] = checked.params
    return description


def _upload(models: registry.Registry, name: str, version: str, file_name: str) -> Path:
    try:
        path = models.model_file(name, version, file_name=file_name, sha256=version)
    except FileNotFoundError:
        path = None
    if path is None or not path.is_file():
        raise ModelRefused(f"file: nothing uploaded at {models.key(name, version)}/{file_name}; put the file there first")
    size, limit = path.stat().st_size, registry.max_model_bytes()
    if size > limit:
        raise ModelRefused(f"file: {size} bytes, over the limit of {limit} (FEATUREVIS_MODEL_MAX_BYTES)")
    return path


def served_file(models: registry.Registry, info: registry.ModelInfo) -> Path:
    """The file a serving process may load for a registered model (its `.keras`, or its `.onnx`): the stored
    file whose sha256 the description records, checked again; ModelRefused (one line) otherwise."""
    expected = info.description.get("file_sha256", info.sha256)
    file_name = ONNX_MODEL_FILE if info.source.get("file") == ONNX_MODEL_FILE else MODEL_FILE
    path = models.model_file(info.name, info.sha256, file_name=file_name, sha256=expected)
    if registry.version_of_file(path) != expected:
        raise ModelRefused(f"file: the stored {file_name} of {info.name} is not the file registered as "
                           f"{info.sha256[:12]} (it changed in the store); register it again")
    modelcheck.check_file(path, input_size=info.source.get("input_size"))
    return path
