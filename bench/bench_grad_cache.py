"""GradCache (training/grad_cache.py): a stage-2 training step (queries and documents through JinaBERT at base
width, bidirectional InfoNCE, backward) encoding the whole batch at once (baseline) vs in GradCache chunks.
The chunked step costs one more forward pass and keeps one chunk's activations: the time ratio is below 1,
and peak_extra_mb (CPU: measured in a fresh process by bench/grad_cache_memory.py; CUDA: peak allocated) is
what the cache buys. Every case first checks that the two give the same loss and gradient (dropout off).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

import bembed_ext
from bembed import JinaBertConfig, JinaBertModel
from bembed.training.encoder import embed
from conftest import rate, run_or_skip_when_out_of_memory, sync

HERE = os.path.dirname(os.path.abspath(__file__))
# (device, layers, batch, length, chunk): CPU at 2 layers so a shared machine runs it in seconds
CASES = [("cpu", 2, 64, 128, 16), ("cuda", 12, 256, 512, 32), ("cuda", 12, 1024, 512, 64)]


def _cases():
    return [pytest.param(*case, id=f"{case[0]}-{case[1]}layers-B{case[2]}-L{case[3]}",
                         marks=[pytest.mark.cuda] if case[0] == "cuda" else []) for case in CASES]


def _model(device, layers, dropout):
    torch.manual_seed(0)
    model = JinaBertModel(JinaBertConfig(num_hidden_layers=layers, hidden_dropout_prob=dropout)).to(device).train()
    model.pooler.requires_grad_(False)
    return model


def _step_fn(model, device, batch, length, chunk):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, model.config.vocab_size, (2, batch, length), generator=g).to(device)
    mask = torch.ones_like(ids)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device == "cuda")

    def step():
        model.zero_grad(set_to_none=False)
        with autocast:
            q = embed(model, ids[0], mask[0], chunk)
            d = embed(model, ids[1], mask[1], chunk)
            loss = bembed_ext.contrastive_loss(q, d, temperature=0.05)
        loss.backward()
        sync(device)
        return loss

    return step


def _check_same_gradient(device, layers, length, chunk):
    """A small batch through both ways with dropout off: same loss, same gradient."""
    model = _model(device, layers, dropout=0.0)
    results = []
    for c in (0, chunk):
        loss = _step_fn(model, device, 2 * chunk + 1, min(length, 64), c)()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    (loss_a, grads_a), (loss_b, grads_b) = results
    tol = 1e-4 if device == "cpu" else 2e-2  # bf16 on CUDA, where one whole-batch pass sums weight grads in bf16
    whole, cached = torch.cat([g.flatten().double() for g in grads_a]), torch.cat([g.flatten().double() for g in grads_b])
    assert torch.allclose(loss_a, loss_b, rtol=tol)
    assert (cached - whole).norm() <= tol * whole.norm()


def _cpu_peak_mb(layers, batch, length, chunk) -> float:
    command = [sys.executable, os.path.join(HERE, "grad_cache_memory.py"), "--chunk", str(chunk), "--batch", str(batch),
               "--length", str(length), "--layers", str(layers), "--threads", str(torch.get_num_threads())]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])["extra_mb"]


@pytest.mark.parametrize("device, layers, batch, length, chunk", _cases())
@pytest.mark.parametrize("impl", ["whole batch", "grad_cache"])
def test_grad_cache_step(benchmark, record, device, layers, batch, length, chunk, impl):
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    _check_same_gradient(device, layers, length, chunk)
    used = chunk if impl == "grad_cache" else 0
    model = _model(device, layers, dropout=0.1)
    step = _step_fn(model, device, batch, length, used)
    info = {}

    def warm_up_and_time():
        step()
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
        benchmark.pedantic(step, rounds=2 if device == "cpu" else 5, iterations=1)
        if device == "cuda":
            info["peak_extra_mb"] = (torch.cuda.max_memory_allocated() - before) / 2**20

    run_or_skip_when_out_of_memory(warm_up_and_time, f"{impl} ran out of memory at B={batch}, L={length}")
    if device == "cpu":
        info["peak_extra_mb"] = _cpu_peak_mb(layers, batch, length, used)
    record(benchmark, op="pairs-train-step", case=f"{device} {layers} layers B={batch} L={length} chunk={chunk}",
           impl=impl, baseline=impl == "whole batch", tokens_per_s=rate(benchmark, 2 * batch * length),
           **info)
