"""ALiBi attention on GPU: bembed's CUDA kernels vs the no-install baselines of the same torch, in one run.

bf16, D=64, H=12, non-causal ALiBi (JinaBERT slopes); padded batches of 16k tokens (L ∈ {512, 2048, 8192,
16384}, no mask) and a varlen batch of 64k tokens. Baselines: FlexAttention with an ALiBi score_mod
(compiled; the baseline of both directions), SDPA (memory-efficient backend) with a materialised bf16 bias
(bias build not timed), and torch.ops.aten._flash_attention_forward with alibi_slopes (FlashAttention-2
inside torch; forward only) where the torch build has it: torch 2.11.0+cu130's libtorch_cuda.so holds only
the FLASHATTENTION_DISABLE_ALIBI branch ("This flash attention build does not support alibi."), so that row
is expected to be skipped and cannot be the forward baseline. TFLOP/s by the
FlashAttention convention: forward 4·L²·D·H per sequence, backward 2.5× that. Every implementation is checked
against an exact float32 computation of 64 query rows before it is timed (fwd+bwd: also the gradients those
rows send to q, k and v). The cases vary slowest and the baseline runs right after bembed, on the same seeded
inputs, so a run cut short still has both sides of the cases it reached. A baseline the torch at hand
cannot run (forward, or backward for fwd+bwd) is skipped with the reason "unavailable: ..." (shown by pytest
-rs, as gpu_check.sh runs it) instead of failing the run; bembed failing fails it.
"""

import math

import pytest
import torch

import bembed_ext
from conftest import rate, sync

H, D = 12, 64
TOKENS = 16384
LENGTHS = [512, 2048, 8192, 16384]
VARLEN_TOKENS = 65536
SCALE = 1.0 / math.sqrt(D)
IMPLS = ["bembed", "flex", "sdpa_bias", "fa2_alibi"]

pytestmark = pytest.mark.cuda


def _varlen_lengths():
    """A fixed mix of document lengths (64 … 8192) filling VARLEN_TOKENS exactly."""
    gen = torch.Generator().manual_seed(0)
    lengths, total = [], 0
    while total < VARLEN_TOKENS:
        n = min(int(2 ** (6 + 7 * torch.rand((), generator=gen).item())), VARLEN_TOKENS - total)
        lengths.append(n)
        total += n
    return lengths


class Case:
    """Packed q, k, v (T, H, D) with cu_seqlens; padded cases are equal-length packs viewed as (B, L, H, D)."""

    def __init__(self, lengths, padded):
        self.lengths, self.padded = lengths, padded
        self.cu_seqlens = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32,
                                       device="cuda")
        self.max_seqlen = max(lengths)
        T = sum(lengths)
        gen = torch.Generator(device="cuda").manual_seed(T + len(lengths))  # every implementation, the same inputs
        self.q, self.k, self.v, self.grad = (torch.randn(T, H, D, device="cuda", dtype=torch.bfloat16, generator=gen)
                                             for _ in range(4))
        self.rows = torch.randperm(lengths[0], device="cuda", generator=gen)[:64]  # distinct rows of sequence 0
        self.slopes = bembed_ext.alibi_slopes(H).cuda()
        self.fwd_flops = sum(4 * n * n * D * H for n in lengths)

    def batched(self, t):
        return t.view(len(self.lengths), self.max_seqlen, H, D)


def _exact_rows(case, upstream=None):
    """float32 attention output of case.rows of the first sequence (no L×L tensor); with `upstream` (their
    output gradient) also the gradients they send to q (those rows), k and v (the first sequence)."""
    n, rows = case.lengths[0], case.rows
    q, k, v = (t[:n].float().requires_grad_(upstream is not None) for t in (case.q, case.k, case.v))
    pos = torch.arange(n, device="cuda")
    scores = torch.einsum("rhd,jhd->hrj", q[rows], k) * SCALE
    scores = scores - case.slopes[:, None, None] * (rows[:, None] - pos[None, :]).abs()[None].float()
    out = torch.einsum("hrj,jhd->rhd", scores.softmax(-1), v)
    if upstream is None:
        return out
    out.backward(upstream.float())
    return q.grad[rows], k.grad, v.grad


# ---- implementations: each returns fn(q, k, v) -> out on packed (T, H, D) tensors, or raises -------------

def _bembed(case):
    if case.padded:
        return lambda q, k, v: bembed_ext.alibi_attention(case.batched(q), case.batched(k), case.batched(v),
                                                          case.slopes, softmax_scale=SCALE).view_as(q)
    return lambda q, k, v: bembed_ext.alibi_attention_varlen(q, k, v, case.cu_seqlens, case.max_seqlen, case.slopes,
                                                             softmax_scale=SCALE)


def _fa2_alibi(case):
    op = torch.ops.aten._flash_attention_forward
    if case.padded:
        L = case.max_seqlen
        return lambda q, k, v: op(case.batched(q), case.batched(k), case.batched(v), None, None, L, L, 0.0, False,
                                  False, scale=SCALE, alibi_slopes=case.slopes)[0].view_as(q)
    cu, m = case.cu_seqlens, case.max_seqlen
    return lambda q, k, v: op(q, k, v, cu, cu, m, m, 0.0, False, False, scale=SCALE, alibi_slopes=case.slopes)[0]


_compiled_flex = {}


def _flex(case):
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    if "fn" not in _compiled_flex:
        # One specialisation per shape and score_mod: more than dynamo's default limit of 8 in this file.
        for limit in ("recompile_limit", "cache_size_limit"):
            if hasattr(torch._dynamo.config, limit):
                setattr(torch._dynamo.config, limit, 64)
        _compiled_flex["fn"] = torch.compile(flex_attention, dynamic=False)
    flex = _compiled_flex["fn"]
    slopes = case.slopes
    if case.padded:
        def score_mod(score, b, h, q_idx, kv_idx):
            return score - slopes[h] * (q_idx - kv_idx).abs()

        def fn(q, k, v):
            qb, kb, vb = (case.batched(t).transpose(1, 2) for t in (q, k, v))
            return flex(qb, kb, vb, score_mod=score_mod, scale=SCALE).transpose(1, 2).reshape_as(q)
        return fn
    # Varlen as one packed sequence: a document mask plus positions counted from each document's start.
    T = sum(case.lengths)
    doc = torch.repeat_interleave(torch.arange(len(case.lengths), device="cuda"),
                                  torch.tensor(case.lengths, device="cuda"))
    pos = torch.arange(T, device="cuda") - case.cu_seqlens[doc].long()

    def mask_mod(b, h, q_idx, kv_idx):
        return doc[q_idx] == doc[kv_idx]

    def score_mod(score, b, h, q_idx, kv_idx):
        return score - slopes[h] * (pos[q_idx] - pos[kv_idx]).abs()

    block_mask = create_block_mask(mask_mod, 1, 1, T, T, device="cuda", _compile=True)  # never a T×T mask
    return lambda q, k, v: flex(q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None],
                                score_mod=score_mod, block_mask=block_mask, scale=SCALE)[0].transpose(0, 1)


def _sdpa_bias(case):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    if not case.padded:
        raise RuntimeError("needs a T×T bias for a packed batch")
    L = case.max_seqlen
    pos = torch.arange(L, device="cuda")
    bias = (-case.slopes[:, None, None] * (pos[:, None] - pos[None, :]).abs()).to(torch.bfloat16)[None]

    def fn(q, k, v):
        qb, kb, vb = (case.batched(t).transpose(1, 2) for t in (q, k, v))
        with sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION]):
            out = torch.nn.functional.scaled_dot_product_attention(qb, kb, vb, attn_mask=bias, scale=SCALE)
        return out.transpose(1, 2).reshape_as(q)
    return fn


MAKERS = {"bembed": _bembed, "fa2_alibi": _fa2_alibi, "flex": _flex, "sdpa_bias": _sdpa_bias}
_cases = {}


def _case(name):
    if name not in _cases:
        _cases.clear()  # one case's tensors (and SDPA's bias) at a time
        torch.cuda.empty_cache()
        if name == "varlen":
            _cases[name] = Case(_varlen_lengths(), padded=False)
        else:
            L = int(name)
            _cases[name] = Case([L] * (TOKENS // L), padded=True)
    return _cases[name]


# The case varies slowest (pytest applies the decorator nearest the function first): each case's inputs are
# built once and every implementation of it runs back to back.
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("direction", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("case_name", [str(L) for L in LENGTHS] + ["varlen"])
def test_alibi_attention_cuda(benchmark, record, case_name, direction, impl):
    case = _case(case_name)
    label = f"{direction} bf16 d{D} h{H} " + (f"L{case_name} x{len(case.lengths)}" if case.padded
                                                else f"varlen {len(case.lengths)} seqs {sum(case.lengths)} tokens")
    baseline = impl == "flex"  # not fa2_alibi: torch's own builds lack ALiBi in flash (see the docstring)
    before = torch.cuda.memory_allocated()  # before the implementation's setup: SDPA's L×L bias counts
    try:
        if impl == "fa2_alibi" and direction != "fwd":
            raise RuntimeError("torch exposes no ALiBi flash backward")
        fn = MAKERS[impl](case)
        out = fn(case.q, case.k, case.v)
        if direction != "fwd":  # a baseline whose backward this torch cannot run (or compile) is skipped too
            leaves = [t.detach().requires_grad_() for t in (case.q, case.k, case.v)]
            upstream = torch.zeros_like(case.grad)
            upstream[case.rows] = case.grad[case.rows]  # only the checked rows send gradients
            fn(*leaves).backward(upstream)
            n = case.lengths[0]
            grads = (leaves[0].grad[case.rows], leaves[1].grad[:n], leaves[2].grad[:n])
            del leaves, upstream
    except Exception as error:  # noqa: BLE001 - a baseline this torch lacks is a result, not a failure
        if impl == "bembed":
            raise  # bembed's own failure fails the run
        first_line = (str(error).splitlines() or [""])[0][:160]
        pytest.skip(f"unavailable: {impl} {label}: {type(error).__name__}: {first_line}")

    torch.testing.assert_close(out[:case.lengths[0]][case.rows].float(), _exact_rows(case), rtol=2e-2, atol=2e-2)
    del out
    if direction != "fwd":  # a wrong backward must not score either; bf16 gradients: a few per mille off
        for name, got, want in zip(("dq", "dk", "dv"), grads, _exact_rows(case, case.grad[case.rows])):
            error = ((got.float() - want).norm() / want.norm()).item()
            assert error < 0.05, f"{impl} {label}: {name} relative error {error:.3g} against float32"
        del grads

    if direction == "fwd":
        def step():
            fn(case.q, case.k, case.v)
            sync("cuda")
        flops = case.fwd_flops
    else:
        q, k, v = (t.detach().requires_grad_() for t in (case.q, case.k, case.v))

        def step():
            q.grad = k.grad = v.grad = None
            fn(q, k, v).backward(case.grad)
            sync("cuda")
        flops = 3.5 * case.fwd_flops

    # The peak from here: the implementation's setup (still allocated) and its runs, not the correctness check.
    torch.cuda.reset_peak_memory_stats()
    for _ in range(3):  # warm-up (and compile) outside the timed rounds
        step()
    benchmark.pedantic(step, rounds=10, iterations=1)
    record(benchmark, op="alibi_attention_cuda", case=label, impl=impl, baseline=baseline,
           tflops=rate(benchmark, flops / 1e12),
           peak_extra_mb=(torch.cuda.max_memory_allocated() - before) / 2**20)
