"""Speed never changes a picture: fixed jobs give the pixels they gave before the loop was made faster.

tests/data/pinned_pictures.json holds every n-th pixel (and the loss of every iteration) of two
jobs as the render loop computed them before the speed work, per CPU vendor (see its `made_by`);
the loop of today must give the same within float tolerance. Every class then climbed its logit, so a
class case's step is compiled climbing the logit, whatever its method's class objective is now (issue 28
changed what robust climbs, not how the loop runs), and a robust case's at the rate and moves its case names
(`learning_rate`, held throughout, and `moves`: a strength of lucid's), whatever robust's defaults are now.
The robust case was pinned again when the transforms' scale stage began to scale (issue 28), on an AMD
AVX-512 CPU, then on an AMD AVX2 one, and later on an Intel AVX-512 one (within 0.0001 of both).
"""
import json
from pathlib import Path

import numpy as np
import pytest

from featurevis.optvis import methods, objectives, render, transform
from featurevis.step_cache import target_network
from tests.cpu import pinned

PINNED = json.loads((Path(__file__).parent / "data" / "pinned_pictures.json").read_text())
CASES = [name for name in PINNED if name != "made_by"]


@pytest.mark.parametrize("name", CASES)
def test_a_fixed_job_gives_the_pinned_picture(factory, name):
    case = PINNED[name]
    loaded = factory.model(case["model"])
    method = methods.BY_NAME[case["method"]]
    network, objective = target_network(loaded, loaded.info.target_layer(case["target"]), method.needs_style,
                                        class_objective="logit")
    shape = loaded.info.input_shape
    settings = {}
    if "learning_rate" in case:
        settings = {"learning_rate": case["learning_rate"], "settled_rate": None, "coarse_steps": None,
                    "moves": transform.Moves.lucid(max(shape[:2]), case["moves"])}
    step = method.compile_step(network, loaded.preprocess, objective, shape, **settings)
    weights = objectives.weights_matrix([{case["feature"]: 1.0}], loaded.info.feature_count(case["target"]))
    ascent = render.run(step, [case["seed"]], weights, case["iterations"], classify=loaded.classify,
                        on_progress=lambda *_: None)
    every, pin = case["every"], pinned(case["pins"])
    np.testing.assert_allclose(ascent.images[0][::every, ::every], np.array(pin["pixels"]), atol=0.02)
    np.testing.assert_allclose([float(stats.loss[0]) for stats in ascent.history], pin["loss"], rtol=1e-4, atol=1e-6)
