"""One batched pass: jobs of one layer and method, climbed together and scored, each job's share cut out.

The factory gives the model and its compiled step (and fits the job's uploads to it), render.run climbs, scoring
scores; no
Celery and no store here (worker/tasks.py publishes what comes out). One row
per image: a plain job or a sweep's feature is one image, a diverse set is
`images` of them, each from its own seed, so batching never changes a picture.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from featurevis import contract, scoring
from featurevis.contract import JobSpec
from featurevis.factory import Acquired, ModelFactory
from featurevis.optvis import objectives, render
from featurevis.registry import LOGITS

ANIMATION_FRAMES = 30


@dataclass(frozen=True)
class Rendered:
    """One job's share of a batch: its pictures (and animation frames), figures, predictions and scores."""

    spec: JobSpec
    pictures: np.ndarray  # (images, h, w, c) in 0..255
    frames: list[np.ndarray]  # the pictures every few iterations, where the job asked for an animation
    steps: dict[str, list[float]]  # each StepStats figure per iteration, averaged over the job's images
    predictions: list[contract.Prediction]
    scores: list[contract.Scores]  # one block per image
    gram_similarity: float | None  # how alike a diverse set's images came out
    extras: dict[str, np.ndarray]  # the step's per-image maps (render.Ascent.extras), the job's rows


@dataclass(frozen=True)
class Batch:
    acquired: Acquired
    timings: contract.Timings
    jobs: list[Rendered]


def run(factory: ModelFactory, specs: list[JobSpec], on_progress: Callable[[contract.Progress], None]) -> Batch:
    """Climb every image of `specs` (one model version, layer, method, iteration count and start image: a job,
    or a sweep's features) in one pass."""
    first = specs[0]
    acquired = factory.acquire(first.model, first.layer, first.step, first.model_sha256)
    info = acquired.model.info
    seeds = [seed for spec in specs for seed in spec.seeds]
    per_image = [spec for spec in specs for _ in spec.seeds]
    weights = objectives.weights_matrix([spec.weights for spec in per_image], info.feature_count(first.layer))
    layer = None if first.layer == LOGITS else info.layer(first.layer)
    terms = objectives.build(weights, [spec.terms or () for spec in per_image],
                             layer and (layer.height, layer.width, layer.channels),
                             lambda key: factory.uploads.caricature(acquired.model, first.layer, key),
                             np.array([[getattr(spec, name) for name in objectives.PENALTIES] for spec in per_image]))
    started, started_at = time.perf_counter(), time.time()
    report = _progress(specs, info.class_names, on_progress)
    ascent = render.run(acquired.step, seeds, terms, first.iterations, first.diversity,
                        state=acquired.step.start(seeds, *_start(factory, acquired, per_image, seeds)),
                        classify=acquired.model.classify,
                        on_progress=_before_the_last(report, first.iterations),
                        frame_every=max(1, first.iterations // ANIMATION_FRAMES) if first.animate else 0,
                        predict_at_end=False)
    optimize_s = time.perf_counter() - started
    final = scoring.read(acquired.probe, ascent.images)
    predicted = None if final.probabilities is None else render.Prediction(first.iterations, final.probabilities)
    if predicted is not None:
        ascent = ascent._replace(predictions=[*ascent.predictions, predicted])
    report(first.iterations, ascent.history[-1], predicted)
    # Scores read channel means: a direction is its channels' weights already, a neuron counts as its channel.
    channel_view = terms.channels + terms.neurons.sum(axis=(1, 2))
    scores = scoring.scores(final, ascent.images, channel_view, first.layer == LOGITS,
                            factory.models.judge(first.model))
    timings = contract.Timings(model_load_s=acquired.model_load_s, compile_s=acquired.compile_s,
                              optimize_s=optimize_s, started_at=started_at, batch_size=len(specs),
                              predictions_s=ascent.predictions_s,
                              scores_s=time.perf_counter() - started - optimize_s)
    history = {name: np.stack([getattr(stats, name) for stats in ascent.history])  # (iterations, images)
               for name in render.StepStats._fields}
    return Batch(acquired, timings, [_share(spec, rows, ascent, history, scores, acquired, info.class_names)
                                     for spec, rows in zip(specs, _rows(specs))])


def _start(factory: ModelFactory, acquired: Acquired, per_image: list[JobSpec], seeds: list[int]) -> tuple:
    """The step's start arguments after the seeds: none (each seed's noise), the job's uploaded picture, or each
    image's dataset start (its facet's, by its seed) with contract.START_NOISE times its seed's noise on it
    (JobSpec.start)."""
    first = per_image[0]
    if first.start_image is not None:
        return (factory.uploads.start_image(acquired.model, first.start_image),)
    return factory.dataset_starts.arguments(acquired.model, first.layer, [spec.feature for spec in per_image],
                                            seeds, first.start)


def _rows(specs: list[JobSpec]) -> list[slice]:
    ends = np.cumsum([spec.images for spec in specs])
    return [slice(int(end) - spec.images, int(end)) for spec, end in zip(specs, ends)]


def _share(spec: JobSpec, rows: slice, ascent: render.Ascent, history: dict[str, np.ndarray],
           scores: list[contract.Scores], acquired: Acquired, class_names: list[str]) -> Rendered:
    pictures = ascent.images[rows]
    steps = {name: [float(value) for value in values[:, rows].mean(axis=1)] for name, values in history.items()}
    similarity = scoring.gram_similarity(acquired.probe, pictures) if spec.images > 1 else None
    return Rendered(spec, pictures, [frame[rows] for frame in ascent.frames], steps,
                    [_top_class(predicted, rows.start, class_names) for predicted in ascent.predictions],
                    scores[rows], similarity, {name: values[rows] for name, values in ascent.extras.items()})


def _progress(specs: list[JobSpec], class_names: list[str],
              publish: Callable[[contract.Progress], None]) -> render.ProgressCallback:
    """The render loop's figures as the batch's Progress record (the first image's latest prediction)."""
    latest: contract.Prediction | None = None
    job_ids = [spec.job_id for spec in specs]

    def on_progress(done: int, stats: render.StepStats, predicted: render.Prediction | None) -> None:
        nonlocal latest
        if predicted is not None:
            latest = _top_class(predicted, 0, class_names)
        publish(contract.Progress(
            job_ids=job_ids, iteration=done, iterations=specs[0].iterations,
            loss=float(np.mean(stats.loss)), grad_min=float(np.min(stats.grad_min)),
            grad_max=float(np.max(stats.grad_max)), step_size=float(np.mean(stats.step_size)), prediction=latest))

    return on_progress


def _before_the_last(report: render.ProgressCallback, iterations: int) -> render.ProgressCallback:
    """The loop's progress but for its last iteration, which the batch reports after the final read, with the
    pictures' classes: one last record, as the loop's own was."""

    def on_progress(done: int, stats: render.StepStats, predicted: render.Prediction | None) -> None:
        if done < iterations:
            report(done, stats, predicted)

    return on_progress


def _top_class(predicted: render.Prediction, index: int, class_names: list[str]) -> contract.Prediction:
    row = predicted.probabilities[index]
    top = int(row.argmax())
    return contract.Prediction(iteration=predicted.iteration, class_id=top, class_name=class_names[top],
                              score=float(row[top]))
