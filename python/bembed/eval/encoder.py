"""The minimal encoder interface bembed's evaluation needs, and a lexical floor that implements it.

An *encoder* is any object with

    encode(texts: list[str], *, prompt_name: str | None = None, batch_size: int = 32) -> np.ndarray

returning one row per text (float, shape (len(texts), dim)). ``prompt_name`` is "query" or "document" for
asymmetric tasks (retrieval) and None for symmetric ones (STS, bitext mining, pair classification); a
model with E5-style prefixes maps it to its prefix, others ignore it. Rows need not be normalised (the
wrapper scores with cosine). bembed models, the baselines and test doubles all plug in through this.
"""

from __future__ import annotations

import hashlib

import numpy as np

PROMPT_NAMES = ("query", "document")


def check_encoder(encoder) -> None:
    if not callable(getattr(encoder, "encode", None)):
        raise TypeError(f"encoder must have an encode(texts, *, prompt_name=None, batch_size=...) method, "
                        f"got {type(encoder).__name__}")


class HashingEncoder:
    """Character n-gram counts hashed into ``dim`` buckets, L2-normalised: a deterministic, training-free
    lexical floor. It scores well only where the two sides share spelling (names, numbers, cognates), which
    is what a learned model must beat."""

    name = "char-ngram-hashing"

    def __init__(self, dim: int = 4096, n: int = 3):
        if dim < 1 or n < 1:
            raise ValueError(f"dim and n must be positive, got dim={dim}, n={n}")
        self.dim, self.n = dim, n

    def _bucket(self, gram: str) -> int:
        return int.from_bytes(hashlib.blake2b(gram.encode(), digest_size=8).digest(), "little") % self.dim

    def encode(self, texts, *, prompt_name=None, batch_size: int = 32) -> np.ndarray:
        del prompt_name, batch_size  # symmetric and cheap
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            padded = f" {text.lower()} "
            for i in range(max(len(padded) - self.n + 1, 1)):
                out[row, self._bucket(padded[i:i + self.n])] += 1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norms, 1e-12)


class TruncatedEncoder:
    """Another encoder's embeddings cut to their first `dim` dimensions and L2-normalised again: how a model
    trained with Matryoshka widths (or any model, for comparison) scores with a `dim`-wide index, as
    `encode(..., truncate_dim=dim)` gives it."""

    def __init__(self, encoder, dim: int):
        check_encoder(encoder)
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"truncate dim must be an int ≥ 1, got {dim!r}")
        self.encoder, self.dim = encoder, dim

    def encode(self, texts, *, prompt_name=None, batch_size: int = 32) -> np.ndarray:
        out = np.asarray(self.encoder.encode(texts, prompt_name=prompt_name, batch_size=batch_size), dtype=np.float32)
        if out.ndim == 2 and out.shape[1] < self.dim:
            raise ValueError(f"cannot cut to {self.dim} dimensions: the embeddings have {out.shape[1]}")
        out = out[:, :self.dim]
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
