"""`make demo`: the tutorial's cases, end to end, on an embedded stack.

Starts Redis (unless REDIS_URL is set), one worker and Flower on
127.0.0.1:5555, then queues through the producer exactly as a user would:
conv_id 5 feature 2 with a live progress bar, a six-feature sweep of that
layer, and one class logit (kit fox). ImageNet weights are used when Keras
can load them; otherwise the demo says so and runs on inception_v3_untrained,
whose pictures show an architecture, not a trained network's concepts. So the
last step draws all ten classes of the trained shapes_cnn that ships with the
repository, by the robust method: pictures a person can read.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from featurevis.registry import WeightsUnavailable
from featurevis.stack import LocalStack
from producer import Producer
from producer.cli import follow
from producer.client import JobFailed

FLOWER_PORT = 5555
KIT_FOX = 278  # the tutorial's final picture; class 1 in its 1001-class numbering


def main() -> int:
    results = Path(os.environ.get("RESULTS_DIR", "results")).resolve()
    stack = LocalStack(results_dir=results, flower_port=FLOWER_PORT, redis_url=os.environ.get("REDIS_URL"),
                       redis_dir=results.parent / ".featurevis" / "redis", log_dir=results.parent / ".featurevis" / "logs")
    say(f"starting Redis, a worker and Flower (http://127.0.0.1:{FLOWER_PORT}); logs in {stack.log_dir}")
    with stack:
        os.environ.update(REDIS_URL=stack.redis_url, RESULTS_DIR=str(results))
        producer = Producer(stack.redis_url)
        pictures = []
        model = "inception_v3"
        say("1/4 conv_id=5 feature=2, 30 iterations (the tutorial's first picture)")
        try:
            pictures.append(run(producer.enqueue(dict(model=model, conv_id=5, feature=2, iterations=30))))
        except JobFailed as error:
            if not isinstance(error.__cause__, WeightsUnavailable):
                raise
            model = "inception_v3_untrained"
            say(f"ImageNet weights unavailable ({error}); running on {model} instead")
            pictures.append(run(producer.enqueue(dict(model=model, conv_id=5, feature=2, iterations=30))))
        say("2/4 sweep: features 1-6 of conv_id=5 in one batched pass")
        pictures.append(run(producer.sweep(dict(model=model, conv_id=5, features=[1, 2, 3, 4, 5, 6], iterations=30))))
        say(f"3/4 class logit {KIT_FOX} (kit fox), 100 iterations")
        pictures.append(run(producer.enqueue(dict(model=model, feature=KIT_FOX, iterations=100))))
        say("4/4 shapes_cnn (trained, shipped): its ten classes by the robust method, 100 iterations, one sweep")
        pictures.append(run(producer.sweep(dict(model="shapes_cnn", features=list(range(10)), method="robust",
                                                iterations=100))))
    say("pictures:")
    for picture in pictures:
        print(picture)
    say(f"everything is under {results} (image.png, image.npy and meta.json per job); "
        f"open {results / 'index.html'} for the gallery")
    return 0


def run(job) -> str:
    say(f"job {job.id}")
    return follow(job)


def say(message: str) -> None:
    print(f"[demo] {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
