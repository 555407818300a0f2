"""Late chunking: from one encoded document to one vector per chunk.

The document is encoded once, whole, so every token state has seen the entire document; a chunk's
vector is then the float32 mean of the states of the tokens its character span covers. Chunk vectors
therefore carry document context (a pronoun in chunk 3 knows what chunk 1 named), unlike encoding
each chunk alone.

How characters map to tokens: a token belongs to a chunk [start, end) when its character interval
(from the tokenizer's offsets) overlaps the span; a token whose trimmed offsets are empty (a lone
space) counts as covering the one character at its offset (the last character of the text for a
trailing space, whose offset is the text's end). A token that straddles a chunk boundary
belongs to both chunks. The special tokens (and the prompt's tokens, when a prompt is used) have no
place in the text: the leading ones join every chunk that holds the first text token, the trailing
ones every chunk that holds the last kept text token — so a chunk spanning the whole document pools
exactly the tokens `encode` pools, and gives the same vector.
"""

from __future__ import annotations

import numbers

import torch


def check_spans(spans, length: int) -> list[tuple[int, int]]:
    """Validate character spans [(start, end), ...] against a document of `length` characters."""
    if isinstance(spans, (str, bytes)) or not hasattr(spans, "__iter__"):
        raise TypeError(f"chunk_spans must be a sequence of (start, end) character pairs, got {type(spans).__name__}")
    checked = []
    for i, span in enumerate(spans):
        if (isinstance(span, (str, bytes)) or not hasattr(span, "__len__") or len(span) != 2
                or not all(isinstance(x, numbers.Integral) and not isinstance(x, bool) for x in span)):
            raise TypeError(f"chunk_spans[{i}] must be a pair of ints (start, end), got {span!r}")
        start, end = int(span[0]), int(span[1])  # numpy integers too (spans from np.cumsum)
        if not 0 <= start < end <= length:
            raise ValueError(f"chunk_spans[{i}] = {span!r}: need 0 <= start < end <= len(document) = {length}")
        checked.append((start, end))
    if not checked:
        raise ValueError("chunk_spans is empty: give at least one (start, end) span")
    return checked


def _covers(offsets: list[tuple[int, int]], text_begin: int, text_end: int) -> list[tuple[int, int]]:
    """The character interval [start, end) of each text token. An empty (trimmed whitespace) token counts as
    the one character at its offset; at the end of the text that offset is the text's length, and without
    the clamp a document ending in spaces would have a token no span inside the document can reach — the
    trailing specials would then join no chunk, and a whole-document span would differ from encode."""
    limit = max(max(offsets[t]) for t in range(text_begin, text_end))
    return [(s, e) if e > s else (min(s, limit - 1), min(s, limit - 1) + 1)
            for s, e in offsets[text_begin:text_end]]


def token_ranges(offsets: list[tuple[int, int]], text_begin: int, text_end: int, shift: int,
                 spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Token index ranges [lo, hi) for character spans of the document.

    offsets: per token of the encoded sequence, (start, end) in the encoded text; tokens text_begin ..
    text_end - 1 are the document's (kept) text tokens, those before and after are the leading and
    trailing specials/prompt. shift: characters of prompt before the document in the encoded text.
    Raises ValueError naming a chunk that covers no kept token.
    """
    covers = _covers(offsets, text_begin, text_end)
    ranges = []
    for i, (start, end) in enumerate(spans):
        start, end = start + shift, end + shift
        covered = [text_begin + k for k, (lo, hi) in enumerate(covers) if lo < end and hi > start]
        if not covered:
            raise ValueError(f"chunk_spans[{i}] = {spans[i]!r} covers no token of the encoded document "
                             "(only whitespace, or beyond max_length tokens)")
        lo, hi = covered[0], covered[-1] + 1
        if lo == text_begin:
            lo = 0
        if hi == text_end:
            hi = len(offsets)
        ranges.append((lo, hi))
    return ranges


def size_spans(offsets: list[tuple[int, int]], text_begin: int, text_end: int, shift: int,
               chunk_size: int) -> list[tuple[int, int]]:
    """Character spans of consecutive chunks of `chunk_size` text tokens (the last one shorter).

    Tokens covering the same character (the byte tokens of an emoji or of a letter rare in the tokenizer's
    corpus, and a lone space before them) cannot be told apart by character spans: a chunk that would end
    among them takes the rest of them too, so that token_ranges maps the spans back to disjoint ranges
    covering every text token once — not to overlapping or repeated chunks."""
    covers = _covers(offsets, text_begin, text_end)
    spans, lo = [], 0
    while lo < len(covers):
        hi = min(lo + chunk_size, len(covers))
        end = max(e for _, e in covers[lo:hi])
        while hi < len(covers) and covers[hi][0] < end:
            end = max(end, covers[hi][1])
            hi += 1
        spans.append((max(covers[lo][0] - shift, 0), end - shift))
        lo = hi
    return spans


def pool_ranges(states: torch.Tensor, ranges: list[tuple[int, int]]) -> torch.Tensor:
    """(T, H) token states -> (len(ranges), H) float32 means over each [lo, hi) range (prefix sums)."""
    prefix = torch.zeros(states.shape[0] + 1, states.shape[1], dtype=torch.float64, device=states.device)
    torch.cumsum(states.to(torch.float64), dim=0, out=prefix[1:])
    lo = torch.tensor([r[0] for r in ranges], device=states.device)
    hi = torch.tensor([r[1] for r in ranges], device=states.device)
    means = (prefix[hi] - prefix[lo]) / (hi - lo).unsqueeze(-1).to(torch.float64)
    return means.to(torch.float32)
