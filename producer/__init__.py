"""The producer: validate jobs and queue them. Never imports TensorFlow.

    from producer import enqueue
    job = enqueue({"model": "inception_v3", "conv_id": 5, "feature": 2})
    result = job.wait()          # {"image": "<key>/image.png", ...}
"""
from producer.client import BrokerUnavailable, Job, JobFailed, Producer, enqueue, status, sweep

__all__ = ["BrokerUnavailable", "Job", "JobFailed", "Producer", "enqueue", "status", "sweep"]
