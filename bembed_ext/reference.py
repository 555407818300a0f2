"""The pure-PyTorch specification of every bembed op (the kernels are tested against these)."""

from .ops.geglu import geglu_reference as geglu

__all__ = ["geglu"]
