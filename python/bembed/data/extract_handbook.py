"""The Debian Administrator's Handbook: ``usr/share/doc/debian-handbook/html/<lang>/*.html``.

Each file is one document; its ``div.para`` blocks come in the same sequence in every language, so the
position is the alignment key (a file whose block count differs between languages is not aligned; see
``align.py``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from bembed.data.html_blocks import read_blocks
from bembed.data.records import Document

LANG_DIRS = {"en": "en-US", "de": "de-DE", "es": "es-ES"}


def _is_block(tag: str, attrs: dict) -> str | None:
    return "para" if tag == "div" and "para" in attrs.get("class", "").split() else None


def parse_page(html: str, doc_id: str, lang: str) -> Document:
    title, blocks = read_blocks(html, _is_block)
    paragraphs = [text for _, text in blocks]
    return Document(doc_id=doc_id, lang=lang, source="debian-handbook", title=title, paragraphs=paragraphs,
                    keys=[str(i) for i in range(len(paragraphs))])


def read_pages(source_dir: Path, lang: str) -> Iterator[Document]:
    if lang not in LANG_DIRS:
        raise ValueError(f"lang must be one of {sorted(LANG_DIRS)}, got {lang!r}")
    root = Path(source_dir) / "usr" / "share" / "doc" / "debian-handbook" / "html" / LANG_DIRS[lang]
    for path in sorted(root.glob("*.html")):
        doc = parse_page(path.read_text(encoding="utf-8", errors="replace"), f"handbook:{path.name}", lang)
        if doc.paragraphs:
            yield doc
