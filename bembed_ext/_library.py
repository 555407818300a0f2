"""Loads the compiled kernels and says clearly when the build does not match the running torch."""

from __future__ import annotations

import importlib
import json
import os
import platform
from functools import lru_cache

import torch

_HERE = os.path.dirname(os.path.abspath(__file__))
REBUILD_HINT = "rebuild bembed against this torch: pip install --no-build-isolation --force-reinstall --no-deps ."


@lru_cache(maxsize=1)
def build_info() -> dict:
    """What the compiled library was built against: torch/CUDA/Python versions, CUDA archs, CPU SIMD level."""
    path = os.path.join(_HERE, "_build_info.json")
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def _mismatch_message(reason: str) -> str:
    info = build_info()
    built = ", ".join(f"{k}={v}" for k, v in info.items()) or "unknown (no _build_info.json)"
    return (
        f"bembed_ext could not be used: {reason}\n"
        f"  built against: {built}\n"
        f"  running:       torch={torch.__version__}, python={platform.python_version()}\n"
        f"  fix: {REBUILD_HINT}"
    )


def load_library() -> None:
    """Imports bembed_ext._C, which registers the torch.ops.bembed kernels."""
    info = build_info()
    if info and info.get("torch_version") != torch.__version__:
        raise ImportError(_mismatch_message("it was compiled for a different torch"))
    try:
        importlib.import_module("bembed_ext._C")
    except ImportError as error:
        raise ImportError(_mismatch_message(f"the compiled library failed to load ({error})")) from error


def has_kernel(op: str, device_type: str) -> bool:
    """Whether public op `op` (a key of bembed_ext.OPS, e.g. "geglu") has kernels registered for
    device_type ("CPU" or "CUDA") for every torch.ops.bembed operator it uses."""
    from . import OPS

    if op not in OPS:
        raise ValueError(f"unknown op {op!r}; known ops: {sorted(OPS)}")
    return all(torch._C._dispatch_has_kernel_for_dispatch_key(f"bembed::{name}", device_type.upper())
               for name in OPS[op])


def has_cuda_kernels() -> bool:
    """Whether this build of bembed_ext contains CUDA kernels (independent of whether a GPU is present)."""
    return torch._C._dispatch_has_kernel_for_dispatch_key("bembed::geglu", "CUDA")
