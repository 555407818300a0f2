"""Fortune cookies: ``%``-separated plain text under ``usr/share/games/fortunes``; one cookie = one document."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from bembed.data.records import Document, clean, word_count
from bembed.data.reserved import cites_new_testament

_SKIP_FILES = {"ascii-art"}  # pictures, not prose
_OFFENSIVE = "off"  # fortunes-es ships its offensive cookies ROT13-encoded: not Spanish prose
_MIN_WORDS = 3


def split_cookies(text: str) -> list[str]:
    """Cookies of one file; lines of a cookie are joined (they are hard-wrapped prose)."""
    cookies, current = [], []
    for line in text.splitlines():
        if line.strip() == "%":
            cookies.append(current)
            current = []
        else:
            current.append(line)
    cookies.append(current)
    return [c for c in (clean(" ".join(lines)) for lines in cookies) if word_count(c) >= _MIN_WORDS]


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")  # older German/Spanish cookie files


def read_cookies(source_dir: Path, package: str, lang: str) -> Iterator[Document]:
    root = Path(source_dir) / "usr" / "share" / "games" / "fortunes"
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if (not path.is_file() or path.is_symlink() or path.suffix == ".dat" or path.name in _SKIP_FILES
                or _OFFENSIVE in rel.parts):
            continue
        rel = rel.as_posix()
        for i, cookie in enumerate(split_cookies(_decode(path.read_bytes()))):
            if cites_new_testament(cookie):  # a quoted verse of books 40–66: reserved text (reserved.py)
                continue
            yield Document(doc_id=f"fortune:{package}:{rel}:{i}", lang=lang, source=package, title="",
                           paragraphs=[cookie])
