"""The producer: validate jobs and queue them. Never imports TensorFlow.

    from producer import enqueue
    job = enqueue({"model": "inception_v3", "conv_id": 5, "feature": 2})
    result = job.wait()          # {"image": "<key>/image.png", ...}

    from producer import register_model
    register_model("my_cnn", file="my_cnn.keras", preprocess="unit")   # then jobs may name "my_cnn"
"""
from featurevis.registry import ModelRefused
from producer.client import BrokerUnavailable, Job, JobFailed, Producer, enqueue, register_model, status, sweep

__all__ = ["BrokerUnavailable", "Job", "JobFailed", "ModelRefused", "Producer", "enqueue", "register_model", "status",
           "sweep"]
