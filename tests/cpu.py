"""Pins that depend on the CPU: TensorFlow's oneDNN kernels round differently on each vendor's chips, and on
one vendor's chips with and without AVX-512 (an AVX2 EPYC's conv5 picture differs from an AVX-512 EPYC's)."""
from __future__ import annotations

import pytest


def kind() -> str:
    """The CPU's vendor_id and the widest vector extension oneDNN can use: 'GenuineIntel avx512',
    'AuthenticAMD avx2'; the machine type where /proc has none."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as cpuinfo:
            pairs = (line.split(":", 1) for line in cpuinfo if ":" in line)
            fields = {key.strip(): value.strip() for key, value in pairs}
    except OSError:
        fields = {}
    if "vendor_id" not in fields:
        import platform

        return platform.machine()
    flags = set(fields.get("flags", "").split())
    widest = next((name for name in ("avx512f", "avx2", "avx") if name in flags), "sse")
    return f"{fields['vendor_id']} {widest.removesuffix('f')}"


def pinned(pins: dict):
    """This kind of CPU's pin; a skip that says how to make one where none was recorded."""
    here = kind()
    if here not in pins:
        pytest.skip(f"no pin recorded on a {here} CPU (pins exist for {', '.join(pins)}); record one from the "
                    f"commit named in the data file's made_by")
    return pins[here]


def pinned_png_sha256(path) -> str:
    """A result's PNG as the pins hold it: its pixels encoded at Pillow's default compression. The worker has
    written its PNGs at zlib level 1 since 2026-12-06 (featurevis/images.py), which changes the bytes and not
    the pixels; the pins were recorded before, so a picture is compared as its pixels, encoded their way."""
    import hashlib
    import io

    from PIL import Image

    encoded = io.BytesIO()
    Image.open(path).save(encoded, format="PNG")
    return hashlib.sha256(encoded.getvalue()).hexdigest()
