"""The optimization math as plain TensorFlow, with no Celery in it.

Laid out as lucid's optvis: `objectives` say what to maximize, `param` makes
the starting image, `render` runs the ascent. Everything works on a batch so a
sweep of several features of one layer is one pass.
"""
