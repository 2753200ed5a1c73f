"""Speed never changes a picture: fixed jobs give the pixels they gave before the loop was made faster.

tests/data/pinned_pictures.json holds every n-th pixel (and the loss of every iteration) of two
jobs as the render loop computed them before the speed work (see its `made_by`); the loop of
today must give the same within float tolerance.
"""
import json
from pathlib import Path

import numpy as np
import pytest

from featurevis.optvis import objectives, render

PINNED = json.loads((Path(__file__).parent / "data" / "pinned_pictures.json").read_text())
CASES = [name for name in PINNED if name != "made_by"]


@pytest.mark.parametrize("name", CASES)
def test_a_fixed_job_gives_the_pinned_picture(factory, name):
    case = PINNED[name]
    acquired = factory.acquire(case["model"], case["target"], case["method"])
    weights = objectives.weights_matrix([{case["feature"]: 1.0}], acquired.model.info.features_of(case["target"]))
    ascent = render.optimize(case["method"], acquired.step, acquired.model.info.input_shape, [case["seed"]], weights,
                             case["iterations"], classify=acquired.model.classify, on_progress=lambda *_: None)
    every = case["every"]
    np.testing.assert_allclose(ascent.images[0][::every, ::every], np.array(case["pixels"]), atol=0.02)
    np.testing.assert_allclose([float(stats.loss[0]) for stats in ascent.history], case["loss"], rtol=1e-4, atol=1e-6)
