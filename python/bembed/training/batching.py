"""Stateless, resumable batch selection shared by the stages.

Every micro-batch is a pure function of (seed, micro-batch index): the data position saved in a
checkpoint is one integer, resume needs no sampler state, and under N ranks each rank takes its
contiguous share of the same global micro-batch (rank r gets rows [r·b, (r+1)·b)) — what a DistributedSampler
does, without ever letting ranks disagree about the global batch.
"""

from __future__ import annotations

import dataclasses

import torch


@dataclasses.dataclass
class Batch:
    """A rank-local micro-batch: tensors for the loss, the token count (for tokens/s), where the rows
    came from (named when a loss turns NaN/inf), and its weight in the step's loss: each micro-batch's loss
    counts with its weight over the total of the step's micro-batches on all ranks (MLM: its masked tokens,
    so that the step's loss is the mean over all its masked tokens however it is split; else 1 each)."""

    tensors: dict
    tokens: int
    source: str
    weight: float = 1.0


def generator(seed: int, *keys: int) -> torch.Generator:
    """A CPU generator seeded from seed and keys (independent streams per key tuple)."""
    value = seed
    for key in keys:
        value = (value * 1_000_003 + key + 1) % (2**63 - 1)
    return torch.Generator().manual_seed(value)


def epoch_indices(n: int, size: int, index: int, seed: int) -> list[int]:
    """Rows of global micro-batch `index` of `size` rows: epochs are fresh permutations of the n rows,
    each cut into n // size batches (the remainder of an epoch is dropped so batch shapes stay equal)."""
    if n < size:
        raise ValueError(f"the data has {n} rows, fewer than one global micro-batch of {size}")
    per_epoch = n // size
    epoch, k = divmod(index, per_epoch)
    perm = torch.randperm(n, generator=generator(seed, epoch))
    return perm[k * size:(k + 1) * size].tolist()


def shard(rows: list, rank: int, world: int) -> list:
    """Rank `rank`'s contiguous share of a global micro-batch."""
    if len(rows) % world:
        raise ValueError(f"a global micro-batch of {len(rows)} rows does not split over {world} ranks")
    size = len(rows) // world
    return rows[rank * size:(rank + 1) * size]
