"""The CUDA ALiBi attention kernels (csrc/cuda/alibi_attention_{fwd,bwd}.cu), run on the CPU under a host
emulation of the CUDA runtime, warp shuffles and mma.sync (tests/cuda_emulator), against the float64 reference.

This checks the kernels' tiling, fragment indexing, online softmax, masking, boundaries and backward
algebra as written, on machines without a GPU. It cannot check what the emulation does not model: real
warp scheduling and memory ordering, bank conflicts, register limits, exp2f's approximation, speed. Every
buffer the kernels touch sits between NaN guards: an out-of-bounds write breaks a guard, an out-of-bounds
read poisons the result, and shared memory starts as NaN."""

import ctypes
import math
import os
import shutil
import sys

import pytest
import torch

import bembed_ext
from accuracy import assert_within_torch_error

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "cuda_emulator"))
import build as emulator_build  # noqa: E402
from guarded import Guarded  # noqa: E402

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++ to build the emulation")

reference = bembed_ext.reference
KERNEL_DTYPE = {torch.float16: 1, torch.bfloat16: 2}  # bembed::cuda::DType
LOG2E = math.log2(math.e)


@pytest.fixture(scope="module")
def lib():
    return ctypes.CDLL(emulator_build.build())


def _ptr(t):
    return None if t is None else ctypes.c_void_p(t.data_ptr())


class Problem:
    """One kernel problem: padded (q (B, L, H, D) + optional mask) or varlen (q (T, H, D) + cu_seqlens)."""

    def __init__(self, q, k, v, slopes, scale, mask=None, cu_seqlens=None, max_seqlen=None):
        self.dtype = q.dtype
        self.slopes = None if slopes is None else slopes.contiguous()
        self.scale = scale
        self.mask = None if mask is None else mask.contiguous()
        self.varlen = cu_seqlens is not None
        if self.varlen:
            T, H, D = q.shape
            self.cu_seqlens = cu_seqlens.to(torch.int32).contiguous()
            B, L = len(cu_seqlens) - 1, 0
            self.lse_shape = (H, T)
            self.max_seqlen = max_seqlen
        else:
            B, L, H, D = q.shape
            T = B * L
            self.cu_seqlens = None
            self.lse_shape = (B, H, L)
            self.max_seqlen = L
        self.B, self.L, self.H, self.D, self.T = B, L, H, D, T
        self.inputs = {name: Guarded(t.shape, t.dtype, t) for name, t in (("q", q), ("k", k), ("v", v))}

    def _common(self):
        slopes_stride = self.H if self.slopes is not None and self.slopes.dim() == 2 else 0
        return (KERNEL_DTYPE[self.dtype], self.B, self.H, self.D, self.max_seqlen, ctypes.c_int64(self.T),
                _ptr(self.cu_seqlens), self.L, _ptr(self.mask), _ptr(self.slopes), ctypes.c_int64(slopes_stride),
                ctypes.c_float(self.scale))

    def forward(self, lib):
        shape = self.inputs["q"].tensor.shape
        out, lse = Guarded(shape, self.dtype), Guarded(self.lse_shape, torch.float32)
        qkv = [self.inputs[n].ptr() for n in "qkv"]
        assert lib.emu_alibi_forward(*self._common(), *qkv, out.ptr(), lse.ptr()) == 0
        out.check("out")
        lse.check("lse")
        return out.tensor.clone(), lse.tensor.clone()

    def backward(self, lib, grad, out, lse):
        shape = self.inputs["q"].tensor.shape
        g, o, l = Guarded(shape, self.dtype, grad), Guarded(shape, self.dtype, out), Guarded(self.lse_shape, torch.float32, lse)
        delta = Guarded(self.lse_shape, torch.float32)
        grads = [Guarded(shape, self.dtype) for _ in range(3)]
        qkv = [self.inputs[n].ptr() for n in "qkv"]
        rc = lib.emu_alibi_backward(*self._common(), g.ptr(), *qkv, o.ptr(), l.ptr(), delta.ptr(),
                                    *[x.ptr() for x in grads])
        assert rc == 0
        for name, x in zip(("delta", "dq", "dk", "dv"), [delta] + grads):
            x.check(name)
        return [x.tensor.clone() for x in grads]


def _reference_run(fn, tensors, grad):
    leaves = [t.detach().requires_grad_() for t in tensors]
    out = fn(*leaves)
    out.backward(grad)
    return [out.detach()] + [t.grad for t in leaves]


def _check(lib, problem, ref_fn):
    """Kernel forward + backward vs ref_fn in float64, within 2× of ref_fn's own low-precision error."""
    q, k, v = (problem.inputs[n].tensor.clone() for n in "qkv")
    out, lse = problem.forward(lib)
    grad = torch.randn_like(q)
    ours = [out] + problem.backward(lib, grad, out, lse)
    exact = _reference_run(ref_fn, [q.double(), k.double(), v.double()], grad.double())
    low = _reference_run(ref_fn, [q, k, v], grad)
    for name, o, e, t in zip(("out", "grad q", "grad k", "grad v"), ours, exact, low):
        assert_within_torch_error(o, e, t, what=name)
    return out, lse


# The emulation runs one OS thread per lane: D = 64 and 128 take 20-40 s each on 2 cores, so they are `slow`.
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("D", [32, pytest.param(64, marks=pytest.mark.slow), pytest.param(128, marks=pytest.mark.slow)])
def test_padded_ragged_mask_and_fully_masked_row(lib, dtype, D):
    B, L, H = 3, 77, 2  # L spans two key tiles, the second partial
    q, k, v = (torch.randn(B, L, H, D, dtype=dtype) for _ in range(3))
    mask = torch.arange(L)[None, :] < torch.tensor([L, 0, 40])[:, None]  # row 1: only padding
    slopes = bembed_ext.alibi_slopes(H)
    problem = Problem(q, k, v, slopes, D ** -0.5, mask=mask)
    out, lse = _check(lib, problem, lambda q, k, v: reference.alibi_attention(q, k, v, slopes, key_padding_mask=mask))
    assert torch.all(out[1] == 0) and torch.all(lse[1] == float("-inf"))
    _, lse_ref = reference.alibi_attention(q.double(), k.double(), v.double(), slopes, key_padding_mask=mask,
                                           return_lse=True)
    torch.testing.assert_close(lse[[0, 2]], lse_ref[[0, 2]].float(), rtol=1e-4, atol=1e-4)


def test_non_finite_padded_keys_do_not_reach_real_rows(lib):
    B, L, H, D = 2, 70, 1, 32
    q, k, v = (torch.randn(B, L, H, D, dtype=torch.bfloat16) for _ in range(3))
    mask = torch.arange(L)[None, :] < torch.tensor([L, 50])[:, None]
    k[1, 50:60], k[1, 60:] = float("inf"), float("nan")  # what a padded buffer from torch.empty may hold
    slopes = bembed_ext.alibi_slopes(H)
    out, _ = Problem(q, k, v, slopes, D ** -0.5, mask=mask).forward(lib)
    exact = reference.alibi_attention(q.double(), k.double(), v.double(), slopes, key_padding_mask=mask)
    assert_within_torch_error(out, exact, reference.alibi_attention(q, k, v, slopes, key_padding_mask=mask))


@pytest.mark.parametrize("L", [1, 16, 64, pytest.param(192, marks=pytest.mark.slow)])  # 192 ≡ 64 (mod 128)
def test_padded_lengths(lib, L):
    B, H, D = 1, 1, 32
    q, k, v = (torch.randn(B, L, H, D, dtype=torch.bfloat16) * 2 for _ in range(3))
    slopes = torch.tensor([0.05])
    problem = Problem(q, k, v, slopes, 0.3)
    _check(lib, problem, lambda q, k, v: reference.alibi_attention(q, k, v, slopes, softmax_scale=0.3))


@pytest.mark.parametrize("slopes_kind", ["per_batch", "none"])
def test_padded_slopes_per_batch_and_none(lib, slopes_kind):
    B, L, H, D = 2, 33, 3, 64
    q, k, v = (torch.randn(B, L, H, D, dtype=torch.float16) for _ in range(3))
    slopes = torch.rand(B, H) * 0.5 if slopes_kind == "per_batch" else None
    problem = Problem(q, k, v, slopes, D ** -0.5)
    _check(lib, problem, lambda q, k, v: reference.alibi_attention(q, k, v, slopes))


@pytest.mark.parametrize("max_seqlen", [70, 20])  # exact, and an underestimate (the kernels stride over tiles)
def test_varlen_with_empty_sequence(lib, max_seqlen):
    lengths = [5, 0, 70, 1]
    H, D = 2, 64
    T = sum(lengths)
    cu_seqlens = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32)
    q, k, v = (torch.randn(T, H, D, dtype=torch.bfloat16) for _ in range(3))
    slopes = torch.rand(len(lengths), H) * 0.3
    problem = Problem(q, k, v, slopes, D ** -0.5, cu_seqlens=cu_seqlens, max_seqlen=max_seqlen)
    _, lse = _check(lib, problem, lambda q, k, v: reference.alibi_attention_varlen(q, k, v, cu_seqlens, 70, slopes))
    _, lse_ref = reference.alibi_attention_varlen(q.double(), k.double(), v.double(), cu_seqlens, 70, slopes,
                                                  return_lse=True)
    torch.testing.assert_close(lse, lse_ref.float(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("eager", [False, True], ids=["copies_land_at_wait", "copies_land_at_issue"])
def test_pipeline_under_both_copy_timings(lib, eager):
    """Several key and query tiles through the cp.async double buffer: copies landing as late as allowed catch
    a read before its wait; copies landing at once catch a stage refilled while still being read."""
    B, L, H, D = 1, 150, 1, 32
    q, k, v = (torch.randn(B, L, H, D, dtype=torch.float16) for _ in range(3))
    slopes = torch.tensor([0.1])
    problem = Problem(q, k, v, slopes, D ** -0.5)
    lib.emu_set_eager_copies(int(eager))
    try:
        _check(lib, problem, lambda q, k, v: reference.alibi_attention(q, k, v, slopes))
    finally:
        lib.emu_set_eager_copies(0)


def _poisoned(problem, name, rows, value=float("inf")):
    """The problem with rows (token positions of a padded (1, L, H, D) input) of one input set to value."""
    tensors = {n: problem.inputs[n].tensor.clone() for n in "qkv"}
    tensors[name][:, rows] = value
    return Problem(*(tensors[n] for n in "qkv"), problem.slopes, problem.scale, mask=problem.mask)


@pytest.mark.parametrize("slopes", [torch.tensor([1.0, 0.5]), None], ids=["steep", "no_slopes"])
def test_far_tiles_are_skipped_and_results_stay_exact(lib, slopes):
    """Key tiles that no row of a CTA can weigh above 2^-32 of its sum are left out (alibi_attention_skip.cuh),
    forward and backward, and nothing else changes. Seen through infinities: a key whose v row is inf gives
    NaN (0·inf, where its weight underflows) or inf to any row whose CTA visits its tile, as PyTorch's reference
    would, and a query whose dO row is inf does the same to the dK/dV of the keys whose CTA visits it. With
    slopes 1 and 0.5 (reach ~40 and ~80 keys at this size), rows far from the poisoned tile stay finite and
    bitwise what they were; without slopes every tile is visited and none stays finite."""
    B, L, H, D = 1, 320, 2, 32  # five key tiles of 64
    q, k, v = (torch.randn(B, L, H, D, dtype=torch.bfloat16) for _ in range(3))
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[0, 70:100] = False  # masked diagonals in the second CTA: their reference is key 0, the nearer end of the span
    problem = Problem(q, k, v, slopes, D ** -0.5, mask=mask)
    out, lse = _check(lib, problem, lambda q, k, v: reference.alibi_attention(q, k, v, slopes, key_padding_mask=mask))
    grad = torch.randn_like(q)
    clean = problem.backward(lib, grad, out, lse)

    far, near = slice(256, 320), slice(0, 64)  # the last key tile; rows far from it (not the second CTA)
    poisoned = _poisoned(problem, "v", far)
    out_p, lse_p = poisoned.forward(lib)
    dq_p = poisoned.backward(lib, grad, out_p, lse_p)[0]
    dk_p, dv_p = problem.backward(lib, _poisoned_grad(grad, far), out, lse)[1:]
    if slopes is None:
        for name, x in (("out", out_p), ("dq", dq_p), ("dv", dv_p)):  # every tile visited: inf and NaN everywhere
            assert not torch.isfinite(x[:, near]).any(), name
        return
    assert torch.equal(out_p[:, near], out[:, near]) and torch.equal(lse_p[:, :, near], lse[:, :, near])
    assert torch.equal(dq_p[:, near], clean[0][:, near])
    assert torch.equal(dk_p[:, near], clean[1][:, near]) and torch.equal(dv_p[:, near], clean[2][:, near])
    # Rows 70-99 reach ≤ 99 keys further from key 0 than from their own: head 0 (slope 1) still stops short of
    # the last tile, head 1 (slope 0.5) does not.
    assert torch.equal(out_p[:, 64:128, 0], out[:, 64:128, 0]) and torch.isnan(out_p[:, 64:128, 1]).any()
    assert not torch.isfinite(out_p[:, far]).any()  # its own rows do see the poisoned tile


def _poisoned_grad(grad, rows):
    grad = grad.clone()
    grad[:, rows] = float("inf")
    return grad


def test_far_tiles_are_skipped_in_varlen_sequences(lib):
    """The same through the varlen addressing (a sequence starting mid-buffer, an empty one, per-sequence
    slopes), where the reach and the workspace are indexed by sequence."""
    lengths, H, D = [37, 0, 320], 2, 32
    starts = torch.tensor([0] + lengths).cumsum(0)
    cu_seqlens = starts.to(torch.int32)
    q, k, v = (torch.randn(sum(lengths), H, D, dtype=torch.bfloat16) for _ in range(3))
    slopes = torch.tensor([[0.01, 0.02], [1.0, 1.0], [1.0, 0.5]])
    problem = Problem(q, k, v, slopes, D ** -0.5, cu_seqlens=cu_seqlens, max_seqlen=320)
    out, lse = _check(lib, problem, lambda q, k, v: reference.alibi_attention_varlen(q, k, v, cu_seqlens, 320, slopes))
    grad = torch.randn_like(q)
    clean = problem.backward(lib, grad, out, lse)
    far = slice(37 + 256, 37 + 320)  # the long sequence's last key tile
    near = slice(0, 37 + 128)        # the short sequence, and the long one's first two CTAs
    tensors = [t.clone() for t in (q, k, v)]
    tensors[2][far] = float("inf")
    poisoned = Problem(*tensors, slopes, D ** -0.5, cu_seqlens=cu_seqlens, max_seqlen=320)
    out_p, lse_p = poisoned.forward(lib)
    dq_p = poisoned.backward(lib, grad, out_p, lse_p)[0]
    grad_p = grad.clone()
    grad_p[far] = float("inf")
    dk_p, dv_p = problem.backward(lib, grad_p, out, lse)[1:]
    for name, ours, theirs in (("out", out_p, out), ("lse", lse_p[:, near], lse[:, near]), ("dq", dq_p, clean[0]),
                               ("dk", dk_p, clean[1]), ("dv", dv_p, clean[2])):
        if name != "lse":
            ours, theirs = ours[near], theirs[near]
        assert torch.equal(ours, theirs), name


def _visited(x):
    """Which rows of x (rows, D) turned non-finite: their CTA visited the poisoned tile."""
    return ~torch.isfinite(x).all(dim=-1)


@pytest.mark.parametrize("D", [32, pytest.param(128, marks=pytest.mark.slow)])
def test_skipped_tiles_weigh_less_than_the_promised_bound(lib, D):
    """The skip's promise, checked where its bound is tight: every query and key the same vector c, so each score
    equals the bound and only ALiBi tells keys apart (row i weighs key j ∝ 2^(−slope·log2e·|i − j|)). Poisoning
    one tile at a time shows which (row, tile) pairs each kernel visits, forward (v), dQ (v, with clean out and
    lse) and dK/dV (dO); the float64 softmax weight of everything a row left out must stay below 2^−32 of its
    sum, for every row and each kernel, and something must be left out (or this tests nothing). A weaker margin,
    a bound that ignores K or the scale, or a reach measured from the wrong side fails here."""
    L, H = 320, 2
    scale = D ** -0.5
    score2 = 35.0  # scale·log2e·‖c‖², every score before ALiBi (in base 2)
    c = torch.randn(D, dtype=torch.float64)
    c = (c * (score2 / (scale * LOG2E)) ** 0.5 / c.norm()).to(torch.bfloat16)
    q = c.expand(1, L, H, D).contiguous()
    slopes = torch.tensor([0.32, 0.64]) / LOG2E  # weights above 2^-32 out to ~100 and ~50 keys
    problem = Problem(q, q.clone(), torch.randn(1, L, H, D, dtype=torch.bfloat16), slopes, scale)
    out, lse = problem.forward(lib)
    grad = torch.randn_like(q)

    distance = (torch.arange(L)[:, None] - torch.arange(L)[None, :]).abs().double()
    scores = scale * (c.double() @ c.double()) - slopes.double()[:, None, None] * distance  # (H, L, L)
    weights = scores.softmax(dim=-1)
    visited = {name: torch.zeros(H, L, L, dtype=torch.bool) for name in ("forward", "dq", "dkdv")}
    for first in range(0, L, 64):
        tile = slice(first, first + 64)
        poisoned = _poisoned(problem, "v", tile)
        out_p, _ = poisoned.forward(lib)
        dq_p = poisoned.backward(lib, grad, out, lse)[0]
        dv_p = problem.backward(lib, _poisoned_grad(grad, tile), out, lse)[2]
        for h in range(H):
            visited["forward"][h, :, tile] = _visited(out_p[0, :, h])[:, None]
            visited["dq"][h, :, tile] = _visited(dq_p[0, :, h])[:, None]
            visited["dkdv"][h, tile, :] = _visited(dv_p[0, :, h])[None, :]  # rows of the tile, per key
    for name, seen in visited.items():
        left_out = (weights * ~seen).sum(dim=-1)
        assert left_out.max() < 2.0 ** -32, (name, left_out.max().item())
        assert not seen.all(), f"{name}: no tile was skipped"


@pytest.mark.parametrize("mirrored", [False, True], ids=["outlier_near_the_start", "outlier_near_the_end"])
def test_an_outlier_query_widens_only_the_dkdv_ranges_near_it(lib, mirrored):
    """The dK/dV CTAs bound the queries that reach their keys per run of 16 rows, not per (sequence, head): a query
    with 20× the usual norm at row 10 reaches ~140-200 keys, the other rows ~35-40. Seen through inf in rows of dO
    (bitwise-unchanged dK/dV: the rows were skipped; non-finite dV: they were visited): the last key tile still
    leaves out rows 64-127, and keys 128-191, more than 64 rows from every other row of tile 0, still visit it
    for the outlier's sake. Mirrored (the outlier at row 309), the same from the other end, so a record filed
    under the wrong run fails one way or the other."""
    B, L, H, D = 1, 320, 2, 32
    at = (lambda a, b: slice(L - b, L - a)) if mirrored else slice  # positions [a, b) as seen from the outlier's end
    q, k, v = (torch.randn(B, L, H, D, dtype=torch.bfloat16) for _ in range(3))
    q[:, L - 11 if mirrored else 10] *= 20
    slopes = torch.tensor([1.0, 1.0])
    problem = Problem(q, k, v, slopes, D ** -0.5)
    out, lse = problem.forward(lib)
    # The forward only: the backward's delta = rowsum(dO∘O) takes O rounded to bf16 (as FlashAttention's), and
    # the outlier's 20× multiplies that rounding into dK beyond 2× PyTorch's error on some draws.
    exact = reference.alibi_attention(q.double(), k.double(), v.double(), slopes)
    assert_within_torch_error(out, exact, reference.alibi_attention(q, k, v, slopes), what="out")
    grad = torch.randn_like(q)
    clean = problem.backward(lib, grad, out, lse)
    dk_p, dv_p = problem.backward(lib, _poisoned_grad(grad, at(64, 128)), out, lse)[1:]
    last = at(256, 320)
    assert torch.equal(dk_p[:, last], clean[1][:, last]) and torch.equal(dv_p[:, last], clean[2][:, last])
    dv_p = problem.backward(lib, _poisoned_grad(grad, at(0, 64)), out, lse)[2]
    assert not torch.isfinite(dv_p[:, at(128, 192)]).all(), "the outlier's run lost its reach"
    assert torch.equal(dv_p[:, last], clean[2][:, last])


@pytest.mark.parametrize("slopes", [torch.tensor([1.0, 0.5]), None], ids=["steep", "no_slopes"])
def test_no_cta_walks_past_the_real_keys_of_its_sequence(lib, slopes):
    """Left and right padding: the key tiles before the first and after the last real key of a sequence are never
    visited (their k and v rows may hold anything, inf here), and the padded query rows, whose diagonal key is
    masked, take the nearest real key as their reference and skip far tiles too. Without slopes no tile is skipped
    and the inf reaches every row, as in PyTorch."""
    B, L, H, D = 2, 320, 2, 32
    q, k, v = (torch.randn(B, L, H, D, dtype=torch.bfloat16) for _ in range(3))
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[0, :70] = False   # tile 0 fully masked
    mask[0, 150:] = False  # tiles 3 and 4 fully masked
    mask[1, 40:] = False   # a short sequence: tiles 1-4 fully masked
    problem = Problem(q, k, v, slopes, D ** -0.5, mask=mask)
    out, lse = _check(lib, problem, lambda q, k, v: reference.alibi_attention(q, k, v, slopes, key_padding_mask=mask))
    grad = torch.randn_like(q)
    clean = problem.backward(lib, grad, out, lse)
    tensors = {n: problem.inputs[n].tensor.clone() for n in "qkv"}
    for name in "kv":
        tensors[name][0, :64] = float("inf")
        tensors[name][0, 192:] = float("inf")
        tensors[name][1, 64:] = float("inf")
    poisoned = Problem(*(tensors[n] for n in "qkv"), slopes, D ** -0.5, mask=mask)
    out_p, lse_p = poisoned.forward(lib)
    dq_p, dk_p, dv_p = poisoned.backward(lib, grad, out, lse)
    if slopes is None:
        assert not torch.isfinite(out_p).any()
        return
    assert torch.equal(out_p, out) and torch.equal(lse_p, lse) and torch.equal(dq_p, clean[0])
    real = mask[:, :, None, None]
    assert torch.equal(dk_p * real, clean[1] * real) and torch.equal(dv_p * real, clean[2] * real)
    assert not dk_p[~mask].any() and not dv_p[~mask].any()  # the padded keys' gradients stay 0
