"""`python -m worker`: a prefork worker with one job at a time per process.

Reads REDIS_URL (default redis://127.0.0.1:6379/0) and RESULTS_DIR (default
./results). Prefork, not solo: solo hides running tasks from Flower and
blocks remote control during a job.
"""
import argparse
import os

from worker.app import app


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m worker", description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=1, help="pool processes (default 1)")
    parser.add_argument("--hostname", default=None, help="node name, e.g. cpu1@%%h")
    parser.add_argument("--loglevel", default="INFO")
    parser.add_argument("--preload", default=os.environ.get("FEATUREVIS_PRELOAD", ""),
                        help="comma-separated models to build when each process starts")
    args = parser.parse_args(argv)
    os.environ["FEATUREVIS_PRELOAD"] = args.preload
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    worker_argv = ["worker", f"--loglevel={args.loglevel}", "--pool=prefork",
                   f"--concurrency={args.concurrency}", "--task-events"]
    if args.hostname:
        worker_argv.append(f"--hostname={args.hostname}")
    app.worker_main(worker_argv)


if __name__ == "__main__":
    main()
