"""Exact top-k search over embeddings: sentence-transformers' `util.semantic_search`, same arguments, same result.

The score matrix is computed a block of queries × a block of documents at a time, and only each query's best
`top_k` so far are kept, so a corpus of millions of rows needs memory for one block, not for queries × corpus.
Hits are ordered by score, then by corpus index (ties do not depend on the blocking).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

SCORE_FUNCTIONS = ("cos_sim", "dot")


def cos_sim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T


def dot_score(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a @ b.T


def _as_matrix(embeddings, name: str) -> torch.Tensor:
    try:
        tensor = torch.as_tensor(embeddings)
    except (TypeError, ValueError, RuntimeError) as error:
        raise TypeError(f"{name} must be an array or tensor of numbers: {error}") from None
    if tensor.ndim == 1:
        tensor = tensor.unsqueeze(0)
    if tensor.ndim != 2:
        raise ValueError(f"{name} must be (n, dim) or (dim,), got shape {tuple(tensor.shape)}")
    if not (tensor.is_floating_point() or tensor.dtype in (torch.int8, torch.uint8)):
        raise TypeError(f"{name} must hold floats (or int8/uint8 embeddings), got {tensor.dtype}")
    return tensor


def semantic_search(query_embeddings, corpus_embeddings, query_chunk_size: int = 100,
                    corpus_chunk_size: int = 500_000, top_k: int = 10,
                    score_function: str | Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = "cos_sim",
                    ) -> list[list[dict]]:
    """For each query row, its `top_k` best corpus rows as [{"corpus_id": int, "score": float}, ...], best
    first. Inputs are numpy arrays or tensors, (n, dim) or one (dim,) row; int8/uint8 rows are scored as
    numbers (the quantized vectors of `bembed.quantize_embeddings`). `score_function`: "cos_sim" (default),
    "dot" (the same ranking for normalised rows, faster) or a callable (queries, documents) -> (q, d) scores.
    Both inputs are scored on the corpus's device, in float32 unless they are float64."""
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be an int ≥ 1, got {top_k!r}")
    for name, size in (("query_chunk_size", query_chunk_size), ("corpus_chunk_size", corpus_chunk_size)):
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"{name} must be an int ≥ 1, got {size!r}")
    if isinstance(score_function, str):
        if score_function not in SCORE_FUNCTIONS:
            raise ValueError(f"score_function must be one of {SCORE_FUNCTIONS} or a callable, got {score_function!r}")
        score_function = cos_sim if score_function == "cos_sim" else dot_score
    elif not callable(score_function):
        raise TypeError(f"score_function must be a name or a callable, got {type(score_function).__name__}")
    queries = _as_matrix(query_embeddings, "query_embeddings")
    corpus = _as_matrix(corpus_embeddings, "corpus_embeddings")
    if queries.shape[1] != corpus.shape[1]:
        raise ValueError(f"query_embeddings have {queries.shape[1]} dimensions, corpus_embeddings "
                         f"{corpus.shape[1]}")
    for name, tensor in (("query_embeddings", queries), ("corpus_embeddings", corpus)):
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ValueError(f"{name} hold NaN or infinite values")
    dtype = torch.float64 if torch.float64 in (queries.dtype, corpus.dtype) else torch.float32
    queries = queries.to(corpus.device)

    hits = []
    for q0 in range(0, queries.shape[0], query_chunk_size):
        block = queries[q0:q0 + query_chunk_size].to(dtype)
        best_scores = torch.empty(block.shape[0], 0, dtype=dtype, device=corpus.device)
        best_ids = torch.empty(block.shape[0], 0, dtype=torch.long, device=corpus.device)
        for c0 in range(0, corpus.shape[0], corpus_chunk_size):
            scores = score_function(block, corpus[c0:c0 + corpus_chunk_size].to(dtype))
            ids = torch.arange(c0, c0 + scores.shape[1], device=corpus.device).expand_as(scores)
            best_scores, best_ids = _best(torch.cat([best_scores, scores], 1), torch.cat([best_ids, ids], 1), top_k)
        for scores, ids in zip(best_scores.tolist(), best_ids.tolist()):
            hits.append([{"corpus_id": i, "score": s} for s, i in zip(scores, ids)])
    return hits


def _best(scores: torch.Tensor, ids: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's top_k by score, then by lower id. topk alone may return any of several equal scores, so
    every entry tying with the k-th is kept as a candidate and the candidates are sorted exactly."""
    k = min(top_k, scores.shape[1])
    threshold = scores.topk(k, dim=1).values[:, -1:]
    keep = scores >= threshold  # at least k entries a row; more where scores tie with the k-th
    width = int(keep.sum(1).max())
    columns = keep.to(torch.uint8).topk(width, dim=1).indices  # every kept entry (and, in short rows, others)
    scores, ids = scores.gather(1, columns), ids.gather(1, columns)
    order = torch.argsort(ids, dim=1)
    scores, ids = scores.gather(1, order), ids.gather(1, order)
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]
    return scores.gather(1, order), ids.gather(1, order)
