"""The two record types every extractor yields, and the text helpers they share."""

from __future__ import annotations

import dataclasses
import re

_WS = re.compile(r"\s+")
_WORD = re.compile(r"\w+", re.UNICODE)


@dataclasses.dataclass
class Document:
    """A document in one language. ``doc_id`` is language-independent (the same page in en and de shares it)
    so splits and alignments agree across languages; ``keys`` (optional, one per paragraph) align paragraphs
    across languages, e.g. LibreOffice help paragraph ids or Bible verse numbers."""

    doc_id: str
    lang: str
    source: str
    title: str
    paragraphs: list[str]
    keys: list[str] | None = None


@dataclasses.dataclass
class Pair:
    """A translation pair found directly (gettext catalogs), not by aligning documents."""

    doc_id: str
    src: str
    tgt: str
    src_lang: str
    tgt_lang: str
    source: str


def clean(text: str) -> str:
    """Collapse whitespace (including newlines inside a paragraph) and strip."""
    return _WS.sub(" ", text).strip()


def word_count(text: str) -> int:
    return len(_WORD.findall(text))


def words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text)]
