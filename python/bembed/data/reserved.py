"""The sources DATA.md reserves for independent evaluation, and the checks that keep them out of bembed's data.

Reserved: Bible books 40–66 (every translation), the ``bibleCrossRef`` table, and the Debian packages
debian-reference-*, gnome-user-docs and installation-guide-*. bembed never reads them: the fetch list is
checked against the package names at import, and the Bible extractor reads through an SQLite authorizer
that denies every table but ``bible`` and a query that stops at book 39. Reserved text quoted elsewhere (a
fortune cookie citing a New Testament verse) is recognised by its reference, `cites_new_testament`: an
unattributed quote could only be found by reading the reserved books.
"""

from __future__ import annotations

import re
import sqlite3

RESERVED_PACKAGE_PREFIXES = ("debian-reference", "gnome-user-docs", "installation-guide")
BIBLE_MAX_BOOK = 39
BIBLE_TABLE = "bible"


def is_reserved_package(name: str) -> bool:
    return name.lower().startswith(RESERVED_PACKAGE_PREFIXES)


def check_package_allowed(name: str) -> None:
    """Raise ValueError if ``name`` is a reserved evaluation package."""
    if is_reserved_package(name):
        raise ValueError(f"package {name!r} is reserved for independent evaluation and must not be used")


def _authorize(action, arg1, arg2, db_name, trigger):
    # Reading any column of any table other than `bible` (e.g. bibleCrossRef) is refused outright.
    if action == sqlite3.SQLITE_READ and arg1 != BIBLE_TABLE and not arg1.startswith("sqlite_"):
        return sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_OK


def open_bible_db(path) -> sqlite3.Connection:
    """Open the Bible database read-only, with reads restricted to the ``bible`` table."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    conn.set_authorizer(_authorize)
    return conn


def check_bible_book(book: int) -> None:
    if not 1 <= int(book) <= BIBLE_MAX_BOOK:
        raise ValueError(f"Bible book {book} is outside books 1–{BIBLE_MAX_BOOK}: books 40–66 are reserved")


# Books 40–66 by their English, German and Spanish names and common abbreviations (numbered books such as
# "1 John" / "II Corinthians" match on the name alone).
_NEW_TESTAMENT_BOOKS = (
    "Matthew|Matt|Mark|Luke|John|Acts|Romans|Rom|Corinthians|Cor|Galatians|Gal|Ephesians|Eph|Philippians|Phil|"
    "Colossians|Col|Thessalonians|Thess|Timothy|Tim|Titus|Philemon|Hebrews|Heb|James|Jas|Peter|Pet|Jude|"
    "Revelations?|Rev|Mt|Mk|Lk|Jn|"
    "Matthäus|Markus|Lukas|Johannes|Joh|Apostelgeschichte|Apg|Römer|Röm|Korinther|Kor|Galater|Epheser|Philipper|"
    "Kolosser|Thessalonicher|Timotheus|Hebräer|Hebr|Jakobus|Jak|Petrus|Petr|Judas|Offenbarung|Offb|"
    "Mateo|Marcos|Lucas|Juan|Hechos|Romanos|Corintios|Gálatas|Efesios|Filipenses|Colosenses|Tesalonicenses|"
    "Timoteo|Tito|Filemón|Hebreos|Santiago|Pedro|Apocalipsis|Ap")
# a book, then chapter and verse: "Romans 13:8", "Markus 13,31", "1 John 4:18", "Matt. 5:37", "Juan 3.16"
_NEW_TESTAMENT_CITATION = re.compile(rf"\b(?:{_NEW_TESTAMENT_BOOKS})\.? ?\d{{1,3}} ?[:,.] ?\d{{1,3}}\b")


def cites_new_testament(text: str) -> bool:
    """Whether ``text`` gives a chapter-and-verse reference to a book of the New Testament (reserved)."""
    return _NEW_TESTAMENT_CITATION.search(text) is not None
