"""featurevis: activation maximization served by Celery workers.

The package is split so that the producer side never loads TensorFlow:
`registry`, `contract`, `store`, `images`, `gallery`, `metrics`, `celeryconfig` and
the model-file checks (`modelcheck`, `layershapes`, `admission`, `sandbox`, and
`onnxcheck`, which needs onnx and which the producer never imports) are
TF-free; `zoo`, `targets`, `onnxgraph`, `factory` (with `model_cache`,
`step_cache`, `uploads`) and `optvis` are the TensorFlow side, imported only
inside worker processes, and `describe_model` only inside the disposable process
that describes a new model.
"""

__version__ = "0.2.0"  # recorded in every meta.json; CHANGELOG.md says what changed
