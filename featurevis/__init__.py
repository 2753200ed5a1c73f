"""featurevis: activation maximization served by Celery workers.

The package is split so that the producer side never loads TensorFlow:
`registry`, `contract`, `store`, `images`, `gallery`, `metrics` and `celeryconfig` are TF-free;
`zoo`, `factory` and `optvis` are the TensorFlow side, imported only inside
worker processes.
"""

__version__ = "0.2.0"  # recorded in every meta.json; CHANGELOG.md says what changed
