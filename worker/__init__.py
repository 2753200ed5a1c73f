"""The featurevis worker: `celery -A worker.app worker` or `python -m worker`."""
