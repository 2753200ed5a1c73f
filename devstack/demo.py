"""`make demo`: the tutorial's cases, end to end, on an embedded stack, then a model of your own.

Starts Redis (unless REDIS_URL is set), one worker and Flower on
127.0.0.1:5555, then queues through the producer exactly as a user would:
the tutorial's layer mixed/conv (conv_id 5) feature 2 with a live progress
bar, a six-feature sweep of that layer, and one class logit (kit fox, by name).
ImageNet weights are used when Keras can load them; otherwise the demo says so
and runs on inception_v3_untrained, whose pictures show an architecture, not a
trained network's concepts. So it then draws all ten classes of the trained
shapes_cnn that ships with the repository, by the robust method: pictures a
person can read. Then it makes a model as most users do (examples/save_a_model.py:
a trained backbone nested as one layer, fine-tuned with a new head), registers it
and visualizes a layer inside its backbone, by path.
Last, a small atlas of shapes_cnn (a few units of each layer, with the dataset
images that excite each most), and the path of its page.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from devstack.stack import REPO_ROOT, LocalStack
from featurevis.registry import WeightsUnavailable
from producer import Producer
from producer.cli import follow, follow_atlas
from producer.client import JobFailed

FLOWER_PORT = 5555
TUTORIAL_LAYER = "mixed/conv"  # the tutorial's conv_names[5]
EXAMPLE = REPO_ROOT / "examples" / "save_a_model.py"
EXAMPLE_LAYER = "shapes_backbone/conv3"  # a layer inside the example's nested backbone
ATLAS_UNITS = 4  # of each layer: a small atlas that shows the pages in seconds


def main() -> int:
    results = Path(os.environ.get("RESULTS_DIR", "results")).resolve()
    state = results.parent / ".featurevis"
    stack = LocalStack(results_dir=results, flower_port=FLOWER_PORT, redis_url=os.environ.get("REDIS_URL"),
                       redis_dir=state / "redis", log_dir=state / "logs")
    say(f"starting Redis, a worker and Flower (http://127.0.0.1:{FLOWER_PORT}); logs in {stack.log_dir}")
    with stack:
        os.environ.update(REDIS_URL=stack.redis_url, RESULTS_DIR=str(results))
        producer = Producer(stack.redis_url, results)
        pictures = []
        model = "inception_v3"
        say(f"1/6 layer {TUTORIAL_LAYER} (conv_id 5) feature 2, 30 iterations (the tutorial's first picture)")
        tutorial_case = dict(layer=TUTORIAL_LAYER, feature=2, iterations=30)
        try:
            pictures.append(run(producer.enqueue(dict(model=model, **tutorial_case))))
        except JobFailed as error:
            if not isinstance(error.__cause__, WeightsUnavailable):
                raise
            model = "inception_v3_untrained"
            say(f"ImageNet weights unavailable ({error}); running on {model} instead")
            pictures.append(run(producer.enqueue(dict(model=model, **tutorial_case))))
        say(f"2/6 sweep: features 1-6 of {TUTORIAL_LAYER} in one batched pass")
        pictures.append(run(producer.sweep(dict(model=model, layer=TUTORIAL_LAYER, features=[1, 2, 3, 4, 5, 6],
                                                iterations=30))))
        say("3/6 the class kit fox (Keras' class 278; the tutorial's #1), 100 iterations")
        pictures.append(run(producer.enqueue({"model": model, "class": "kit fox", "iterations": 100})))
        say("4/6 shapes_cnn (trained, shipped): its ten classes by the robust method, 100 iterations, one sweep")
        pictures.append(run(producer.sweep(dict(model="shapes_cnn", features=list(range(10)), method="robust",
                                                iterations=100))))
        say("5/6 your own model: examples/save_a_model.py fine-tunes a nested backbone; register it, visualize a "
            f"layer inside the backbone ({EXAMPLE_LAYER})")
        pictures.append(run(producer.enqueue(dict(model=register_example(producer, state), layer=EXAMPLE_LAYER,
                                                  feature=3, method="robust", iterations=100))))
        say(f"6/6 an atlas: the first {ATLAS_UNITS} units of each shapes_cnn Conv2D layer, with their dataset examples")
        atlas_page = run_atlas(producer.atlas({"model": "shapes_cnn", "units": ATLAS_UNITS, "method": "robust",
                                               "iterations": 100, "seed": 1}))
    say("pictures:")
    for picture in pictures:
        print(picture)
    say(f"everything is under {results} (image.png, image.npy and meta.json per job); "
        f"open {results / 'index.html'} for the gallery")
    say("the atlas (layers, each unit's picture beside the shapes that excite it most):")
    print(atlas_page)
    return 0


def register_example(producer: Producer, state: Path) -> str:
    """Save the example model as a user would, register it (waiting for a worker's verdict), return its name."""
    saved = state / "my_model.keras"
    if not saved.exists():
        state.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, str(EXAMPLE), str(saved)], check=True,
                       env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}, stderr=subprocess.DEVNULL)
    classes = (REPO_ROOT / "examples" / "shapes.txt").read_text().split()
    verdict = producer.register_model("my-model", file=saved, class_names=classes)
    say(f"registered my-model at {verdict['sha256'][:12]}: `python -m producer models show my-model` lists its "
        f"layers, the backbone's by path")
    return "my-model"


def run(job) -> str:
    say(f"job {job.id}")
    return follow(job)


def run_atlas(job) -> str:
    say(f"atlas {job.id}: {job.queued} of {job.atlas.total} units queued")
    return follow_atlas(job)


def say(message: str) -> None:
    print(f"[demo] {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
