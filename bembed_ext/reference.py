"""The pure-PyTorch specification of every bembed op (the kernels are tested against these)."""

from .ops.alibi_attention import alibi_attention_reference as alibi_attention
from .ops.alibi_attention import alibi_attention_varlen_reference as alibi_attention_varlen
from .ops.contrastive_loss import contrastive_loss_reference as contrastive_loss
from .ops.geglu import geglu_reference as geglu

__all__ = ["alibi_attention", "alibi_attention_varlen", "contrastive_loss", "geglu"]
