"""A constructed graded similarity set from aligned Bible verses — NOT human-graded; labelled "constructed"
in every row (``origin``) and wherever it is reported.

Levels follow the wording of the SemEval STS annotation scale, each produced by a rule:
  5 paraphrase      verse v in translation A vs verse v in translation B (same meaning, other wording)
  3 partial         A[v] vs B[v] + B[v+1]: all of A is there, but as much new content is added
                    ("roughly equivalent, some important information differs/missing")
  2 half overlap    A[v] + A[v+1] vs B[v+1] + B[v+2]: half of each side is shared ("not equivalent, but
                    share some details")
  1 same chapter    A[v] vs B[w], |w − v| ≥ 3 in the same chapter ("not equivalent, but on the same topic")
  0 random          A[v] vs a verse of another chapter of the same split ("different topic")
One level per anchor verse, drawn by a per-chapter seeded RNG; partners never cross the split boundary. A
level-1 or level-0 partner that reads like the anchor's own translation (a verse repeated word for word, as in
Numbers 7) is dropped: it would score 1 or 0 what the paraphrase level scores 5.
"""

from __future__ import annotations

import hashlib
import random

from bembed.data.align import normalize
from bembed.data.records import Document

LEVELS = {"paraphrase": 5.0, "partial": 3.0, "half_overlap": 2.0, "same_chapter": 1.0, "random": 0.0}
ORIGIN = "constructed"


def _rng(doc_id: str, salt: str) -> random.Random:
    return random.Random(int.from_bytes(hashlib.sha256(f"{salt}\0{doc_id}".encode()).digest()[:8], "big"))


def build_sts(chapters_a: list[Document], chapters_b: list[Document], salt: str = "bembed-sts") -> list[dict]:
    """Rows (sentence1, sentence2, score, level, lang1, lang2, doc_id, origin) from two translations'
    chapters of ONE split. Chapters are matched by doc_id, verses by key."""
    b_by_id = {d.doc_id: d for d in chapters_b}
    matched = [(a, b_by_id[a.doc_id]) for a in chapters_a if a.doc_id in b_by_id]
    rows = []
    for a, b in matched:
        b_text = dict(zip(b.keys, b.paragraphs))
        verses = [(k, t, b_text[k]) for k, t in zip(a.keys, a.paragraphs) if k in b_text]
        others = [d for _, d in matched if d.doc_id != a.doc_id]
        rng = _rng(f"{a.doc_id}\0{a.source}\0{b.source}", salt)
        for i, (_, a_v, b_v) in enumerate(verses):
            level = rng.choice(list(LEVELS))
            if level == "paraphrase":
                s1, s2 = a_v, b_v
            elif level == "partial" and i + 1 < len(verses):
                s1, s2 = a_v, f"{b_v} {verses[i + 1][2]}"
            elif level == "half_overlap" and i + 2 < len(verses):
                s1, s2 = f"{a_v} {verses[i + 1][1]}", f"{verses[i + 1][2]} {verses[i + 2][2]}"
            elif level == "same_chapter" and len(verses) > 6:
                far = [j for j in range(len(verses)) if abs(j - i) >= 3]
                s1, s2 = a_v, verses[rng.choice(far)][2]
            elif level == "random" and others:
                other = rng.choice(others)
                s1, s2 = a_v, rng.choice(other.paragraphs)
            else:
                continue  # level not constructible at this verse (chapter end, short chapter, one chapter)
            if LEVELS[level] <= 1.0 and normalize(s2) in (normalize(a_v), normalize(b_v)):
                continue
            rows.append({"sentence1": s1, "sentence2": s2, "score": LEVELS[level], "level": level,
                         "lang1": a.lang, "lang2": b.lang, "doc_id": a.doc_id, "origin": ORIGIN})
    return rows
