"""ALiBi attention: non-causal softmax(q·kᵀ·scale − slope_h·|i−j|, padded keys excluded)·v, with the bias
computed on the fly by the kernels (never an L×L tensor). Padded layout q, k, v (B, L, H, D) with an
optional key padding mask (B, L) (True = real token); varlen layout q, k, v (T, H, D) packed by
`cu_seqlens` (B+1,) int32, positions counted from each sequence's start. A query with no valid key
(all keys masked, or an empty sequence) outputs zeros. Autograd saves q, k, v, out and the row
log-sum-exp; the backward kernel recomputes the attention tiles. The kernels differentiate q, k, v once: the
slopes are constants (slopes that require grad raise ValueError), and differentiating the gradients raises
(the reference, `impl="reference"`, differentiates everything)."""

from __future__ import annotations

import math
import numbers

import torch

from .._checks import check_value
from ._autograd import first_order_only, refuse_forward_ad
from ._dispatch import use_reference
from ._fake import check_devices

_OPS = torch.ops.bembed


def alibi_slopes(num_heads: int) -> torch.Tensor:
    """JinaBERT's (and ALiBi's) per-head slopes, float32 (num_heads,): for a power of two n,
    slope_k = 2^(−8(k+1)/n); otherwise the slopes of the nearest lower power of two p followed by every
    second slope of the 2p series until there are n (12 heads: 2^-1 … 2^-8, 2^-0.5, 2^-1.5, 2^-2.5, 2^-3.5)."""
    if isinstance(num_heads, bool) or not isinstance(num_heads, numbers.Integral):
        raise TypeError(f"alibi_slopes: argument 'num_heads' must be an int, got {type(num_heads).__name__}")
    if num_heads < 1:
        raise ValueError(f"alibi_slopes: argument 'num_heads' must be positive, got {num_heads}")

    def power_of_two_series(n: int) -> list[float]:
        return [2.0 ** (-8.0 * (k + 1) / n) for k in range(n)]

    p = 2 ** int(math.floor(math.log2(num_heads)))
    slopes = power_of_two_series(p)
    slopes += power_of_two_series(2 * p)[0::2][: num_heads - p]
    return torch.tensor(slopes, dtype=torch.float32)


def _default_scale(softmax_scale, head_dim: int, op: str) -> float:
    if softmax_scale is None:
        return 1.0 / math.sqrt(head_dim) if head_dim > 0 else 1.0
    if isinstance(softmax_scale, bool) or not isinstance(softmax_scale, numbers.Real):
        raise TypeError(f"{op}: argument 'softmax_scale' must be a float or None, got {type(softmax_scale).__name__}")
    if not -math.inf < softmax_scale < math.inf:  # comparisons, not math.isfinite: torch.compile traces them
        raise ValueError(f"{op}: argument 'softmax_scale' must be finite, got {softmax_scale}")
    return float(softmax_scale)


def _check_tensors(op: str, rank: int, optional: tuple[str, ...] = (), **tensors) -> None:
    """The Python-level type check, and q's rank, which the default softmax_scale reads D from (the C++ side
    checks shapes, dtypes and devices)."""
    for name, value in tensors.items():
        if not isinstance(value, torch.Tensor) and not (value is None and name in optional):
            raise TypeError(f"{op}: argument '{name}' must be a torch.Tensor, got {type(value).__name__}")
    if tensors["q"].dim() != rank:
        raise ValueError(f"{op}: argument 'q' must be {rank}-D, got shape {list(tensors['q'].shape)}")


def _check_like_the_kernels(op: str, q, k, v, alibi_slopes, *, key_padding_mask=None, cu_seqlens=None) -> None:
    """csrc/alibi_attention.h's checks for impl="reference", which has no C++ side: switching implementations
    must not turn an error into a wrongly shaped result. Dtype and head dim are free (the specification runs
    in any float dtype)."""
    for name, t in (("k", k), ("v", v)):
        if t.shape != q.shape:
            raise ValueError(f"{op}: argument '{name}' must have the shape of 'q' {list(q.shape)}, got {list(t.shape)}")
    for name, t in (("k", k), ("v", v), ("alibi_slopes", alibi_slopes), ("key_padding_mask", key_padding_mask),
                    ("cu_seqlens", cu_seqlens)):
        if t is not None and t.device != q.device:
            raise ValueError(f"{op}: argument '{name}' is on {t.device} but 'q' is on {q.device}")
    for name, t in (("k", k), ("v", v)):
        if t.dtype != q.dtype:
            raise TypeError(f"{op}: argument '{name}' has dtype {t.dtype} but 'q' has {q.dtype}")
    if cu_seqlens is None:
        batch, heads = q.shape[0], q.shape[2]
    else:
        if cu_seqlens.dtype != torch.int32:
            raise TypeError(f"{op}: argument 'cu_seqlens' must have dtype int32, got {cu_seqlens.dtype}")
        if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 1:
            raise ValueError(f"{op}: argument 'cu_seqlens' must be 1-D (B+1,), got shape {list(cu_seqlens.shape)}")
        offsets = cu_seqlens.tolist()
        if offsets[0] != 0:
            raise ValueError(f"{op}: argument 'cu_seqlens' must start at 0, got {offsets[0]}")
        if any(b < a for a, b in zip(offsets, offsets[1:])):
            raise ValueError(f"{op}: argument 'cu_seqlens' must be non-decreasing, got {offsets}")
        if offsets[-1] != q.shape[0]:
            raise ValueError(f"{op}: argument 'cu_seqlens' must end at the number of tokens T = {q.shape[0]}, "
                             f"got {offsets[-1]}")
        batch, heads = len(offsets) - 1, q.shape[1]
    if key_padding_mask is not None:
        if key_padding_mask.dtype != torch.bool:
            raise TypeError(f"{op}: argument 'key_padding_mask' must have dtype bool, got {key_padding_mask.dtype}")
        if tuple(key_padding_mask.shape) != tuple(q.shape[:2]):
            raise ValueError(f"{op}: argument 'key_padding_mask' must have shape (B, L) = {tuple(q.shape[:2])}, "
                             f"got {list(key_padding_mask.shape)}")
    if alibi_slopes is not None and tuple(alibi_slopes.shape) not in ((heads,), (batch, heads)):
        raise ValueError(f"{op}: argument 'alibi_slopes' must have shape (H,) = ({heads},) or (B, H) = "
                         f"({batch}, {heads}), got {list(alibi_slopes.shape)}")


# ----------------------------------------------------------------------------------------------------
# The specification (plain PyTorch, materialised bias; any float dtype, float64 included)
# ----------------------------------------------------------------------------------------------------

def alibi_attention_reference(q, k, v, alibi_slopes, *, key_padding_mask=None, softmax_scale=None,
                              return_lse: bool = False):
    """Padded ALiBi attention, materialising the (B, H, L, L) scores in q's dtype. Returns out (B, L, H, D),
    and with return_lse=True also the row log-sum-exp (B, H, L) (−inf for rows with no valid key;
    float32, float64 for float64 inputs)."""
    B, L, H, D = q.shape
    scale = _default_scale(softmax_scale, D, "alibi_attention")
    scores = torch.einsum("bihd,bjhd->bhij", q, k) * scale
    if alibi_slopes is not None:
        pos = torch.arange(L, device=q.device)
        distance = (pos[:, None] - pos[None, :]).abs().to(q.dtype)
        slopes = alibi_slopes.to(q.dtype).reshape(-1, H, 1, 1)  # (H,) -> (1, H, 1, 1); (B, H) -> (B, H, 1, 1)
        scores = scores - slopes * distance
    if key_padding_mask is not None:
        scores = scores.masked_fill(~key_padding_mask[:, None, None, :], float("-inf"))
    # A safe softmax: rows with no valid key get zero probabilities (and zero gradients), not NaN.
    if L == 0:  # amax refuses an empty row
        row_max = scores.new_zeros((*scores.shape[:-1], 1))
    else:
        row_max = scores.amax(dim=-1, keepdim=True).detach()
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    weights = torch.exp(scores - row_max)
    denom = weights.sum(dim=-1, keepdim=True)
    probs = weights / torch.where(denom > 0, denom, torch.ones_like(denom))
    out = torch.einsum("bhij,bjhd->bihd", probs, v)
    if not return_lse:
        return out
    lse = (row_max + torch.log(denom)).squeeze(-1)
    return out, lse.to(_lse_dtype(q))


def alibi_attention_varlen_reference(q, k, v, cu_seqlens, max_seqlen, alibi_slopes, *, softmax_scale=None,
                                     return_lse: bool = False):
    """Varlen ALiBi attention: the padded reference applied to each packed sequence on its own.
    Returns out (T, H, D), and with return_lse=True also lse (H, T)."""
    T, H, D = q.shape
    bounds = cu_seqlens.tolist()
    outs, lses = [], []
    for b in range(len(bounds) - 1):
        start, end = bounds[b], bounds[b + 1]
        if end == start:
            continue
        slopes = alibi_slopes
        if slopes is not None and slopes.dim() == 2:
            slopes = slopes[b]
        o, lse = alibi_attention_reference(q[None, start:end], k[None, start:end], v[None, start:end], slopes,
                                           softmax_scale=softmax_scale, return_lse=True)
        outs.append(o[0])
        lses.append(lse[0])
    # cu_seqlens runs from 0 to T without decreasing, so the non-empty sequences tile all T tokens.
    # With T = 0 the empty output still hangs off q, k and v, so backward gives them (empty) gradients as the op does.
    out = torch.cat(outs, dim=0) if outs else (q + k + v) * 0
    if not return_lse:
        return out
    lse = torch.cat(lses, dim=1) if lses else torch.full((H, T), float("-inf"), dtype=_lse_dtype(q), device=q.device)
    return out, lse


# ----------------------------------------------------------------------------------------------------
# Fake (meta) implementations and autograd: what torch.compile and opcheck need
# ----------------------------------------------------------------------------------------------------

def _lse_dtype(q):
    """float32, except float64 for float64 inputs (so gradcheck sees an exact backward)."""
    return torch.float64 if q.dtype == torch.float64 else torch.float32


@torch.library.register_fake("bembed::alibi_attention_fwd")
def _fwd_fake(q, k, v, key_padding_mask, alibi_slopes, softmax_scale):
    check_devices("alibi_attention", "q", dict(q=q, k=k, v=v, key_padding_mask=key_padding_mask,
                                                alibi_slopes=alibi_slopes))
    B, L, H, _ = q.shape
    return q.new_empty(q.shape), q.new_empty((B, H, L), dtype=_lse_dtype(q))


@torch.library.register_fake("bembed::alibi_attention_bwd")
def _bwd_fake(grad_out, q, k, v, out, lse, key_padding_mask, alibi_slopes, softmax_scale):
    check_devices("alibi_attention backward", "q", dict(q=q, grad_out=grad_out, k=k, v=v, out=out, lse=lse,
                                                         key_padding_mask=key_padding_mask, alibi_slopes=alibi_slopes))
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


@torch.library.register_fake("bembed::alibi_attention_varlen_fwd")
def _varlen_fwd_fake(q, k, v, cu_seqlens, max_seqlen, alibi_slopes, softmax_scale):
    check_devices("alibi_attention_varlen", "q", dict(q=q, k=k, v=v, cu_seqlens=cu_seqlens,
                                                       alibi_slopes=alibi_slopes))
    T, H, _ = q.shape
    return q.new_empty(q.shape), q.new_empty((H, T), dtype=_lse_dtype(q))


@torch.library.register_fake("bembed::alibi_attention_varlen_bwd")
def _varlen_bwd_fake(grad_out, q, k, v, out, lse, cu_seqlens, max_seqlen, alibi_slopes, softmax_scale):
    check_devices("alibi_attention_varlen backward", "q", dict(q=q, grad_out=grad_out, k=k, v=v, out=out,
                                                                lse=lse, cu_seqlens=cu_seqlens,
                                                                alibi_slopes=alibi_slopes))
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _refuse_slopes_grad(alibi_slopes, op: str) -> None:
    """The kernels give no gradient for the slopes: say so rather than leave alibi_slopes.grad silently None."""
    if alibi_slopes is not None and alibi_slopes.requires_grad:
        raise ValueError(f"{op}: argument 'alibi_slopes' requires grad, but the kernels treat the slopes as "
                         "constants (no gradient); pass alibi_slopes.detach(), or impl='reference' to learn them")


# The mask, slopes and cu_seqlens go through save_for_backward too: an in-place write to one of them between
# forward and backward then raises, instead of silently differentiating attention with the new values.
def _setup_fwd(ctx, inputs, output):
    q, k, v, key_padding_mask, alibi_slopes, softmax_scale = inputs
    _refuse_slopes_grad(alibi_slopes, "alibi_attention")
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, key_padding_mask, alibi_slopes)
    ctx.softmax_scale = softmax_scale
    ctx.mark_non_differentiable(lse)


@first_order_only("alibi_attention")
def _backward_fwd(ctx, grad_out, grad_lse):
    q, k, v, out, lse, key_padding_mask, alibi_slopes = ctx.saved_tensors
    dq, dk, dv = _OPS.alibi_attention_bwd(grad_out, q, k, v, out, lse, key_padding_mask, alibi_slopes,
                                          ctx.softmax_scale)
    return dq, dk, dv, None, None, None


def _setup_varlen_fwd(ctx, inputs, output):
    q, k, v, cu_seqlens, max_seqlen, alibi_slopes, softmax_scale = inputs
    _refuse_slopes_grad(alibi_slopes, "alibi_attention_varlen")
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, cu_seqlens, alibi_slopes)
    ctx.max_seqlen, ctx.softmax_scale = max_seqlen, softmax_scale
    ctx.mark_non_differentiable(lse)


@first_order_only("alibi_attention_varlen")
def _backward_varlen_fwd(ctx, grad_out, grad_lse):
    q, k, v, out, lse, cu_seqlens, alibi_slopes = ctx.saved_tensors
    dq, dk, dv = _OPS.alibi_attention_varlen_bwd(grad_out, q, k, v, out, lse, cu_seqlens, ctx.max_seqlen,
                                                 alibi_slopes, ctx.softmax_scale)
    return dq, dk, dv, None, None, None, None


torch.library.register_autograd("bembed::alibi_attention_fwd", _backward_fwd, setup_context=_setup_fwd)
torch.library.register_autograd("bembed::alibi_attention_varlen_fwd", _backward_varlen_fwd,
                                setup_context=_setup_varlen_fwd)


# ----------------------------------------------------------------------------------------------------
# Public functions
# ----------------------------------------------------------------------------------------------------

def alibi_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, alibi_slopes: torch.Tensor | None, *,
                    key_padding_mask: torch.Tensor | None = None, softmax_scale: float | None = None,
                    impl: str | None = None) -> torch.Tensor:
    """Non-causal ALiBi attention on padded batches, bias −slope_h·|i−j| computed on the fly.

    q, k, v: (B, L, H, D), one float dtype (CPU: float32/float64/bfloat16/float16; CUDA: float16/bfloat16, D in
    {32, 64, 128}). alibi_slopes: float32 (H,) or (B, H), or None for plain attention; constants, not
    differentiated (ValueError if they require grad). key_padding_mask: bool (B, L), True = real token; a
    query whose keys are all masked outputs zeros. softmax_scale
    defaults to 1/√D. Returns (B, L, H, D). `impl="reference"` (or BEMBED_REFERENCE_OPS=1) runs the
    pure-PyTorch specification instead of the kernel.
    """
    _check_tensors("alibi_attention", 4, ("alibi_slopes", "key_padding_mask"), q=q, k=k, v=v,
                   alibi_slopes=alibi_slopes, key_padding_mask=key_padding_mask)
    scale = _default_scale(softmax_scale, q.shape[-1], "alibi_attention")
    if use_reference(impl):
        _check_like_the_kernels("alibi_attention", q, k, v, alibi_slopes, key_padding_mask=key_padding_mask)
        return alibi_attention_reference(q, k, v, alibi_slopes, key_padding_mask=key_padding_mask,
                                         softmax_scale=scale)
    refuse_forward_ad("alibi_attention", q, k, v)
    out, _ = _OPS.alibi_attention_fwd(q, k, v, key_padding_mask, alibi_slopes, scale)
    return out


def _checked_max_seqlen(max_seqlen):
    """max_seqlen as the op's int64 takes it, for both implementations alike. A SymInt (torch.compile) goes on as
    it is, its checks runtime asserts (`check_value`)."""
    if isinstance(max_seqlen, bool) or not isinstance(max_seqlen, (numbers.Integral, torch.SymInt)):
        raise TypeError("alibi_attention_varlen: argument 'max_seqlen' must be an int, "
                        f"got {type(max_seqlen).__name__}")
    if not isinstance(max_seqlen, torch.SymInt):
        max_seqlen = int(max_seqlen)
    check_value(max_seqlen >= 0, "alibi_attention_varlen: argument 'max_seqlen' must be ≥ 0")
    check_value(max_seqlen < 2**63, "alibi_attention_varlen: argument 'max_seqlen' must be below 2**63")
    return max_seqlen


def alibi_attention_varlen(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
                           max_seqlen: int, alibi_slopes: torch.Tensor | None, *,
                           softmax_scale: float | None = None, impl: str | None = None) -> torch.Tensor:
    """Non-causal ALiBi attention on packed (unpadded) sequences.

    q, k, v: (T, H, D); cu_seqlens: int32 (B+1,) with cu_seqlens[0] = 0, non-decreasing, ending at T
    (empty sequences allowed); max_seqlen: the longest sequence (a hint: longer ones are still computed
    in full). Positions i, j count from each sequence's start. alibi_slopes: float32 (H,) or (B, H), or
    None, not differentiated (as in alibi_attention). Returns (T, H, D).
    """
    _check_tensors("alibi_attention_varlen", 3, ("alibi_slopes",), q=q, k=k, v=v, cu_seqlens=cu_seqlens,
                   alibi_slopes=alibi_slopes)
    max_seqlen = _checked_max_seqlen(max_seqlen)
    scale = _default_scale(softmax_scale, q.shape[-1], "alibi_attention_varlen")
    if use_reference(impl):
        _check_like_the_kernels("alibi_attention_varlen", q, k, v, alibi_slopes, cu_seqlens=cu_seqlens)
        return alibi_attention_varlen_reference(q, k, v, cu_seqlens, max_seqlen, alibi_slopes, softmax_scale=scale)
    refuse_forward_ad("alibi_attention_varlen", q, k, v)
    out, _ = _OPS.alibi_attention_varlen_fwd(q, k, v, cu_seqlens, max_seqlen, alibi_slopes, scale)
    return out
