"""Stateless, resumable batch selection shared by the stages.

Every micro-batch is a pure function of (seed, micro-batch index): the data position saved in a
checkpoint is one integer, resume needs no sampler state, and under N ranks each rank takes its
contiguous share of the same global micro-batch (rank r gets rows [r·b, (r+1)·b)) — what a DistributedSampler
does, without ever letting ranks disagree about the global batch. Each random choice reads its own named stream
(`generator`): a task draw, one task's epochs and another's never share numbers.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections import deque

import torch


@dataclasses.dataclass
class Batch:
    """A rank-local micro-batch: tensors for the loss, the token count (for tokens/s), where the rows
    came from (named when a loss turns NaN/inf), and its weight in the step's loss: each micro-batch's loss
    counts with its weight over the total of the step's micro-batches on all ranks. 1 each, unless the stage
    sets `weighted_batches` (MLM: its loss is the mean over the rank's masked tokens and the weight their
    count, so that the step's loss is the mean over all its masked tokens however it is split)."""

    tensors: dict
    tokens: int
    source: str
    weight: float = 1.0


# The version of the data order: a checkpoint saved under another reads other rows after a resume (said then).
# Version 1 drew the multi-task task choices and every retrieval task's epochs from one stream (and equal-sized
# MLM language groups shared one); version 2 names each stream by a hash of its keys. The hash is of repr(), not
# Python's hash(), so every process and machine draws the same numbers.
DATA_ORDER = 2


def generator(seed: int, *keys: int | str) -> torch.Generator:
    """A CPU generator for the stream that `keys` name under `seed`. Seeded from a hash of the whole tuple, so
    that different tuples — ("task", 1, 0) and ("task", 0, 1), or keys of different lengths — are independent."""
    digest = hashlib.blake2b(repr((seed, *keys)).encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") >> 1)


def epoch_indices(n: int, size: int, index: int, seed: int, stream: tuple = ()) -> list[int]:
    """Rows of global micro-batch `index` of `size` rows: epochs are fresh permutations of the n rows (epoch e
    from stream (*stream, e)), each cut into n // size batches (the remainder of an epoch is dropped so batch
    shapes stay equal)."""
    if n < size:
        raise ValueError(f"the data has {n} rows, fewer than one global micro-batch of {size}")
    per_epoch = n // size
    epoch, k = divmod(index, per_epoch)
    perm = torch.randperm(n, generator=generator(seed, *stream, epoch))
    return perm[k * size:(k + 1) * size].tolist()


def first_distinct(rows: deque, texts: list[tuple], size: int, shared: list[tuple] | None = None) -> list[int]:
    """Up to `size` rows taken from the front of `rows`, no two sharing a text (texts[i]: the texts of row i),
    as sentence-transformers' NoDuplicatesBatchSampler does; the rows passed over go back to the front.
    shared[i] (hard negatives) may recur across rows, but none may be another row's text: a negative equal to
    another row's positive is a false negative for that row's query."""
    batch, seen, seen_shared, passed = [], set(), set(), []
    while rows and len(batch) < size:
        i = rows.popleft()
        own = shared[i] if shared else ()
        if seen.isdisjoint(texts[i]) and seen_shared.isdisjoint(texts[i]) and seen.isdisjoint(own):
            batch.append(i)
            seen.update(texts[i])
            seen_shared.update(own)
        else:
            passed.append(i)
    rows.extendleft(reversed(passed))
    return batch


class DistinctBatches:
    """Global micro-batches of `size` rows in which no two rows share a text (see `first_distinct`): a
    duplicate query or document in a batch is a false negative for in-batch InfoNCE. Each epoch is a fresh
    permutation of the rows; a row that clashes with the batch being filled waits for the next one, and what
    is left at the end is dropped, so epochs hold different numbers of batches (the greedy fill can even leave
    a later epoch none: it is skipped). Batch `index` is still a pure function of (seed, index): epochs are
    laid out in order (the batch counts are kept; only the current epoch's layout); epoch e is shuffled by
    stream (*stream, e). The first call raises ValueError when the first epoch has no full batch, so a stage
    checks its data by calling it once."""

    def __init__(self, texts: list[tuple], size: int, seed: int, shared: list[tuple] | None = None,
                 stream: tuple = ()):
        self.texts, self.size, self.seed, self.shared, self.stream = texts, size, seed, shared, stream
        self.counts: list[int] = []
        self.epoch, self.batches = -1, []

    def _layout(self, epoch: int) -> list[list[int]]:
        if len(self.texts) < self.size:  # not a matter of repeated texts: say what it is
            raise ValueError(f"the data has {len(self.texts)} rows, fewer than one global micro-batch of {self.size}")
        if epoch != self.epoch:
            shuffle = generator(self.seed, *self.stream, epoch)
            rows = deque(torch.randperm(len(self.texts), generator=shuffle).tolist())
            self.batches = []
            while len(batch := first_distinct(rows, self.texts, self.size, self.shared)) == self.size:
                self.batches.append(batch)
            if not self.batches and epoch == 0:
                raise ValueError(f"no global micro-batch of {self.size} rows with distinct texts could be filled "
                                 "from the shuffled data (too many repeated texts)")
            self.epoch = epoch
        return self.batches

    def __call__(self, index: int) -> list[int]:
        epoch = 0
        while True:
            if epoch == len(self.counts):
                self.counts.append(len(self._layout(epoch)))
            if index < self.counts[epoch]:
                return self._layout(epoch)[index]
            index -= self.counts[epoch]
            epoch += 1


def shard(rows: list, rank: int, world: int) -> list:
    """Rank `rank`'s contiguous share of a global micro-batch."""
    if len(rows) % world:
        raise ValueError(f"a global micro-batch of {len(rows)} rows does not split over {world} ranks")
    size = len(rows) // world
    return rows[rank * size:(rank + 1) * size]
