"""The sources DATA.md reserves for independent evaluation, and the checks that keep them out of bembed's data.

Reserved: Bible books 40–66 (every translation), the ``bibleCrossRef`` table, and the Debian packages
debian-reference-*, gnome-user-docs and installation-guide-*. bembed never reads them: the fetch list is
checked against the package names at import, and the Bible extractor reads through an SQLite authorizer
that denies every table but ``bible`` and a query that stops at book 39.
"""

from __future__ import annotations

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
