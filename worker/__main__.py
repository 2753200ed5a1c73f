"""`python -m worker`: Celery workers for featurevis, one job at a time per process.

    python -m worker                   one worker (prefork, 1 process) in this process
    python -m worker --gpus 0,1        one worker per GPU, pinned: nodes gpu0@host, gpu1@host
    python -m worker --cpu-workers 2   two CPU workers (GPUs hidden): nodes cpu1@host, cpu2@host
    python -m worker health --node gpu0@%h     exit 0 only if the node answers and its models preloaded
    python -m worker fetch-weights inception_v3  put a model's weights in KERAS_HOME once, before workers start

Reads REDIS_URL (default redis://127.0.0.1:6379/0) and RESULTS_DIR (default
./results). Prefork, not solo: solo hides running tasks from Flower and blocks
remote control during a job. Each pinned worker gets CUDA_VISIBLE_DEVICES
before anything imports TensorFlow; the model is built in its pool child.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m worker", description=__doc__.splitlines()[0])
    fleet = parser.add_mutually_exclusive_group()
    fleet.add_argument("--gpus", help="comma-separated GPU ids (or UUIDs): one pinned worker process each")
    fleet.add_argument("--cpu-workers", type=int, help="start this many CPU-only worker processes")
    parser.add_argument("--hostname", default=None,
                        help="node name of a single worker (or of the one GPU given to --gpus), e.g. gpu1@%%h")
    parser.add_argument("--concurrency", type=int, default=None,
                        help="pool processes of a single worker (default 1, worker_concurrency in celeryconfig)")
    parser.add_argument("--loglevel", default="INFO")
    parser.add_argument("--preload", default=os.environ.get("FEATUREVIS_PRELOAD", ""),
                        help="comma-separated models to build when each pool process starts")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["health"]:
        from worker import health

        return health.main(argv[1:])
    if argv[:1] == ["fetch-weights"]:
        return _fetch_weights(argv[1:])
    parser = _parser()
    args = parser.parse_args(argv)
    if args.concurrency is not None and (args.gpus or args.cpu_workers):
        parser.error("--concurrency is for a single worker: --gpus and --cpu-workers run one process per member")
    if args.gpus:
        gpus = args.gpus.split(",")
        if len(gpus) == 1 and args.hostname:  # a container given one GPU sees it as 0, but keeps its name
            return _fleet([(args.hostname.split("@")[0], gpus[0])], args)
        return _fleet([(f"gpu{gpu}", gpu) for gpu in gpus], args)
    if args.cpu_workers:
        return _fleet([(f"cpu{index}", "") for index in range(1, args.cpu_workers + 1)], args)
    os.environ["FEATUREVIS_PRELOAD"] = args.preload
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from worker.app import app

    worker_argv = ["worker", f"--loglevel={args.loglevel}", "--pool=prefork", "--task-events"]
    if args.concurrency is not None:
        worker_argv.append(f"--concurrency={args.concurrency}")
    if args.hostname:
        worker_argv.append(f"--hostname={args.hostname}")
    app.worker_main(worker_argv)
    return 0


def _fetch_weights(models: list[str]) -> int:
    """Build each model once in this process, so its weights are downloaded into KERAS_HOME by one
    process only: workers that share a cache and each download on first start race on the file."""
    from worker import runtime

    for name in models:
        try:
            runtime.factory().model(name)
        except Exception as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        print(f"{name}: weights in place")
    return 0


def _fleet(members: list[tuple[str, str]], args: argparse.Namespace) -> int:
    """One single-process worker per member, each pinned by CUDA_VISIBLE_DEVICES ('' hides every GPU)."""
    children = [
        subprocess.Popen([sys.executable, "-m", "worker", f"--hostname={name}@%h", f"--loglevel={args.loglevel}",
                          f"--preload={args.preload}"], env={**os.environ, "CUDA_VISIBLE_DEVICES": device})
        for name, device in members
    ]

    def forward(signum, _frame):  # warm shutdown of every member: running jobs finish first
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
        signal.signal(signum, forward)
    return max(child.wait() for child in children)


if __name__ == "__main__":
    sys.exit(main())
