"""Encoding end to end (`bembed.Embedder.encode`: tokenize, sort, token-budget batches, model, float32
pooling, order restored): bembed's unpadded kernel path vs the same weights and the same batches through the
reference path (padded batches, materialised (B, H, L, L) ALiBi bias, eager GEGLU — the way the published
remote code runs). tokens_per_s counts real tokens (specials included).

CPU: JinaBERT-base width (768, 12 heads, 3072 GEGLU, vocab 61056) with 2 layers to keep the run to a few
minutes on 2 threads; 9 texts from 8192 down to 33 tokens (16.4k tokens). Both sides use
batch_size=1 (a 512-token budget: each long document alone), the reference's best setting — at the
default batch_size=32 it would pad the batch to 8192 and materialise ~26 GB of bias. A third row shows
bembed at its default batch_size. The bembed/reference rows carry the peak extra memory of encoding one
long document at two lengths in a fresh process (bench/encode_memory.py; bembed 4096 and 8192 tokens,
the reference 2048 and 4096): linear growth (×2 per doubling) means no L×L tensor, the reference's ×4 is its
bias and scores. GPU (gpu_check.sh): the full 12-layer base model, bf16 autocast, at 512 and 8192 tokens.
Every case first checks that the two paths agree.
"""

import functools
import json
import os
import subprocess
import sys

import pytest
import torch

from bembed.encode import Embedder
from conftest import rate, run_or_skip_when_out_of_memory, sync
from encode_memory import base_model, make_texts, make_tokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
CPU_LENGTHS = [8192, 4096, 2048, 1024, 512, 256, 128, 64, 33]
CPU_LAYERS = 2
# "mixed" is TARGETS' shape (mixed lengths to 8192): the one where padding costs the reference path; there it
# runs one text per batch, as on CPU (32 texts padded to 8192 would materialise a 26 GB bias).
CUDA_CASES = {"L512": [512] * 64, "L8192": [8192] * 8, "mixed": CPU_LENGTHS * 4}


@functools.lru_cache(maxsize=1)
def _tokenizer():
    return make_tokenizer()


@functools.lru_cache(maxsize=None)
def _texts(lengths: tuple[int, ...]):
    return make_texts(_tokenizer(), list(lengths))


@functools.lru_cache(maxsize=None)
def _embedder(device: str, layers: int) -> Embedder:
    return Embedder(base_model(layers, device), _tokenizer())


def _encode(embedder: Embedder, impl: str, texts, **kwargs):
    """encode with the model's attention_impl switched to `impl` for this call (one model, same weights)."""
    embedder.model.config.attention_impl = impl
    try:
        return embedder.encode(texts, show_progress_bar=False, **kwargs)
    finally:
        embedder.model.config.attention_impl = "bembed"


def _check_paths_agree(embedder, texts, min_cos):
    got = _encode(embedder, "bembed", texts, batch_size=1, convert_to_tensor=True)
    want = _encode(embedder, "reference", texts, batch_size=1, convert_to_tensor=True)
    cos = torch.nn.functional.cosine_similarity(got, want, dim=-1)
    assert cos.min() > min_cos, f"bembed and reference paths disagree: cosine {cos.tolist()}"


# The reference's memory is measured at half the lengths: at 8192 tokens it needs ~11 GB, which a fresh process
# beside the benchmark's own would double on a shared 24 GB machine. Its ×4 growth per doubling shows the L².
MEMORY_SEQLENS = {"bembed": (4096, 8192), "reference": (2048, 4096)}


@functools.lru_cache(maxsize=None)
def _peak_extra(impl: str, layers: int):
    command = [sys.executable, os.path.join(HERE, "encode_memory.py"), "--impl", impl, "--seqlens",
               *map(str, MEMORY_SEQLENS[impl]), "--layers", str(layers), "--threads", str(torch.get_num_threads())]
    result = subprocess.run(command, capture_output=True, text=True, check=True, cwd=HERE)
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("impl, batch_size", [("bembed", 1), ("reference", 1), ("bembed", 32)],
                         ids=["bembed", "reference", "bembed-bs32"])
def test_encode_cpu(benchmark, record, impl, batch_size):
    texts = _texts(tuple(CPU_LENGTHS))
    embedder = _embedder("cpu", CPU_LAYERS)
    _check_paths_agree(embedder, texts[-4:], 0.9999)

    def step():
        _encode(embedder, impl, texts, batch_size=batch_size)

    _encode(embedder, impl, texts[-3:])  # warm-up on the short texts
    benchmark.pedantic(step, rounds=2 if impl == "reference" else 3, iterations=1)  # the reference: ~4x longer
    metrics = {}
    if batch_size == 1:
        memory = _peak_extra(impl, CPU_LAYERS)
        short, long = (str(n) for n in MEMORY_SEQLENS[impl])
        metrics = {"peak_extra_mb": memory["extra_mb"][long],
                   "note": f"one {long}-token doc; memory x{memory['growth'][0]} from {short} to {long} tokens"}
        if impl == "bembed":  # linear: doubling L must not quadruple it, nor reach the heads' L×L fp32 matrices
            assert memory["growth"][0] < 3.0, memory
            assert memory["extra_mb"][long] < 12 * memory["lxl_fp32_mb"][long], memory
    record(benchmark, op="encode", case=f"cpu fp32 base-width {CPU_LAYERS} layers, 9 texts 33..8192 tokens "
           f"({sum(CPU_LENGTHS)} tokens)", impl=impl if batch_size == 1 else f"{impl} batch_size={batch_size}",
           baseline=impl == "reference", tokens_per_s=rate(benchmark, sum(CPU_LENGTHS)), **metrics)


@pytest.mark.cuda
@pytest.mark.parametrize("case", list(CUDA_CASES))
@pytest.mark.parametrize("impl", ["bembed", "reference"])
def test_encode_cuda(benchmark, record, case, impl):
    lengths = CUDA_CASES[case]
    texts = _texts(tuple(lengths))
    embedder = _embedder("cuda", 12)
    _check_paths_agree(embedder, texts[:2], 0.99)

    batch_size = 1 if case == "mixed" and impl == "reference" else 32

    def step():
        _encode(embedder, impl, texts, batch_size=batch_size)
        sync("cuda")

    def warm_up_and_time():
        step()
        torch.cuda.reset_peak_memory_stats()
        benchmark.pedantic(step, rounds=10, iterations=1)

    run_or_skip_when_out_of_memory(warm_up_and_time, f"{impl} ran out of memory on {case}")
    peak = torch.cuda.max_memory_allocated() / 2**30
    shape = (f"{len(lengths)} texts {min(lengths)}..{max(lengths)} tokens ({sum(lengths)} tokens)" if case == "mixed"
             else f"{len(lengths)}x{lengths[0]} tokens")
    record(benchmark, op="encode", case=f"cuda bf16 base 12 layers {shape}", impl=f"{impl} batch_size={batch_size}",
           baseline=impl == "reference", tokens_per_s=rate(benchmark, sum(lengths)),
           note=f"peak allocated {peak:.1f} GiB (model included)")
