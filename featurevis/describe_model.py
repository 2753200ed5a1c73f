"""Inside the disposable process (featurevis/sandbox.py): load one new model, describe it, write the verdict.

    python -m featurevis.describe_model FOLDER

FOLDER holds request.json (the registration request, the file's name in the
folder, the limits) and the model file. Before anything else is imported the
process limits itself (address space, CPU time, file sizes, no core dumps)
and, for a user's file, leaves the network where the kernel allows it; then
it loads the model with Keras (`safe_mode`), describes it (featurevis/zoo.py),
converts a Keras 2 file to `.keras`, and writes verdict.json: the description,
or the one-line reason it is refused. Nothing else leaves the process.
"""
from __future__ import annotations

import ctypes
import json
import os
import resource
import sys
from pathlib import Path

CLONE_NEWUSER, CLONE_NEWNET = 0x10000000, 0x40000000
# Keys Keras 2 (tf.keras >= 2.3) writes into these layers' configs that the layers never used and Keras 3's
# constructors refuse (keras-team/keras#19151): dropping them changes nothing the model computes.
KERAS2_UNUSED_KEYS = {
    "SeparableConv2D": ("groups", "kernel_initializer", "kernel_regularizer", "kernel_constraint"),
    "DepthwiseConv2D": ("groups", "kernel_initializer", "kernel_regularizer", "kernel_constraint"),
}


def main(folder: Path) -> None:
    order = json.loads((folder / "request.json").read_text())
    _limit(order["memory_mb"], order["cpu_s"], order["max_file_bytes"])
    isolated = _leave_network() if order["isolate_network"] else False
    try:
        verdict = {**_describe(folder, order), "network_isolated": isolated}
    except Exception as error:  # noqa: BLE001 - every failure to load or describe is the model's
        verdict = {"refused": _refusal(error, order["memory_mb"])}
    verdict["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    temporary = folder / "verdict.json.tmp"
    temporary.write_text(json.dumps(verdict))
    os.replace(temporary, folder / "verdict.json")


def _limit(memory_mb: int, cpu_s: int, max_file_bytes: int) -> None:
    memory = memory_mb * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 5))
    resource.setrlimit(resource.RLIMIT_FSIZE, (max_file_bytes, max_file_bytes))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _leave_network() -> bool:
    """A network namespace of its own (no interfaces but a down loopback): as an unprivileged user through a
    user namespace, or directly where the process may. False where the kernel or container refuses both."""
    libc = ctypes.CDLL(None, use_errno=True)
    for flags in (CLONE_NEWUSER | CLONE_NEWNET, CLONE_NEWNET):
        if libc.unshare(flags) == 0:
            return True
    return False


def _describe(folder: Path, order: dict) -> dict:
    from featurevis import registry, targets, zoo  # TensorFlow loads here, under the limits

    request = order["request"]
    name, version, source = request["name"], request["sha256"], request["source"]
    if order["file"] is None:
        try:
            network = zoo.application(name, source["keras_app"], source["weights"])
        except registry.WeightsUnavailable as error:
            raise registry.ModelRefused(f"weights: {error}") from None
        default_preprocess = zoo.application_preprocess(source["keras_app"])
        class_names = request["class_names"]
        if class_names is None and targets.class_head(network).classes == 1000:
            class_names = list(registry.builtin_info("inception_v3").class_names)  # Keras' ImageNet order
        return {"description": zoo.describe(network, name, version, source, request["preprocess"], class_names,
                                            default_preprocess), "converted": False}
    path = folder / order["file"]
    if path.suffix == ".onnx":
        return _describe_onnx(path, request)
    dropped = _keras3_config(path) if path.suffix == ".h5" else []
    network = zoo.load_file(path)
    description = zoo.describe(network, name, version, source, request["preprocess"], request["class_names"])
    if path.suffix != ".h5":
        return {"description": description, "converted": False}
    network.save(folder / "converted.keras")
    description["converted_from"] = {"format": "Keras 2 HDF5", "sha256": version, "dropped_keys": dropped}
    return {"description": description, "converted": True}


def _describe_onnx(path: Path, request: dict) -> dict:
    """Built op by op, verified node by node against onnxruntime, described like a Keras model; PyTorch's
    preprocessing by default."""
    from featurevis import onnxcheck, onnxgraph, zoo
    from featurevis.registry import ModelRefused

    source = request["source"]
    network = zoo.load_onnx(path, source.get("input_size"))
    try:
        worst = onnxgraph.verify(onnxcheck.parse(path), network)
    except onnxgraph.NodeFailed as error:
        raise ModelRefused(f"file: {error}; refused") from None
    description = zoo.describe(network, request["name"], request["sha256"], source, request["preprocess"],
                               request["class_names"], default_preprocess="torch")
    description["onnx"] = {"verified_samples": onnxgraph.VERIFY_SAMPLES, "worst_difference_of_tolerance": worst}
    return {"description": description, "converted": False}


def _keras3_config(path: Path) -> list[str]:
    """Drop from a Keras 2 file's config the keys Keras 3 refuses and the layers never read; what was dropped."""
    import h5py

    with h5py.File(path, "r+") as handle:
        config = json.loads(handle.attrs["model_config"])
        dropped = []
        _drop_unused(config, dropped)
        if dropped:
            handle.attrs["model_config"] = json.dumps(config)
    return dropped


def _drop_unused(value, dropped: list[str]) -> None:
    if isinstance(value, dict):
        keys = KERAS2_UNUSED_KEYS.get(value.get("class_name"), ())
        config = value.get("config")
        if keys and isinstance(config, dict):
            gone = [key for key in keys if key in config]
            for key in gone:
                del config[key]
            if gone:
                dropped.append(f"{config.get('name')}: {', '.join(gone)}")
        for item in value.values():
            _drop_unused(item, dropped)
    elif isinstance(value, list):
        for item in value:
            _drop_unused(item, dropped)


def _refusal(error: Exception, memory_mb: int) -> str:
    """One line for what went wrong loading or describing (zoo.load_file names a layer Keras could not rebuild);
    the memory limit where that is what ran out."""
    from featurevis.registry import ModelRefused

    text = " ".join(str(error).split())
    if isinstance(error, MemoryError) or "ResourceExhausted" in type(error).__name__ or \
            any(sign in text for sign in ("OOM when allocating", "bad_alloc", "Unable to allocate")):
        return (f"file: loading it needs more than {memory_mb} MB of memory (FEATUREVIS_SANDBOX_MEMORY_MB); "
                f"refused")
    if isinstance(error, ModelRefused):
        return str(error)
    return f"file: {type(error).__name__}: {text[:240]}"


if __name__ == "__main__":
    main(Path(sys.argv[1]))
