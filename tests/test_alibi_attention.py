"""ALiBi attention on CPU (padded and varlen) against the float64 reference, autograd, opcheck, compile,
memory at L=8192, and bad input. The CUDA kernels are tested in test_alibi_attention_cuda.py."""

import json
import os
import subprocess
import sys

import pytest
import torch

import bembed_ext
from accuracy import assert_within_torch_error

attention = bembed_ext.alibi_attention
attention_varlen = bembed_ext.alibi_attention_varlen
reference = bembed_ext.reference.alibi_attention
reference_varlen = bembed_ext.reference.alibi_attention_varlen
ops = torch.ops.bembed

# fp32 sums in another order than PyTorch's materialised softmax (tiles, online rescaling, a 20-ulp
# vector exp); low precision keeps the project's 2× rule.
FACTOR = {torch.float32: 3.0, torch.float64: 2.0, torch.bfloat16: 2.0, torch.float16: 2.0}


def _qkv(shape, dtype, spread=1.0):
    return [torch.randn(shape, dtype=dtype) * spread for _ in range(3)]


def _ragged_mask(B, L, *, empty_row=False):
    lengths = torch.randint(1, L + 1, (B,))
    lengths[0] = L
    if empty_row:
        lengths[-1] = 0
    return torch.arange(L)[None, :] < lengths[:, None]


def _forward_backward(fn, tensors, grad):
    leaves = [t.detach().requires_grad_() for t in tensors]
    out = fn(*leaves)
    out.backward(grad)
    return [out.detach()] + [t.grad for t in leaves]


def _compare(ours_fn, reference_fn, tensors, dtype, padding=None, qk_grad_floor=None):
    """bembed vs the float64 reference, at most FACTOR × PyTorch's own error at the same precision. With a key
    padding mask (`padding`, (B, L)) the upstream gradient below float64 is 0 at the padded query rows, as in a
    model, which never reads their states: a gradient into a row far from every real key loses precision in
    float32 (see the README's note on padded rows); float64 checks those rows too. `qk_grad_floor`: the floor of
    the q and k gradients' errors (see `assert_within_torch_error`), where PyTorch's are exact."""
    grad = torch.randn_like(tensors[0])
    if padding is not None and dtype != torch.float64:
        grad = grad * padding[:, :, None, None]
    ours = _forward_backward(ours_fn, tensors, grad)
    exact = _forward_backward(reference_fn, [t.double() for t in tensors], grad.double())
    same_precision = _forward_backward(reference_fn, tensors, grad)
    for name, o, e, s in zip(("out", "grad q", "grad k", "grad v"), ours, exact, same_precision):
        assert o.dtype == dtype
        floor = qk_grad_floor if name in ("grad q", "grad k") else None
        assert_within_torch_error(o, e, s, factor=FACTOR[dtype], floor=floor, what=name)


# A sample of the grid L ∈ {1, 2, 97, 128, 192, 1025} × H ∈ {1, 3, 12} × D ∈ {32, 64, 128}.
GRID = [(2, 1, 3, 32), (3, 2, 1, 64), (2, 97, 3, 64), (1, 128, 12, 32), (2, 192, 1, 128), (1, 1025, 3, 64),
        (1, 1025, 1, 128), (2, 97, 12, 128)]


@pytest.mark.parametrize("B, L, H, D", GRID)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_padded_matches_reference(B, L, H, D, dtype):
    slopes = bembed_ext.alibi_slopes(H)
    mask = _ragged_mask(B, L)
    # At L = 1 the q and k gradients are 0: PyTorch's exactly (its softmax backward takes δ = Σ P·dP = dP), the
    # kernel's up to ~1e-6 in float32, since its δ = Σ dO·O and dP = dO·v (terms of ~30) round apart.
    floor = 1e-5 if L == 1 and dtype == torch.float32 else None
    _compare(lambda q, k, v: attention(q, k, v, slopes, key_padding_mask=mask),
             lambda q, k, v: reference(q, k, v, slopes, key_padding_mask=mask), _qkv((B, L, H, D), dtype), dtype,
             padding=mask, qk_grad_floor=floor)


@pytest.mark.parametrize("B, L, H, D", [(2, 97, 3, 64), (1, 192, 12, 32)])
def test_without_alibi_is_plain_attention(B, L, H, D):
    q, k, v = _qkv((B, L, H, D), torch.float64)
    expected = torch.nn.functional.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v)))
    torch.testing.assert_close(attention(q, k, v, None), expected.transpose(1, 2))
    _compare(lambda q, k, v: attention(q, k, v, None), lambda q, k, v: reference(q, k, v, None),
             _qkv((B, L, H, D), torch.float32), torch.float32)


def test_per_batch_slopes_and_custom_scale():
    B, L, H, D = 3, 130, 3, 32
    slopes = torch.rand(B, H) * 0.5 + 0.01
    mask = _ragged_mask(B, L)
    _compare(lambda q, k, v: attention(q, k, v, slopes, key_padding_mask=mask, softmax_scale=0.3),
             lambda q, k, v: reference(q, k, v, slopes, key_padding_mask=mask, softmax_scale=0.3),
             _qkv((B, L, H, D), torch.float32), torch.float32, padding=mask)
    q, k, v = _qkv((B, L, H, D), torch.float64)
    rows = [attention(q[b:b + 1], k[b:b + 1], v[b:b + 1], slopes[b], softmax_scale=0.3) for b in range(B)]
    torch.testing.assert_close(attention(q, k, v, slopes, softmax_scale=0.3), torch.cat(rows))


def test_large_logits_and_steep_slopes_skip_nothing_that_matters():
    """Scores spread over hundreds of units and slopes up to 4: far tiles are skipped (their weight is
    < 2^-32 of the row), the rest must still match the float64 reference."""
    B, L, H, D = 1, 1025, 4, 64
    slopes = torch.tensor([4.0, 0.5, 2.0 ** -5, 2.0 ** -8])
    _compare(lambda q, k, v: attention(q, k, v, slopes), lambda q, k, v: reference(q, k, v, slopes),
             _qkv((B, L, H, D), torch.float32, spread=4.0), torch.float32)


def test_fully_masked_rows_give_zeros_and_finite_grads():
    B, L, H, D = 3, 70, 2, 32
    q, k, v = (t.requires_grad_() for t in _qkv((B, L, H, D), torch.float32))
    mask = _ragged_mask(B, L, empty_row=True)
    slopes = bembed_ext.alibi_slopes(H)
    out, lse = ops.alibi_attention_fwd(q, k, v, mask, slopes, D ** -0.5)
    assert torch.equal(out[-1], torch.zeros_like(out[-1]))
    assert torch.all(lse[-1] == float("-inf")) and torch.isfinite(lse[:-1]).all()
    out.backward(torch.randn_like(out))
    for t in (q, k, v):
        assert torch.isfinite(t.grad).all()
        assert torch.equal(t.grad[-1], torch.zeros_like(t.grad[-1]))
    _, lse_ref = reference(q.double(), k.double(), v.double(), slopes, key_padding_mask=mask, return_lse=True)
    torch.testing.assert_close(lse[:-1].double(), lse_ref[:-1].double(), rtol=1e-5, atol=1e-5)


# The skip and the masks where a mutation review of the CPU kernel found the tests blind.
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_negative_softmax_scale_skips_nothing_that_matters(dtype):
    """Any finite softmax_scale is accepted: the skip bound must be |scale|·‖q‖·max‖k‖. With the signed scale
    a negative one makes the bound negative, trimming the tiles that hold a row's largest weights (rows of 0).
    Steep slopes make the skip test act."""
    B, L, H, D = 1, 300, 3, 64
    slopes = torch.tensor([4.0, 0.5, 2.0 ** -5])
    _compare(lambda q, k, v: attention(q, k, v, slopes, softmax_scale=-0.125),
             lambda q, k, v: reference(q, k, v, slopes, softmax_scale=-0.125),
             _qkv((B, L, H, D), dtype, spread=4.0), dtype)


@pytest.mark.parametrize("varlen", [False, True])
def test_negative_slopes_match_reference(varlen):
    """A negative slope makes the bias grow with distance, so nothing may be skipped by distance: the kernel
    computes every key for slope ≤ 0 (a negative reach would skip every tile: rows of 0)."""
    H, D = 3, 32
    slopes = torch.tensor([-0.25, 0.5, -2.0 ** -6])
    if varlen:
        cu_seqlens = torch.tensor([0, 70, 70, 300], dtype=torch.int32)
        _compare(lambda q, k, v: attention_varlen(q, k, v, cu_seqlens, 230, slopes),
                 lambda q, k, v: reference_varlen(q, k, v, cu_seqlens, 230, slopes),
                 _qkv((300, H, D), torch.float64), torch.float64)
    else:
        mask = torch.arange(300)[None, :] < torch.tensor([300, 123])[:, None]
        _compare(lambda q, k, v: attention(q, k, v, slopes, key_padding_mask=mask),
                 lambda q, k, v: reference(q, k, v, slopes, key_padding_mask=mask),
                 _qkv((2, 300, H, D), torch.float64), torch.float64)


def test_one_far_key_with_a_large_norm_is_not_skipped():
    """The skip bound takes the largest ‖k‖ of a key tile: key 150 (‖k‖ = 40, aligned with q_0) dominates
    row 0 despite a bias of −75, while its tile's other keys are small; a bound from any other key of the tile
    puts key 150 out of reach, and row 0 attends to its neighbours instead."""
    B, L, H, D = 1, 200, 1, 8
    q, k, v = _qkv((B, L, H, D), torch.float32, spread=0.1)
    q[0, 0, 0] = torch.nn.functional.one_hot(torch.tensor(0), D) * 10.0
    k[0, 150, 0] = torch.nn.functional.one_hot(torch.tensor(0), D) * 40.0
    slopes = torch.tensor([0.5])
    _compare(lambda q, k, v: attention(q, k, v, slopes), lambda q, k, v: reference(q, k, v, slopes), [q, k, v],
             torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_skipped_keys_weigh_less_than_the_documented_margin(dtype):
    """The kernel promises that the keys it leaves out weigh < 2^-32 of a row in float32 and nothing in
    float64. With q = 0 every score is 0 and a row's weights are exp(−slope·|i−j|)/Σ; v is one-hot on key 0,
    so out holds each row's weight of key 0 (e^-81 at row 299): random data never makes a far key's weight
    visible. A float32 margin of 2^-16 or a float64 one of e^-40 fails."""
    B, L, H, D = 1, 300, 1, 4
    q = torch.zeros(B, L, H, D, dtype=dtype)
    k = torch.randn(B, L, H, D, dtype=dtype)
    v = torch.zeros(B, L, H, D, dtype=dtype)
    v[0, 0, 0, 0] = 1.0  # rows up to 299 keys away
    # slope 0.27: the 64-row query tile 64..127 keeps key 0 only if its reach (margin / slope) is ≥ 64
    slopes = torch.tensor([0.27])
    out = attention(q, k, v, slopes)
    exact = reference(q.double(), k.double(), v.double(), slopes)
    if dtype == torch.float64:  # left-out exps round to 0 anyway: the result is the full computation's
        torch.testing.assert_close(out, exact, rtol=1e-10, atol=0)
    else:
        torch.testing.assert_close(out.double(), exact, rtol=1e-5, atol=2.0 ** -32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_key_padding_mask_over_several_key_tiles(dtype):
    """A mask that masks something, over more than one of the forward's 256-key tiles: L = 700 gives three,
    and batch 1 masks keys 600..699, in the third. (The other masked tests have L ≤ 512 or B = 1, whose ragged
    mask masks nothing, so a tile reading the first tile's mask went unseen.)"""
    B, L, H, D = 2, 700, 2, 32
    slopes = torch.tensor([0.5, 2.0 ** -6])
    mask = torch.arange(L)[None, :] < torch.tensor([L, 600])[:, None]
    _compare(lambda q, k, v: attention(q, k, v, slopes, key_padding_mask=mask),
             lambda q, k, v: reference(q, k, v, slopes, key_padding_mask=mask), _qkv((B, L, H, D), dtype), dtype,
             padding=mask)


def _pack(tensors, lengths):
    """(B, L, H, D) padded → (T, H, D) packed, with cu_seqlens."""
    packed = [torch.cat([t[b, :n] for b, n in enumerate(lengths)]) for t in tensors]
    cu_seqlens = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    return packed, cu_seqlens


@pytest.mark.parametrize("per_batch_slopes", [False, True])
def test_varlen_equals_padded_on_the_same_data(per_batch_slopes):
    lengths = [97, 0, 1, 33, 128]
    B, L, H, D = len(lengths), max(lengths), 3, 64
    padded = _qkv((B, L, H, D), torch.float64)
    slopes = torch.rand(B, H) * 0.3 + 0.01 if per_batch_slopes else bembed_ext.alibi_slopes(H)
    mask = torch.arange(L)[None, :] < torch.tensor(lengths)[:, None]
    # Padding queries attend too (only keys are masked): give them no gradient, as varlen has no such rows.
    grad = torch.randn(B, L, H, D, dtype=torch.float64) * mask[:, :, None, None]
    out_p, *grads_p = _forward_backward(lambda q, k, v: attention(q, k, v, slopes, key_padding_mask=mask), padded,
                                        grad)
    packed, cu_seqlens = _pack(padded, lengths)
    (grad_packed,), _ = _pack([grad], lengths)
    out_v, *grads_v = _forward_backward(lambda q, k, v: attention_varlen(q, k, v, cu_seqlens, L, slopes), packed,
                                        grad_packed)
    (out_p_packed, *grads_p_packed), _ = _pack([out_p, *grads_p], lengths)
    torch.testing.assert_close(out_v, out_p_packed)
    for gv, gp in zip(grads_v, grads_p_packed):
        torch.testing.assert_close(gv, gp)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_varlen_matches_reference(dtype):
    lengths = [1, 0, 200, 97, 0, 2]
    H, D = 3, 32
    cu_seqlens = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    slopes = bembed_ext.alibi_slopes(H)
    tensors = _qkv((sum(lengths), H, D), dtype)
    _compare(lambda q, k, v: attention_varlen(q, k, v, cu_seqlens, 200, slopes),
             lambda q, k, v: reference_varlen(q, k, v, cu_seqlens, 200, slopes), tensors, dtype)
    out, lse = ops.alibi_attention_varlen_fwd(*tensors, cu_seqlens, 200, slopes, D ** -0.5)
    _, lse_ref = reference_varlen(*(t.double() for t in tensors), cu_seqlens, 200, slopes, return_lse=True)
    torch.testing.assert_close(lse.double(), lse_ref.double(), rtol=1e-5, atol=1e-5)


def test_varlen_max_seqlen_is_only_a_hint():
    lengths = [50, 7]
    cu_seqlens = torch.tensor([0, 50, 57], dtype=torch.int32)
    q, k, v = _qkv((57, 2, 16), torch.float64)
    slopes = bembed_ext.alibi_slopes(2)
    torch.testing.assert_close(attention_varlen(q, k, v, cu_seqlens, 1, slopes),
                               attention_varlen(q, k, v, cu_seqlens, max(lengths), slopes), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_within_twice_torch_error(dtype):
    B, L, H, D = 2, 150, 3, 64
    slopes = bembed_ext.alibi_slopes(H)
    mask = _ragged_mask(B, L)
    _compare(lambda q, k, v: attention(q, k, v, slopes, key_padding_mask=mask),
             lambda q, k, v: reference(q, k, v, slopes, key_padding_mask=mask), _qkv((B, L, H, D), dtype), dtype,
             padding=mask)


def test_backward_on_several_threads_matches_one_thread():
    """One (sequence, head) pair: the backward splits its key tiles into groups run on several threads at once,
    each group adding into dQ. Only private partials summed after make that safe; the other tests may run on one
    thread, where groups adding into one dQ in turn would still pass. The thread count changes the groups, so the
    order of the sums: results agree to rounding, where a lost update is off by a tile's share. At this size such a
    race showed in a quarter of the calls on a 2-core machine (1 in 20 at L = 1025), so forty calls."""
    B, L, H, D = 1, 2048, 1, 64
    slopes = bembed_ext.alibi_slopes(H)
    tensors, grad = _qkv((B, L, H, D), torch.float64), torch.randn(B, L, H, D, dtype=torch.float64)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        serial = _forward_backward(lambda q, k, v: attention(q, k, v, slopes), tensors, grad)
        torch.set_num_threads(4)  # more threads than a CI machine's cores: they interleave there too
        for _ in range(40):
            parallel = _forward_backward(lambda q, k, v: attention(q, k, v, slopes), tensors, grad)
            for name, s, p in zip(("out", "grad q", "grad k", "grad v"), serial, parallel):
                torch.testing.assert_close(p, s, msg=lambda m: f"{name}: {m}")
    finally:
        torch.set_num_threads(threads)


def test_gradcheck_padded_float64():
    B, L, H, D = 2, 7, 2, 3
    q, k, v = (t.requires_grad_() for t in _qkv((B, L, H, D), torch.float64))
    mask = _ragged_mask(B, L, empty_row=True)
    slopes = torch.tensor([0.5, 0.1])
    assert torch.autograd.gradcheck(lambda q, k, v: attention(q, k, v, slopes, key_padding_mask=mask), (q, k, v))


def test_gradcheck_varlen_float64():
    cu_seqlens = torch.tensor([0, 5, 5, 9, 10], dtype=torch.int32)
    q, k, v = (t.requires_grad_() for t in _qkv((10, 2, 3), torch.float64))
    slopes = torch.rand(4, 2)
    assert torch.autograd.gradcheck(lambda q, k, v: attention_varlen(q, k, v, cu_seqlens, 7, slopes), (q, k, v))


def test_non_contiguous_projections_are_handled():
    """q, k, v as slices of one fused projection (B, L, 3, H, D): strided rows, no copy needed."""
    B, L, H, D = 2, 40, 3, 32
    qkv = torch.randn(B, L, 3, H, D, dtype=torch.float64)
    q, k, v = qkv.unbind(2)
    assert not q.is_contiguous()
    slopes = bembed_ext.alibi_slopes(H)
    torch.testing.assert_close(attention(q, k, v, slopes), reference(q, k, v, slopes))
    packed = qkv.reshape(B * L, 3, H, D)
    cu_seqlens = torch.tensor([0, 30, B * L], dtype=torch.int32)
    qp, kp, vp = packed.unbind(1)
    torch.testing.assert_close(attention_varlen(qp, kp, vp, cu_seqlens, 50, slopes),
                               reference_varlen(qp, kp, vp, cu_seqlens, 50, slopes))


def test_expanded_inputs_and_gradients():
    """Broadcast tensors have token stride 0, below the BLAS leading-dimension minimum D: MKL refused them
    with a message and left its tiles unwritten (garbage out, NaN or zero gradients, no exception)."""
    H, D = 2, 16
    slopes = bembed_ext.alibi_slopes(H)
    q, k, v = _qkv((24, H, D), torch.float64)
    cu_seqlens = torch.tensor([0, 9, 24], dtype=torch.int32)
    # sum pooling over the packed tokens: autograd hands the op a gradient expanded over T
    pooled = lambda fn: lambda *t: fn(*t, cu_seqlens, 15, slopes).sum(0).square().sum()
    ours = torch.autograd.grad(pooled(attention_varlen)(*(t.requires_grad_() for t in (q, k, v))), (q, k, v))
    expected = torch.autograd.grad(pooled(reference_varlen)(q, k, v), (q, k, v))
    for o, e in zip(ours, expected):
        torch.testing.assert_close(o, e)
    for shape in ((3, 7, H, D), (3, 1, H, D)):  # one query vector broadcast over batch and tokens; L = 1
        one = torch.randn(D, dtype=torch.float64)
        qe = one.expand(shape)
        ke, ve = (torch.randn(shape, dtype=torch.float64) for _ in range(2))
        grad = torch.randn(D, dtype=torch.float64).expand(shape)  # stride 0 in every dim but the last
        ours = _forward_backward(lambda *t: attention(*t, slopes), [qe, ke, ve], grad)
        expected = _forward_backward(lambda *t: reference(*t, slopes), [qe, ke, ve], grad.contiguous())
        for o, e in zip(ours, expected):
            torch.testing.assert_close(o, e)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("garbage", [float("inf"), float("nan")])
def test_non_finite_padded_keys_do_not_reach_real_rows(dtype, garbage):
    """Padded buffers from torch.empty may hold inf or NaN where the mask says padding: the mask replaces
    those scores (it was added, and inf − inf put NaN into every real row of the key tile). As in the
    reference, padded v rows and the q gradient still see such k/v values through 0-weighted products."""
    B, L, H, D = 2, 16, 2, 32
    q, k, v = _qkv((B, L, H, D), dtype)
    mask = torch.arange(L)[None, :] < torch.tensor([L, 10])[:, None]
    k[1, 10:] = garbage
    slopes = bembed_ext.alibi_slopes(H)
    leaves = [t.requires_grad_() for t in (q, k, v)]
    out = attention(*leaves, slopes, key_padding_mask=mask)
    (dv,) = torch.autograd.grad(out, leaves[2], torch.randn_like(out))
    exact = reference(q.double(), k.double(), v.double(), slopes, key_padding_mask=mask)
    assert_within_torch_error(out, exact, reference(q, k, v, slopes, key_padding_mask=mask), factor=FACTOR[dtype])
    assert torch.isfinite(dv).all() and (dv[1, 10:] == 0).all()


@pytest.mark.parametrize("magnitude", [1e2, 1e4])
def test_huge_scores_keep_every_row(magnitude):
    """q = k at 1e4 gives scores of about 1e9, where the tiles' dot products, the diagonal's and the norms of
    the skip bound round differently by more than exp() spans: rows came out all zero (lse −inf) in fp32."""
    B, L, H, D = 1, 64, 2, 64
    x = torch.randn(B, L, H, D) * magnitude
    q, k, v, grad = x.clone(), x.clone(), torch.randn(B, L, H, D), torch.randn(B, L, H, D)
    slopes = bembed_ext.alibi_slopes(H)
    ours = _forward_backward(lambda *t: attention(*t, slopes), [q, k, v], grad)
    exact = _forward_backward(lambda *t: reference(*t, slopes), [t.double() for t in (q, k, v)], grad.double())
    # each row attends to its own key alone (its score leads the others by about 1e8): out and dv are exact
    torch.testing.assert_close(ours[0], exact[0].float(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours[3], exact[3].float(), rtol=1e-5, atol=1e-5)


def test_single_token_sequences_in_heads_first_layout():
    """(B, H, 1, D) tensors transposed to (B, 1, H, D): the batch stride is H·D but the size-1 token dim's stride
    is D, and contiguous() leaves such a tensor as it is (it read rows of the wrong batch)."""
    B, H, D = 3, 4, 8
    q, k, v, grad = (torch.randn(B, H, 1, D, dtype=torch.float64).transpose(1, 2) for _ in range(4))
    slopes = bembed_ext.alibi_slopes(H)
    ours = _forward_backward(lambda *t: attention(*t, slopes), [q, k, v], grad)
    expected = _forward_backward(lambda *t: reference(*t, slopes), [q, k, v], grad)
    for o, e in zip(ours, expected):
        torch.testing.assert_close(o, e)


@pytest.mark.parametrize("layout", ["varlen permuted", "varlen expanded", "padded expanded"])
def test_one_token_with_any_token_stride(layout):
    """A single token's stride may be anything (torch calls the tensor contiguous), but BLAS reads it as the
    leading dimension: below D, MKL refused the product with a message and left garbage in the output."""
    H, D = 2, 8
    slopes = bembed_ext.alibi_slopes(H)
    if layout == "varlen permuted":
        q, k, v, grad = (torch.randn(H, D, 1, dtype=torch.float64).permute(2, 0, 1) for _ in range(4))
    else:
        shape = (1, H, D) if layout.startswith("varlen") else (1, 1, H, D)
        q, k, v, grad = (torch.randn(D, dtype=torch.float64).expand(shape) for _ in range(4))
    if layout.startswith("varlen"):
        cu = torch.tensor([0, 1], dtype=torch.int32)
        ours = _forward_backward(lambda *t: attention_varlen(*t, cu, 1, slopes), [q, k, v], grad)
        expected = _forward_backward(lambda *t: reference_varlen(*t, cu, 1, slopes), [q, k, v], grad)
    else:
        ours = _forward_backward(lambda *t: attention(*t, slopes), [q, k, v], grad)
        expected = _forward_backward(lambda *t: reference(*t, slopes), [q, k, v], grad)
    for o, e in zip(ours, expected):
        torch.testing.assert_close(o, e)


def test_slopes_that_require_grad_are_refused():
    """The kernels treat the slopes as constants: learnable slopes must not silently keep grad None."""
    q, k, v = (t.requires_grad_() for t in _qkv((1, 6, 2, 8), torch.float64))
    slopes = bembed_ext.alibi_slopes(2).requires_grad_()
    with pytest.raises(ValueError, match="'alibi_slopes' requires grad"):
        attention(q, k, v, slopes)
    with pytest.raises(ValueError, match="'alibi_slopes' requires grad"):
        attention_varlen(q[0], k[0], v[0], torch.tensor([0, 6], dtype=torch.int32), 6, slopes)
    attention(q, k, v, slopes.detach()).sum().backward()
    attention(q, k, v, slopes, impl="reference").sum().backward()
    assert slopes.grad is not None


@pytest.mark.parametrize("written", ["key_padding_mask", "alibi_slopes", "varlen alibi_slopes"])
def test_in_place_write_between_forward_and_backward_raises(written):
    """Like q, k, v, the mask and slopes are checked for in-place writes (the backward used the new values)."""
    q, k, v = (t.requires_grad_() for t in _qkv((2, 6, 2, 8), torch.float64))
    mask, slopes = _ragged_mask(2, 6), bembed_ext.alibi_slopes(2)
    if written == "varlen alibi_slopes":
        out = attention_varlen(q[0], k[0], v[0], torch.tensor([0, 6], dtype=torch.int32), 6, slopes)
    else:
        out = attention(q, k, v, slopes, key_padding_mask=mask)
    if written == "key_padding_mask":
        mask.fill_(True)
    else:
        slopes.mul_(2)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()


@pytest.mark.parametrize("varlen", [False, True])
def test_differentiating_the_gradient_raises(varlen):
    """The backward kernel has no derivative: a gradient penalty must fail, not silently lose its term."""
    q, k, v = (t.requires_grad_() for t in _qkv((1, 6, 2, 8), torch.float64))
    slopes = bembed_ext.alibi_slopes(2)
    if varlen:
        out = attention_varlen(q[0], k[0], v[0], torch.tensor([0, 2, 6], dtype=torch.int32), 4, slopes)
    else:
        out = attention(q, k, v, slopes)
    (grad_q,) = torch.autograd.grad((out * torch.randn_like(out)).sum(), q, create_graph=True)
    with pytest.raises(RuntimeError, match="no double backward"):
        grad_q.square().sum().backward()


@pytest.mark.parametrize("impl", ["kernel", "reference"])
def test_empty_batch_and_empty_sequence(impl):
    q, k, v = (t.requires_grad_() for t in _qkv((0, 5, 2, 8), torch.float32))
    out = attention(q, k, v, bembed_ext.alibi_slopes(2), impl=impl)
    out.sum().backward()
    assert out.shape == q.shape and q.grad.shape == q.shape
    q, k, v = (t.requires_grad_() for t in _qkv((3, 0, 2, 8), torch.float32))  # L = 0
    out = attention(q, k, v, bembed_ext.alibi_slopes(2), key_padding_mask=torch.ones(3, 0, dtype=torch.bool),
                    impl=impl)
    grads = torch.autograd.grad(out.sum(), (q, k, v))
    assert out.shape == q.shape and all(g.shape == q.shape for g in grads)
    cu_seqlens = torch.zeros(3, dtype=torch.int32)
    q, k, v = (t.requires_grad_() for t in _qkv((0, 2, 8), torch.float32))
    out = attention_varlen(q, k, v, cu_seqlens, 0, None, impl=impl)
    grads = torch.autograd.grad(out.sum(), (q, k, v))  # every input is part of the graph, as with T > 0
    assert out.shape == (0, 2, 8) and all(g.shape == (0, 2, 8) for g in grads)


def test_opcheck_all_ops():
    B, L, H, D = 2, 11, 2, 8
    q, k, v = (t.requires_grad_() for t in _qkv((B, L, H, D), torch.float64))
    mask = _ragged_mask(B, L)
    slopes = bembed_ext.alibi_slopes(H)
    torch.library.opcheck(ops.alibi_attention_fwd.default, (q, k, v, mask, slopes, 0.3))
    out, lse = ops.alibi_attention_fwd(q, k, v, mask, slopes, 0.3)
    grad = torch.randn_like(out)
    torch.library.opcheck(ops.alibi_attention_bwd.default,
                          (grad, q.detach(), k.detach(), v.detach(), out.detach(), lse, mask, slopes, 0.3))
    cu_seqlens = torch.tensor([0, 4, 4, 13], dtype=torch.int32)
    qv, kv, vv = (t.requires_grad_() for t in _qkv((13, H, D), torch.float64))
    torch.library.opcheck(ops.alibi_attention_varlen_fwd.default, (qv, kv, vv, cu_seqlens, 9, slopes, 0.3))
    out, lse = ops.alibi_attention_varlen_fwd(qv, kv, vv, cu_seqlens, 9, slopes, 0.3)
    torch.library.opcheck(ops.alibi_attention_varlen_bwd.default,
                          (torch.randn_like(out), qv.detach(), kv.detach(), vv.detach(), out.detach(), lse,
                           cu_seqlens, 9, slopes, 0.3))


@pytest.mark.parametrize("backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_torch_compile_fullgraph(backend):
    torch._dynamo.reset()
    slopes = bembed_ext.alibi_slopes(2)
    cu_seqlens = torch.tensor([0, 5, 12], dtype=torch.int32)

    def block(x, weight, mask):
        q, k, v = (x @ weight).unflatten(-1, (3, 2, 8)).unbind(-3)
        padded = attention(q, k, v, slopes, key_padding_mask=mask)
        packed = attention_varlen(q[0], k[0], v[0], cu_seqlens, 7, slopes)
        return padded.sum() + (packed * packed).sum()

    x = torch.randn(1, 12, 16, requires_grad=True)
    weight = torch.randn(16, 3 * 2 * 8, requires_grad=True)
    mask = torch.arange(12)[None] < 9
    compiled = torch.compile(block, fullgraph=True, backend=backend)
    expected = torch.autograd.grad(block(x, weight, mask), (x, weight))
    got = torch.autograd.grad(compiled(x, weight, mask), (x, weight))
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e)


def test_torch_compile_with_a_symbolic_softmax_scale():
    """A softmax_scale that dynamo makes symbolic failed fullgraph: math.isfinite cannot be traced."""
    compiled = torch.compile(lambda q, s: attention(q, q, q, None, softmax_scale=s), fullgraph=True,
                             backend="aot_eager", dynamic=True)
    q = torch.randn(1, 5, 1, 4)
    for scale in (0.3, 0.7):
        torch.testing.assert_close(compiled(q, scale), attention(q, q, q, None, softmax_scale=scale))
    with pytest.raises(ValueError, match="'softmax_scale' must be finite"):
        attention(q, q, q, None, softmax_scale=float("inf"))


def test_torch_compile_with_a_symbolic_max_seqlen():
    """max_seqlen computed in the graph (flash-attn's `seqlens.max().item()`) or taken from a dynamic shape is
    a SymInt: the schema said int, so fullgraph failed on the first and recompiled for every length on the
    second."""
    import torch._dynamo.testing

    slopes = bembed_ext.alibi_slopes(2)

    def from_lengths(q, lengths):
        cu_seqlens = torch.nn.functional.pad(torch.cumsum(lengths, 0, dtype=torch.int32), (1, 0))
        return attention_varlen(q, q, q, cu_seqlens, int(lengths.max().item()), slopes)

    q, lengths = torch.randn(9, 2, 8), torch.tensor([3, 6])
    # the config's own patch: monkeypatch's undo deleted the setting, and later compiles failed on its absence
    with torch._dynamo.config.patch(capture_scalar_outputs=True):
        got = torch.compile(from_lengths, fullgraph=True, backend="aot_eager")(q, lengths)
    torch.testing.assert_close(got, from_lengths(q, lengths))

    counter = torch._dynamo.testing.CompileCounter()
    compiled = torch.compile(lambda q, cu: attention_varlen(q, q, q, cu, q.shape[0], slopes), fullgraph=True,
                             backend=counter, dynamic=True)
    for total in (9, 11, 13):
        compiled(torch.randn(total, 2, 8), torch.tensor([0, 4, total], dtype=torch.int32))
    assert counter.frame_count == 1


def test_reference_switch(monkeypatch):
    q, k, v = (t.requires_grad_() for t in _qkv((1, 6, 2, 8), torch.float32))
    kernel_node = "GeneratedBackwardFor_bembed_alibi_attention_fwd_defaultBackward"
    assert type(attention(q, k, v, None).grad_fn).__name__ == kernel_node
    assert type(attention(q, k, v, None, impl="reference").grad_fn).__name__ != kernel_node
    monkeypatch.setenv("BEMBED_REFERENCE_OPS", "1")
    assert type(attention(q, k, v, None).grad_fn).__name__ != kernel_node


def test_alibi_slopes_match_jinabert():
    def powers_of_two(exponents):
        return torch.tensor([2.0 ** -e for e in exponents], dtype=torch.float32)

    assert torch.equal(bembed_ext.alibi_slopes(12), powers_of_two([1, 2, 3, 4, 5, 6, 7, 8, 0.5, 1.5, 2.5, 3.5]))
    assert torch.equal(bembed_ext.alibi_slopes(8), powers_of_two(range(1, 9)))
    assert torch.equal(bembed_ext.alibi_slopes(16), powers_of_two([e / 2 for e in range(1, 17)]))
    assert torch.equal(bembed_ext.alibi_slopes(1), powers_of_two([8]))


MEMORY_SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench",
                             "alibi_attention_memory.py")


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc peak-RSS reset")
@pytest.mark.parametrize("direction", ["fwd", "fwd+bwd"])
def test_l8192_extra_memory_at_most_64mb(direction):
    """B=1, H=12, D=64, L=8192: peak resident memory beyond inputs and outputs ≤ 64 MB (one head's L×L
    float scores alone would be 256 MB), measured in a fresh process."""
    command = [sys.executable, MEMORY_SCRIPT, "--impl", "bembed", "--seqlen", "8192", "--direction", direction]
    result = subprocess.run(command, capture_output=True, text=True, check=True, timeout=600)
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    assert measured["extra_mb"] <= 64, measured


def test_forward_mode_ad_raises_instead_of_zero_tangents():
    q, k, v = _qkv((2, 5, 2, 8), torch.float64)
    slopes = bembed_ext.alibi_slopes(2)
    with pytest.raises(NotImplementedError, match="bembed.alibi_attention: the kernel has no forward-mode"):
        torch.func.jvp(lambda a: attention(a, k, v, slopes), (q,), (torch.randn_like(q),))
    cu_seqlens = torch.tensor([0, 4, 10], dtype=torch.int32)
    q, k, v = (t.reshape(10, 2, 8) for t in (q, k, v))
    with pytest.raises(NotImplementedError, match="bembed.alibi_attention_varlen: the kernel has no forward-mode"):
        torch.func.jvp(lambda a: attention_varlen(a, k, v, cu_seqlens, 6, slopes), (q,), (torch.randn_like(q),))
