"""Unpadding: the real tokens of a padded batch packed into one (T, ...) stream, and back.

The "bembed" encoder path runs every layer on the packed stream, so padding costs no compute; the
per-sequence bounds travel as flash-attention style `cu_seqlens`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Packing:
    """Where the T real tokens of a (batch, seqlen) padded batch live.

    indices: (T,) int64 flat positions into batch*seqlen; cu_seqlens: (batch+1,) int32 sequence bounds
    in the packed stream; max_seqlen: the longest sequence.
    """

    indices: torch.Tensor
    cu_seqlens: torch.Tensor
    max_seqlen: int
    batch: int
    seqlen: int

    def pack(self, padded: torch.Tensor) -> torch.Tensor:
        """(batch, seqlen, ...) -> (T, ...)."""
        return padded.reshape(self.batch * self.seqlen, *padded.shape[2:])[self.indices]

    def unpack(self, packed: torch.Tensor) -> torch.Tensor:
        """(T, ...) -> (batch, seqlen, ...), zeros at the padding positions."""
        out = packed.new_zeros(self.batch * self.seqlen, *packed.shape[1:])
        out = out.index_copy(0, self.indices, packed)
        return out.reshape(self.batch, self.seqlen, *packed.shape[1:])


def pack_attention_mask(attention_mask: torch.Tensor) -> Packing:
    """Build the Packing of a (batch, seqlen) mask of 0/1 (or bool) values.

    The real tokens of each row must be contiguous (right or left padding): ALiBi distances on the packed
    stream count from each sequence's first token, which equals the padded distances only then.
    """
    if not isinstance(attention_mask, torch.Tensor):
        raise TypeError(f"attention_mask must be a torch.Tensor, got {type(attention_mask).__name__}")
    if attention_mask.dim() != 2:
        raise ValueError(f"attention_mask must be (batch, seqlen), got shape {tuple(attention_mask.shape)}")
    batch, seqlen = attention_mask.shape
    mask = attention_mask.bool()
    seqlens = mask.sum(dim=1, dtype=torch.int32)
    first = mask.int().argmax(dim=1)
    last = seqlen - 1 - mask.flip(1).int().argmax(dim=1)
    span = torch.where(seqlens > 0, last - first + 1, torch.zeros_like(last))
    max_seqlen, holes = torch.stack([seqlens.max() if batch else seqlens.new_zeros(()),
                                     (span != seqlens).sum()]).tolist()
    if holes:
        raise ValueError("attention_mask: the real tokens of each row must be contiguous (padding only at the "
                         "start or the end of a row)")
    indices = torch.nonzero(mask.flatten(), as_tuple=False).flatten()
    cu_seqlens = F.pad(torch.cumsum(seqlens, dim=0, dtype=torch.int32), (1, 0))
    return Packing(indices=indices, cu_seqlens=cu_seqlens, max_seqlen=int(max_seqlen), batch=batch, seqlen=seqlen)
