"""Prose from translated man pages (manpages-de, manpages-es): roff source under ``usr/share/man/<lang>/``.

A deliberately small roff reader: font/escape sequences are removed, text-carrying macros (.SH, .B, .I,
.BR, ...) keep their text, paragraph macros start a new paragraph, every other request line is dropped.
Good enough for prose; tables (tbl) and equations come through as noisy text and are filtered by length.
"""

from __future__ import annotations

import gzip
import re
from collections.abc import Iterator
from pathlib import Path

from bembed.data.records import Document, clean, word_count

_ESCAPES = [
    (re.compile(r"\\f(\[[^\]]*\]|\(..|.)"), ""),      # font changes \fB \f(CW \f[I]
    (re.compile(r"\\s[+-]?\d+"), ""),                  # size changes
    (re.compile(r"\\\*(\(..|\[[^\]]*\]|.)"), ""),      # string interpolation
    (re.compile(r"\\\((aq|cq)"), "'"),
    (re.compile(r"\\\((lq|rq|dq)"), '"'),
    (re.compile(r"\\\((em|en)"), "—"),
    (re.compile(r"\\\(..|\\\[[^\]]*\]"), ""),          # other named glyphs
    (re.compile(r"\\[-]"), "-"),
    (re.compile(r"\\[&/,:%|^]"), ""),                  # zero-width escapes
    (re.compile(r"\\e"), "\\\\"),
    (re.compile(r"\\(.)"), r"\1"),
]
_TEXT_MACROS = {"SH", "SS", "B", "I", "BR", "RB", "BI", "IB", "IR", "RI", "SM", "SB", "UR", "MT"}
_BREAK_MACROS = {"PP", "P", "LP", "IP", "TP", "HP", "SH", "SS", "sp", "br", "RS", "RE", "EX", "EE", "nf", "fi"}
_MIN_WORDS = 3


def unescape(line: str) -> str:
    for pattern, repl in _ESCAPES:
        line = pattern.sub(repl, line)
    return line


def _macro_text(args: str) -> str:
    # Alternating-font macros take quoted arguments: .BR "foo bar" (1) -> foo bar(1)
    parts = re.findall(r'"([^"]*)"|(\S+)', args)
    return " ".join(a or b for a, b in parts)


def roff_to_paragraphs(source: str) -> tuple[str, list[str]]:
    """Return (title, paragraphs) of one man page's roff text."""
    title, paragraphs, current = "", [], []

    def flush():
        text = clean(" ".join(current))
        if text:
            paragraphs.append(text)
        current.clear()

    for raw in source.splitlines():
        if raw.startswith(('.\\"', "'\\\"", '\\"')):
            continue
        if raw.startswith((".", "'")):
            name, _, args = raw[1:].strip().partition(" ")
            if name == "TH":
                title = _macro_text(args).split(" ")[0]
            if name in _BREAK_MACROS:
                flush()
            if name in _TEXT_MACROS:
                text = unescape(_macro_text(args))
                (paragraphs.append(clean(text)) if name in {"SH", "SS"} and text.strip() else current.append(text))
            continue
        current.append(unescape(raw))
    flush()
    return title, paragraphs


def read_pages(source_dir: Path, lang: str) -> Iterator[Document]:
    root = Path(source_dir) / "usr" / "share" / "man" / lang
    for path in sorted(root.rglob("*")):
        if not path.is_file() or path.is_symlink():
            continue
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        title, paragraphs = roff_to_paragraphs(raw.decode("utf-8", errors="replace"))
        paragraphs = [p for p in paragraphs if word_count(p) >= _MIN_WORDS]
        if paragraphs:
            rel = path.relative_to(root).as_posix()
            yield Document(doc_id=f"man:{lang}:{rel}", lang=lang, source=f"manpages-{lang}", title=title,
                           paragraphs=paragraphs)
