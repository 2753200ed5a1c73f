"""Every method by its name: a third is one new module (a `METHOD` with its compile_step) and one line here.

The contract (TF-free) lists the same names; tests/test_optvis.py checks the two agree.
"""
from featurevis.optvis import gradient_ascent, robust
from featurevis.optvis.render import Method

BY_NAME: dict[str, Method] = {method.name: method for method in (gradient_ascent.METHOD, robust.METHOD)}
