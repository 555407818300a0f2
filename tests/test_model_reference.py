"""The model against a specification written apart from it: JinaBERT as released, computed in float64 from the
state dict alone (modeling.py's two attention paths share everything but the attention, so comparing them with
each other cannot catch a misplaced LayerNorm or residual)."""

import pytest
import torch
import torch.nn.functional as F

from bembed import JinaBertForMaskedLM, JinaBertModel

from test_model import ragged_batch, tiny_config


def _released_forward(state: dict, config, input_ids, attention_mask, token_type_ids):
    """JinaBERT as released, written from its state dict alone in float64 (a specification independent of
    modeling.py, whose two attention paths share everything but the attention itself): word + token-type
    embeddings → LayerNorm; per layer q/k/v (LayerNorm on q and k over the full width when present), softmax(
    q·kᵀ/√d − slope·|i−j|, padded keys masked)·v → dense → LayerNorm(· + x); gated_layers → gelu_erf(first half)
    · second half → wo → LayerNorm(· + x). Returns the last hidden states, the pooler output and the masked mean."""
    import math

    from bembed_ext import alibi_slopes

    w = {k.removeprefix("bert."): v.double() for k, v in state.items()}
    H, eps = config.num_attention_heads, config.layer_norm_eps

    def ln(x, name):
        return F.layer_norm(x, x.shape[-1:], w[f"{name}.weight"], w[f"{name}.bias"], eps)

    def linear(x, name):
        return x @ w[f"{name}.weight"].T + (w[f"{name}.bias"] if f"{name}.bias" in w else 0)

    x = ln(w["embeddings.word_embeddings.weight"][input_ids] + w["embeddings.token_type_embeddings.weight"][token_type_ids],
           "embeddings.LayerNorm")
    B, L, D = x.shape
    positions = torch.arange(L, dtype=torch.float64)
    bias = -alibi_slopes(H).double()[:, None, None] * (positions[None, :, None] - positions[None, None, :]).abs()
    bias = bias[None] + torch.where(attention_mask[:, None, None, :].bool(), 0.0, -math.inf)
    for i in range(config.num_hidden_layers):
        p = f"encoder.layer.{i}"
        q, k, v = (linear(x, f"{p}.attention.self.{n}") for n in ("query", "key", "value"))
        if f"{p}.attention.self.layer_norm_q.weight" in w:
            q, k = ln(q, f"{p}.attention.self.layer_norm_q"), ln(k, f"{p}.attention.self.layer_norm_k")
        q, k, v = (t.view(B, L, H, D // H).transpose(1, 2) for t in (q, k, v))
        scores = q @ k.transpose(-1, -2) / math.sqrt(D // H) + bias
        attended = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, L, D)
        x = ln(linear(attended, f"{p}.attention.output.dense") + x, f"{p}.attention.output.LayerNorm")
        gate, up = linear(x, f"{p}.mlp.gated_layers").chunk(2, dim=-1)
        x = ln(linear(F.gelu(gate) * up, f"{p}.mlp.wo") + x, f"{p}.mlp.layernorm")
    pooler = torch.tanh(linear(x[:, 0], "pooler.dense")) if "pooler.dense.weight" in w else None
    m = attention_mask[..., None].double()
    return x, pooler, (x * m).sum(1) / m.sum(1)


@pytest.mark.parametrize("qk_layer_norm", [False, True])
def test_the_model_matches_an_independent_float64_jinabert(qk_layer_norm):
    """Every path of the model (padded, packed, embed, the MLM head) against _released_forward on random weights
    far from their initial values (LayerNorm gains and biases included, so that a misplaced residual or a
    dropped LayerNorm shows)."""
    torch.manual_seed(0)
    config = tiny_config(qk_layer_norm=qk_layer_norm, num_attention_heads=6, type_vocab_size=2)
    mlm = JinaBertForMaskedLM(config).double()
    with torch.no_grad():
        for parameter in mlm.parameters():
            parameter.copy_(torch.randn_like(parameter) * (0.3 if parameter.dim() > 1 else 0.5)
                            + (1.0 if parameter.dim() == 1 and parameter.shape[0] == config.hidden_size else 0.0))
    model = JinaBertModel(config).double()  # the encoder of the MLM model, with a [CLS] pooler
    missing, unexpected = model.load_state_dict(mlm.bert.state_dict(), strict=False)
    assert set(missing) == {"pooler.dense.weight", "pooler.dense.bias"} and not unexpected
    ids, mask = ragged_batch([9, 1, 17], pad=config.pad_token_id)
    types = torch.randint(0, 2, ids.shape)
    want, want_pooler, want_mean = _released_forward(model.state_dict(), config, ids, mask, types)
    assert want_pooler is not None
    for impl in ("bembed", "reference"):
        model.config.attention_impl = impl
        out = model(ids, mask, types)
        real = mask.bool()
        # float32 slopes and constants inside leave ~1e-7; a misplaced LayerNorm or residual moves values by O(1)
        torch.testing.assert_close(out.last_hidden_state[real], want[real], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out.pooler_output, want_pooler, rtol=1e-5, atol=1e-5)
        pooled = model.embed(ids, mask, types, normalize_embeddings=False)  # pooled in float32, by design
        torch.testing.assert_close(pooled.double(), want_mean, rtol=1e-6, atol=1e-6)
    # the MLM head: dense → exact GELU → LayerNorm → tied decoder + bias
    w = {k: v.double() for k, v in mlm.state_dict().items()}
    h = F.gelu(want @ w["cls.predictions.transform.dense.weight"].T + w["cls.predictions.transform.dense.bias"])
    h = F.layer_norm(h, h.shape[-1:], w["cls.predictions.transform.LayerNorm.weight"],
                     w["cls.predictions.transform.LayerNorm.bias"], config.layer_norm_eps)
    logits = h @ w["bert.embeddings.word_embeddings.weight"].T + w["cls.predictions.bias"]
    torch.testing.assert_close(mlm(ids, mask, types).logits[mask.bool()], logits[mask.bool()], rtol=1e-5, atol=1e-5)
