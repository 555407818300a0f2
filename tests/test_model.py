"""JinaBERT: slopes, kernel path vs reference path, training and pooling behaviour. The published layout and
loading/saving are in test_model_loading.py."""

import logging

import pytest
import torch

from bembed import JinaBertConfig, JinaBertForMaskedLM, JinaBertModel
from bembed.model import mean_pool, mean_pool_packed, pack_attention_mask


def tiny_config(**overrides) -> JinaBertConfig:
    fields = dict(vocab_size=97, hidden_size=48, num_hidden_layers=2, num_attention_heads=4, intermediate_size=80,
                  hidden_dropout_prob=0.0)
    return JinaBertConfig(**{**fields, **overrides})


def ragged_batch(lengths, vocab=97, pad=0):
    """Right-padded (B, max(lengths)) ids (no pad id inside real tokens) and mask."""
    L = max(lengths)
    ids = torch.randint(5, vocab, (len(lengths), L))
    mask = torch.zeros(len(lengths), L, dtype=torch.long)
    for row, n in enumerate(lengths):
        mask[row, :n] = 1
    return ids.masked_fill(mask == 0, pad), mask


# ------------------------------------------------------------------------------------------------
# ALiBi slopes
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("heads", [8, 12, 16])
def test_alibi_slopes(heads):
    model = JinaBertModel(tiny_config(hidden_size=heads * 4, num_attention_heads=heads))
    slopes = model.alibi_slopes()
    assert slopes.dtype == torch.float32 and slopes.shape == (heads,)
    if heads == 12:
        exponents = [-1, -2, -3, -4, -5, -6, -7, -8, -0.5, -1.5, -2.5, -3.5]
    else:  # a power of two n: 2^(-8(k+1)/n)
        exponents = [-8 * (k + 1) / heads for k in range(heads)]
    expected = torch.tensor([2.0**e for e in exponents], dtype=torch.float32)
    assert torch.equal(slopes, expected)


# ------------------------------------------------------------------------------------------------
# Kernel path vs reference path
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("qk_layer_norm", [False, True], ids=["de", "es"])
def test_kernel_path_matches_reference_on_ragged_batch(qk_layer_norm):
    model = JinaBertModel(tiny_config(qk_layer_norm=qk_layer_norm, num_hidden_layers=3)).eval()
    ids, mask = ragged_batch([37, 1, 20, 64, 5])
    token_types = torch.randint(0, 2, ids.shape)
    with torch.no_grad():
        model.config.attention_impl = "bembed"
        fast = model(ids, mask, token_types, output_hidden_states=True)
        fast_embedding = model.embed(ids, mask, token_types)
        model.config.attention_impl = "reference"
        ref = model(ids, mask, token_types, output_hidden_states=True)
        ref_embedding = model.embed(ids, mask, token_types)
    real = mask.bool()
    for got, want in zip(fast.hidden_states, ref.hidden_states):
        got, want = got[real], want[real]
        assert (got - want).norm() / want.norm() < 1e-4
    assert (fast.last_hidden_state[~real] == 0).all()
    cosine_distance = 1 - torch.nn.functional.cosine_similarity(fast_embedding, ref_embedding, dim=-1)
    assert cosine_distance.max() < 1e-5


@pytest.mark.parametrize("impl", ["bembed", "reference"])
def test_padding_does_not_change_embeddings(impl):
    model = JinaBertModel(tiny_config(attention_impl=impl)).eval()
    ids, mask = ragged_batch([11, 6, 17])
    padded_ids = torch.cat([ids, torch.zeros(3, 9, dtype=ids.dtype)], dim=1)
    padded_mask = torch.cat([mask, torch.zeros(3, 9, dtype=mask.dtype)], dim=1)
    with torch.no_grad():
        plain = model.embed(ids, mask)
        padded = model.embed(padded_ids, padded_mask)
        alone = model.embed(ids[1:2, :6])  # the same sentence in a batch of its own, no padding at all
    torch.testing.assert_close(padded, plain, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(alone, plain[1:2], rtol=1e-5, atol=1e-6)


def test_long_input_runs_through_kernel_path_on_cpu():
    model = JinaBertModel(tiny_config(hidden_size=32, num_attention_heads=2, intermediate_size=32,
                                      num_hidden_layers=1)).eval()
    ids = torch.randint(5, 97, (1, 3000))
    with torch.no_grad():
        out = model(ids).last_hidden_state
        embedding = model.embed(ids)
        model.config.attention_impl = "reference"  # tiny width: its 2 × 3000² scores fit in ~100 MB
        want = model(ids).last_hidden_state
    assert out.shape == (1, 3000, 32) and torch.isfinite(out).all()
    assert torch.allclose(embedding.norm(dim=-1), torch.ones(1))
    assert (out - want).norm() / want.norm() < 1e-4


def test_left_padding_equals_right_padding():
    model = JinaBertModel(tiny_config()).eval()
    ids, right = ragged_batch([12, 5])
    left_ids = torch.stack([torch.roll(ids[1], 7), ids[0]])
    left_mask = torch.stack([torch.roll(right[1], 7), right[0]])
    with torch.no_grad():
        torch.testing.assert_close(model.embed(left_ids, left_mask), model.embed(ids, right).flip(0))


def test_mask_with_holes_is_refused_on_kernel_path():
    model = JinaBertModel(tiny_config()).eval()
    ids, mask = ragged_batch([8, 8])
    mask[0, 3] = 0
    with pytest.raises(ValueError, match="contiguous"):
        model(ids, mask)


def test_attention_dropout_is_refused_on_kernel_path_in_training():
    model = JinaBertModel(tiny_config(attention_probs_dropout_prob=0.1)).train()
    ids, mask = ragged_batch([6, 3])
    with pytest.raises(ValueError, match="attention_probs_dropout_prob"):
        model(ids, mask)
    model.eval()(ids, mask)  # no dropout at inference: the kernel path is exact
    model.config.attention_impl = "reference"
    torch.manual_seed(0)
    first = model.train()(ids, mask).last_hidden_state
    second = model(ids, mask).last_hidden_state
    assert not torch.equal(first, second)  # the reference path does drop attention weights
    torch.testing.assert_close(model.eval()(ids, mask).last_hidden_state, model(ids, mask).last_hidden_state)


def test_gradient_checkpointing_gives_the_same_gradients():
    model = JinaBertModel(tiny_config()).train()
    ids, mask = ragged_batch([10, 4, 7])

    def grads():
        model.zero_grad()
        model.embed(ids, mask).square().sum().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain = grads()
    model.gradient_checkpointing_enable()
    assert model.encoder.gradient_checkpointing
    import bembed.model.modeling as modeling

    calls = []
    real_checkpoint = modeling.checkpoint
    modeling.checkpoint = lambda *args, **kwargs: calls.append(1) or real_checkpoint(*args, **kwargs)
    try:
        checkpointed = grads()
    finally:
        modeling.checkpoint = real_checkpoint
    assert len(calls) == model.config.num_hidden_layers  # each layer really is recomputed in backward
    assert plain.keys() == checkpointed.keys() and len(plain) > 10
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], msg=name)


@pytest.mark.parametrize("backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_torch_compile_of_the_model_matches_eager(backend):
    """`torch.compile(model)` as a user writes it: the unpadding reads the batch's lengths on the host (a graph
    break), the layers compile through the ops' fake and autograd registrations. The same states, gradients and
    embeddings as eager (in float64, where the compiled graph's other order of sums stays below the tolerance)."""
    torch._dynamo.reset()
    model = JinaBertModel(tiny_config()).double().train()
    ids, mask = ragged_batch([10, 4, 7])

    def states_and_grads(run):
        model.zero_grad()
        states = run(ids, attention_mask=mask).last_hidden_state
        (states * mask[..., None]).square().sum().backward()
        return states.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    eager_states, eager_grads = states_and_grads(model)
    compiled_states, compiled_grads = states_and_grads(torch.compile(model, backend=backend))
    torch.testing.assert_close(compiled_states, eager_states)
    assert len(eager_grads) > 10 and eager_grads.keys() <= compiled_grads.keys()
    for name, grad in compiled_grads.items():  # a compiled graph gives the unused pooler zeros, not None
        torch.testing.assert_close(grad, eager_grads.get(name, torch.zeros_like(grad)), msg=lambda m: f"{name}: {m}")
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(model.embed, backend=backend)(ids, mask), model.embed(ids, mask))
        packing = pack_attention_mask(mask)  # the packed encoder with a given max_seqlen: one graph
        packed = (packing.pack(ids), packing.cu_seqlens, packing.max_seqlen)
        compiled_packed = torch.compile(model.forward_packed, fullgraph=True, backend=backend)
        torch.testing.assert_close(compiled_packed(*packed)[0], model.forward_packed(*packed)[0])


def test_mlm_loss_matches_forward_loss():
    model = JinaBertForMaskedLM(tiny_config()).eval()
    ids, mask = ragged_batch([9, 5])
    labels = torch.full_like(ids, -100)
    labels[0, 2], labels[0, 7], labels[1, 1] = 11, 12, 13
    with torch.no_grad():
        out = model(ids, mask, labels=labels)
        lean = model.mlm_loss(ids, mask, labels)
    assert out.logits.shape == (2, 9, 97)
    torch.testing.assert_close(lean, out.loss)
    # a batch with nothing masked: 0 with zero gradients (a mean over nothing was NaN)
    none = model.train().mlm_loss(ids, mask, torch.full_like(ids, -100))
    none.backward()
    assert none.item() == 0.0
    assert all(p.grad is None or not p.grad.any() for p in model.parameters())


def test_tuple_output_for_callers_that_ask_return_dict_false():
    model = JinaBertModel(tiny_config()).eval()
    ids, mask = ragged_batch([5, 3])
    with torch.no_grad():
        as_tuple = model(ids, mask, return_dict=False)  # what sentence-transformers < 4 calls
        as_output = model(ids, mask)
    assert torch.equal(as_tuple[0], as_output.last_hidden_state)
    assert torch.equal(as_tuple[1], as_output.pooler_output)


@pytest.mark.parametrize("qk_layer_norm", [False, True], ids=["de", "es"])
def test_bf16_autocast_trains_and_embeds(qk_layer_norm):
    # CPU autocast exercises the same dtype plumbing as GPU autocast: bf16 matmuls, float32 LayerNorm
    # outputs meeting bf16 projections, float32 pooling and loss.
    model = JinaBertForMaskedLM(tiny_config(qk_layer_norm=qk_layer_norm)).train()
    ids, mask = ragged_batch([23, 8])
    labels = torch.full_like(ids, -100)
    labels[:, 4] = 7
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model.mlm_loss(ids, mask, labels)
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert torch.isfinite(model.bert.encoder.layer[0].attention.self.query.weight.grad).all()
    encoder = model.bert.eval()
    with torch.no_grad():
        want = encoder.embed(ids, mask)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = encoder.embed(ids, mask)
    assert got.dtype == torch.float32
    assert torch.nn.functional.cosine_similarity(got, want, dim=-1).min() > 0.99


@pytest.mark.parametrize("impl", ["bembed", "reference"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_row_without_tokens_embeds_to_zeros_in_half_precision(impl, dtype):
    """The reference path added the float32-minimum key mask in fp16/bf16, where it is −inf: a row with no real
    key gave softmax 0/0 = NaN, and mean pooling's product with the mask kept the NaN (NaN·0 = NaN)."""
    model = JinaBertModel(tiny_config(attention_impl=impl)).eval().to(dtype)
    ids, mask = ragged_batch([5, 3])
    mask[1] = 0
    with torch.no_grad():
        embedding = model.embed(ids, mask)
    assert torch.isfinite(embedding).all() and (embedding[1] == 0).all()


def test_mlm_resize_token_embeddings_keeps_the_head_tied_and_its_bias(tmp_path):
    """Adding special tokens to a pretrained MLM checkpoint: transformers' resize raised (no lm_head), and
    would have left the decoder untied and the output bias at the old size."""
    model = JinaBertForMaskedLM(tiny_config()).eval()
    with torch.no_grad():
        model.cls.predictions.bias.normal_()
    ids, mask = ragged_batch([6, 4])
    with torch.no_grad():
        before = model(ids, mask).logits
        model.resize_token_embeddings(105, mean_resizing=False)
        after = model(ids, mask).logits
    assert after.shape[-1] == 105 and model.config.vocab_size == 105
    assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight
    torch.testing.assert_close(after[..., :97], before)
    assert (model.cls.predictions.bias[97:] == 0).all()
    model.save_pretrained(tmp_path)
    torch.testing.assert_close(JinaBertForMaskedLM.from_pretrained(tmp_path).eval()(ids, mask).logits, after)


def test_pooling_ignores_non_finite_states_at_padding():
    hidden = torch.randn(2, 4, 3)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    hidden[0, 2:] = float("nan")
    torch.testing.assert_close(mean_pool(hidden, mask), torch.stack([hidden[0, :2].mean(0), hidden[1].mean(0)]))


def test_packed_pooling_equals_padded_pooling():
    hidden = torch.randn(3, 8, 5)
    _, mask = ragged_batch([8, 2, 5])
    packing = pack_attention_mask(mask)
    torch.testing.assert_close(mean_pool_packed(packing.pack(hidden), packing.cu_seqlens), mean_pool(hidden, mask))


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_on_gpu_matches_float32(dtype):
    model = JinaBertModel(tiny_config(hidden_size=128, num_attention_heads=2)).cuda().eval()
    ids, mask = ragged_batch([70, 33, 128])
    ids, mask = ids.cuda(), mask.cuda()
    with torch.no_grad():
        model.config.attention_impl = "reference"
        want = model.embed(ids, mask)
        model.config.attention_impl = "bembed"
        with torch.autocast("cuda", dtype=dtype):
            got = model.embed(ids, mask)
    assert got.dtype == torch.float32
    cosine = torch.nn.functional.cosine_similarity(got, want, dim=-1)
    assert cosine.min() > 0.999


# ------------------------------------------------------------------------------------------------
# What transformers / sentence-transformers users do (review, 2026-11-23)
# ------------------------------------------------------------------------------------------------

def test_training_after_an_encode_under_inference_mode():
    """The slopes were first cached under inference_mode (encode does that) as an inference tensor, which the
    kernels then could not save for backward: every later training step raised."""
    model = JinaBertModel(tiny_config())
    ids, mask = ragged_batch([5, 3])
    with torch.inference_mode():
        model.eval().embed(ids, mask)
    model.train()
    model.embed(ids, mask).sum().backward()
    assert model.embeddings.word_embeddings.weight.grad is not None


def test_output_hidden_states_and_return_dict_default_to_the_config(tmp_path):
    """forward ignored config.output_hidden_states and config.return_dict (transformers models take them when
    the argument is None): from_pretrained(..., output_hidden_states=True) had no effect, and
    sentence-transformers' AdaptiveLayerLoss, which sets the config field, found no hidden states."""
    JinaBertModel(tiny_config()).save_pretrained(tmp_path)
    ids, mask = ragged_batch([4, 6])
    model = JinaBertModel.from_pretrained(tmp_path, output_hidden_states=True)
    assert len(model(ids, mask).hidden_states) == 3  # embeddings + 2 layers
    assert model(ids, mask, output_hidden_states=False).hidden_states is None
    model.config.return_dict = False
    assert isinstance(model(ids, mask), tuple)
    mlm = JinaBertForMaskedLM(tiny_config(output_hidden_states=True, return_dict=False))
    loss, logits, hidden = mlm(ids, mask, labels=ids)
    assert logits.shape == (2, 6, 97) and len(hidden) == 3


def test_float16_on_cpu_runs_the_attention_kernel(caplog, monkeypatch):
    """fp16 on CPU was sent to the O(L²)-memory reference with a warning, though the CPU kernel takes fp16."""
    import bembed.model.modeling as modeling

    monkeypatch.setattr(modeling, "_warned_reference_fallback", False)  # it warns once per process
    assert modeling._attention_op_impl(torch.empty(1, dtype=torch.float16)) is None
    model = JinaBertModel(tiny_config()).half()
    ids, mask = ragged_batch([7, 4])
    with caplog.at_level(logging.WARNING, logger="bembed.model.modeling"):
        out = model.embed(ids, mask)
    assert "no fused attention kernel" not in caplog.text
    reference = JinaBertModel(tiny_config(attention_impl="reference"))
    reference.load_state_dict(model.float().state_dict())
    torch.testing.assert_close(out.float(), reference.embed(ids, mask), atol=3e-3, rtol=0)


def test_a_bad_attention_impl_or_mask_is_refused_on_every_path(tmp_path):
    """Config keyword overrides skipped the config's check (an unknown attention_impl ran the reference path);
    a 4-D mask failed inside the reference path's einsum."""
    from transformers import AutoConfig

    JinaBertModel(tiny_config()).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="attention_impl must be one of"):
        JinaBertConfig.from_pretrained(tmp_path, attention_impl="bogus")
    with pytest.raises(ValueError, match="attention_impl must be one of"):
        JinaBertModel(AutoConfig.from_pretrained(tmp_path, attention_impl="bogus"))
    model = JinaBertModel(tiny_config())
    ids, mask = ragged_batch([3, 5])
    model.config.attention_impl = "nope"
    with pytest.raises(ValueError, match="config.attention_impl must be one of"):
        model(ids, mask)
    for impl in ("bembed", "reference"):
        model.config.attention_impl = impl
        with pytest.raises(ValueError, match=r"attention_mask must be \(batch, seqlen\) like input_ids"):
            model(ids, mask[:, None, None, :])
        # embed checked nothing: a narrower mask failed inside the packing, a 1-D input blamed its mask
        with pytest.raises(ValueError, match=r"attention_mask must be \(batch, seqlen\) like input_ids"):
            model.embed(ids, mask[:, :-1])
        with pytest.raises(ValueError, match=r"input_ids must be a \(batch, seqlen\) tensor"):
            model.embed(ids[0])


def test_packed_mean_pooling_sums_low_precision_states_in_float32():
    """(Mutation review.) bf16 token states summed in bf16 lose their low bits over a long sequence; the pooled
    rows are float32 means of the states as given."""
    torch.manual_seed(0)
    states = (torch.randn(4000, 8) + 3).bfloat16()
    cu = torch.tensor([0, 1, 4000], dtype=torch.int32)
    pooled = mean_pool_packed(states, cu)
    assert pooled.dtype == torch.float32
    want = torch.stack([states[:1].double().mean(0), states[1:].double().mean(0)]).float()
    torch.testing.assert_close(pooled, want, rtol=1e-6, atol=1e-6)
