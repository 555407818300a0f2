"""Choosing between an op's compiled kernel and its pure-PyTorch reference."""

from __future__ import annotations

import os

IMPLS = ("auto", "kernel", "reference")


def use_reference(impl: str | None) -> bool:
    """True when a call should run the reference: `impl="reference"`, or BEMBED_REFERENCE_OPS=1 with
    impl left at "auto". `impl="kernel"` always runs the compiled kernel."""
    impl = impl or "auto"
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if impl == "auto":
        return os.environ.get("BEMBED_REFERENCE_OPS", "0") == "1"
    return impl == "reference"
