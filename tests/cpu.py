"""Pins that depend on the CPU: TensorFlow's oneDNN kernels round differently on each vendor's chips."""
from __future__ import annotations

import pytest


def vendor() -> str:
    """The CPU's vendor_id (GenuineIntel, AuthenticAMD, ...), or the machine type where /proc has none."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.machine()


def pinned(pins: dict):
    """This CPU vendor's pin; a skip that says how to make one where none was recorded."""
    here = vendor()
    if here not in pins:
        pytest.skip(f"no pin recorded on a {here} CPU (pins exist for {', '.join(pins)}); record one from the "
                    f"commit named in the data file's made_by")
    return pins[here]
