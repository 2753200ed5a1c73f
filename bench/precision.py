"""One bare run under a Keras dtype policy, printed as JSON (run in its own process per policy).

    python bench/precision.py mixed_bfloat16 CONV_ID ITERATIONS OUT.npy
"""
import json
import sys
import time

import keras
import numpy as np

from featurevis.factory import ModelFactory
from featurevis.optvis import objectives, render

if __name__ == "__main__":
    policy, conv_id, iterations, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    keras.mixed_precision.set_global_policy(policy)
    conv_id = None if conv_id == "logits" else int(conv_id)
    acquired = ModelFactory().acquire("inception_v3_untrained", conv_id)
    weights = objectives.weights_matrix([{3: 1.0}], acquired.model.info.feature_count(conv_id))
    render.run(acquired.step, [7], weights, 2)  # warm-up
    began = time.perf_counter()
    ascent = render.run(acquired.step, [7], weights, iterations)
    seconds = (time.perf_counter() - began) / iterations
    np.save(out, ascent.images[0])
    print(json.dumps({"policy": policy, "s_per_iteration": seconds, "final_loss": float(ascent.history[-1].loss[0])}))
