"""What comes out of a job, typed: its progress while it runs, its meta.json, and the task's answer. TF-free.

The job itself is a strict pydantic model (contract.JobSpec); these are the
records it produces, read by the producer, the CLI, Flower's progress line, the
gallery and the benchmarks by attribute rather than by string key. Tasks return
them through Celery's pydantic support, so on the wire they are the same JSON
objects any other system reads; `None` fields are left out of a task's answer.
"""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

# A quality block (scoring.py): numbers, the judge's name and whether it agrees.
Scores = dict[str, bool | int | float | str]


class Record(BaseModel):
    # Records are read back from meta.json files and result backends written by other
    # releases: fields they add are kept, not refused.
    model_config = ConfigDict(extra="allow")


class Prediction(Record):
    """The model's top class at one iteration."""

    iteration: int
    class_id: int
    class_name: str
    score: float


class Progress(Record):
    """A running batch's latest figures, in the result backend (PROGRESS) and in Flower's task-progress events."""

    job_ids: list[str]
    iteration: int
    iterations: int
    loss: float
    grad_min: float
    grad_max: float
    step_size: float
    prediction: Prediction | None = None

    def line(self) -> str:
        """One line for Flower's Result column, e.g. 'PROGRESS 12/30 loss=0.5312 top=syringe (22.6%)'."""
        text = f"PROGRESS {self.iteration}/{self.iterations} loss={self.loss:.4g}"
        if self.prediction is not None:
            text += f" top={self.prediction.class_name} ({self.prediction.score:.1%})"
        return text


class Timings(Record):
    model_load_s: float  # building the model, on the first job that needed it
    compile_s: float  # tracing the layer's step, on the first job at that layer
    optimize_s: float
    started_at: float  # epoch seconds the batch started
    batch_size: int  # jobs in the batch


class WorkerInfo(Record):
    hostname: str
    pid: int
    device: str


class FactoryCounts(Record):
    """How often this worker process built a model and a step, and traced this step: a check on caching."""

    models_built: int
    steps_built: int
    step_traces: int


class SetMember(Record):
    png: str
    seed: int
    quality: Scores


class DiverseSet(Record):
    """A diverse set: what pushed it apart, how alike it came out, and each image with its seed and scores."""

    images: int
    diversity: float
    gram_similarity: float
    members: list[SetMember]


class JobMeta(Record):
    """A finished job's meta.json: its normalized spec, where it ran, every iteration's figures and its scores.

    `quality` is the job's first image's, as image.png's first tile for a set.
    """

    job_id: str
    key: str
    spec: dict[str, Any]
    model: str
    model_sha256: str
    model_source: dict[str, Any]
    untrained: bool
    layer_name: str
    layer_type: str
    tutorial_layer_name: str | None
    conv_id: int | None
    feature: int
    iterations: int
    seed: int
    method: str
    loss: list[float]
    final_loss: float
    grad_min: list[float]
    grad_max: list[float]
    step_size: list[float]
    predictions: list[Prediction]
    timings: Timings
    worker: WorkerInfo
    versions: dict[str, str]
    created_at: str
    quality: Scores
    factory: FactoryCounts
    set: DiverseSet | None = None

    def to_json(self) -> dict[str, Any]:
        """meta.json's content: no `set` key for a single picture, every other field as it is."""
        return self.model_dump(mode="json", exclude={"set"} if self.set is None else set())


class JobSummary(Record):
    """`featurevis.optimize`'s answer: where the job's files are, relative to RESULTS_DIR."""

    job_id: str
    key: str
    image: str
    array: str
    meta: str
    final_loss: float
    untrained: bool
    cached: bool  # found in the store: no worker computed it for this request
    set: list[str] | None = None  # each picture of a diverse set


class SweepMeta(Record):
    """A sweep's meta.json: its features, one job each."""

    sweep_id: str
    model: str
    layer: str
    features: list[int]
    jobs: list[JobSummary]


class SweepSummary(Record):
    """`featurevis.sweep`'s answer."""

    sweep_id: str
    key: str
    contact_sheet: str
    meta: str
    jobs: list[JobSummary]


class Registration(Record):
    """`featurevis.register_model`'s answer."""

    name: str
    sha256: str
    input_shape: list[int]
    layers: int
    classes: int
    conv_layers: int
