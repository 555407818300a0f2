"""CUDA ALiBi attention kernels against the float64 reference (skipped without a GPU and the CUDA build).

Low precision passes when the kernel's error is within 2× that of the PyTorch reference run at the same
precision (tests/accuracy.py). Every check runs forward and all three gradients."""

import pytest
import torch

import bembed_ext
from accuracy import assert_within_torch_error

pytestmark = pytest.mark.cuda

reference = bembed_ext.reference
DTYPES = [torch.float16, torch.bfloat16]


@pytest.fixture(autouse=True)
def _kernels_not_reference():
    """The public functions fall back to the reference when no kernel is registered; that would make these
    tests compare the reference with itself."""
    for op in ("alibi_attention", "alibi_attention_varlen"):
        assert bembed_ext.has_kernel(op, "CUDA"), f"{op} has no CUDA kernels in this build"


def _qkv(shape, dtype):
    return [torch.randn(shape, device="cuda", dtype=dtype) for _ in range(3)]


def _run(fn, tensors, grad):
    """fn(*tensors) and the gradients of <out, grad> with respect to every tensor."""
    leaves = [t.detach().requires_grad_() for t in tensors]
    out = fn(*leaves)
    out.backward(grad)
    return [out.detach()] + [t.grad for t in leaves]


def _compare(ours_fn, ref_fn, tensors, qk_grad_floor=1e-6):
    """ours_fn in low precision vs ref_fn in float64, with ref_fn in low precision as PyTorch's own error.
    qk_grad_floor: the absolute slack for grad q and grad k (see test_padded_matches_reference)."""
    grad = torch.randn_like(tensors[0])
    ours = _run(ours_fn, tensors, grad)
    exact = _run(ref_fn, [t.double() for t in tensors], grad.double())
    torch_low = _run(ref_fn, tensors, grad)
    floors = (1e-6, qk_grad_floor, qk_grad_floor, 1e-6)
    for name, o, e, t, floor in zip(("out", "grad q", "grad k", "grad v"), ours, exact, torch_low, floors):
        assert o.dtype == tensors[0].dtype, f"{name}: dtype {o.dtype}"
        assert_within_torch_error(o, e, t, floor=floor, what=name)


def _ragged_mask(B, L, fully_masked_row):
    """True = real token; random lengths in [1, L], and batch row 1 all padding when asked."""
    lengths = torch.randint(1, L + 1, (B,))
    mask = torch.arange(L)[None, :] < lengths[:, None]
    if fully_masked_row and B > 1:
        mask[1] = False
    return mask.cuda()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("D", [32, 64, 128])
@pytest.mark.parametrize("L", [1, 97, 128, 192, 1025])  # 192 ≡ 64 (mod 128)
@pytest.mark.parametrize("H", [1, 12])
def test_padded_matches_reference(dtype, D, L, H):
    B = 2
    slopes = bembed_ext.alibi_slopes(H).cuda()
    mask = _ragged_mask(B, L, fully_masked_row=False)

    def ours(q, k, v):
        return bembed_ext.alibi_attention(q, k, v, slopes, key_padding_mask=mask)

    def ref(q, k, v):
        return reference.alibi_attention(q, k, v, slopes, key_padding_mask=mask)

    # With one key the exact grad q and grad k are 0 (softmax of one logit is constant) and PyTorch's
    # low-precision autograd also gets 0, while a flash backward forms dS = P·(dP − delta) from two fp32 dot
    # products summed in different orders: a residue of about D·2⁻²³·|dO|·|v|·scale·|k| ≈ 1e-6 remains.
    _compare(ours, ref, _qkv((B, L, H, D), dtype), qk_grad_floor=1e-4 if L == 1 else 1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("slopes_kind", ["per_head", "per_batch", "none"])
def test_padded_slopes_and_fully_masked_row(dtype, slopes_kind):
    B, L, H, D = 3, 193, 4, 64
    slopes = {"per_head": bembed_ext.alibi_slopes(H).cuda(), "per_batch": torch.rand(B, H, device="cuda") * 0.5,
              "none": None}[slopes_kind]
    mask = _ragged_mask(B, L, fully_masked_row=True)

    def ours(q, k, v):
        return bembed_ext.alibi_attention(q, k, v, slopes, key_padding_mask=mask)

    def ref(q, k, v):
        return reference.alibi_attention(q, k, v, slopes, key_padding_mask=mask)

    tensors = _qkv((B, L, H, D), dtype)
    _compare(ours, ref, tensors)
    out, lse = torch.ops.bembed.alibi_attention_fwd(*tensors, mask, slopes, D ** -0.5)
    assert torch.all(out[1] == 0), "a sequence of only padding must output zeros"
    assert torch.all(lse[1] == float("-inf"))
    assert torch.isfinite(lse[0]).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_padded_without_mask_and_large_scores(dtype):
    B, L, H, D = 2, 320, 3, 128
    slopes = bembed_ext.alibi_slopes(H).cuda()
    q, k, v = _qkv((B, L, H, D), dtype)
    q = q * 4  # peaked softmax: exercises the running-max rescaling

    def ours(q, k, v):
        return bembed_ext.alibi_attention(q, k, v, slopes, softmax_scale=0.3)

    def ref(q, k, v):
        return reference.alibi_attention(q, k, v, slopes, softmax_scale=0.3)

    _compare(ours, ref, [q, k, v])


def _varlen_case(lengths, H, D, dtype):
    cu_seqlens = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32, device="cuda")
    return cu_seqlens, _qkv((sum(lengths), H, D), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("D", [32, 64, 128])
@pytest.mark.parametrize("slopes_kind", ["per_head", "per_batch", "none"])
def test_varlen_matches_reference(dtype, D, slopes_kind):
    lengths = [5, 0, 130, 64, 1, 257]  # an empty sequence in the middle
    H = 3
    cu_seqlens, tensors = _varlen_case(lengths, H, D, dtype)
    slopes = {"per_head": bembed_ext.alibi_slopes(H).cuda(),
              "per_batch": torch.rand(len(lengths), H, device="cuda") * 0.5, "none": None}[slopes_kind]

    def ours(q, k, v):
        return bembed_ext.alibi_attention_varlen(q, k, v, cu_seqlens, max(lengths), slopes)

    def ref(q, k, v):
        return reference.alibi_attention_varlen(q, k, v, cu_seqlens, max(lengths), slopes)

    _compare(ours, ref, tensors)


@pytest.mark.parametrize("max_seqlen", [1, 64, 300])
def test_varlen_max_seqlen_is_only_a_hint(max_seqlen):
    """Sequences longer than max_seqlen are still computed in full (the kernels stride over query tiles)."""
    lengths = [200, 3, 131]
    cu_seqlens, (q, k, v) = _varlen_case(lengths, 2, 64, torch.bfloat16)
    slopes = bembed_ext.alibi_slopes(2).cuda()
    out, lse = torch.ops.bembed.alibi_attention_varlen_fwd(q, k, v, cu_seqlens, max_seqlen, slopes, 0.125)
    out_full, lse_full = torch.ops.bembed.alibi_attention_varlen_fwd(q, k, v, cu_seqlens, 300, slopes, 0.125)
    torch.testing.assert_close(out, out_full, rtol=0, atol=0)
    torch.testing.assert_close(lse, lse_full, rtol=0, atol=0)
    grad = torch.randn_like(out)
    grads = torch.ops.bembed.alibi_attention_varlen_bwd(grad, q, k, v, out, lse, cu_seqlens, max_seqlen, slopes, 0.125)
    grads_full = torch.ops.bembed.alibi_attention_varlen_bwd(grad, q, k, v, out, lse, cu_seqlens, 300, slopes, 0.125)
    for g, g_full in zip(grads, grads_full):
        torch.testing.assert_close(g, g_full, rtol=0, atol=0)


def test_varlen_equals_padded_on_the_same_data():
    lengths = [70, 1, 128]
    B, L, H, D = len(lengths), max(lengths), 2, 64
    q, k, v = _qkv((B, L, H, D), torch.bfloat16)
    mask = torch.arange(L, device="cuda")[None, :] < torch.tensor(lengths, device="cuda")[:, None]
    slopes = bembed_ext.alibi_slopes(H).cuda()
    padded = bembed_ext.alibi_attention(q, k, v, slopes, key_padding_mask=mask)
    cu_seqlens = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32, device="cuda")
    packed = bembed_ext.alibi_attention_varlen(q[mask], k[mask], v[mask], cu_seqlens, L, slopes)
    # Same tiles, same order of accumulation over the real keys: equal up to the masked keys' exact zeros.
    torch.testing.assert_close(packed, padded[mask], rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("garbage", [float("inf"), float("nan")])
def test_non_finite_padded_keys_do_not_reach_real_rows(garbage):
    B, L, H, D = 2, 80, 2, 64
    q, k, v = _qkv((B, L, H, D), torch.bfloat16)
    mask = torch.arange(L, device="cuda")[None, :] < torch.tensor([L, 70], device="cuda")[:, None]
    k[1, 70:] = garbage  # what a padded buffer from torch.empty may hold
    slopes = bembed_ext.alibi_slopes(H).cuda()
    leaves = [t.requires_grad_() for t in (q, k, v)]
    out = bembed_ext.alibi_attention(*leaves, slopes, key_padding_mask=mask)
    (dv,) = torch.autograd.grad(out, leaves[2], torch.randn_like(out))
    exact = reference.alibi_attention(q.double(), k.double(), v.double(), slopes, key_padding_mask=mask)
    torch_low = reference.alibi_attention(q, k, v, slopes, key_padding_mask=mask)
    assert_within_torch_error(out, exact, torch_low)
    assert torch.isfinite(dv).all() and (dv[1, 70:] == 0).all()


def test_non_contiguous_and_unaligned_inputs():
    B, L, H, D = 2, 65, 2, 32
    qkv = torch.randn(B, L, 3, H, D, device="cuda", dtype=torch.float16)
    q, k, v = qkv.unbind(2)  # strided views
    flat = torch.randn(1 + B * L * H * D, device="cuda", dtype=torch.float16)
    q_unaligned = flat[1:].view(B, L, H, D)  # contiguous but 2 bytes off 16-byte alignment
    slopes = bembed_ext.alibi_slopes(H).cuda()
    for query in (q, q_unaligned):
        ours = bembed_ext.alibi_attention(query, k, v, slopes)
        exact = reference.alibi_attention(query.double(), k.double(), v.double(), slopes)
        torch_low = reference.alibi_attention(query, k, v, slopes)
        assert_within_torch_error(ours, exact, torch_low)


def test_long_sequence_with_skipped_tiles_matches_reference():
    """JinaBERT-base's shape at 4096 tokens: the steep heads skip most key tiles (alibi_attention_skip.cuh), the
    gentle ones none; every head within 2x of PyTorch's own bf16 error, forward and gradients."""
    slopes = bembed_ext.alibi_slopes(12).cuda()
    _compare(lambda q, k, v: bembed_ext.alibi_attention(q, k, v, slopes),
             lambda q, k, v: reference.alibi_attention(q, k, v, slopes), _qkv((1, 4096, 12, 64), torch.bfloat16))


def test_far_tiles_are_skipped():
    """v rows of the last 64 keys set to inf: a row whose CTA visits that tile gets inf or NaN (0·inf), as the
    reference would. Rows of the steep heads far from it keep their finite, bitwise values (the tile was
    skipped); the gentlest head still weighs those keys (2^-11 at 2000 tokens), so none of its rows stays finite."""
    L, H, D = 2048, 12, 64
    q, k, v = _qkv((1, L, H, D), torch.bfloat16)
    slopes = bembed_ext.alibi_slopes(H).cuda()
    out = bembed_ext.alibi_attention(q, k, v, slopes)
    poisoned = v.clone()
    poisoned[:, -64:] = float("inf")
    out_p = bembed_ext.alibi_attention(q, k, poisoned, slopes)
    steep = (slopes >= 0.125).nonzero().squeeze(1)
    assert len(steep) == 6
    assert torch.equal(out_p[:, :1024, steep], out[:, :1024, steep])
    gentlest = int(slopes.argmin())
    assert not torch.isfinite(out_p[:, :, gentlest]).any()


def test_backward_is_deterministic():
    B, L, H, D = 2, 300, 4, 64
    q, k, v = _qkv((B, L, H, D), torch.bfloat16)
    slopes = bembed_ext.alibi_slopes(H).cuda()
    out, lse = torch.ops.bembed.alibi_attention_fwd(q, k, v, None, slopes, 0.125)
    grad = torch.randn_like(out)
    first = torch.ops.bembed.alibi_attention_bwd(grad, q, k, v, out, lse, None, slopes, 0.125)
    second = torch.ops.bembed.alibi_attention_bwd(grad, q, k, v, out, lse, None, slopes, 0.125)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_lse_matches_reference():
    B, L, H, D = 2, 150, 3, 64
    q, k, v = _qkv((B, L, H, D), torch.float16)
    slopes = bembed_ext.alibi_slopes(H).cuda()
    mask = _ragged_mask(B, L, fully_masked_row=False)
    _, lse = torch.ops.bembed.alibi_attention_fwd(q, k, v, mask, slopes, 0.125)
    _, lse_ref = reference.alibi_attention(q.double(), k.double(), v.double(), slopes, key_padding_mask=mask,
                                           softmax_scale=0.125, return_lse=True)
    torch.testing.assert_close(lse, lse_ref.float(), rtol=1e-3, atol=1e-3)


def test_opcheck_cuda():
    B, L, H, D = 2, 33, 2, 32
    q, k, v = (t.requires_grad_() for t in _qkv((B, L, H, D), torch.float16))
    mask = _ragged_mask(B, L, fully_masked_row=True)
    slopes = bembed_ext.alibi_slopes(H).cuda()
    torch.library.opcheck(torch.ops.bembed.alibi_attention_fwd.default, (q, k, v, mask, slopes, 0.2))
    out, lse = torch.ops.bembed.alibi_attention_fwd(q, k, v, mask, slopes, 0.2)
    grad = torch.randn_like(out)
    torch.library.opcheck(torch.ops.bembed.alibi_attention_bwd.default,
                          (grad, q.detach(), k.detach(), v.detach(), out.detach(), lse, mask, slopes, 0.2))
    cu_seqlens = torch.tensor([0, 10, 10, 33], dtype=torch.int32, device="cuda")
    qp, kp, vp = (t.detach().reshape(B * L, H, D)[:33].clone().requires_grad_() for t in (q, k, v))
    torch.library.opcheck(torch.ops.bembed.alibi_attention_varlen_fwd.default, (qp, kp, vp, cu_seqlens, 23, slopes, 0.2))


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda a: a.update(q=a["q"].float(), k=a["k"].float(), v=a["v"].float()), "'q' must have dtype"),
        (lambda a: a.update(q=a["q"][..., :16], k=a["k"][..., :16], v=a["v"][..., :16]), "head dim"),
        (lambda a: a.update(k=a["k"].cpu()), "'k' is on"),
        (lambda a: a.update(slopes=torch.ones(5, device="cuda")), "'alibi_slopes'"),
    ],
)
def test_bad_input_names_the_argument(change, message):
    q, k, v = _qkv((2, 8, 2, 32), torch.float16)
    args = {"q": q, "k": k, "v": v, "slopes": bembed_ext.alibi_slopes(2).cuda()}
    change(args)
    with pytest.raises((ValueError, TypeError), match=message):
        torch.ops.bembed.alibi_attention_fwd(args["q"], args["k"], args["v"], None, args["slopes"], 0.1)


def test_bad_cu_seqlens_names_the_argument():
    q, k, v = _qkv((10, 2, 32), torch.float16)
    for bad in ([0, 6, 4, 10], [0, 4, 9], [1, 10]):
        cu_seqlens = torch.tensor(bad, dtype=torch.int32, device="cuda")
        with pytest.raises(ValueError, match="cu_seqlens"):
            torch.ops.bembed.alibi_attention_varlen_fwd(q, k, v, cu_seqlens, 10, None, 0.1)
