"""The tutorial's way, in today's TensorFlow: the baseline the service is measured against.

Per job it builds the model afresh (the tutorial did, to keep its TF1 graph
from growing) and, on every iteration, computes the full network's
prediction along with the gradient, as its single `session.run` fetched both.
The update itself is the tutorial's, in numpy.
"""
from __future__ import annotations

import sys
import time

import keras
import numpy as np
import tensorflow as tf

from featurevis import registry, targets, zoo
from featurevis.optvis import param


def run_job(model_name: str, conv_id: int | None, feature: int, iterations: int, seed: int) -> float:
    """Seconds for one whole job, model build included."""
    started = time.perf_counter()
    keras.backend.clear_session()  # the tutorial closed its session; without this RSS grows per job
    models = registry.Registry.from_env()
    info = models.get(model_name)
    model = zoo.build(info, models)
    preprocess = zoo.preprocessor(info.preprocess)
    logits = targets.class_head(model).logits
    outputs = logits if conv_id is None else \
        [targets.conv_layers_in_creation_order(model)[conv_id].layer.output, logits]
    network = keras.Model(model.input, outputs)

    @tf.function
    def run(image):
        with tf.GradientTape() as tape:
            tape.watch(image)
            if conv_id is None:
                logits = network(preprocess(image), training=False)
                loss = logits[0, feature]
            else:
                activations, logits = network(preprocess(image), training=False)
                loss = tf.reduce_mean(activations[..., feature])
        return tf.nn.softmax(logits), tape.gradient(loss, image), loss

    image = param.tutorial_noise(info.input_shape, [seed])
    for _ in range(iterations):
        prediction, grad, _loss = run(tf.constant(image))
        grad = grad.numpy()
        np.argmax(prediction.numpy())  # the tutorial printed the predicted class every iteration
        image = np.clip(image + grad / (grad.std() + 1e-8), 0.0, 255.0)
    return time.perf_counter() - started


if __name__ == "__main__":
    # python bench/tutorial.py MODEL CONV_ID|logits ITERATIONS REPEATS: job seconds as JSON.
    # Run in its own process so clear_session() touches nothing the bench measures.
    import json

    model_name, target, iterations, repeats = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    conv_id = None if target == "logits" else int(target)
    print(json.dumps([run_job(model_name, conv_id, 1, iterations, 5 + index) for index in range(repeats)]))
