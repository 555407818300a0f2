"""Buffers for the emulated CUDA kernels: every one sits between NaN guards, so an out-of-bounds write breaks a
guard and an out-of-bounds read poisons the result."""

from __future__ import annotations

import ctypes
import math

import torch

GUARD = 64  # elements on each side; keeps 16-byte alignment
_BITS = {2: torch.int16, 4: torch.int32, 8: torch.int64}


class Guarded:
    """A tensor of the given shape inside a NaN-filled buffer (NaN also fills the tensor until written)."""

    def __init__(self, shape, dtype, value=None):
        n = math.prod(shape)
        self.flat = torch.full((n + 2 * GUARD,), float("nan"), dtype=dtype)
        self.tensor = self.flat[GUARD:GUARD + n].view(shape)
        if value is not None:
            self.tensor.copy_(value)
        self.guard_bits = self._guards().clone()

    def _guards(self):
        bits = self.flat.view(_BITS[self.flat.element_size()])
        return torch.cat([bits[:GUARD], bits[-GUARD:]])

    def ptr(self):
        return ctypes.c_void_p(self.tensor.data_ptr())

    def check(self, name):
        assert torch.equal(self._guards(), self.guard_bits), f"{name}: a kernel wrote out of bounds"
