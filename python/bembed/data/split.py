"""Deterministic train/validation/test assignment by document id (never by row), so paragraphs, verses
and pages of one document always share a split and a held-out document is held out everywhere."""

from __future__ import annotations

import hashlib
import math

SPLITS = ("train", "validation", "test")
DEFAULT_FRACTIONS = (0.90, 0.05, 0.05)


def split_of(doc_id: str, fractions: tuple[float, float, float] = DEFAULT_FRACTIONS, salt: str = "bembed") -> str:
    """The split of ``doc_id``: a stable hash of (salt, doc_id) mapped onto the cumulative fractions."""
    if (len(fractions) != 3 or not all(math.isfinite(f) and f >= 0 for f in fractions)
            or abs(sum(fractions) - 1.0) > 1e-9):
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {fractions}")
    digest = hashlib.sha256(f"{salt}\0{doc_id}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    if u < fractions[0]:
        return "train"
    return "validation" if u < fractions[0] + fractions[1] else "test"
