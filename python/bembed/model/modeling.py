"""JinaBERT, readable top to bottom: embeddings -> N post-LN layers (ALiBi attention, GEGLU MLP) -> pooler.

Module and parameter names are the published ones (`embeddings.word_embeddings`,
`encoder.layer.N.attention.self.query`, `encoder.layer.N.mlp.gated_layers`, ...), so released
jina-embeddings-v2 checkpoints load by name. Two encoder paths share every weight:

- "bembed": the real tokens are packed into one (T, hidden) stream (see packing.py); attention is
  `bembed_ext.alibi_attention_varlen`, the MLP uses `bembed_ext.geglu`. Padding costs nothing.
- "reference": padded (B, L, hidden), scores materialised with an explicit (B, H, L, L) bias — the
  executable specification that mirrors the published remote code, and the only path with attention
  dropout.
"""

from __future__ import annotations

import logging
import math

import bembed_ext
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPooling, MaskedLMOutput

from . import loading
from .config import ATTENTION_IMPLS, JinaBertConfig
from .packing import pack_attention_mask
from .pooling import mean_pool, mean_pool_packed, normalize

logger = logging.getLogger(__name__)

# (device type, dtype) pairs the fused attention kernels do not take: those run the op's reference.
# CUDA kernels are fp16/bf16 only (use autocast or .half()); the CPU kernel takes fp32, fp64, bf16 and fp16.
_NO_ATTENTION_KERNEL = {("cuda", torch.float32)}
_warned_reference_fallback = False


def _attention_op_impl(q: torch.Tensor) -> str | None:
    global _warned_reference_fallback
    if (q.device.type, q.dtype) not in _NO_ATTENTION_KERNEL:
        return None
    if not _warned_reference_fallback:
        logger.warning("bembed: no fused attention kernel for %s %s; running the (slow, O(L^2) memory) reference "
                       "attention. On GPU use torch.autocast or a half-precision model.", q.device.type, q.dtype)
        _warned_reference_fallback = True
    return "reference"


class JinaBertEmbeddings(nn.Module):
    """word + token_type embeddings, LayerNorm, dropout. No position embeddings: ALiBi carries order."""

    def __init__(self, config: JinaBertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        x = self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)
        return self.dropout(self.LayerNorm(x))


class JinaBertSelfAttention(nn.Module):
    """q/k/v projections (optionally LayerNorm on q and k over the full width, the Spanish variant) and
    symmetric ALiBi attention: softmax(q·kᵀ/√d − slope_h·|i−j|)·v."""

    def __init__(self, config: JinaBertConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)
        if config.qk_layer_norm:
            self.layer_norm_q = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
            self.layer_norm_k = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.qk_layer_norm = config.qk_layer_norm
        self.dropout = nn.Dropout(config.attention_probs_dropout_prob)

    def _qkv(self, x: torch.Tensor):
        q, k, v = self.query(x), self.key(x), self.value(x)
        if self.qk_layer_norm:
            # Under autocast LayerNorm returns float32; the attention op wants one dtype for q, k, v.
            q, k = self.layer_norm_q(q).to(v.dtype), self.layer_norm_k(k).to(v.dtype)
        split = (*x.shape[:-1], self.num_heads, self.head_dim)
        return q.view(split), k.view(split), v.view(split)

    def forward(self, x: torch.Tensor, varlen: tuple[torch.Tensor, int] | None, bias: torch.Tensor | None,
                slopes: torch.Tensor) -> torch.Tensor:
        q, k, v = self._qkv(x)
        if varlen is not None:  # x: (T, hidden) packed; varlen = (cu_seqlens, max_seqlen)
            cu_seqlens, max_seqlen = varlen
            out = bembed_ext.alibi_attention_varlen(q, k, v, cu_seqlens, max_seqlen, slopes,
                                                    impl=_attention_op_impl(q))
            return out.reshape(x.shape)
        # Reference, x: (B, L, hidden); bias (B, H, L, L) already holds −slope·|i−j| and the key mask. The
        # softmax runs in float32: the mask's float32 minimum is −inf in fp16/bf16, and a row with no real
        # key (an empty text) would be 0/0 = NaN there.
        scores = torch.einsum("bihd,bjhd->bhij", q, k).float() / math.sqrt(self.head_dim) + bias
        probs = self.dropout(torch.softmax(scores, dim=-1).to(v.dtype))
        return torch.einsum("bhij,bjhd->bihd", probs, v).reshape(x.shape)


class JinaBertSelfOutput(nn.Module):
    def __init__(self, config: JinaBertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, h: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(h)) + residual)


class JinaBertAttention(nn.Module):
    def __init__(self, config: JinaBertConfig):
        super().__init__()
        self.self = JinaBertSelfAttention(config)
        self.output = JinaBertSelfOutput(config)

    def forward(self, x, varlen, bias, slopes):
        return self.output(self.self(x, varlen, bias, slopes), x)


class JinaBertGLUMLP(nn.Module):
    """gated_layers (no bias) -> GEGLU (exact GELU on the first half) -> dropout -> wo -> LayerNorm(h + x)."""

    def __init__(self, config: JinaBertConfig):
        super().__init__()
        self.gated_layers = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=False)
        self.wo = nn.Linear(config.intermediate_size, config.hidden_size)
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, x: torch.Tensor, fused: bool) -> torch.Tensor:
        h = self.gated_layers(x)
        h = bembed_ext.geglu(h) if fused else bembed_ext.reference.geglu(h)
        return self.layernorm(self.wo(self.dropout(h)) + x)


class JinaBertLayer(nn.Module):
    def __init__(self, config: JinaBertConfig):
        super().__init__()
        self.attention = JinaBertAttention(config)
        self.mlp = JinaBertGLUMLP(config)

    def forward(self, x, varlen, bias, slopes):
        return self.mlp(self.attention(x, varlen, bias, slopes), fused=varlen is not None)


class JinaBertEncoder(nn.Module):
    def __init__(self, config: JinaBertConfig):
        super().__init__()
        self.layer = nn.ModuleList(JinaBertLayer(config) for _ in range(config.num_hidden_layers))
        self.gradient_checkpointing = False

    def forward(self, x, varlen, bias, slopes, output_hidden_states: bool = False):
        """varlen (cu_seqlens, max_seqlen) for packed x (T, hidden), or bias (B, H, L, L) for padded x."""
        all_hidden = [x] if output_hidden_states else None
        for layer in self.layer:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(layer, x, varlen, bias, slopes, use_reentrant=False)
            else:
                x = layer(x, varlen, bias, slopes)
            if output_hidden_states:
                all_hidden.append(x)
        return x, all_hidden


class JinaBertPooler(nn.Module):
    """BERT's pooler (dense + tanh on the first token); published weights, unused by mean pooling."""

    def __init__(self, config: JinaBertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.activation = nn.Tanh()

    def forward(self, last_hidden_state: torch.Tensor) -> torch.Tensor:
        return self.activation(self.dense(last_hidden_state[:, 0]))


def _check_attention_mask(attention_mask, input_ids: torch.Tensor) -> None:
    """Both attention paths take a (batch, seqlen) mask like input_ids; a 3-D/4-D HF-style mask used to fail
    deep inside the reference path's einsum."""
    if not isinstance(attention_mask, torch.Tensor):
        raise TypeError(f"attention_mask must be a torch.Tensor, got {type(attention_mask).__name__}")
    if attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask must be (batch, seqlen) like input_ids {tuple(input_ids.shape)}, got shape "
                         f"{tuple(attention_mask.shape)}")


def _padded_inputs(input_ids, attention_mask, token_type_ids) -> tuple[torch.Tensor, torch.Tensor]:
    """The (mask, token types) of a padded batch, checked against input_ids, all-ones and zeros where absent."""
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
        raise ValueError("input_ids must be a (batch, seqlen) tensor")
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    _check_attention_mask(attention_mask, input_ids)
    return attention_mask, torch.zeros_like(input_ids) if token_type_ids is None else token_type_ids


def reference_attention_bias(attention_mask: torch.Tensor, slopes: torch.Tensor) -> torch.Tensor:
    """(B, L) mask and (H,) slopes -> (B, H, L, L) float32 additive bias: −slope·|i−j|, and the dtype
    minimum on padded keys (the published code's extended attention mask)."""
    L = attention_mask.shape[1]
    pos = torch.arange(L, device=attention_mask.device)
    distance = (pos[None, :] - pos[:, None]).abs().to(torch.float32)
    alibi = -slopes.to(attention_mask.device, torch.float32)[:, None, None] * distance  # (H, L, L)
    key_mask = (1.0 - attention_mask.to(torch.float32))[:, None, None, :] * torch.finfo(torch.float32).min
    return alibi[None] + key_mask


class JinaBertPreTrainedModel(PreTrainedModel):
    """Shared plumbing: config class, weight init, local safetensors loading/saving, checkpointing."""

    config_class = JinaBertConfig
    base_model_prefix = "bert"
    supports_gradient_checkpointing = True

    def __init__(self, config: JinaBertConfig, *inputs, **kwargs):
        # Keyword overrides of from_dict / AutoConfig.from_pretrained are set after the config checked itself.
        config.validate()
        super().__init__(config, *inputs, **kwargs)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            module.weight.normal_(0.0, std)
            if module.bias is not None:
                module.bias.zero_()
        elif isinstance(module, nn.Embedding):
            module.weight.normal_(0.0, std)
            if module.padding_idx is not None:
                module.weight[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            module.weight.fill_(1.0)
            module.bias.zero_()
        elif isinstance(module, JinaBertLMPredictionHead):
            module.bias.zero_()

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs=None) -> None:
        """Recompute each layer in backward (non-reentrant torch.utils.checkpoint): activation memory of one
        layer instead of all, for long sequences in training."""
        self._encoder().gradient_checkpointing = True

    def gradient_checkpointing_disable(self) -> None:
        self._encoder().gradient_checkpointing = False

    def _encoder(self) -> JinaBertEncoder:
        return getattr(self, self.base_model_prefix, self).encoder

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """Load from a local folder holding config.json and model.safetensors (fp16, bf16 or fp32; published
        names, with or without the `bert.` prefix). See `bembed.model.loading.load_pretrained`."""
        if model_args:
            raise TypeError(f"{cls.__name__}.from_pretrained takes no positional model arguments")
        return loading.load_pretrained(cls, pretrained_model_name_or_path, **kwargs)

    def save_pretrained(self, save_directory, **kwargs) -> None:
        """Write config.json and model.safetensors (published names; never pickle)."""
        loading.save_pretrained(self, save_directory, **kwargs)


class JinaBertModel(JinaBertPreTrainedModel):
    """The JinaBERT encoder. forward(input_ids, attention_mask, token_type_ids) -> `last_hidden_state`
    (B, L, hidden); `embed(...)` gives mean-pooled float32 sentence embeddings."""

    def __init__(self, config: JinaBertConfig, add_pooling_layer: bool = True):
        super().__init__(config)
        self.embeddings = JinaBertEmbeddings(config)
        self.encoder = JinaBertEncoder(config)
        self.pooler = JinaBertPooler(config) if add_pooling_layer else None
        self._slopes_cache: dict[torch.device, torch.Tensor] = {}
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embeddings.word_embeddings = value

    def alibi_slopes(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """The per-head ALiBi slopes, float32 (H,). Kept out of the state dict and out of .half()."""
        device = torch.device(device)
        if device not in self._slopes_cache:
            # Never an inference tensor, even when first asked for under inference_mode (encode): the kernels
            # save the slopes for backward, which torch refuses for those, so training after an encode failed.
            with torch.inference_mode(False):
                self._slopes_cache[device] = bembed_ext.alibi_slopes(self.config.num_attention_heads).to(device)
        return self._slopes_cache[device]

    def _fused_attention(self) -> bool:
        """True on the "bembed" path, False on "reference"; anything else (a config changed after it was
        checked) is refused rather than run as the reference."""
        impl = self.config.attention_impl
        if impl not in ATTENTION_IMPLS:
            raise ValueError(f"config.attention_impl must be one of {ATTENTION_IMPLS}, got {impl!r}")
        return impl == "bembed"

    def check_trainable(self) -> None:
        """Raises ValueError when training this model would fail at its first forward (the trainer asks before
        step 1): attention dropout on the fused path, which has none."""
        if self._fused_attention():
            self._refuse_attention_dropout()

    def _refuse_attention_dropout(self) -> None:
        if self.config.attention_probs_dropout_prob > 0:
            raise ValueError(
                f"attention_probs_dropout_prob={self.config.attention_probs_dropout_prob}: the bembed attention "
                "kernels have no dropout. Set attention_probs_dropout_prob=0 (as the released JinaBERT models do) "
                "or attention_impl='reference'.")

    def forward_packed(self, input_ids: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int,
                       token_type_ids: torch.Tensor | None = None,
                       output_hidden_states: bool = False):
        """The unpadded encoder: input_ids (T,) packed by cu_seqlens (B+1,) int32 -> (T, hidden), and the
        per-layer states when output_hidden_states. Always the fused "bembed" path."""
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 1:
            raise ValueError("forward_packed: input_ids must be a packed (T,) tensor")
        if self.training:
            self._refuse_attention_dropout()
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        x = self.embeddings(input_ids, token_type_ids)
        return self.encoder(x, (cu_seqlens, int(max_seqlen)), None, self.alibi_slopes(x.device), output_hidden_states)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, output_hidden_states: bool | None = None,
                return_dict: bool | None = None):
        """input_ids (B, L); attention_mask (B, L) 1 = real token (contiguous per row); token_type_ids (B, L).
        Returns BaseModelOutputWithPooling (last_hidden_state, pooler_output, hidden_states). Token states at
        padding positions carry no meaning (zeros on the "bembed" path)."""
        attention_mask, token_type_ids = _padded_inputs(input_ids, attention_mask, token_type_ids)
        # None takes the config's, as transformers models do (sentence-transformers' AdaptiveLayerLoss sets
        # config.output_hidden_states; from_pretrained(..., output_hidden_states=True) sets it too).
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        output_hidden_states = bool(output_hidden_states)
        if return_dict is None:
            return_dict = self.config.return_dict
        if self._fused_attention():
            packing = pack_attention_mask(attention_mask)
            x, all_hidden = self.forward_packed(packing.pack(input_ids), packing.cu_seqlens, packing.max_seqlen,
                                                packing.pack(token_type_ids), output_hidden_states)
            last = packing.unpack(x)
            all_hidden = [packing.unpack(h) for h in all_hidden] if output_hidden_states else None
        else:
            x = self.embeddings(input_ids, token_type_ids)
            slopes = self.alibi_slopes(x.device)
            bias = reference_attention_bias(attention_mask, slopes)
            last, all_hidden = self.encoder(x, None, bias, slopes, output_hidden_states)
        pooled = self.pooler(last) if self.pooler is not None else None
        hidden_states = tuple(all_hidden) if output_hidden_states else None
        if return_dict is False:
            return tuple(t for t in (last, pooled, hidden_states) if t is not None)
        return BaseModelOutputWithPooling(last_hidden_state=last, pooler_output=pooled, hidden_states=hidden_states)

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
              token_type_ids: torch.Tensor | None = None, normalize_embeddings: bool = True) -> torch.Tensor:
        """Sentence embeddings (B, hidden) float32: mean over the real tokens of the last layer, then
        L2-normalised unless normalize_embeddings=False."""
        attention_mask, token_type_ids = _padded_inputs(input_ids, attention_mask, token_type_ids)
        if self._fused_attention():  # pool the packed stream: no (B, L, hidden) tensor at all
            packing = pack_attention_mask(attention_mask)
            packed, _ = self.forward_packed(packing.pack(input_ids), packing.cu_seqlens, packing.max_seqlen,
                                            packing.pack(token_type_ids))
            pooled = mean_pool_packed(packed, packing.cu_seqlens)
        else:
            pooled = mean_pool(self(input_ids, attention_mask, token_type_ids).last_hidden_state, attention_mask)
        return normalize(pooled) if normalize_embeddings else pooled


class JinaBertPredictionHeadTransform(nn.Module):
    def __init__(self, config: JinaBertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(F.gelu(self.dense(x)))


class JinaBertLMPredictionHead(nn.Module):
    """transform (dense, GELU, LayerNorm) -> decoder (weight tied to the word embeddings) + bias."""

    def __init__(self, config: JinaBertConfig):
        super().__init__()
        self.transform = JinaBertPredictionHeadTransform(config)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.transform(x)) + self.bias


class JinaBertOnlyMLMHead(nn.Module):
    def __init__(self, config: JinaBertConfig):
        super().__init__()
        self.predictions = JinaBertLMPredictionHead(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.predictions(x)


class JinaBertForMaskedLM(JinaBertPreTrainedModel):
    """JinaBERT with BERT's MLM head (`cls.predictions.*`), decoder tied to `bert.embeddings.word_embeddings`."""

    def __init__(self, config: JinaBertConfig):
        super().__init__(config)
        self.bert = JinaBertModel(config, add_pooling_layer=False)
        self.cls = JinaBertOnlyMLMHead(config)
        self.post_init()
        self.tie_decoder()

    def tie_decoder(self) -> None:
        """Share one Parameter between the decoder and the word embeddings (also after loading)."""
        self.cls.predictions.decoder.weight = self.bert.embeddings.word_embeddings.weight

    def get_output_embeddings(self) -> nn.Linear:
        return self.cls.predictions.decoder

    def resize_token_embeddings(self, new_num_tokens: int | None = None, pad_to_multiple_of: int | None = None,
                                **kwargs) -> nn.Embedding:
        """transformers' resize of the word embeddings (e.g. after adding special tokens), with the MLM head
        following: a decoder of the new size tied to them again, and the output bias kept for the old tokens
        (0 for new ones). transformers alone looks for an `lm_head` and never resizes the separate bias."""
        embeddings = self.bert.resize_token_embeddings(new_num_tokens, pad_to_multiple_of, **kwargs)
        head, size = self.cls.predictions, embeddings.num_embeddings
        bias = head.bias.data.new_zeros(size)
        kept = min(size, head.bias.numel())
        bias[:kept] = head.bias.data[:kept]
        head.bias = nn.Parameter(bias)
        head.decoder = nn.Linear(self.config.hidden_size, size, bias=False, device=bias.device, dtype=bias.dtype)
        self.tie_decoder()
        return embeddings

    def get_input_embeddings(self) -> nn.Embedding:
        return self.bert.embeddings.word_embeddings

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                output_hidden_states: bool | None = None, return_dict: bool | None = None):
        """logits (B, L, vocab); with labels (B, L) (−100 = not predicted) also the mean cross-entropy."""
        out = self.bert(input_ids, attention_mask, token_type_ids, output_hidden_states=output_hidden_states,
                        return_dict=True)
        logits = self.cls(out.last_hidden_state)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=-100)
        if return_dict is None:
            return_dict = self.config.return_dict
        if return_dict is False:
            return tuple(t for t in (loss, logits, out.hidden_states) if t is not None)
        return MaskedLMOutput(loss=loss, logits=logits, hidden_states=out.hidden_states)

    def masked_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
                      token_type_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(float32 vocabulary logits, labels) at the labelled positions only (labels != −100): the
        memory-lean form for pretraining (full logits at 512 × 61056 per sequence dominate memory)."""
        hidden = self.bert(input_ids, attention_mask, token_type_ids).last_hidden_state
        selected = labels != -100
        return self.cls(hidden[selected]).float(), labels[selected]

    def mlm_loss(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
                 token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """The mean cross-entropy over the labelled positions, through masked_logits; 0 (with a gradient of
        zeros) for a batch with none, where a mean over nothing would be NaN."""
        logits, targets = self.masked_logits(input_ids, attention_mask, labels, token_type_ids)
        return F.cross_entropy(logits, targets, reduction="sum") / max(len(targets), 1)
