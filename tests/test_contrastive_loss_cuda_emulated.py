"""The contrastive loss's CUDA elementwise passes (csrc/cuda/contrastive_loss.cu: row statistics, column
statistics, scores → gradient weights), run on the CPU under the host emulation of the CUDA runtime and warp
shuffles (tests/cuda_emulator), against float64 computations of what csrc/cuda/contrastive_loss.cuh promises.

This checks their indexing (strips, row offsets, column chunks, the diagonal), the online (max, sum) merges
across lanes, chunks and strips, and the double statistics, on machines without a GPU. It cannot check what the
emulation does not model: __expf's approximation (the emulation's exp is exact), scheduling, speed; the strip
GEMMs run in cuBLAS and are checked by the CUDA tests. Every buffer sits between NaN guards."""

import ctypes
import os
import shutil
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "cuda_emulator"))
import build as emulator_build  # noqa: E402
from guarded import Guarded  # noqa: E402

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++ to build the emulation")

KERNEL_DTYPE = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}  # bembed::cuda::DType
i64 = ctypes.c_int64


@pytest.fixture(scope="module")
def lib():
    library = ctypes.CDLL(emulator_build.build())
    library.emu_contrastive_column_chunks.restype = ctypes.c_int64
    return library


def _scores(rows, cols, seed):
    """Scores of a trained model's scale: |s| up to ~1/τ = 20, the diagonal highest."""
    gen = torch.Generator().manual_seed(seed)
    s = torch.randn(rows, cols, generator=gen) * 6
    s[torch.arange(min(rows, cols)), torch.arange(min(rows, cols))] += 14
    return s


def _max_and_sum(s, dim):
    m = s.max(dim).values
    return m, torch.exp(s - m.unsqueeze(dim)).sum(dim)


@pytest.mark.parametrize("nr, lr0, nl, widths", [
    (11, 3, 6, (45, 70)),
    (25, 3, 20, (45, 70)),  # 20 rows: three blocks of 8 warps
    (9, 0, 9, (8, 3)),      # strips narrower than a warp: lanes without a column merge an empty state
])
def test_row_stats_merge_across_strips_lanes_and_rows(lib, nr, lr0, nl, widths):
    """Two strips of one anchor block's rows, merged into running statistics, from row lr0 of each strip."""
    strips = [_scores(nr, widths[0], 0), _scores(nr, widths[1], 1) + 3]  # the second strip moves some rows' max
    running_max = Guarded((nl,), torch.float64, torch.full((nl,), float("-inf"), dtype=torch.float64))
    running_sum = Guarded((nl,), torch.float64, torch.zeros(nl, dtype=torch.float64))
    for s in strips:
        S = Guarded(tuple(s.shape), torch.float32, s)
        assert lib.emu_contrastive_row_stats(S.ptr(), i64(s.shape[1]), i64(lr0), i64(nl), running_max.ptr(),
                                             running_sum.ptr()) == 0
        S.check("S")
    running_max.check("running_max")
    running_sum.check("running_sum")
    whole = torch.cat(strips, dim=1)[lr0:lr0 + nl].double()
    m, total = _max_and_sum(whole, 1)
    torch.testing.assert_close(running_max.tensor, m, rtol=0, atol=0)  # a float score, exactly
    torch.testing.assert_close(running_sum.tensor, total, rtol=1e-6, atol=0)


def test_row_stats_sum_is_double_near_convergence(lib):
    """A row whose positive dominates: Σ exp(s − max) = 1 + ε with ε ~ 1e-9, which a float sum rounds away
    (the row's whole gradient, p_ii − 1 ≈ −ε)."""
    s = torch.full((1, 64), -21.0)
    s[0, 0] = 0.0
    running_max = Guarded((1,), torch.float64, torch.full((1,), float("-inf"), dtype=torch.float64))
    running_sum = Guarded((1,), torch.float64, torch.zeros(1, dtype=torch.float64))
    S = Guarded((1, 64), torch.float32, s)
    assert lib.emu_contrastive_row_stats(S.ptr(), i64(64), i64(0), i64(1), running_max.ptr(), running_sum.ptr()) == 0
    epsilon = running_sum.tensor.item() - 1.0
    expected = 63 * torch.exp(torch.tensor(-21.0)).item()  # the float exp of each term, as the kernel takes it
    assert abs(epsilon - expected) < 1e-6 * expected, (epsilon, expected)


@pytest.mark.parametrize("nr, nc", [(1, 1), (37, 5), (1100, 300)])  # 1100 rows: three chunks; 300: two blocks
def test_column_stats_over_chunks_and_blocks(lib, nr, nc):
    s = _scores(nr, nc, 2)
    chunks = lib.emu_contrastive_column_chunks(i64(nr))
    assert chunks == (nr + 511) // 512
    S = Guarded((nr, nc), torch.float32, s)
    partial = Guarded((2 * chunks * nc,), torch.float64)
    col_max, col_sum = Guarded((nc,), torch.float64), Guarded((nc,), torch.float64)
    assert lib.emu_contrastive_column_stats(S.ptr(), i64(nr), i64(nc), partial.ptr(), col_max.ptr(),
                                            col_sum.ptr()) == 0
    for buffer, name in ((S, "S"), (partial, "partial"), (col_max, "col_max"), (col_sum, "col_sum")):
        buffer.check(name)
    m, total = _max_and_sum(s.double(), 0)
    torch.testing.assert_close(col_max.tensor, m, rtol=0, atol=0)
    torch.testing.assert_close(col_sum.tensor, total, rtol=1e-6, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("columns", [False, True])
@pytest.mark.parametrize("alias", [False, True])
def test_scores_to_grad(lib, dtype, columns, alias):
    """Rows lr0..lr0+nl-1 get exp(s − row_max)·row_scale, every row the column term when given, and the ndiag
    entries (diag_row + t, diag_col + t) their diag_values; with float32 the output may be S itself."""
    if alias and dtype != torch.float32:
        pytest.skip("only a float32 output may alias S")
    nr, nc, lr0, nl = 23, 300, 4, 12
    diag_row, diag_col, ndiag = 6, 250, 9
    s = _scores(nr, nc, 3) / 2
    gen = torch.Generator().manual_seed(4)
    row_max = s[lr0:lr0 + nl].max(1).values
    row_scale = torch.rand(nl, generator=gen) + 0.5
    col_shift = s.max(0).values if columns else None
    col_scale = (torch.rand(nc, generator=gen) + 0.5) if columns else None
    diag_values = torch.randn(ndiag, generator=gen)

    def weight(shifted, scale):  # the kernel's float difference, then exp and the product in full precision
        return torch.exp(shifted.double()) * scale.double()

    expected = torch.zeros(nr, nc, dtype=torch.float64)
    expected[lr0:lr0 + nl] = weight(s[lr0:lr0 + nl] + (-row_max)[:, None], row_scale[:, None])
    if columns:
        expected += weight(s - col_shift, col_scale)
    t = torch.arange(ndiag)
    expected[diag_row + t, diag_col + t] = diag_values.double()

    S = Guarded((nr, nc), torch.float32, s)
    out = S if alias else Guarded((nr, nc), dtype)
    side = {name: Guarded(tuple(v.shape), torch.float32, v) for name, v in
            (("row_max", row_max), ("row_scale", row_scale), ("col_shift", col_shift), ("col_scale", col_scale),
             ("diag_values", diag_values)) if v is not None}
    ptr = {name: side[name].ptr() if name in side else None for name in
           ("row_max", "row_scale", "col_shift", "col_scale", "diag_values")}
    assert lib.emu_contrastive_scores_to_grad(
        S.ptr(), out.ptr(), KERNEL_DTYPE[dtype], i64(nr), i64(nc), i64(lr0), i64(nl), ptr["row_max"],
        ptr["row_scale"], ptr["col_shift"], ptr["col_scale"], i64(diag_row), i64(diag_col), i64(ndiag),
        ptr["diag_values"]) == 0
    for name, buffer in (("S", S), ("out", out), *side.items()):
        buffer.check(name)
    # float32: the exp, product and sum of float operands (a few 1e-7 relative); half types: one rounding to
    # them (float16 also to its subnormals, 2^-24 apart)
    rtol, atol = {torch.float32: (1e-6, 0.0), torch.float16: (1e-3, 2.0**-25),
                  torch.bfloat16: (4e-3, 0.0)}[dtype]
    torch.testing.assert_close(out.tensor.double(), expected, rtol=rtol, atol=atol)


def test_empty_strips_launch_nothing(lib):
    nothing = Guarded((1,), torch.float64)
    assert lib.emu_contrastive_row_stats(None, i64(4), i64(0), i64(0), nothing.ptr(), nothing.ptr()) == 0
    assert lib.emu_contrastive_column_stats(None, i64(3), i64(0), nothing.ptr(), nothing.ptr(), nothing.ptr()) == 0
    assert lib.emu_contrastive_scores_to_grad(None, None, 0, i64(0), i64(5), i64(0), i64(0), None, None, None, None,
                                              i64(0), i64(0), i64(0), None) == 0
    nothing.check("untouched")
