"""JinaBERT end to end: the unpadded "bembed" path (packed tokens, fused ALiBi attention and GEGLU) vs
the padded "reference" path (materialised bias) on the same weights and the same mixed-length batch.

Two directions: `embed` (inference, mean-pooled embeddings) and `train` (forward + backward of an MLM
loss at 15% of the tokens). tokens_per_s counts real tokens only. CPU cases use base width with 2
layers so the reference path fits a shared machine; GPU cases use the full base model under bf16
autocast. Each case first checks the two paths agree on the embeddings.
"""

import pytest
import torch

from bembed import JinaBertConfig, JinaBertForMaskedLM
from conftest import rate, run_or_skip_when_out_of_memory, sync

CPU_LENGTHS = [512, 384, 256, 128, 77, 64, 37, 20]
CUDA_CASES = {"L512": [512, 480, 400, 333, 256, 200, 128, 64] * 4, "L8192": [8192, 5000, 2048, 1000, 300]}


def _cases():
    cases = [pytest.param("cpu", "mixed<=512", CPU_LENGTHS, 2, id="cpu-base-width-2-layers")]
    for name, lengths in CUDA_CASES.items():
        cases.append(pytest.param("cuda", name, lengths, 12, id=f"cuda-base-{name}", marks=pytest.mark.cuda))
    return cases


def _batch(lengths, vocab, device):
    torch.manual_seed(sum(lengths))  # both paths train on the same tokens and the same masked positions
    L = max(lengths)
    ids = torch.randint(5, vocab, (len(lengths), L), device=device)
    mask = (torch.arange(L, device=device)[None, :] < torch.tensor(lengths, device=device)[:, None]).long()
    labels = torch.where((torch.rand(ids.shape, device=device) < 0.15) & (mask == 1), ids, torch.full_like(ids, -100))
    return ids * mask, mask, labels


_models = {}


def _model(device, layers):
    key = (device, layers)
    if key not in _models:
        config = JinaBertConfig(num_hidden_layers=layers, hidden_dropout_prob=0.0)
        _models[key] = JinaBertForMaskedLM(config).to(device)
    return _models[key]


@pytest.mark.parametrize("device, case, lengths, layers", _cases())
@pytest.mark.parametrize("impl", ["bembed", "reference"])
@pytest.mark.parametrize("direction", ["embed", "train"])
def test_model(benchmark, record, device, case, lengths, layers, impl, direction):
    model = _model(device, layers)
    ids, mask, labels = _batch(lengths, model.config.vocab_size, device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device == "cuda")

    check = slice(0, 3) if device == "cpu" else slice(len(lengths) - 3, len(lengths))  # the short ones on GPU
    with torch.no_grad(), autocast:
        model.eval()
        model.config.attention_impl = "reference"
        want = model.bert.embed(ids[check], mask[check])
        model.config.attention_impl = "bembed"
        got = model.bert.embed(ids[check], mask[check])
    assert torch.nn.functional.cosine_similarity(got, want, dim=-1).min() > (0.9999 if device == "cpu" else 0.99)

    model.config.attention_impl = impl
    if direction == "embed":
        model.eval()

        def step():
            with torch.no_grad(), autocast:
                model.bert.embed(ids, mask)
            sync(device)
    else:
        model.train()

        def step():
            model.zero_grad(set_to_none=True)
            with autocast:
                loss = model.mlm_loss(ids, mask, labels)
            loss.backward()
            sync(device)

    def warm_up_and_time():
        step()
        benchmark.pedantic(step, rounds=3 if device == "cpu" else 10, iterations=1)

    try:
        run_or_skip_when_out_of_memory(warm_up_and_time, f"{impl} ran out of memory on {case}")
    finally:
        model.config.attention_impl = "bembed"
    record(benchmark, op=f"jinabert-{direction}", case=f"{device} {case} {layers} layers", impl=impl,
           baseline=impl == "reference", tokens_per_s=rate(benchmark, sum(lengths)))
