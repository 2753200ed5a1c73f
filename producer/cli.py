"""`python -m producer`: enqueue, sweep and status from a shell.

stdout carries what scripts read: the job id on the first line and, with
--wait, the absolute path (or s3:// URL, or its address under RESULTS_URL when that is
set) of the picture on the last. Progress bars and
notes go to stderr. Every error is one line on stderr.

Exit codes: 0 done, 1 the job failed, 2 invalid input (nothing queued),
3 Redis unreachable.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from urllib.parse import quote

from tqdm import tqdm

from featurevis.contract import JobError
from featurevis.store import ResultStore
from producer.client import BrokerUnavailable, Job, JobFailed, Producer

EXIT_FAILED, EXIT_INVALID, EXIT_UNREACHABLE = 1, 2, 3


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message: str):
        self.exit(EXIT_INVALID, f"error: {message}\n")


def _scalar(text: str):
    """Numbers as numbers, anything else as text, so the contract gives the message for bad values."""
    for number in (int, float):
        try:
            return number(text)
        except ValueError:
            pass
    return text


def _features(text: str) -> list:
    """'1-6' or '1,3,5' -> [1, ...]; anything else is left for the contract to reject."""
    if "-" in text.strip("-") and text.replace("-", "").isdigit():
        low, high = (int(part) for part in text.split("-"))
        return list(range(low, high + 1))
    return [_scalar(part) for part in text.split(",")]


def _parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(prog="python -m producer", description="Queue feature-visualization jobs.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_OneLineParser)

    def job_options(command: argparse.ArgumentParser) -> None:
        command.add_argument("--model", default=None, help="default inception_v3")
        command.add_argument("--conv-id", type=_scalar, default=None,
                             help="index into the model's Conv2D layers; omit (and omit --layer) for the class logits")
        command.add_argument("--layer", default=None, help="a Conv2D layer name, or 'logits'")
        command.add_argument("--iterations", type=_scalar, default=None, help="1..10000, default 30")
        command.add_argument("--seed", type=_scalar, default=None, help="drawn and recorded when absent")
        command.add_argument("--method", default=None, help="default gradient_ascent")
        command.add_argument("--wait", action="store_true", help="show progress and print the image path")

    enqueue = commands.add_parser("enqueue", help="queue one job")
    job_options(enqueue)
    enqueue.add_argument("--feature", type=_scalar, default=None, help="channel, or class index for the logits")
    enqueue.add_argument("--images", type=_scalar, default=None,
                         help="1..8: a diverse set of this many pictures (method robust), default 1")
    enqueue.add_argument("--diversity", type=_scalar, default=None,
                         help="0..100: how hard a set's pictures are pushed apart, default 3")
    sweep = commands.add_parser("sweep", help="queue several features of one layer as one batched job")
    job_options(sweep)
    sweep.add_argument("--features", type=_features, default=[1, 2, 3, 4, 5, 6], help="e.g. 1-6 (default) or 0,4,9")
    status = commands.add_parser("status", help="show a job's state")
    status.add_argument("job_id")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    producer = Producer()
    try:
        if args.command == "status":
            print(json.dumps(producer.status(args.job_id)))
            return 0
        fields = {name: value for name, value in vars(args).items()
                  if name not in ("command", "wait") and value is not None}
        job = producer.sweep(fields) if args.command == "sweep" else producer.enqueue(fields)
        print(job.id, flush=True)
        if args.wait:
            print(follow(job))
        return 0
    except JobError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_INVALID
    except BrokerUnavailable as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except JobFailed as error:
        print(f"error: job failed: {error}", file=sys.stderr)
        return EXIT_FAILED


def follow(job: Job) -> str:
    """Follow the job with a progress bar; where its picture is (RESULTS_URL: its address on a web server)."""
    total = job.specs[0].iterations
    with tqdm(total=total, desc=job.id[:12], unit="it", file=sys.stderr, dynamic_ncols=True) as bar:
        def show(progress: dict) -> None:
            bar.n = progress["iteration"]
            prediction = progress.get("prediction") or {}
            bar.set_postfix(loss=f"{progress['loss']:.4g}", top=prediction.get("class_name", "-"), refresh=True)

        result = job.wait(on_progress=show)
        bar.n = total
        bar.refresh()
    if result.get("untrained") or any(j.get("untrained") for j in result.get("jobs", [])):
        print("note: untrained weights (fixed-seed random init); the picture shows the architecture, not ImageNet",
              file=sys.stderr)
    picture = result.get("contact_sheet") or result["image"]
    base = os.environ.get("RESULTS_URL")  # where a web server publishes RESULTS_DIR (the compose file's)
    return f"{base.rstrip('/')}/{quote(picture)}" if base else ResultStore.from_env().locate(picture)
