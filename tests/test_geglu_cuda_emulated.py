"""The GEGLU CUDA kernels (csrc/cuda/geglu.cu), run on the CPU under the host emulation of the CUDA runtime
(tests/cuda_emulator), against the float64 reference: both the 16-byte-pack path and the scalar path it takes
for widths or pointers that are not 16-byte aligned, forward and backward, every dtype. Every buffer sits
between NaN guards (an out-of-bounds write breaks one, an out-of-bounds read poisons the result). Speed and
the device's erff/expf approximations are left to the GPU run."""

import ctypes
import os
import shutil
import sys

import pytest
import torch

import bembed_ext

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "cuda_emulator"))
import build as emulator_build  # noqa: E402
from guarded import Guarded  # noqa: E402

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++ to build the emulation")

KERNEL_DTYPE = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}  # bembed::cuda::DType
# one rounding of a float32 result to the dtype, and float32's own erf/exp (a few ulp)
TOLERANCE = {torch.float32: 2e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}


@pytest.fixture(scope="module")
def lib():
    return ctypes.CDLL(emulator_build.build())


class Misaligned:
    """A (rows, cols) tensor starting one element after a 16-byte boundary, between NaN guards."""

    def __init__(self, shape, dtype, value=None):
        self.buffer = Guarded((shape[0] * shape[1] + 1,), dtype)
        self.tensor = self.buffer.tensor[1:].view(shape)
        if value is not None:
            self.tensor.copy_(value)

    def ptr(self):
        return ctypes.c_void_p(self.tensor.data_ptr())

    def check(self, name):
        self.buffer.check(name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("rows, inner, aligned", [
    (3, 24, True),    # 16-byte packs (8 half or 4 float values)
    (5, 13, True),    # a width no pack divides: scalar path
    (4, 16, False),   # pointers off a 16-byte boundary: scalar path
    (1, 1, True),
])
def test_forward_and_backward_match_the_reference(lib, dtype, rows, inner, aligned):
    gen = torch.Generator().manual_seed(rows * 100 + inner)
    x = (torch.randn(rows, 2 * inner, generator=gen) * 2).to(dtype)
    grad = torch.randn(rows, inner, generator=gen).to(dtype)
    buffer = Guarded if aligned else Misaligned
    bx, by = buffer((rows, 2 * inner), dtype, x), buffer((rows, inner), dtype)
    assert lib.emu_geglu_forward(bx.ptr(), by.ptr(), ctypes.c_int64(rows), ctypes.c_int64(inner),
                                 KERNEL_DTYPE[dtype]) == 0
    bgrad, bdx = buffer((rows, inner), dtype, grad), buffer((rows, 2 * inner), dtype)
    assert lib.emu_geglu_backward(bgrad.ptr(), bx.ptr(), bdx.ptr(), ctypes.c_int64(rows), ctypes.c_int64(inner),
                                  KERNEL_DTYPE[dtype]) == 0
    for name, b in (("x", bx), ("y", by), ("grad", bgrad), ("dx", bdx)):
        b.check(name)

    x64 = x.double().requires_grad_()
    expected = bembed_ext.reference.geglu(x64)
    expected.backward(grad.double())
    tol = TOLERANCE[dtype]
    torch.testing.assert_close(by.tensor.double(), expected.detach(), rtol=tol, atol=tol)
    torch.testing.assert_close(bdx.tensor.double(), x64.grad, rtol=tol, atol=tol)


def test_empty_inputs_launch_nothing(lib):
    untouched = Guarded((4,), torch.float32)
    assert lib.emu_geglu_forward(untouched.ptr(), untouched.ptr(), ctypes.c_int64(0), ctypes.c_int64(8), 0) == 0
    assert lib.emu_geglu_backward(untouched.ptr(), untouched.ptr(), untouched.ptr(), ctypes.c_int64(3),
                                  ctypes.c_int64(0), 0) == 0
    untouched.check("untouched")
    assert torch.isnan(untouched.tensor).all()
