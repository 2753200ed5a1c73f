"""Two GPU-pinned workers, a few jobs, and what each job ran on and how fast (scripts/gpu-check.sh).

Run as `python -m scripts.gpu_check` from the repository root (devstack is not installed). Starts an
embedded Redis and `python -m worker --gpus 0,1` (GPUS overrides the list), queues
jobs on conv_id 5, 50 and the logits, and prints per job: the node, the device from meta.json
and the seconds per iteration.
"""
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from devstack.redis_server import RedisServer
from devstack.stack import LocalStack, pongs, wait_until
from featurevis import contract
from featurevis.store import ResultStore
from producer import Producer

ROOT = Path(__file__).resolve().parent.parent

MODEL = os.environ.get("MODEL", "inception_v3_untrained")
GPUS = os.environ.get("GPUS", "0,1")
ITERATIONS = int(os.environ.get("ITERATIONS", 100))


def main() -> int:
    with tempfile.TemporaryDirectory() as folder, RedisServer(data_dir=Path(folder) / "redis") as server:
        env = {**LocalStack(results_dir=Path(folder) / "results", redis_url=server.url).env(),
               "FEATUREVIS_PRELOAD": MODEL}
        workers = subprocess.Popen([sys.executable, "-m", "worker", "--gpus", GPUS], cwd=ROOT, env=env)
        try:
            producer = Producer(server.url)
            wait_until(lambda: pongs(producer.app) >= len(GPUS.split(",")), 600, "GPU workers did not come up")
            jobs = [producer.enqueue({"model": MODEL, "conv_id": conv_id, "feature": feature,
                                      "iterations": ITERATIONS, "seed": 1})
                    for conv_id in (5, 50, None) for feature in (1, 2, 3, 4)]
            store = ResultStore(Path(folder) / "results")
            print(f"{'node':24s} {'target':8s} {'s/iteration':>11s}  device")
            for job in jobs:
                meta = contract.JobMeta.model_validate(store.read_meta(job.wait(timeout=900).key))
                per_iteration = meta.timings.optimize_s / meta.iterations
                print(f"{meta.worker.hostname:24s} {meta.layer_name:8s} {per_iteration:11.4f}  "
                      f"{meta.worker.device}  (compile {meta.timings.compile_s:.2f} s)", flush=True)
        finally:
            workers.terminate()
            workers.wait(timeout=120)
    return 0


if __name__ == "__main__":
    sys.exit(main())
