"""LibreOffice help pages: ``usr/share/libreoffice/help/<lang>/text/**.html``.

Every paragraph and heading carries an ``id`` that is the same in every language, so (page, id, occurrence)
aligns paragraphs; the page path below ``text/`` is the language-independent document id. Platform variants
(``<span hidden>`` for MAC etc.) are dropped, keeping the ``default...`` one, the same in every language.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from bembed.data.html_blocks import read_blocks
from bembed.data.records import Document

LANG_DIRS = {"en": "en-US", "de": "de", "es": "es"}
_BLOCK_TAGS = {"p", "h1", "h2", "h3", "h4", "h5", "h6"}


def _is_block(tag: str, attrs: dict) -> str | None:
    return attrs.get("id") if tag in _BLOCK_TAGS and attrs.get("id") else None


def _skip(tag: str, attrs: dict) -> bool:
    return "hidden" in attrs and not attrs.get("id", "").startswith("default")


def parse_page(html: str, doc_id: str, lang: str) -> Document:
    title, blocks = read_blocks(html, _is_block, _skip)
    seen: Counter = Counter()
    keys, paragraphs = [], []
    for key, text in blocks:
        keys.append(f"{key}#{seen[key]}")  # ids repeat when a page embeds a shared section
        seen[key] += 1
        paragraphs.append(text)
    return Document(doc_id=doc_id, lang=lang, source="libreoffice-help", title=title,
                    paragraphs=paragraphs, keys=keys)


def read_pages(source_dir: Path, lang: str) -> Iterator[Document]:
    if lang not in LANG_DIRS:
        raise ValueError(f"lang must be one of {sorted(LANG_DIRS)}, got {lang!r}")
    root = Path(source_dir) / "usr" / "share" / "libreoffice" / "help" / LANG_DIRS[lang] / "text"
    for path in sorted(root.rglob("*.html")):
        doc_id = "lo-help:" + path.relative_to(root).as_posix()
        doc = parse_page(path.read_text(encoding="utf-8", errors="replace"), doc_id, lang)
        if doc.paragraphs:
            yield doc
