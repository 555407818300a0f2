"""Okapi BM25 over an in-memory corpus (standard library only), for mining hard negatives."""

from __future__ import annotations

import math
from collections import Counter, defaultdict

from bembed.data.records import words


class BM25:
    """score(q, d) = Σ_{t∈q} idf(t) · tf(t,d)(k1+1) / (tf(t,d) + k1(1 − b + b·|d|/avgdl)),
    idf(t) = ln(1 + (N − df(t) + 0.5)/(df(t) + 0.5))."""

    def __init__(self, corpus: list[str], k1: float = 1.5, b: float = 0.75):
        if not corpus:
            raise ValueError("corpus must not be empty")
        self.k1, self.b = k1, b
        self.postings: dict[str, list[tuple[int, int]]] = defaultdict(list)
        self.lengths = []
        for i, text in enumerate(corpus):
            tokens = words(text)
            self.lengths.append(len(tokens))
            for term, tf in Counter(tokens).items():
                self.postings[term].append((i, tf))
        n = len(corpus)
        self.avgdl = max(sum(self.lengths) / n, 1e-9)
        self.idf = {t: math.log(1 + (n - len(p) + 0.5) / (len(p) + 0.5)) for t, p in self.postings.items()}

    def scores(self, query: str) -> dict[int, float]:
        """Non-zero scores of the documents sharing a term with ``query``."""
        out: dict[int, float] = defaultdict(float)
        for term in set(words(query)):
            idf = self.idf.get(term)
            if idf is None:
                continue
            for i, tf in self.postings[term]:
                norm = self.k1 * (1 - self.b + self.b * self.lengths[i] / self.avgdl)
                out[i] += idf * tf * (self.k1 + 1) / (tf + norm)
        return out

    def top(self, query: str, k: int, exclude: set[int] = frozenset()) -> list[int]:
        """Indices of the ``k`` best-scoring documents, ties broken by index, skipping ``exclude``."""
        ranked = sorted(((-s, i) for i, s in self.scores(query).items() if i not in exclude))
        return [i for _, i in ranked[:k]]
