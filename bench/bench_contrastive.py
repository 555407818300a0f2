"""Contrastive (InfoNCE) loss, forward+backward, bidirectional, τ = 0.05, documents = B positives (N = B).

CPU (2 threads): bembed's fused kernel vs the naive loss (materialised logits + cross entropy both ways,
bench/contrastive_memory.py:naive_loss) at B = 4096, D = 768 float32, with the peak extra memory of each
measured in a fresh process, and vs the kernel's four strip GEMMs alone (its floor; see test_cpu). GPU
(bf16, D = 768, B up to 131072): bembed vs the naive loss (until it runs out of memory) and vs 4× the time
of one cuBLAS GEMM of the same shape (B×D by D×N) — fwd+bwd of the loss is about four such GEMMs. Every
case first checks bembed against the naive loss on the same inputs.
"""

import functools
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import bembed_ext
from conftest import rate, run_or_skip_when_out_of_memory, sync
from contrastive_memory import naive_loss

HERE = os.path.dirname(os.path.abspath(__file__))
CPU_BATCH, DIM = 4096, 768
CUDA_BATCHES = [16384, 32768, 65536, 131072]


def _fn(impl):
    return bembed_ext.contrastive_loss if impl == "bembed" else naive_loss


@functools.lru_cache(maxsize=1)
def _inputs(device, batch, dtype):
    torch.manual_seed(batch)
    q = F.normalize(torch.randn(batch, DIM, device=device), dim=-1).to(dtype)
    d = F.normalize(torch.randn(batch, DIM, device=device), dim=-1).to(dtype)
    return q, d


def _loss_and_grads(fn, q, d):
    q, d = q.detach().requires_grad_(), d.detach().requires_grad_()
    loss = fn(q, d)
    loss.backward()
    return loss.detach(), q.grad, d.grad


@functools.lru_cache(maxsize=None)
def _check_correct(device, batch, dtype):
    """bembed against the naive loss on the same inputs (on GPU at a size the naive loss can hold)."""
    q, d = _inputs(device, batch, dtype)
    n = min(batch, 16384)
    ours = _loss_and_grads(bembed_ext.contrastive_loss, q[:n], d[:n])
    naive = _loss_and_grads(naive_loss, q[:n].float(), d[:n].float())
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    for a, b in zip(ours, naive):
        torch.testing.assert_close(a.float(), b, rtol=tol, atol=tol * b.abs().max().item())


@functools.lru_cache(maxsize=None)
def _peak_extra_mb(impl, batch):
    command = [sys.executable, os.path.join(HERE, "contrastive_memory.py"), "--impl", impl, "--batch", str(batch),
               "--dim", str(DIM), "--threads", str(torch.get_num_threads())]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])["extra_mb"]


def _step(fn, q, d, device):
    q, d = q.detach().requires_grad_(), d.detach().requires_grad_()

    def step():
        q.grad = d.grad = None
        fn(q, d).backward()
        sync(device)

    return step


@pytest.mark.parametrize("impl", ["bembed", "naive", "4x_gemm"])
def test_cpu(benchmark, record, impl):
    """4x_gemm is the kernel's floor: its four GEMMs alone, in its strip shape (all B queries against 1024
    documents, csrc/cpu/contrastive_loss.cpp): the forward scores, and in the backward the recomputed scores
    and the two gradient GEMMs. An exact fp32 loss that never holds B×N scores needs all four."""
    _check_correct("cpu", CPU_BATCH, torch.float32)
    q, d = _inputs("cpu", CPU_BATCH, torch.float32)
    if impl == "4x_gemm":
        width = 1024
        scores = torch.empty(CPU_BATCH, width)
        grad_q, grad_d = torch.zeros_like(q), torch.zeros_like(d)

        def step():
            for k in range(0, CPU_BATCH, width):
                for _ in range(2):
                    torch.mm(q, d[k:k + width].T, out=scores)
                grad_q.addmm_(scores, d[k:k + width])
                grad_d[k:k + width].addmm_(scores.T, q)
    else:
        step = _step(_fn(impl), q, d, "cpu")
    step()  # warm-up
    benchmark.pedantic(step, rounds=5, iterations=1)
    case = f"fwd+bwd cpu fp32 B=N={CPU_BATCH} D={DIM}"
    if impl == "4x_gemm":
        record(benchmark, op="contrastive_loss", case=case, impl=impl, baseline=False)
        return
    memory_impl = "kernel" if impl == "bembed" else "naive"
    record(benchmark, op="contrastive_loss", case=case, impl=impl, baseline=impl == "naive",
           peak_extra_mb=_peak_extra_mb(memory_impl, CPU_BATCH))


@pytest.mark.cuda
@pytest.mark.parametrize("batch", CUDA_BATCHES)
@pytest.mark.parametrize("impl", ["bembed", "naive", "4x_gemm"])
def test_cuda(benchmark, record, impl, batch):
    dtype = torch.bfloat16
    _check_correct("cuda", batch, dtype)
    q, d = _inputs("cuda", batch, dtype)
    if impl == "4x_gemm":
        def step():
            for _ in range(4):
                torch.mm(q, d.T)
            sync("cuda")
    else:
        step = _step(_fn(impl), q, d, "cuda")
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    run_or_skip_when_out_of_memory(step, f"{impl} runs out of GPU memory at B={batch}, D={DIM} bf16")  # warm-up
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    benchmark.pedantic(step, rounds=10, iterations=1)
    flops = 4 * 2 * batch * batch * DIM
    record(benchmark, op="contrastive_loss", case=f"fwd+bwd cuda bf16 B=N={batch} D={DIM}", impl=impl,
           baseline=impl == "4x_gemm", peak_extra_mb=peak, tflops=rate(benchmark, flops / 1e12))
