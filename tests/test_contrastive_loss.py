"""bembed_ext.contrastive_loss (single process) against the materialised specification: loss and both
gradients, float64 gradcheck on the kernel, the rank-share index math of the op, opcheck, torch.compile,
bad input, memory. The multi-process tests live in test_contrastive_distributed.py."""

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import bembed_ext
from bembed_ext.ops.contrastive_loss import _rank_loss_reference
from accuracy import assert_typically_within_torch_error, assert_within_torch_error, max_error

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FWD = torch.ops.bembed.contrastive_loss_fwd


def _inputs(B, m, D, dtype=torch.float64, device="cpu", normalize=True):
    q = torch.randn(B, D, dtype=dtype, device=device)
    d = torch.randn(B * (1 + m), D, dtype=dtype, device=device)
    if normalize:
        q, d = F.normalize(q, dim=-1), F.normalize(d, dim=-1)
    return q.requires_grad_(), d.requires_grad_()


def _loss_and_grads(q, d, **kwargs):
    q, d = q.detach().clone().requires_grad_(), d.detach().clone().requires_grad_()
    loss = bembed_ext.contrastive_loss(q, d, **kwargs)
    return (loss, *torch.autograd.grad(loss, (q, d)))


# (B, m, D): B=1, N=B (m=0), large m, D not a multiple of 8.
SHAPES = [(1, 0, 8), (1, 5, 3), (7, 0, 13), (6, 3, 5), (4, 40, 9), (33, 1, 64)]


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("temperature", [0.02, 0.05, 1.0])
@pytest.mark.parametrize("B,m,D", SHAPES)
def test_float64_matches_reference(B, m, D, temperature, bidirectional):
    q, d = _inputs(B, m, D)
    kw = dict(temperature=temperature, bidirectional=bidirectional)
    ours = _loss_and_grads(q, d, impl="kernel", **kw)
    ref = _loss_and_grads(q, d, impl="reference", **kw)
    for name, a, b in zip(("loss", "grad_queries", "grad_documents"), ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("B,m,D,temperature", [(5, 0, 768, 0.05), (64, 2, 37, 0.01), (300, 60, 16, 0.05)])
def test_float32_within_torch_error(B, m, D, temperature, bidirectional):
    """(300, 60, 16): 18300 documents, several strips with a ragged last one. (At D = 5 the float32 GEMM of
    even the exact dL/dS errs by more than 2× PyTorch's error, which benefits from cancellation there.) Five
    draws: the kernel's float32 error is PyTorch's (median ratio 1.0), and one draw passed 2× in 11 of 200."""
    kw = dict(temperature=temperature, bidirectional=bidirectional)
    draws = []
    for _ in range(5):
        q, d = _inputs(B, m, D)
        ours = _loss_and_grads(q.float(), d.float(), impl="kernel", **kw)
        assert all(a.dtype == torch.float32 for a in ours)
        draws.append(zip(ours, _loss_and_grads(q, d, impl="reference", **kw),
                         _loss_and_grads(q.float(), d.float(), impl="reference", **kw)))
    for name, *per_draw in zip(("loss", "grad_queries", "grad_documents"), *draws):
        assert_typically_within_torch_error(per_draw, what=name)


@pytest.mark.parametrize("bidirectional", [True, False])
def test_float32_loss_near_zero_is_accurate(bidirectional):
    """A well-trained batch (each positive far above its negatives at τ = 0.02): the exact loss is ~1e-13.
    The kernel took the positive scores from a separate GEMM, whose rounding of ~1/τ-sized scores differs
    from the strips' by ~1e-6: the loss came out at −1e-6 (negative), and a single pair gave −5e-7, not 0."""
    one_q, one_d = (F.normalize(torch.randn(1, 64, generator=torch.Generator().manual_seed(s)), dim=-1) for s in (1, 2))
    assert bembed_ext.contrastive_loss(one_q, one_d, bidirectional=bidirectional).item() == 0.0
    for seed in range(10):
        g = torch.Generator().manual_seed(seed)
        q = F.normalize(torch.randn(32, 64, generator=g, dtype=torch.float64), dim=-1)
        d = F.normalize(q + 0.05 * torch.randn(32, 64, generator=g, dtype=torch.float64), dim=-1)
        kw = dict(temperature=0.02, bidirectional=bidirectional)
        exact = bembed_ext.contrastive_loss(q, d, **kw).item()
        ours = bembed_ext.contrastive_loss(q.float(), d.float(), **kw).item()
        assert abs(ours - exact) <= 1e-7, (seed, ours, exact)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("B,m,temperature,noise", [(32, 0, 0.02, 0.05), (32, 0, 0.05, 0.02), (200, 1, 0.05, 0.02)])
def test_float32_gradient_of_a_nearly_solved_batch(B, m, temperature, noise, bidirectional, device):
    """Each positive far above its negatives: every p_ii − 1 is tiny (down to 1e-13). The kernel once formed it
    as exp(s − lse) − 1 with a float lse ~1/τ in size (its rounding, ~2e-6, swamped the gradient: 3700×
    PyTorch's error bidirectionally) and summed exps in float (7× at τ = 0.05 on CPU; 2.3× in an emulation of
    the CUDA kernels). No error floor here."""
    worst = {"ours": [0.0] * 3, "torch": [0.0] * 3}
    for seed in range(5):
        g = torch.Generator().manual_seed(seed)
        q = F.normalize(torch.randn(B, 64, generator=g, dtype=torch.float64), dim=-1)
        positives = F.normalize(q + noise * torch.randn(B, 64, generator=g, dtype=torch.float64), dim=-1)
        d = torch.cat([positives, F.normalize(torch.randn(B * m, 64, generator=g, dtype=torch.float64), dim=-1)])
        q, d = q.to(device), d.to(device)
        kw = dict(temperature=temperature, bidirectional=bidirectional)
        exact = _loss_and_grads(q, d, impl="reference", **kw)
        for name, impl in (("ours", "kernel"), ("torch", "reference")):
            result = _loss_and_grads(q.float(), d.float(), impl=impl, **kw)
            worst[name] = [max(w, max_error(a, r)) for w, a, r in zip(worst[name], result, exact)]
    for what, ours, theirs in zip(("loss", "grad_queries", "grad_documents"), worst["ours"], worst["torch"]):
        assert ours <= 2 * theirs + 1e-15, f"{what}: error {ours:.2e} > 2× PyTorch's {theirs:.2e}"


def test_unnormalised_large_scores_stay_finite():
    """Scores near ±1000 (no normalisation, τ = 0.01) must not overflow the log-sum-exp. Out of the
    normalised regime the float32 lse carries ulp(|s|) ≈ 6e-5, so the gradients are compared relative to
    their scale rather than by the 2×-PyTorch rule."""
    q, d = _inputs(9, 2, 16, dtype=torch.float32, normalize=False)
    ours = _loss_and_grads(q, d, temperature=0.01, impl="kernel")
    ref = _loss_and_grads(q.double(), d.double(), temperature=0.01, impl="reference")
    for a, r in zip(ours, ref):
        assert torch.isfinite(a).all()
        assert (a.double() - r).abs().max() <= 1e-4 * r.abs().max()


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("B,m,D,temperature", [(1, 0, 3, 0.1), (3, 0, 5, 0.05), (4, 2, 6, 0.5), (2, 7, 9, 1.0)])
def test_gradcheck_kernel_float64(B, m, D, temperature, bidirectional):
    q, d = _inputs(B, m, D)
    fn = lambda a, b: bembed_ext.contrastive_loss(a, b, temperature=temperature, bidirectional=bidirectional,
                                                  impl="kernel")
    assert torch.autograd.gradcheck(fn, (q, d))


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("world_size,m", [(2, 0), (3, 2)])
def test_rank_share_matches_reference(world_size, m, bidirectional):
    """The op's (world_size, rank) arguments: each rank's share of the global batch, loss and gradients,
    and the shares average to the single-process loss."""
    B, D = 4, 7
    q, d = _inputs(world_size * B, m, D)
    shares = []
    for rank in range(world_size):
        args = (0.07, bidirectional, world_size, rank)
        ours = FWD(q, d, *args)[0]
        ref = _rank_loss_reference(q, d, *args)
        torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(torch.autograd.grad(ours, (q, d)), torch.autograd.grad(ref, (q, d)),
                                   rtol=1e-10, atol=1e-12)
        shares.append(ours)
    whole = FWD(q, d, 0.07, bidirectional, 1, 0)[0]
    torch.testing.assert_close(torch.stack(shares).mean(), whole, rtol=1e-12, atol=1e-12)


def test_gradcheck_rank_share():
    q, d = _inputs(6, 1, 3)
    assert torch.autograd.gradcheck(lambda a, b: FWD(a, b, 0.1, True, 3, 1)[0], (q, d))


def test_differentiating_the_gradient_raises():
    """The backward kernel has no derivative: a gradient penalty must fail, not silently lose its term."""
    q, d = _inputs(3, 1, 4)
    (grad_q,) = torch.autograd.grad(bembed_ext.contrastive_loss(q, d), q, create_graph=True)
    with pytest.raises(RuntimeError, match="no double backward"):
        grad_q.square().sum().backward()


def test_reference_is_the_plain_formula():
    """Pins the specification itself (summed directions, positives first) to a hand-written formula."""
    q, d = _inputs(3, 1, 4)
    logits = q @ d.T / 0.05
    forward = -(logits.log_softmax(dim=1).diagonal()).mean()
    backward = -(logits[:, :3].log_softmax(dim=0).diagonal()).mean()
    torch.testing.assert_close(bembed_ext.reference.contrastive_loss(q, d), forward + backward)
    torch.testing.assert_close(bembed_ext.reference.contrastive_loss(q, d, bidirectional=False), forward)


def test_reference_switch(monkeypatch):
    q, d = _inputs(3, 1, 4)
    # Poison the kernel: the reference paths must not reach it.
    monkeypatch.setattr("bembed_ext.ops.contrastive_loss._OPS", None)
    expected = bembed_ext.reference.contrastive_loss(q, d)
    torch.testing.assert_close(bembed_ext.contrastive_loss(q, d, impl="reference"), expected)
    monkeypatch.setenv("BEMBED_REFERENCE_OPS", "1")
    torch.testing.assert_close(bembed_ext.contrastive_loss(q, d), expected)


@pytest.mark.parametrize("bidirectional", [True, False])
def test_opcheck(bidirectional):
    q, d = _inputs(5, 2, 6, dtype=torch.float32)
    torch.library.opcheck(FWD, (q, d, 0.05, bidirectional, 1, 0))
    loss, *saved = FWD(q, d, 0.05, bidirectional, 1, 0)
    grad = torch.tensor(0.7)
    torch.library.opcheck(torch.ops.bembed.contrastive_loss_bwd,
                          (grad, q.detach(), d.detach(), *saved, 0.05, bidirectional, 1, 0))
    q6, d6 = _inputs(6, 1, 5, dtype=torch.float32)
    torch.library.opcheck(FWD, (q6, d6, 0.1, bidirectional, 3, 1))


def test_torch_compile_fullgraph_forward_backward():
    def step(q, d):
        return bembed_ext.contrastive_loss(F.normalize(q, dim=-1), F.normalize(d, dim=-1), temperature=0.05)

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    q, d = _inputs(6, 1, 10, dtype=torch.float32, normalize=False)
    eager = _grads_of(step, q, d)
    ours = _grads_of(compiled, q, d)
    torch.testing.assert_close(ours, eager)


def test_torch_compile_with_a_symbolic_temperature():
    """A temperature that dynamo makes symbolic (a second value, or dynamic=True) failed fullgraph: the check
    called math.isfinite on it, which dynamo cannot trace."""
    compiled = torch.compile(lambda q, d, t: bembed_ext.contrastive_loss(q, d, temperature=t), fullgraph=True,
                             backend="aot_eager", dynamic=True)
    q, d = _inputs(6, 1, 10, dtype=torch.float32)
    for temperature in (0.05, 0.1, 0.2):
        eager = bembed_ext.contrastive_loss(q, d, temperature=temperature)
        torch.testing.assert_close(compiled(q, d, temperature), eager)
    with pytest.raises(ValueError, match="temperature"):
        bembed_ext.contrastive_loss(q, d, temperature=float("nan"))


def _grads_of(fn, q, d):
    q, d = q.detach().clone().requires_grad_(), d.detach().clone().requires_grad_()
    loss = fn(q, d)
    loss.backward()
    return loss, q.grad, d.grad


# ----------------------------------------------------------------------------------------------------
# Bad input: clear ValueError / TypeError naming the argument
# ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("impl", ["kernel", "reference"])
@pytest.mark.parametrize("queries,documents,kwargs,error,match", [
    ((4, 8), (4, 7), {}, ValueError, "embedding dimension"),
    ((4, 8), (6, 8), {}, ValueError, "B·\\(1\\+m\\) rows"),
    ((4, 8), (2, 8), {}, ValueError, "B·\\(1\\+m\\) rows"),
    ((4,), (4, 8), {}, ValueError, "'queries' must be 2-D"),
    ((4, 8), (4, 8, 1), {}, ValueError, "'documents' must be 2-D"),
    ((0, 8), (0, 8), {}, ValueError, "at least one row"),
    ((4, 8), (4, 8), {"temperature": 0.0}, ValueError, "'temperature' must be a finite number > 0"),
    ((4, 8), (4, 8), {"temperature": -0.05}, ValueError, "'temperature'"),
    ((4, 8), (4, 8), {"temperature": float("nan")}, ValueError, "'temperature'"),
    ((4, 8), (4, 8), {"temperature": "0.05"}, TypeError, "'temperature' must be a float"),
    ((4, 8), (4, 8), {"temperature": 1e-40}, ValueError, "'temperature' must be ≥ 2.94e-39 for torch.float32"),
    ((4, 8), (4, 8), {"bidirectional": 1}, TypeError, "'bidirectional' must be a bool"),
])
def test_bad_shapes_and_arguments(queries, documents, kwargs, error, match, impl):
    with pytest.raises(error, match=match):
        bembed_ext.contrastive_loss(torch.randn(queries), torch.randn(documents), impl=impl, **kwargs)


def test_a_tiny_temperature_is_fine_in_float64():
    queries = torch.nn.functional.normalize(torch.randn(4, 8, dtype=torch.float64), dim=-1)
    assert torch.isfinite(bembed_ext.contrastive_loss(queries, queries, temperature=1e-40))


def test_bad_dtypes():
    with pytest.raises(TypeError, match="'queries' must be a floating-point tensor"):
        bembed_ext.contrastive_loss(torch.ones(4, 8, dtype=torch.int64), torch.randn(4, 8))
    with pytest.raises(TypeError, match="'documents' has dtype torch.float64 but 'queries' has torch.float32"):
        bembed_ext.contrastive_loss(torch.randn(4, 8), torch.randn(4, 8, dtype=torch.float64))
    with pytest.raises(TypeError, match="'documents' must be a torch.Tensor"):
        bembed_ext.contrastive_loss(torch.randn(4, 8), [[0.0] * 8] * 4)
    with pytest.raises(TypeError, match="must have dtype in"):  # the CPU kernel: float32/float64 only
        bembed_ext.contrastive_loss(torch.randn(4, 8, dtype=torch.bfloat16), torch.randn(4, 8, dtype=torch.bfloat16))


def test_gather_without_process_group():
    assert not torch.distributed.is_initialized()
    with pytest.raises(ValueError, match="gather_across_ranks=True needs an initialised torch.distributed"):
        bembed_ext.contrastive_loss(torch.randn(4, 8), torch.randn(4, 8), gather_across_ranks=True)


def test_op_level_checks():
    q, d = torch.randn(6, 4), torch.randn(12, 4)
    with pytest.raises(ValueError, match="'world_size' \\(4\\) must divide"):
        FWD(q, d, 0.05, True, 4, 0)
    for rank in (3, -1):  # a negative rank's offset read rows before the batch
        with pytest.raises(ValueError, match="'rank' must be in \\[0, 3\\)"):
            FWD(q, d, 0.05, True, 3, rank)
    with pytest.raises(ValueError, match="'temperature' must be > 0"):
        FWD(q, d, -1.0, True, 1, 0)
    loss, row_stats, col_stats, positive_grad = FWD(q, d, 0.05, True, 1, 0)
    bwd = torch.ops.bembed.contrastive_loss_bwd
    with pytest.raises(ValueError, match="'col_stats' must have shape \\(2, 0\\)"):
        bwd(torch.tensor(1.0), q, d, row_stats, col_stats, positive_grad, 0.05, False, 1, 0)
    for short in (row_stats[0], row_stats[:, :5]):  # the backward read past a short one
        with pytest.raises(ValueError, match="'row_stats' must have shape \\(2, 6\\)"):
            bwd(torch.tensor(1.0), q, d, short, col_stats, positive_grad, 0.05, True, 1, 0)
    with pytest.raises(ValueError, match="'positive_grad' must have shape \\(6\\)"):
        bwd(torch.tensor(1.0), q, d, row_stats, col_stats, positive_grad[:3], 0.05, True, 1, 0)


# ----------------------------------------------------------------------------------------------------
# Memory: extra memory of forward+backward is O(B·D), never a B×N buffer (fresh subprocess each)
# ----------------------------------------------------------------------------------------------------

def _peak_extra(batch, dim, impl="kernel"):
    out = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "contrastive_memory.py"), "--impl", impl,
                          "--batch", str(batch), "--dim", str(dim)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_memory_no_logits_buffer():
    """B = N = 8192, D = 32: a float32 logits matrix alone is 256 MB; ours needs one 16 MB strip + grads."""
    result = _peak_extra(8192, 32)
    assert result["extra_mb"] < 0.25 * result["logits_mb"], result


@pytest.mark.slow
def test_memory_b16384_d768():
    """The issue's shape: B = N = 16384, D = 768 (logits 1 GB). Extra = gradients (96 MB) + one strip."""
    result = _peak_extra(16384, 768)
    assert result["extra_mb"] < 200, result


# ----------------------------------------------------------------------------------------------------
# CUDA: float32 / float16 / bfloat16 against the float64 reference, within 2× PyTorch's own error
# ----------------------------------------------------------------------------------------------------

@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("B,m,D", [(1, 0, 64), (37, 3, 100), (512, 1, 768), (3000, 0, 64)])
def test_cuda_within_torch_error(B, m, D, dtype, bidirectional):
    q, d = _inputs(B, m, D, device="cuda")
    kw = dict(temperature=0.05, bidirectional=bidirectional)
    ref = _loss_and_grads(q, d, impl="reference", **kw)
    ours = _loss_and_grads(q.to(dtype), d.to(dtype), impl="kernel", **kw)
    torch_same = _loss_and_grads(q.to(dtype), d.to(dtype), impl="reference", **kw)
    # The loss subtracts each positive score (its own dot product) from a log-sum-exp over the GEMM's scores,
    # both float32 and as large as 1/τ = 20, so they differ by a few ulp(20) ≈ 2e-6 even where PyTorch's
    # reference is exact (B = 1: the log-sum-exp of one logit minus that logit is 0 at any precision).
    floors = {"loss": 4 * torch.finfo(torch.float32).eps / kw["temperature"]}
    for name, a, r, t in zip(("loss", "grad_queries", "grad_documents"), ours, ref, torch_same):
        assert a.dtype == dtype
        assert_within_torch_error(a, r, t, floor=floors.get(name, 1e-6), what=name)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_large_batch_under_a_loss_scale(dtype):
    # At B = 16384 an in-batch negative's dL/ds = p/(τB) lies below fp16's smallest subnormal; a GradScaler's
    # scale arrives as the upstream gradient, after the kernel has rounded dS, so dS must be kept in range
    # by the kernel itself (the emulated unscaled dS gave 4.4× PyTorch's fp16 error here). 2^14, not 65536:
    # the fp16 loss's gradient must itself be a finite fp16 number.
    B, D, loss_scale = 16384, 64, 2.0 ** 14
    q, d = _inputs(B, 0, D, device="cuda")
    results = []
    for impl, cast in (("reference", torch.float64), ("kernel", dtype), ("reference", dtype)):
        qc, dc = q.detach().to(cast).requires_grad_(), d.detach().to(cast).requires_grad_()
        loss = bembed_ext.contrastive_loss(qc, dc, temperature=0.05, impl=impl)
        grads = torch.autograd.grad(loss, (qc, dc), torch.tensor(loss_scale, dtype=cast, device="cuda"))
        results.append([g.double() / loss_scale for g in grads])
        del loss, grads
    for name, ref, ours, torch_same in zip(("grad_queries", "grad_documents"), *results):
        assert_within_torch_error(ours, ref, torch_same, what=name)


@pytest.mark.cuda
def test_cuda_rank_share_and_opcheck():
    q, d = _inputs(12, 1, 40, device="cuda")
    for rank in range(3):
        args = (0.05, True, 3, rank)
        torch.testing.assert_close(FWD(q.float(), d.float(), *args)[0].double(), _rank_loss_reference(q, d, *args),
                                   rtol=1e-4, atol=1e-4)
    torch.library.opcheck(FWD, (q.detach().float().requires_grad_(), d.detach().float().requires_grad_(),
                                0.05, True, 1, 0))


def test_forward_mode_ad_raises_instead_of_zero_tangents():
    q, d = _inputs(3, 1, 8)
    with pytest.raises(NotImplementedError, match="bembed.contrastive_loss: the kernel has no forward-mode"):
        torch.func.jvp(lambda a: bembed_ext.contrastive_loss(a, d), (q,), (torch.randn_like(q),))
