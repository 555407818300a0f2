"""JinaBertConfig: the HF config of JinaBERT, reading the published `config.json` fields unchanged."""

from __future__ import annotations

import logging
import os

from transformers import PretrainedConfig

logger = logging.getLogger(__name__)

ATTENTION_IMPLS = ("bembed", "reference")
MODEL_TYPE = "bembed_jinabert"

# Fields of the published remote-code config that only steer Jina's own code paths (or HF's hub
# machinery): bembed reads the architecture from the other fields and drops these on load.
_PUBLISHED_ONLY_FIELDS = ("auto_map", "attn_implementation", "alibi_scaling", "embedding_model", "use_cache",
                          "classifier_dropout")


class JinaBertConfig(PretrainedConfig):
    """Configuration of a JinaBERT encoder (BERT with symmetric ALiBi, GEGLU feed-forward, post-LN).

    The defaults are jina-embeddings-v2-base-de/-es (vocab 61056, 768 wide, 12 layers × 12 heads,
    8192 tokens). `qk_layer_norm=True` adds the LayerNorm on queries and keys over the full hidden width
    that the Spanish model has. `attention_impl` picks the encoder path: "bembed" (unpadded, fused
    kernels; attention dropout must be 0) or "reference" (padded, plain PyTorch with a materialised
    bias, mirroring the published remote code). A published `config.json` (model_type "bert",
    position_embedding_type "alibi") loads with `JinaBertConfig.from_pretrained(dir)`.
    """

    model_type = MODEL_TYPE

    def __init__(
        self,
        vocab_size: int = 61056,
        hidden_size: int = 768,
        num_hidden_layers: int = 12,
        num_attention_heads: int = 12,
        intermediate_size: int = 3072,
        hidden_act: str = "gelu",
        hidden_dropout_prob: float = 0.1,
        attention_probs_dropout_prob: float = 0.0,
        max_position_embeddings: int = 8192,
        type_vocab_size: int = 2,
        initializer_range: float = 0.02,
        layer_norm_eps: float = 1e-12,
        pad_token_id: int = 0,
        position_embedding_type: str = "alibi",
        feed_forward_type: str = "geglu",
        emb_pooler: str | None = "mean",
        qk_layer_norm: bool = False,
        attention_impl: str = "bembed",
        **kwargs,
    ):
        kwargs.pop("model_type", None)  # a published config says "bert"; this class always writes its own
        for name in _PUBLISHED_ONLY_FIELDS:
            kwargs.pop(name, None)
        super().__init__(pad_token_id=pad_token_id, **kwargs)
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.hidden_act = hidden_act
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_probs_dropout_prob = attention_probs_dropout_prob
        self.max_position_embeddings = max_position_embeddings
        self.type_vocab_size = type_vocab_size
        self.initializer_range = initializer_range
        self.layer_norm_eps = layer_norm_eps
        self.position_embedding_type = position_embedding_type
        self.feed_forward_type = feed_forward_type
        self.emb_pooler = emb_pooler
        self.qk_layer_norm = qk_layer_norm
        self.attention_impl = attention_impl
        self.validate()

    def validate(self) -> None:
        """Refuse configurations this implementation cannot run, naming the field."""
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                     "max_position_embeddings", "type_vocab_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
                raise ValueError(f"{name} must be a probability in [0, 1), got {value!r}")
        if isinstance(self.layer_norm_eps, bool) or not isinstance(self.layer_norm_eps, (int, float)) \
                or not self.layer_norm_eps > 0:
            raise ValueError(f"layer_norm_eps must be > 0, got {self.layer_norm_eps!r}")
        if not isinstance(self.qk_layer_norm, bool):
            raise ValueError(f"qk_layer_norm must be true or false, got {self.qk_layer_norm!r}")
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(f"hidden_size ({self.hidden_size}) must be a multiple of num_attention_heads "
                             f"({self.num_attention_heads})")
        if self.position_embedding_type != "alibi":
            raise ValueError(f"position_embedding_type must be 'alibi' (JinaBERT), got {self.position_embedding_type!r}")
        if self.feed_forward_type != "geglu":
            raise ValueError(f"feed_forward_type must be 'geglu' (the released JinaBERT models), "
                             f"got {self.feed_forward_type!r}")
        if self.hidden_act not in ("gelu", "gelu_python"):
            raise ValueError(f"hidden_act must be the exact erf 'gelu', got {self.hidden_act!r}")
        if self.emb_pooler not in (None, "mean"):
            raise ValueError(f"emb_pooler must be 'mean' or None, got {self.emb_pooler!r}")
        if self.attention_impl not in ATTENTION_IMPLS:
            raise ValueError(f"attention_impl must be one of {ATTENTION_IMPLS}, got {self.attention_impl!r}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs) -> "JinaBertConfig":
        """Read `config.json` from a local folder: bembed's own, or a published JinaBERT one (model_type
        "bert" with position_embedding_type "alibi"). A plain BERT config is refused."""
        config_dict, kwargs = cls.get_config_dict(pretrained_model_name_or_path, **kwargs)
        model_type = config_dict.get("model_type", cls.model_type)
        if model_type not in (cls.model_type, "bert"):
            raise ValueError(f"{pretrained_model_name_or_path}: config model_type {model_type!r} is not JinaBERT")
        if model_type == "bert" and config_dict.get("position_embedding_type") != "alibi":
            raise ValueError(f"{pretrained_model_name_or_path}: a 'bert' config without position_embedding_type "
                             "'alibi' is a plain BERT, not JinaBERT")
        config_dict = {**config_dict, "model_type": cls.model_type}
        result = cls.from_dict(config_dict, **kwargs)
        # from_dict sets keyword overrides (attention_impl=..., hidden_size=...) after __init__'s check
        (result[0] if isinstance(result, tuple) else result).validate()
        return result
