"""The reserved evaluation sources (DATA.md) are structurally unreachable: fail here if that changes."""

import sqlite3
import subprocess

import pytest
from data_fixtures import RESERVED_MARK, fake_cache

from bembed.data import extract_bible, reserved, sources
from bembed.data.build import build


@pytest.mark.parametrize("name", ["debian-reference-en", "debian-reference-de", "gnome-user-docs",
                                  "installation-guide-amd64", "Installation-Guide-arm64"])
def test_reserved_packages_refused(name):
    assert reserved.is_reserved_package(name)
    with pytest.raises(ValueError, match="reserved"):
        reserved.check_package_allowed(name)


def test_fetch_list_has_no_reserved_package():
    assert not [s.package for s in sources.SOURCES if reserved.is_reserved_package(s.package)]


def test_fetch_refuses_reserved_before_downloading(tmp_path, monkeypatch):
    def no_subprocess(*args, **kwargs):
        raise AssertionError("a reserved package reached the download client")

    monkeypatch.setattr(subprocess, "run", no_subprocess)
    bad = sources.Source("debian-reference-en", "1", "deb", "handbook", ("en",))
    with pytest.raises(ValueError, match="reserved"):
        sources.fetch_source(tmp_path, bad)


def test_bible_connection_cannot_read_cross_references(tmp_path):
    from data_fixtures import write_bible_db

    db = tmp_path / "bible.db"
    write_bible_db(db)
    conn = reserved.open_bible_db(db)
    with pytest.raises(sqlite3.DatabaseError):
        conn.execute("SELECT * FROM bibleCrossRef").fetchall()
    assert conn.execute("SELECT count(*) FROM bible").fetchone()[0] > 0


def test_bible_query_stops_at_book_39():
    assert f"BETWEEN 1 AND {reserved.BIBLE_MAX_BOOK}" in extract_bible.QUERY and reserved.BIBLE_MAX_BOOK == 39
    with pytest.raises(ValueError, match="reserved"):
        reserved.check_bible_book(40)


@pytest.mark.parametrize("text, cites", [
    ("Owe no man any thing... -- Romans 13:8", True), ("There is no fear in love. -- 1 John 4:18", True),
    ("eigentlich Markus 13,31", True), ("Matthäus 28:19", True), ("(Matt. 5:37)", True),
    ("II Corinthians 3:1-2", True), ("Juan 3.16", True), ("-- Revelation 21:8", True), ("Apocalipsis 21:4", True),
    # the Old Testament (books 1–39) is not reserved, and a name with a number is not a reference
    ("Our authority is Isaiah 30:26", False), ("Genesis 1:1", False), ("John 3 times a day", False),
    ("at 10:30 with Mark", False), ("Peter ran 10:20", False)])
def test_new_testament_references_are_recognised(text, cites):
    assert reserved.cites_new_testament(text) is cites


def test_built_datasets_contain_no_reserved_text(tmp_path):
    """End to end: the fake Bible has books 40 and a cross-reference row, all marked, and a fortune cookie quotes
    a New Testament verse with its reference (real ones do: Romans 13:8, John 11:43-44); none may come out."""
    load_from_disk = pytest.importorskip("datasets").load_from_disk

    cache = fake_cache(tmp_path / "cache")
    (cache / "sources" / "fortunes-de" / "usr/share/games/fortunes/de" / "zitate").write_text(
        f"Himmel und Erde werden vergehen {RESERVED_MARK}. -- eigentlich Markus 13,31\n%\n", encoding="utf-8")
    build(cache, tmp_path / "out", "en-de")
    for path in (tmp_path / "out" / "en-de").iterdir():
        if path.is_dir():
            for split in load_from_disk(str(path)).values():
                for row in split:
                    assert RESERVED_MARK not in repr(row), f"reserved text in {path.name}"
                    assert not str(row.get("doc_id", "")).startswith("bible:40")
