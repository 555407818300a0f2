"""Prose from translated man pages (manpages-de, manpages-es): roff source under ``usr/share/man/<lang>/``.

A deliberately small roff reader: font/escape sequences are removed, text-carrying macros (.SH, .B, .I,
.BR, ...) keep their text, paragraph macros start a new paragraph, every other request line is dropped.
Tables (tbl, .TS/.TE) give each cell as a paragraph, without their option and format lines, so prose
cells stay and label cells fall to the length filter; equations (.EQ/.EN), macro definitions (.de) and
ignored blocks (.ig) give nothing.
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
# Blocks that hold no text, by opening request -> the request that closes them (".." is the request ".")
_SKIPPED_BLOCKS = {"EQ": "EN", "de": ".", "de1": ".", "am": ".", "ig": "."}
_TABLE_RULES = {"_", "=", "\\_", "\\="}  # cells that draw a horizontal line


def unescape(line: str) -> str:
    for pattern, repl in _ESCAPES:
        line = pattern.sub(repl, line)
    return line


def _macro_text(args: str) -> str:
    # Alternating-font macros take quoted arguments: .BR "foo bar" (1) -> foo bar(1)
    parts = re.findall(r'"([^"]*)"|(\S+)', args)
    return " ".join(a or b for a, b in parts)


def _request(line: str) -> tuple[str, str]:
    """(name, arguments) of a request line; roff allows blanks after the control character (".  am URL")."""
    name, _, args = line[1:].strip().partition(" ")
    return name, args.strip()


def _block_end(name: str, args: str) -> str:
    """The request that closes a skipped block: ".de NAME END" and ".ig END" may name their own."""
    named = args.split()[:1] if name == "ig" else args.split()[1:2] if name != "EQ" else []
    return named[0] if named else _SKIPPED_BLOCKS[name]


def _table_cells(lines: list[str]) -> list[str]:
    """The text of each cell of one tbl table (the lines between .TS and .TE), in reading order.

    Options (``allbox tab(:);``) and format lines (``l l l.``, again after each ``.T&``) are skipped;
    data rows split at the tab character; ``T{`` … ``T}`` text blocks may span lines and hold requests.
    """
    tab, cells, block, in_format = "\t", [], None, True
    if lines and lines[0].rstrip().endswith(";"):
        found = re.search(r"tab\s*\((.)\)", lines[0])
        tab = found.group(1) if found else tab
        lines = lines[1:]
    for line in lines:
        if block is not None:
            if not line.startswith("T}"):
                if not line.startswith((".", "'")):
                    block.append(line)
                elif _request(line)[0] in _TEXT_MACROS:
                    block.append(_macro_text(_request(line)[1]))
                continue
            cells.append(" ".join(block))
            block, line = None, line[2:].removeprefix(tab)  # "T}:T{" closes one block, opens the next
        elif line.startswith((".", "'")):
            in_format = in_format or _request(line)[0] == "T&"
            continue
        elif in_format:
            in_format = not line.rstrip().endswith(".")
            continue
        for cell in line.split(tab):
            if cell == "T{":
                block = []
            elif cell.strip() not in _TABLE_RULES:
                cells.append(cell)
    return [unescape(c) for c in cells]


def roff_to_paragraphs(source: str) -> tuple[str, list[str]]:
    """Return (title, paragraphs) of one man page's roff text."""
    title, paragraphs, current = "", [], []
    table: list[str] | None = None  # lines of the open .TS table
    skip_until = None  # end line of an open .EQ / .de / .ig block

    def flush():
        text = clean(" ".join(current))
        if text:
            paragraphs.append(text)
        current.clear()

    for raw in source.splitlines():
        if skip_until is not None:
            if raw.startswith((".", "'")) and _request(raw)[0] == skip_until:
                skip_until = None
            continue
        if table is not None:
            if raw.startswith((".TE", "'TE")):
                paragraphs.extend(text for text in map(clean, _table_cells(table)) if text)
                table = None
            else:
                table.append(raw)
            continue
        if raw.startswith(('.\\"', "'\\\"", '\\"')):
            continue
        if raw.startswith((".", "'")):
            name, args = _request(raw)
            if name in _SKIPPED_BLOCKS:
                skip_until = _block_end(name, args)
                continue
            if name == "TS":
                flush()
                table = []
                continue
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
