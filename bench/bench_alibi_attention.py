"""ALiBi attention on CPU (2 threads): bembed's kernel vs `F.scaled_dot_product_attention` with a
precomputed float ALiBi mask (B×H×L×L, built outside the timing), B=1, H=12, D=64, float32, forward and
forward+backward. Each case first checks bembed against the reference (SDPA at L=8192, where the float64
reference would need tens of GB; fwd+bwd also its gradients, up to L=2048), and records the peak extra memory of each side, measured in a fresh
process by bench/alibi_attention_memory.py."""

import functools
import json
import os
import subprocess
import sys

import pytest
import torch

import bembed_ext
from alibi_attention_memory import alibi_mask, sdpa_alibi
from conftest import rate

SEQLENS = [512, 2048, 8192]
H, D = 12, 64
HERE = os.path.dirname(os.path.abspath(__file__))


@functools.lru_cache(maxsize=1)
def _inputs(seqlen):
    """q, k, v, grad, slopes and SDPA's mask for one L (only the latest L is kept: 3 GB at L=8192)."""
    torch.manual_seed(seqlen)
    q, k, v, grad = (torch.randn(1, seqlen, H, D) for _ in range(4))
    slopes = bembed_ext.alibi_slopes(H)
    return q, k, v, grad, slopes, alibi_mask(slopes, seqlen)


@functools.lru_cache(maxsize=None)
def _check_correct(seqlen, direction):
    """bembed's output (and, for fwd+bwd, its gradients up to L=2048, where the float64 reference's
    L×L tensors stay below a GB) against the reference on the benchmark's inputs."""
    q, k, v, grad, slopes, mask = _inputs(seqlen)
    with torch.no_grad():
        ours = bembed_ext.alibi_attention(q, k, v, slopes)
        if seqlen <= 2048:
            expected = bembed_ext.reference.alibi_attention(q.double(), k.double(), v.double(), slopes).float()
        else:
            expected = sdpa_alibi(q, k, v, mask)
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4)
    if direction == "fwd+bwd" and seqlen <= 2048:
        ours = [t.detach().requires_grad_() for t in (q, k, v)]
        bembed_ext.alibi_attention(*ours, slopes).backward(grad)
        exact = [t.detach().double().requires_grad_() for t in (q, k, v)]
        bembed_ext.reference.alibi_attention(*exact, slopes).backward(grad.double())
        for name, got, want in zip(("dq", "dk", "dv"), ours, exact):
            torch.testing.assert_close(got.grad, want.grad.float(), rtol=1e-4, atol=1e-4, msg=name)


@functools.lru_cache(maxsize=None)
def _peak_extra_mb(impl, seqlen, direction):
    command = [sys.executable, os.path.join(HERE, "alibi_attention_memory.py"), "--impl", impl, "--seqlen",
               str(seqlen), "--heads", str(H), "--head-dim", str(D), "--direction", direction, "--threads",
               str(torch.get_num_threads())]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("seqlen", SEQLENS)
@pytest.mark.parametrize("direction", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("impl", ["bembed", "sdpa"])
def test_alibi_attention_cpu(benchmark, record, seqlen, direction, impl):
    q, k, v, grad, slopes, mask = _inputs(seqlen)
    _check_correct(seqlen, direction)
    if impl == "bembed":
        def fn(q, k, v):
            return bembed_ext.alibi_attention(q, k, v, slopes)
    else:
        def fn(q, k, v):
            return sdpa_alibi(q, k, v, mask)

    if direction == "fwd":
        def step():
            with torch.no_grad():
                fn(q, k, v)
    else:
        leaves = [t.detach().requires_grad_() for t in (q, k, v)]

        def step():
            for t in leaves:
                t.grad = None
            fn(*leaves).backward(grad)

    step()  # warm-up outside the timed rounds
    benchmark.pedantic(step, rounds=5 if seqlen < 8192 else 3, iterations=1)
    if seqlen >= 8192:
        _inputs.cache_clear()  # the measuring process builds its own 3 GB mask: do not hold two at once
    memory = _peak_extra_mb(impl, seqlen, direction)
    flops = 4 * seqlen * seqlen * D * H * (1 if direction == "fwd" else 3.5)
    record(benchmark, op="alibi_attention", case=f"{direction} cpu fp32 B=1 L={seqlen} H={H} D={D}", impl=impl,
           baseline=impl == "sdpa", tflops=rate(benchmark, flops / 1e12),
           peak_extra_mb=memory["extra_mb"], note=f"mask {memory['mask_mb']:.0f} MB" if memory["mask_mb"] else "")
