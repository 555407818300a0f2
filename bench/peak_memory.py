"""Peak extra resident memory of a block of code, for the bench/*_memory.py scripts. Each script runs in a
fresh process with its inputs already allocated, so the figure is what the measured call itself needs.
Linux only: reads /proc/self/status and resets the peak (VmHWM) through /proc/self/clear_refs."""

from __future__ import annotations

import contextlib
import types


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


@contextlib.contextmanager
def peak_extra_mb():
    """`with peak_extra_mb() as measured: ...` then `measured.mb` = peak resident MB during the block minus
    the resident MB just before it."""
    measured = types.SimpleNamespace(mb=0.0)
    before = _status_mb("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets the peak (VmHWM) to the current resident size
    yield measured
    measured.mb = _status_mb("VmHWM") - before
