"""Turning documents into translation pairs, and the pair cleaning every parallel source goes through."""

from __future__ import annotations

import html
import re
import unicodedata
from collections.abc import Iterable

from bembed.data.records import Document, Pair, clean, word_count

MIN_WORDS = 3
_PUNCTUATION = re.compile(r"[^\w\s]+")


def align_documents(src_docs: Iterable[Document], tgt_docs: Iterable[Document], *, positional: bool = False
                    ) -> list[Pair]:
    """Pair paragraphs with equal keys in documents with equal ids. With ``positional`` keys are positions,
    which only align when both documents have the same number of paragraphs; others are skipped."""
    tgt_by_id = {d.doc_id: d for d in tgt_docs}
    pairs = []
    for src in src_docs:
        tgt = tgt_by_id.get(src.doc_id)
        if tgt is None or src.keys is None or tgt.keys is None:
            continue
        if positional and len(src.paragraphs) != len(tgt.paragraphs):
            continue
        tgt_text = dict(zip(tgt.keys, tgt.paragraphs))
        for key, text in zip(src.keys, src.paragraphs):
            if key in tgt_text:
                pairs.append(Pair(doc_id=src.doc_id, src=text, tgt=tgt_text[key], src_lang=src.lang,
                                  tgt_lang=tgt.lang, source=src.source))
    return pairs


def normalize(text: str) -> str:
    """The form texts are compared in: untranslated, duplicate and leaked text is equal here, also when it
    differs only in case, punctuation, HTML entities or Unicode compatibility forms ("Basic." ≡ "basic")."""
    return clean(_PUNCTUATION.sub(" ", unicodedata.normalize("NFKC", html.unescape(text)))).casefold()


def clean_pairs(pairs: Iterable[Pair], min_words: int = MIN_WORDS, prefer=None) -> tuple[list[Pair], dict[str, int]]:
    """Drop pairs with a side under ``min_words`` words, untranslated pairs (sides equal under ``normalize``)
    and duplicates (``dedupe``, keeping the copy ``prefer`` ranks first). Returns the kept pairs and drop
    counts."""
    candidates, dropped = [], {"short": 0, "untranslated": 0}
    for p in pairs:
        src, tgt = clean(p.src), clean(p.tgt)
        if word_count(src) < min_words or word_count(tgt) < min_words:
            dropped["short"] += 1
        elif normalize(src) == normalize(tgt):
            dropped["untranslated"] += 1
        else:
            candidates.append(Pair(p.doc_id, src, tgt, p.src_lang, p.tgt_lang, p.source))
    kept, dropped["duplicate"] = dedupe(candidates, lambda p: (p.src, p.tgt), prefer)
    return kept, dropped


def dedupe(rows: Iterable, key_of, prefer=None) -> tuple[list, int]:
    """``rows`` without those whose ``key_of(row)`` texts equal an earlier row's under ``normalize``; returns
    the kept rows and how many were dropped. ``prefer(row)``, when given, orders the rows first (stably), so
    of the copies the one it ranks lowest is kept: the build keeps a train copy over a test one, else the
    test row would stay while the training set lost every copy of its text, and no leak check could see it."""
    if prefer is not None:
        rows = sorted(rows, key=prefer)
    kept, seen, dropped = [], set(), 0
    for row in rows:
        key = tuple(normalize(t) for t in key_of(row))
        if key in seen:
            dropped += 1
        else:
            seen.add(key)
            kept.append(row)
    return kept, dropped


def _normalize_key(key: str | tuple) -> str | tuple:
    return tuple(map(normalize, key)) if isinstance(key, tuple) else normalize(key)


def remove_leaks(by_split: dict[str, list], texts_of, also_trained_on: Iterable[str] = ()) -> int:
    """Drop validation/test rows sharing a text with a train row (the same sentence recurs in several
    documents, e.g. LibreOffice boilerplate). ``texts_of(row)`` gives a row's texts, or tuples of texts
    compared as a whole (pair keys); those another set trains on can be added as ``also_trained_on``.
    Returns rows dropped."""
    train_texts = {_normalize_key(t) for row in by_split.get("train", []) for t in texts_of(row)}
    train_texts.update(_normalize_key(t) for t in also_trained_on)
    dropped = 0
    for split in ("validation", "test"):
        rows = by_split.get(split, [])
        keep = [r for r in rows if not any(_normalize_key(t) in train_texts for t in texts_of(r))]
        dropped += len(rows) - len(keep)
        by_split[split] = keep
    return dropped
