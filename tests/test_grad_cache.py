"""GradCache (training/grad_cache.py): the loss over a whole batch encoded chunk by chunk gets the gradient of
encoding it at once: the same dropout replayed, autocast replayed, the caller's RNG untouched. Then the stages:
a step with `grad_cache_chunk` set equals the step without it. (Under 2 gloo ranks and DDP:
test_training_distributed.py.)"""

from __future__ import annotations

import pytest
import torch

import bembed_ext
from bembed.model import JinaBertConfig, JinaBertModel
from bembed.training.config import MultitaskRun, PairsRun, load_config
from bembed.training.grad_cache import _CachedEncode, cached_encode

import training_utils as U
from stage_fixtures import files, fit, model_overrides  # noqa: F401

single_thread = pytest.fixture(autouse=True)(U.one_thread)

LENGTHS = [9, 1, 4, 9, 2, 6, 3]  # 7 rows: chunks of 3 leave a last chunk of 1


def _model(dropout: float, dtype=torch.float64) -> JinaBertModel:
    torch.manual_seed(0)
    config = JinaBertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=32, hidden_dropout_prob=dropout)
    model = JinaBertModel(config).to(dtype).train()
    model.pooler.requires_grad_(False)  # as the stages do: mean pooling leaves it without gradient
    return model


def _batch(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 50, (len(LENGTHS), max(LENGTHS)), generator=g)
    mask = torch.zeros_like(ids)
    for row, n in enumerate(LENGTHS):
        mask[row, :n] = 1
    return ids * mask, mask


def _step(model, encode_batch) -> tuple[torch.Tensor, dict, torch.Tensor]:
    """(loss, parameter gradients, RNG state after the step) of a bidirectional InfoNCE step on two batches."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(5)
    q = encode_batch(*_batch(1))
    d = encode_batch(*_batch(2))
    loss = bembed_ext.contrastive_loss(q, d, temperature=0.05)
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads, torch.get_rng_state()


def _chunked(model, chunk: int, encode=None):
    """The chunks of `cached_encode`, encoded with gradient kept (the memory GradCache saves)."""
    encode = encode or model.embed
    return lambda ids, mask: torch.cat([encode(ids[s:s + chunk], mask[s:s + chunk])
                                        for s in range(0, ids.shape[0], chunk)])


def _cached(model, chunk: int):
    return lambda ids, mask: cached_encode(model.embed, model, ids, mask, chunk)


def _assert_same(a, b, atol: float = 1e-12, rtol: float = 0.0):
    loss_a, grads_a, rng_a = a
    loss_b, grads_b, rng_b = b
    torch.testing.assert_close(loss_b, loss_a, rtol=0, atol=atol)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) >= 5
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], rtol=rtol, atol=atol, msg=name)
    assert torch.equal(rng_a, rng_b)  # the replay did not move the RNG later steps draw dropout from


@pytest.mark.parametrize("chunk", [1, 3, 6])
def test_gradient_equals_the_whole_batch_with_gradient_kept(chunk):
    model = _model(dropout=0.0)
    _assert_same(_step(model, model.embed), _step(model, _cached(model, chunk)))


@pytest.mark.parametrize("chunk", [2, 3])
def test_dropout_is_replayed_chunk_by_chunk(chunk):
    model = _model(dropout=0.2)
    plain = _step(model, _chunked(model, chunk))
    _assert_same(plain, _step(model, _cached(model, chunk)))
    # the dropout matters here: without the replay the recomputed chunks would differ
    other = _step(model, _chunked(model, chunk + 1))
    assert not torch.allclose(other[0], plain[0])


def test_autocast_is_replayed_in_backward():
    """The recomputation in backward runs in the forward's autocast (bf16 on CPU here): without it the
    gradient would come from float32 activations while the loss saw bf16 ones."""
    model = _model(dropout=0.0, dtype=torch.float32)

    def in_bf16(encode):
        def run(ids, mask):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return encode(ids, mask)
        return run

    # One autocast region per chunk: within one region the chunks would share one bf16 copy of each weight and
    # sum their weight gradients in bf16 before the float32 parameter sees them; GradCache sums in float32.
    plain = _step(model, _chunked(model, 3, encode=in_bf16(model.embed)))
    _assert_same(plain, _step(model, in_bf16(_cached(model, 3))), atol=1e-6, rtol=1e-6)
    in_float32 = _step(model, _chunked(model, 3))
    assert max((in_float32[1][k] - plain[1][k]).abs().max() for k in plain[1]) > 1e-4  # bf16 is visible


def test_with_gradient_checkpointing_inside():
    model = _model(dropout=0.1)
    plain = _step(model, _chunked(model, 3))
    model.gradient_checkpointing_enable()
    _assert_same(plain, _step(model, _cached(model, 3)))


class _SharedGradients(torch.nn.Module):
    """An encoder whose parameters' gradients come back from autograd shared or as views: `a + b` hands one
    tensor to both, `c.sum()` an expanded one, `+ e` the incoming gradient. Summing chunks in place into any
    of them would be wrong."""

    def __init__(self):
        super().__init__()
        self.words = torch.nn.Embedding(50, 4, dtype=torch.float64)
        self.a = torch.nn.Parameter(torch.randn(4, 4, dtype=torch.float64))
        self.b = torch.nn.Parameter(torch.randn(4, 4, dtype=torch.float64))
        self.c = torch.nn.Parameter(torch.randn(3, dtype=torch.float64))
        self.d = torch.nn.Parameter(torch.randn(4, dtype=torch.float64))
        self.e = torch.nn.Parameter(torch.randn(1, 4, dtype=torch.float64))

    def forward(self, ids, mask):
        pooled = (self.words(ids) * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        mixed = torch.nn.functional.linear(pooled, self.a + self.b) * self.c.sum() + self.d
        # for a chunk of 1 row the gradient of e is the incoming gradient itself
        return torch.nn.functional.normalize(mixed, dim=-1) + self.e


@pytest.mark.parametrize("chunk", [1, 2])
def test_gradients_autograd_shares_between_parameters_are_summed_apart(chunk):
    torch.manual_seed(0)
    model = _SharedGradients()
    _assert_same(_step(model, model), _step(model, lambda ids, mask: cached_encode(model, model, ids, mask, chunk)))


def test_the_incoming_gradient_is_never_written_into():
    """q + d: autograd hands both encodings one gradient tensor. With chunks of 1 row, `e`'s gradient is that
    tensor's first row; summing the other chunks into it in place would change what d's backward then reads."""
    torch.manual_seed(0)
    model = _SharedGradients()
    results = []
    for encode in (model, lambda ids, mask: cached_encode(model, model, ids, mask, 1)):
        model.zero_grad(set_to_none=True)
        (encode(*_batch(1)) + encode(*_batch(2))).pow(2).sum().backward()
        results.append({name: p.grad.clone() for name, p in model.named_parameters()})
    for name in results[0]:
        torch.testing.assert_close(results[1][name], results[0][name], rtol=0, atol=1e-12, msg=name)


def test_whole_batch_in_one_chunk_or_no_gradient_encodes_directly():
    model = _model(dropout=0.0)
    ids, mask = _batch(1)
    assert type(cached_encode(model.embed, model, ids, mask, 3).grad_fn).__name__ == _CachedEncode.__name__ + "Backward"
    assert type(cached_encode(model.embed, model, ids, mask, 7).grad_fn) is not type(
        cached_encode(model.embed, model, ids, mask, 3).grad_fn)
    with torch.no_grad():
        out = cached_encode(model.embed, model, ids, mask, 3)
    assert out.grad_fn is None
    torch.testing.assert_close(out, model.embed(ids, mask).detach(), rtol=0, atol=1e-12)


def test_a_chunks_gradients_are_freed_before_the_next_chunk_is_encoded(monkeypatch):
    """Each chunk's parameter gradients, once summed, must be gone when the next chunk is encoded again: held
    on, they would double GradCache's parameter-sized memory."""
    import weakref

    model = _model(dropout=0.0)
    grad, returned, alive_at_recompute = torch.autograd.grad, [], []

    def recording_grad(*args, **kwargs):
        result = grad(*args, **kwargs)
        returned.append([weakref.ref(g) for g in result if g is not None])
        return result

    def encode(ids, mask):
        if torch.is_grad_enabled() and len(returned) >= 2:  # recomputing chunk 2 or later: chunk 1 summed
            alive_at_recompute.append(sum(ref() is not None for ref in returned[-1]))
        return model.embed(ids, mask)

    monkeypatch.setattr(torch.autograd, "grad", recording_grad)
    cached_encode(encode, model, *_batch(1), 2).sum().backward()
    assert len(returned) == 4 and alive_at_recompute == [0, 0]


def test_a_parameter_without_gradient_is_an_error_under_torch_distributed(monkeypatch):
    """DDP would take the None as a zero gradient (and AdamW decay the parameter on N ranks but not on one);
    without GradCache the same model fails in DDP. In one process the parameter just gets no gradient."""
    import bembed.training.grad_cache as grad_cache

    model = _model(dropout=0.0)
    model.pooler.requires_grad_(True)  # mean pooling never uses it
    cached_encode(model.embed, model, *_batch(1), 3).sum().backward()
    assert model.pooler.dense.weight.grad is None and model.encoder.layer[0].mlp.wo.weight.grad is not None
    monkeypatch.setattr(grad_cache, "_world_size", lambda: 2)
    with pytest.raises(RuntimeError, match=r"pooler\.dense\.weight, pooler\.dense\.bias got no gradient"):
        cached_encode(model.embed, model, *_batch(1), 3).sum().backward()


@pytest.mark.parametrize("chunk", [0, -2, True, 2.0, None])
def test_bad_chunk_is_refused(chunk):
    model = _model(dropout=0.0)
    with pytest.raises(ValueError, match="chunk"):
        cached_encode(model.embed, model, *_batch(1), chunk)


def test_mismatched_inputs_are_refused():
    model = _model(dropout=0.0)
    ids, mask = _batch(1)
    with pytest.raises(ValueError, match="attention_mask"):
        cached_encode(model.embed, model, ids, mask[:, :3], 2)


@pytest.mark.parametrize("run, key", [(PairsRun, "pairs.grad_cache_chunk"), (MultitaskRun, "multitask.grad_cache_chunk")])
def test_config_refuses_a_negative_chunk(run, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        load_config(run, None, [f"{key}=-1"])


@pytest.mark.parametrize("run, key", [(PairsRun, "pairs.grad_cache_chunk"), (MultitaskRun, "multitask.grad_cache_chunk")])
def test_config_refuses_grad_cache_under_fsdp(run, key):
    """Under FSDP the whole parameters exist only inside each layer's gather, where GradCache's backward cannot
    reach them: refused when the config is read, not at the first step."""
    load_config(run, None, [f"{key}=2", "train.parallel=ddp"])
    load_config(run, None, [f"{key}=0", "train.parallel=fsdp"])
    with pytest.raises(ValueError, match=key.replace(".", r"\.") + ".*train.parallel=ddp"):
        load_config(run, None, [f"{key}=2", "train.parallel=fsdp"])


# ---------------------------------------------------------------------------- the stages
def _weights_after(stage_class, run, files, out, overrides):
    cfg = load_config(run, None, [*model_overrides(files), *U.train_overrides(out, 2, batch=8),
                                  *overrides])
    torch.manual_seed(0)
    stage = stage_class(cfg)
    embed, rows = stage.model.embed, []
    stage.model.embed = lambda ids, mask: (rows.append(ids.shape[0]), embed(ids, mask))[1]
    history = fit(stage, cfg)
    return history, {k: v.detach().clone() for k, v in stage.model.state_dict().items()}, rows


@pytest.mark.parametrize("name", ["pairs", "multitask"])
def test_a_stage_trains_the_same_with_grad_cache(files, tmp_path, name):
    """Two steps in chunks of 3 rows (8 queries; 8 + 16 documents with 2 hard negatives each) are the steps of
    the whole micro-batch (dropout off: the chunks draw other dropout masks than one whole batch does)."""
    from bembed.training.multitask import MultitaskStage
    from bembed.training.pairs import PairStage

    if name == "pairs":
        stage_class, run, data = PairStage, PairsRun, [f"data.train=[{{path: {files['pairs']}}}]"]
    else:
        stage_class, run = MultitaskStage, MultitaskRun
        data = [f"data.train=[{{path: {files['triples']}}}, {{path: {files['sts']}}}]", "multitask.num_negatives=2",
                "train.seed=4"]  # a seed that draws both tasks in 2 steps
    plain_history, plain, plain_rows = _weights_after(stage_class, run, files, tmp_path / "plain", data)
    cached_history, cached, cached_rows = _weights_after(stage_class, run, files, tmp_path / "cached",
                                                         [*data, f"{name}.grad_cache_chunk=3"])
    assert max(plain_rows) >= 8 and max(cached_rows) == 3  # the encoder saw chunks only
    assert sum(cached_rows) == 2 * sum(plain_rows)  # each chunk encoded twice: without, then with gradient
    if name == "multitask":
        assert {k for m in plain_history for k in m if k.endswith("_loss")} == {"retrieval_loss", "sts_loss"}
    for a, b in zip(plain_history, cached_history):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)
    for key in plain:
        torch.testing.assert_close(cached[key], plain[key], rtol=1e-4, atol=1e-6, msg=key)


@pytest.mark.cuda
def test_cuda_dropout_and_bf16_autocast_are_replayed():
    """On the GPU: the CUDA RNG (dropout) and bf16 autocast are replayed, through the fused kernels."""
    model = _model(dropout=0.2, dtype=torch.float32).cuda()

    def in_bf16(encode):
        def run(ids, mask):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                return encode(ids.cuda(), mask.cuda())
        return run

    def step(encode_batch):
        _, grads, _ = _step(model, encode_batch)
        return grads, torch.cuda.get_rng_state()

    plain, rng_plain = step(_chunked(model, 3, encode=in_bf16(model.embed)))
    cached, rng_cached = step(in_bf16(_cached(model, 3)))
    other, _ = step(_chunked(model, 4, encode=in_bf16(model.embed)))
    assert torch.equal(rng_plain, rng_cached)

    def distance(a, b):  # relative over all parameters: the kernels' atomics may reorder float sums
        a, b = torch.cat([g.flatten() for g in a.values()]), torch.cat([g.flatten() for g in b.values()])
        return float((a - b).norm() / a.norm())

    assert distance(plain, cached) < 1e-3
    assert distance(plain, other) > 5e-2  # other dropout masks: the replay is what makes them equal
