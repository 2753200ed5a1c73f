"""`python -m producer`: enqueue, sweep, status and the model registry from a shell.

stdout carries what scripts read: the job id on the first line and, with
--wait, the absolute path (or s3:// URL, or its address under RESULTS_URL when that is
set) of the picture on the last. Progress bars and
notes go to stderr. Every error is one line on stderr.

Exit codes: 0 done (or registered), 1 the job failed, 2 invalid input or a
refused model (nothing queued, the registry as it was), 3 Redis unreachable.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from urllib.parse import quote

from tqdm import tqdm

from featurevis import contract
from featurevis.contract import JobError
from featurevis.registry import ModelInfo, ModelRefused
from featurevis.store import ONNX_MODEL_FILE, ResultStore
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
        for flag, parse, explained in JOB_OPTIONS:
            command.add_argument(flag, type=parse, default=None, help=explained)
        command.add_argument("--alpha", action="store_const", const=True, default=None,
                             help="method robust with a transparency channel, saved as alpha.png")
        command.add_argument("--wait", action="store_true", help="show progress and print the image path")

    enqueue = commands.add_parser("enqueue", help="queue one job")
    job_options(enqueue)
    enqueue.add_argument("--feature", type=_scalar, default=None, help="channel, or class index for the logits")
    enqueue.add_argument("--class", dest="class", type=_scalar, default=None,
                         help='a class of the logits by index or name, e.g. "kit fox" (exact or a unique prefix)')
    enqueue.add_argument("--images", type=_scalar, default=None,
                         help="1..8: a diverse set of this many pictures (method robust), default 1")
    enqueue.add_argument("--diversity", type=_scalar, default=None,
                         help="0..100: how hard a set's pictures are pushed apart, default 3")
    objective = enqueue.add_argument_group("objectives", "other kinds of objective than a channel (one term; "
                                                         "--targets composes several by weight)")
    objective.add_argument("--objective", default=None, help=f"one of {', '.join(contract.OBJECTIVES)}")
    objective.add_argument("--x", type=_scalar, default=None, help="a neuron's column in the layer's map (default: centre)")
    objective.add_argument("--y", type=_scalar, default=None, help="a neuron's row in the layer's map (default: centre)")
    objective.add_argument("--direction-file", default=None,
                           help="a JSON list of one number per channel of the layer: a direction objective")
    objective.add_argument("--caricature", default=None,
                           help="a PNG, JPEG or .npy image: uploaded, then its activations at the layer are matched")
    objective.add_argument("--targets", default=None,
                           help='the objective as JSON, e.g. \'[{"feature": 2}, {"objective": "layer", "weight": 0.5}]\'')
    sweep = commands.add_parser("sweep", help="queue several features of one layer as one batched job")
    job_options(sweep)
    sweep.add_argument("--features", type=_features, default=[1, 2, 3, 4, 5, 6], help="e.g. 1-6 (default) or 0,4,9")
    _atlas_parser(commands.add_parser("atlas", help="queue every unit of a model's layers, with pages in the store"))
    status = commands.add_parser("status", help="show a job's or an atlas's state")
    status.add_argument("job_id")
    _models_parser(commands.add_parser("models", help="register, list and show models"))
    return parser


# The fields enqueue and sweep share: flag, how its value is read (a JSON scalar, or text), help.
JOB_OPTIONS = (
    ("--model", str, "default inception_v3"),
    ("--conv-id", _scalar, "index into the model's Conv2D layers; omit (and omit --layer) for the class logits"),
    ("--layer", str, "a layer name (any (h, w, channels) output; for inception_v3 also the tutorial's, e.g. "
                     "mixed/conv), or 'logits'"),
    ("--iterations", _scalar, f"1..{contract.MAX_ITERATIONS}, default the method's: {contract.ITERATIONS_BY_METHOD}"),
    ("--seed", _scalar, "drawn and recorded when absent"),
    ("--method", str, "gradient_ascent (default), robust or maco"),
    ("--tv", _scalar, "regularizer: weight of the picture's total variation, 0..1000 (default 0: off)"),
    ("--lp", _scalar, "regularizer: weight of the picture's Lp norm about mid-grey, 0..1000 (default 0: off)"),
    ("--lp-p", _scalar, "the power of --lp's norm, 1..10 (default 2)"),
    ("--blur", _scalar, "regularizer: how hard each step is pulled to its own 3x3 blur, 0..1000 (default 0: off)"),
    ("--start-image", str, "a PNG, JPEG or .npy picture to start from instead of noise (DeepDream): uploaded first"),
    ("--magnitude", str, "maco's fixed magnitude spectrum: 1/f (the default) or dataset (the mean of the model's)"),
    ("--start", str, "robust's start: dataset (the mean of the model's dataset's best examples of the target, with "
                     "the seed's noise on it; the default where a job can have it), facets (the mean of the seed's "
                     "cluster of them, so seeds draw different pictures) or noise"),
)


def _models_parser(models: argparse.ArgumentParser) -> None:
    actions = models.add_subparsers(dest="action", required=True, parser_class=_OneLineParser)
    register = actions.add_parser("register", help="put a model into the registry (waits for a worker's verdict)")
    register.add_argument("name", help="[a-z0-9_-]{1,64}: what jobs will call it")
    source = register.add_mutually_exclusive_group(required=True)
    source.add_argument("--file", help="a .keras, Keras 2 .h5 or .onnx file (no Lambda layers or custom objects; "
                                       "ONNX: the ops docs/onnx.md lists)")
    source.add_argument("--keras-app", help="a Keras Application by name, e.g. ResNet50")
    register.add_argument("--weights", default="imagenet", choices=("imagenet", "none"),
                          help="a Keras Application's weights, from $KERAS_HOME/models (default imagenet)")
    register.add_argument("--preprocess", default=None,
                          help="how 0..255 pixels reach the model: inception, caffe, torch, unit or none "
                               "(default: unit for a Keras file, torch for ONNX, the application's own for "
                               "--keras-app)")
    register.add_argument("--input-size", type=_numbers, default=None,
                          help="H,W: an ONNX graph's picture size, where its export left it open")
    register.add_argument("--scale", type=_numbers, default=None, help="instead of --preprocess: per-channel scale")
    register.add_argument("--offset", type=_numbers, default=None, help="with --scale: per-channel offset")
    register.add_argument("--class-names", default=None, help="a JSON list, or a text file of one class name a line")
    register.add_argument("--dataset", default=None,
                          help="a .npz of images or a folder of PNG/JPEG files, for atlases' dataset examples")
    register.add_argument("--no-wait", action="store_true", help="queue the registration and return")
    dataset = actions.add_parser("dataset", help="store a dataset beside a registered model (atlas examples)")
    dataset.add_argument("name")
    dataset.add_argument("path", help="a .npz (its 'images' array, or its only one) or a folder of PNG/JPEG files")
    dataset.add_argument("--version", default=None, help="a registered sha256 (default: the current one)")
    actions.add_parser("list", help="the registered models, one a line")
    show = actions.add_parser("show", help="a model's input, classes and layers (conv_ids, channels)")
    show.add_argument("name")
    show.add_argument("--version", default=None, help="a registered sha256 (default: the current one)")
    show.add_argument("--json", action="store_true", help="the whole description as JSON")


def _atlas_parser(command: argparse.ArgumentParser) -> None:
    command.add_argument("--model", default=None, help="default inception_v3")
    command.add_argument("--layers", type=_layers, default=None,
                         help="all (every Conv2D layer, the default) or layer names and conv_ids, e.g. conv1,3")
    command.add_argument("--units", type=_scalar, default=None, help="the first K units of each layer (default all)")
    command.add_argument("--method", default=None, help="default gradient_ascent")
    command.add_argument("--iterations", type=_scalar, default=None,
                         help=f"1..{contract.MAX_ITERATIONS}, default the method's: {contract.ITERATIONS_BY_METHOD}")
    command.add_argument("--seed", type=_scalar, default=None, help="drawn and recorded when absent")
    command.add_argument("--batch", type=_scalar, default=None, help="units of one layer per task, default 32")
    command.add_argument("--force", action="store_const", const=True, default=None,
                         help="queue what the atlas lacks even while an earlier run looks unfinished (its chord lost)")
    command.add_argument("--wait", action="store_true", help="show progress over all units and print the atlas page")


def _layers(text: str):
    return text if text == "all" else [_scalar(part) for part in text.split(",")]


def _numbers(text: str) -> list:
    return [_scalar(part) for part in text.split(",")]


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    producer = Producer()
    try:
        if args.command == "status":
            print(json.dumps(producer.status(args.job_id)))
            return 0
        if args.command == "models":
            return _models(producer, args)
        if args.command == "atlas":
            return _atlas(producer, args)
        fields = _start_image(producer, {name: value for name, value in vars(args).items()
                                         if name not in ("command", "wait") and value is not None})
        job = producer.sweep(fields) if args.command == "sweep" else producer.enqueue(_objective(producer, fields))
        print(job.id, flush=True)
        if args.wait:
            print(follow(job))
        return 0
    except (JobError, ModelRefused) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_INVALID
    except BrokerUnavailable as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except JobFailed as error:
        print(f"error: job failed: {error}", file=sys.stderr)
        return EXIT_FAILED


def _objective(producer: Producer, fields: dict) -> dict:
    """The objective flags as the job's `targets`: --targets' JSON, plus the one term the other flags describe.

    A term is there when --objective, --x/--y (a neuron), --direction-file or
    --caricature (which uploads the image first) is given; --feature is its feature.
    """
    kind = fields.pop("objective", None)
    parts = {name: fields.pop(name) for name in ("x", "y") if name in fields}
    targets = _json(fields.pop("targets"), "--targets") if "targets" in fields else None
    if "direction_file" in fields:
        path = fields.pop("direction_file")
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as error:
            raise JobError("targets", f"--direction-file: cannot read {path[-80:]}: {error.strerror}") from None
        kind, parts["vector"] = kind or "direction", _json(text, "--direction-file")
    if "caricature" in fields:
        kind, parts["image"] = kind or "caricature", producer.upload_image(fields.pop("caricature"))
    kind = kind or ("neuron" if parts else None)
    if kind is not None:
        feature = {"feature": fields.pop("feature")} if "feature" in fields else {}
        targets = (targets if isinstance(targets, list) else [] if targets is None else [targets]) + \
            [{"objective": kind, **feature, **parts}]
    return fields if targets is None else {**fields, "targets": targets}


def _start_image(producer: Producer, fields: dict) -> dict:
    """--start-image's file uploaded, so the job names it by its key as any other system's would."""
    if "start_image" in fields:
        fields["start_image"] = producer.upload_image(fields["start_image"], field="start_image")
    return fields


def _json(text: str, flag: str):
    try:
        return json.loads(text)
    except ValueError as error:
        raise JobError("targets", f"{flag}: not JSON ({error})") from None


def _atlas(producer: Producer, args: argparse.Namespace) -> int:
    fields = {name: value for name, value in vars(args).items() if name not in ("command", "wait") and value is not None}
    job = producer.atlas(fields)
    print(job.id, flush=True)
    if not job.queued:
        state = job.progress().state
        print(f"note: atlas {'complete' if state == 'done' else 'already running'}; nothing queued"
              + ("" if state == "done" else " (--force queues what it lacks, if that run was lost)"), file=sys.stderr)
    else:
        print(f"queued {job.queued} of {job.atlas.total} units", file=sys.stderr)
    if args.wait:
        print(follow_atlas(job))
    return 0


def _models(producer: Producer, args: argparse.Namespace) -> int:
    if args.action == "list":
        for info in producer.models():
            print(_summary_line(info))
    elif args.action == "dataset":
        _dataset_added(producer.add_dataset(args.name, args.path, args.version), args.name)
    elif args.action == "show":
        info = producer.model(args.name, args.version)
        print(json.dumps(info.description, indent=1) if args.json else _details(info))
    else:
        if (args.offset and not args.scale) or (args.scale and args.preprocess):
            raise ModelRefused("preprocess: give --preprocess, or --scale (with --offset if any), not both")
        preprocess = {"scale": args.scale, "offset": args.offset or [0.0]} if args.scale else args.preprocess
        verdict = producer.register_model(args.name, file=args.file, keras_app=args.keras_app, weights=args.weights,
                                          preprocess=preprocess, class_names=_class_names(args.class_names),
                                          input_size=args.input_size, wait=not args.no_wait)
        print(f"{args.name} {verdict['sha256']}", flush=True)
        if verdict.get("already"):
            print(f"note: {args.name} is already registered at this version; nothing queued", file=sys.stderr)
        elif verdict["registered"]:
            print(f"registered {args.name}: input {verdict['input_shape']}, {verdict['layers']} layers "
                  f"({verdict['conv_layers']} convolutions), {verdict['classes']} classes", file=sys.stderr)
        if args.dataset and verdict["registered"]:
            _dataset_added(producer.add_dataset(args.name, args.dataset, verdict["sha256"]), args.name)
    return 0


def _dataset_added(described: dict, name: str) -> None:
    print(f"dataset of {described['size']} images stored beside {name} ({described['sha256'][:12]})", file=sys.stderr)


def _class_names(path: str | None) -> list[str] | None:
    if path is None:
        return None
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise ModelRefused(f"class_names: cannot read {path}: {error.strerror}") from None
    try:
        return json.loads(text)
    except ValueError:
        return [line.strip() for line in text.splitlines() if line.strip()]


def _summary_line(info: ModelInfo) -> str:
    source = info.source.get("keras_app") or info.source.get("architecture") or \
        ("onnx file" if info.source.get("file") == ONNX_MODEL_FILE else "file")
    convs = len(info.conv_layers)
    kind = "Conv" if info.source.get("file") == ONNX_MODEL_FILE else "Conv2D"
    return (f"{info.name:24} {info.sha256[:12]}  {source:14} input {'x'.join(map(str, info.input_shape)):11} "
            f"{len(info.layers):4} layers ({convs} {kind}, conv_id 0..{convs - 1})  {info.classes} classes")


def _details(info: ModelInfo) -> str:
    """What a job may target: every layer with its conv_id and channels, then the classes."""
    width = max([40, *(len(layer.name) for layer in info.layers)])  # a nested layer's path, an ONNX module's
    lines = [_summary_line(info), f"version   {info.sha256}", f"source    {json.dumps(info.source)}",
             f"preprocess {info.preprocess.kind}: pixels{'[BGR]' if info.preprocess.bgr else ''} x "
             f"{list(info.preprocess.scale)} + {list(info.preprocess.offset)}"
             + (f" (the model preprocesses its own input: {', '.join(info.preprocessing_layers)})"
                if info.preprocessing_layers else ""),
             f"{'conv_id':>7}  {'layer':{width}} {'type':22} {'channels':>8}  size     tutorial"]
    for layer in info.layers:
        conv_id = "" if layer.conv_id is None else layer.conv_id
        lines.append(f"{conv_id:>7}  {layer.name:{width}} {layer.type:22} {layer.channels:>8}  "
                     f"{layer.height}x{layer.width:<5} {layer.tutorial_name or ''}")
    if info.classes:
        shown = ", ".join(f"{index} {name}" for index, name in enumerate(info.class_names[:10]))
        before = f", before its {info.class_activation}" if info.class_activation else ""
        lines.append(f"{'logits':>7}  {info.logits_layer} {info.logits_type}{before}: {info.classes} classes"
                     f"{' (multi-label)' if info.multi_label else ''}: {shown}"
                     f"{', ...' if info.classes > 10 else ''}")
    else:
        lines.append(f"{'':>7}  no class logits: {info.no_classes or 'the model has no class output'}")
    return "\n".join(lines)


def follow(job: Job) -> str:
    """Follow the job with a progress bar; where its picture is (RESULTS_URL: its address on a web server)."""
    total = job.specs[0].iterations
    with tqdm(total=total, desc=job.id[:12], unit="it", file=sys.stderr, dynamic_ncols=True) as bar:
        def show(progress: contract.Progress) -> None:
            bar.n = progress.iteration
            top = progress.prediction.class_name if progress.prediction else "-"
            bar.set_postfix(loss=f"{progress.loss:.4g}", top=top, refresh=True)

        result = job.wait(on_progress=show)
        bar.n = total
        bar.refresh()
    jobs = result.jobs if isinstance(result, contract.SweepSummary) else [result]
    if any(one.untrained for one in jobs):
        print("note: untrained weights (fixed-seed random init); the picture shows the architecture, not ImageNet",
              file=sys.stderr)
    return _located(result.contact_sheet if isinstance(result, contract.SweepSummary) else result.image)


def follow_atlas(job) -> str:
    """Follow an atlas with one progress bar over all its units (done / total, rate, ETA); where its page is."""
    with tqdm(total=job.atlas.total, desc=job.id[:12], unit="unit", file=sys.stderr, dynamic_ncols=True) as bar:
        job.wait(on_progress=lambda progress: bar.update(progress.done - bar.n))
    return _located(job.page)


def _located(key: str) -> str:
    """Where a file of the store is found: its address under RESULTS_URL, else its path or s3:// URL."""
    base = os.environ.get("RESULTS_URL")  # where a web server publishes RESULTS_DIR (the compose file's)
    return f"{base.rstrip('/')}/{quote(key)}" if base else ResultStore.from_env().locate(key)
