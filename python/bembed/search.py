"""Exact top-k search over embeddings: sentence-transformers' `util.semantic_search`, same arguments, same result.

The score matrix is computed a block of queries × a block of documents at a time, and only each query's best
`top_k` so far are kept, so a corpus of millions of rows needs memory for one block, not for queries × corpus.
Hits are ordered by score, then by corpus index. (Equal rows need not score equally in float32: a matrix product
may round a row's score a last bit differently at another place in a block.)
"""

from __future__ import annotations

import numbers
from typing import Callable

import torch
import torch.nn.functional as F

SCORE_FUNCTIONS = ("cos_sim", "dot")


def cos_sim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T


def dot_score(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a @ b.T


def as_matrix(embeddings, name: str) -> torch.Tensor:
    """Embeddings as an (n, dim) tensor: an array, a tensor, one (dim,) row, or the list of row tensors that
    `encode(..., convert_to_numpy=False)` returns; TypeError / ValueError naming `name` otherwise."""
    if isinstance(embeddings, (list, tuple)) and embeddings and all(isinstance(e, torch.Tensor) for e in embeddings):
        shapes = {tuple(e.shape) for e in embeddings}
        if len(shapes) > 1:
            raise ValueError(f"{name}: the rows have different shapes {sorted(shapes)}")
        embeddings = torch.stack(embeddings)  # encode(..., convert_to_numpy=False) gives a list of rows
    try:
        tensor = torch.as_tensor(embeddings)
    except (TypeError, ValueError, RuntimeError) as error:
        raise TypeError(f"{name} must be an array or tensor of numbers: {error}") from None
    if tensor.ndim == 1:  # one row; an empty list, no rows
        tensor = tensor.unsqueeze(0) if tensor.numel() else tensor.reshape(0, 0)
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
    first. Inputs are numpy arrays, tensors or lists of 1-D tensors, (n, dim) or one (dim,) row; int8/uint8 rows
    are scored as numbers (the "int8"/"uint8" vectors of `bembed.quantize_embeddings`; its packed "binary" codes
    need a Hamming distance, not this). `score_function`: "cos_sim" (default),
    "dot" (the same ranking for normalised rows, faster) or a callable (queries, documents) -> (q, d) scores.
    Both inputs are scored on the corpus's device, in float32 unless they are float64."""
    for name, value in (("top_k", top_k), ("query_chunk_size", query_chunk_size),
                        ("corpus_chunk_size", corpus_chunk_size)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(f"{name} must be an int ≥ 1, got {value!r}")
    top_k, query_chunk_size, corpus_chunk_size = int(top_k), int(query_chunk_size), int(corpus_chunk_size)
    if isinstance(score_function, str):
        if score_function not in SCORE_FUNCTIONS:
            raise ValueError(f"score_function must be one of {SCORE_FUNCTIONS} or a callable, got {score_function!r}")
        score_function = cos_sim if score_function == "cos_sim" else dot_score
    elif not callable(score_function):
        raise TypeError(f"score_function must be a name or a callable, got {type(score_function).__name__}")
    queries = as_matrix(query_embeddings, "query_embeddings")
    corpus = as_matrix(corpus_embeddings, "corpus_embeddings")
    if not len(queries) or not len(corpus):  # nothing to compare (and no width to check against)
        return [[] for _ in range(len(queries))]
    if queries.shape[1] != corpus.shape[1]:
        raise ValueError(f"query_embeddings have {queries.shape[1]} dimensions, corpus_embeddings "
                         f"{corpus.shape[1]}")
    for name, tensor in (("query_embeddings", queries), ("corpus_embeddings", corpus)):
        # aminmax propagates NaN: both ends finite exactly when every entry is (and 15x faster than isfinite)
        if tensor.is_floating_point() and tensor.numel() and not all(map(torch.isfinite, torch.aminmax(tensor))):
            raise ValueError(f"{name} hold NaN or infinite values")
    dtype = torch.float64 if torch.float64 in (queries.dtype, corpus.dtype) else torch.float32
    queries = queries.to(corpus.device)

    hits = []
    for q0 in range(0, queries.shape[0], query_chunk_size):
        block = queries[q0:q0 + query_chunk_size].to(dtype)
        best_scores = torch.empty(block.shape[0], 0, dtype=dtype, device=corpus.device)
        best_ids = torch.empty(block.shape[0], 0, dtype=torch.long, device=corpus.device)
        for c0 in range(0, corpus.shape[0], corpus_chunk_size):
            scores, ids = _block_best(score_function(block, corpus[c0:c0 + corpus_chunk_size].to(dtype)), top_k)
            best_scores, best_ids = _merge(torch.cat([best_scores, scores], 1), torch.cat([best_ids, ids + c0], 1),
                                           top_k)
        for scores, ids in zip(best_scores.tolist(), best_ids.tolist()):
            hits.append([{"corpus_id": i, "score": s} for s, i in zip(scores, ids)])
    return hits


def _block_best(scores: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's best min(top_k, width) columns of one score block, of equal scores the lower columns. topk
    may return any of several columns that tie at its cut, so it is asked for one more: the rows where that one
    ties with the last (rare but for duplicate documents) are redone exactly."""
    k = min(top_k, scores.shape[1])
    values, columns = scores.topk(min(k + 1, scores.shape[1]), dim=1)
    if values.shape[1] > k:
        tied = (values[:, k - 1] == values[:, k]).nonzero().squeeze(1)
        values, columns = values[:, :k].clone(), columns[:, :k].clone()
        if len(tied):
            values[tied], columns[tied] = _exact_best(scores[tied], k)
    return values, columns


def _exact_best(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """_block_best for rows with ties at the cut: every column tying with the k-th is a candidate."""
    keep = scores >= scores.topk(k, dim=1).values[:, -1:]
    width = int(keep.sum(1).max())
    columns = keep.to(torch.uint8).topk(width, dim=1).indices  # every kept column (and, in short rows, others)
    return _merge(scores.gather(1, columns), columns, k)


def _merge(scores: torch.Tensor, ids: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's top_k of a few candidates, by score, then by lower id."""
    order = torch.argsort(ids, dim=1)
    scores, ids = scores.gather(1, order), ids.gather(1, order)
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :top_k]
    return scores.gather(1, order), ids.gather(1, order)
