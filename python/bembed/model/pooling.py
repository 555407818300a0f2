"""Sentence embeddings from token states: masked mean pooling, accumulated in float32.

Summing thousands of bf16/fp16 token vectors in their own precision loses digits, so the sums run in
float32 whatever the model's dtype (JinaBERT's `emb_pooler: "mean"`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def mean_pool(last_hidden_state: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, L, H) token states and a (B, L) mask -> (B, H) float32 means over the real tokens.
    A row without real tokens gives zeros."""
    if last_hidden_state.dim() != 3 or attention_mask.shape != last_hidden_state.shape[:2]:
        raise ValueError(f"mean_pool: expected last_hidden_state (B, L, H) and attention_mask (B, L), got "
                         f"{tuple(last_hidden_state.shape)} and {tuple(attention_mask.shape)}")
    mask = attention_mask.bool().unsqueeze(-1)
    # masked_fill, not a product: a non-finite state at a padded position must not reach the sum (NaN·0 = NaN)
    summed = last_hidden_state.to(torch.float32).masked_fill(~mask, 0.0).sum(dim=1)
    return summed / mask.sum(dim=1).clamp(min=1)


def mean_pool_packed(packed: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
    """(T, H) packed token states with sequence bounds cu_seqlens (B+1,) -> (B, H) float32 means.
    An empty sequence gives zeros."""
    if packed.dim() != 2:
        raise ValueError(f"mean_pool_packed: packed must be (T, H), got shape {tuple(packed.shape)}")
    seqlens = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    segment = torch.repeat_interleave(torch.arange(seqlens.numel(), device=packed.device), seqlens,
                                      output_size=packed.shape[0])
    sums = packed.new_zeros((seqlens.numel(), packed.shape[1]), dtype=torch.float32)
    sums.index_add_(0, segment, packed.to(torch.float32))
    return sums / seqlens.clamp(min=1).unsqueeze(-1).to(torch.float32)


def normalize(embeddings: torch.Tensor) -> torch.Tensor:
    """L2-normalise rows (for cosine similarity); zero rows stay zero."""
    return F.normalize(embeddings, p=2, dim=-1)
