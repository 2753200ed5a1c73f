"""Part 12 of `make bench` (`python -m bench.run --peers` alone): the libraries people would use instead.

The same work for each, measured in one run on this machine: 30 iterations at `conv2d_5` of untrained
InceptionV3 (the tutorial's `mixed/conv`), channel 0's mean, on a 299x299 picture of 0..255 pixels that the
network sees through InceptionV3's preprocessing (x / 127.5 - 1). Each measure runs in a process of its own
(`python -m bench.peers MEASURE RUNS`), builds the model once, runs once to trace, and reports its fastest of
RUNS runs (the machine may be shared: the fastest run is the fairest figure):
- `bare`: the service's compiled gradient-ascent step, called 30 times and nothing else (the limit);
- `xplique_plain` / `xplique`: Xplique's `optimize` without Fourier preconditioning and transforms, and at
  its defaults (but the picture size and pixel range);
- `tf_keras_vis_plain` / `tf_keras_vis`: tf-keras-vis' ActivationMaximization without input modifiers and
  regularizers, and at its defaults.
The service itself, a whole job from enqueue to result through Redis and a warm worker, is timed by bench/run.py.

The peers are installed by the bench into a virtual environment of their own (`bench/.peers`, `pip install
--no-deps`), never into the service's; it sees the service's packages (the same TensorFlow and Keras) through
a `.pth` file naming their folder. Xplique 2.0.2 declares TensorFlow <= 2.20 and imports OpenCV and
scikit-learn at its top, so its feature-visualization modules are imported alone; tf-keras-vis 0.8.7 needs
scipy, imageio and deprecated beside it. A peer that cannot be installed or imported is reported as such,
with the reason.
"""
from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import sysconfig
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PEERS_DIR = ROOT / "bench" / ".peers"
PEERS_PYTHON = PEERS_DIR / "bin" / "python"
# What the bench installs, pinned: the two peers and what tf-keras-vis imports that the service does not have.
PACKAGES = ["xplique==2.0.2", "tf-keras-vis==0.8.7", "scipy==1.17.1", "imageio==2.38.2", "deprecated==1.3.1",
            "wrapt==2.5.2"]
MEASURES = ["bare", "xplique_plain", "xplique", "tf_keras_vis_plain", "tf_keras_vis"]
ITERATIONS, LAYER, CHANNEL, SIZE = 30, "conv2d_5", 0, 299
RUNS = 5


def install() -> str | None:
    """The peers' environment in PEERS_DIR; None, or why it could not be made (one line)."""
    stamp = PEERS_DIR / ".installed"
    if stamp.is_file() and stamp.read_text() == "\n".join(PACKAGES):
        return None
    steps = [[sys.executable, "-m", "venv", str(PEERS_DIR)],
             [str(PEERS_PYTHON), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
              *PACKAGES]]
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True)
        if done.returncode != 0:
            return " ".join(done.stderr.split())[-300:] or f"{step[2]} exited {done.returncode}"
        if step is steps[0]:  # the service's TensorFlow and Keras, seen from the peers' environment
            folder = subprocess.run([str(PEERS_PYTHON), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                    capture_output=True, text=True, check=True).stdout.strip()
            Path(folder, "service-packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    stamp.write_text("\n".join(PACKAGES))
    return None


def measure(name: str, runs: int = RUNS) -> dict:
    """One measure in a process of its own: {"seconds": fastest, "runs": [...], "version": ...} or {"error"}."""
    python = sys.executable if name == "bare" else str(PEERS_PYTHON)  # the service's own, or the peers'
    done = subprocess.run([python, "-m", "bench.peers", name, str(runs)], capture_output=True, text=True,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, cwd=ROOT, timeout=1800)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        return {"error": " ".join(done.stderr.split())[-300:] or f"exited {done.returncode}"}
    return json.loads(lines[-1])


def run(service, conv_id: int = 5, jobs: int = 3) -> dict:
    """Every measure, and the service's whole job (enqueue to result, median of `jobs`, the step already
    compiled), each as seconds per 30-iteration run and as a multiple of the bare loop."""
    failed = install()
    rows = {}
    for name in MEASURES:
        if failed and name != "bare":
            rows[name] = {"error": f"not installed: {failed}"}
            continue
        rows[name] = measure(name)
        print(f"  {name}: {rows[name].get('seconds', rows[name].get('error'))}", flush=True)
    service.job(conv_id, CHANNEL, ITERATIONS, "inception_v3_untrained")
    whole = sorted(service.job(conv_id, CHANNEL, ITERATIONS, "inception_v3_untrained")[0] for _ in range(jobs))
    rows["service"] = {"seconds": whole[len(whole) // 2], "runs": whole, "version": "featurevis"}
    bare = rows["bare"].get("seconds")
    for row in rows.values():
        if bare and "seconds" in row:
            row["over_bare"] = row["seconds"] / bare
    return {"iterations": ITERATIONS, "layer": LAYER, "rows": rows}


LABELS = {"bare": "bare compiled loop (the limit)", "service": "this service, a whole job from enqueue to result "
          "(median of 3)", "xplique_plain": "Xplique `optimize`, no FFT, no transforms", "xplique": "Xplique at its "
          "defaults", "tf_keras_vis_plain": "tf-keras-vis, no regularizers or modifiers", "tf_keras_vis":
          "tf-keras-vis at its defaults"}


def print_rows(results: dict) -> None:
    peers = results.get("peers")
    if not peers:
        return
    for name in ["bare", "service", *MEASURES[1:]]:
        row = peers["rows"][name]
        label = f"{LABELS[name]}{'' if row.get('version') in (None, 'featurevis') else ' ' + row['version']}"
        if "error" in row:
            print(f"| peers: {label} | could not run: {row['error'][:120]} | |")
        else:
            print(f"| peers: {label}, s per {peers['iterations']}-iteration run (x the bare loop) | "
                  f"{row['seconds']:.2f} ({row['over_bare']:.2f}) | |")


# --- inside the measuring process -------------------------------------------------------------------------------


def _network():
    """Untrained InceptionV3 up to conv2d_5, behind its preprocessing: 0..255 pixels in, the layer's maps out."""
    import keras

    keras.utils.set_random_seed(0)  # the service's inception_v3_untrained
    pixels = keras.Input((SIZE, SIZE, 3))
    inception = keras.applications.InceptionV3(weights=None, input_tensor=keras.layers.Rescaling(
        1 / 127.5, offset=-1.0)(pixels))
    return keras.Model(pixels, inception.get_layer(LAYER).output)  # one flat graph: the layer is its last


def _xplique():
    """Xplique's feature-visualization modules, imported without the package's top (OpenCV, scikit-learn)."""
    folder = Path(importlib.util.find_spec("xplique").submodule_search_locations[0])
    for package in ("xplique", "xplique.commons"):
        module = types.ModuleType(package)
        module.__path__ = [str(folder / package.partition(".")[2].replace(".", "/"))] if "." in package \
            else [str(folder)]
        sys.modules[package] = module
    sys.modules["xplique.commons"].find_layer = importlib.import_module("xplique.commons.model_override").find_layer
    return importlib.import_module("xplique.features_visualizations")


def _runner(name: str):
    """A function doing the whole 30-iteration run the measure names, and the library's version."""
    import tensorflow as tf

    if name == "bare":
        from bench.loop import compiled_loop
        from featurevis.factory import ModelFactory

        acquired = ModelFactory().acquire("inception_v3_untrained", LAYER)
        return compiled_loop(acquired, LAYER, CHANNEL, ITERATIONS), "featurevis"
    network = _network()
    if name.startswith("xplique"):
        from importlib.metadata import version

        vis = _xplique()
        objective = vis.Objective.channel(network, -1, CHANNEL)
        options = {"use_fft": False, "transformations": None} if name.endswith("plain") else {}
        return (lambda: vis.optimize(objective, nb_steps=ITERATIONS, values_range=(0, 255), custom_shape=(SIZE, SIZE),
                                     **options)), version("xplique")
    from importlib.metadata import version

    from tf_keras_vis.activation_maximization import ActivationMaximization

    maximization = ActivationMaximization(network, clone=False)
    score = lambda output: tf.reduce_mean(output[..., CHANNEL], axis=(1, 2))  # noqa: E731
    options = {"input_modifiers": None, "regularizers": None} if name.endswith("plain") else {}
    return (lambda: maximization(score, steps=ITERATIONS, input_range=(0, 255), seed_input=tf.random.uniform(
        (1, SIZE, SIZE, 3), 0, 255), **options)), version("tf-keras-vis")


def _child(name: str, runs: int) -> None:
    run, library_version = _runner(name)
    run()  # traces; the figure is a warm run's, as a worker's second job on a layer
    times = []
    for _ in range(runs):
        began = time.perf_counter()
        run()
        times.append(time.perf_counter() - began)
    print(json.dumps({"seconds": min(times), "runs": times, "version": library_version}))


if __name__ == "__main__":
    _child(sys.argv[1], int(sys.argv[2]))
