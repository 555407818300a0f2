"""The extractors on tiny files in each source's real layout (see data_fixtures.py)."""

import gzip

import pytest
from data_fixtures import RESERVED_MARK, write_bible_db, write_handbook, write_lo_help, write_mo

from bembed.data import extract_bible, extract_fortunes, extract_gettext, extract_handbook, extract_lo_help
from bembed.data.extract_manpages import read_pages as read_manpages
from bembed.data.extract_manpages import roff_to_paragraphs


def test_bible_reads_books_up_to_39_only(tmp_path):
    db = tmp_path / "bible.db"
    write_bible_db(db, books=(1, 39, 40, 66))
    docs = list(extract_bible.read_chapters(db, "4"))
    assert {d.doc_id.split(":")[1] for d in docs} == {"1", "39"}
    assert all(RESERVED_MARK not in p for d in docs for p in d.paragraphs)
    assert docs[0].keys == [str(v) for v in range(1, 9)] and docs[0].lang == "en"


def test_bible_refuses_copyrighted_translations(tmp_path):
    db = tmp_path / "bible.db"
    write_bible_db(db)
    with pytest.raises(ValueError, match="code"):
        list(extract_bible.read_chapters(db, "2"))


def test_bible_editorial_marks_removed():
    assert extract_bible.clean_verse("first -[fruits] of [things] *** to  Yahweh * * *") == \
        "first -fruits of things to Yahweh"


def test_lo_help_ids_platform_variants_and_repeats(tmp_path):
    write_lo_help(tmp_path, "en", n_pages=1)
    (doc,) = extract_lo_help.read_pages(tmp_path, "en")
    assert doc.title.startswith("About spreadsheet")
    assert doc.keys == ["hd_id1#0", "par_id1#0", "par_id2#0", "par_id1#1", "par_id3#0"]
    assert doc.paragraphs[2] == "Choose Tools - Options now please."  # MAC variant dropped, default kept
    assert not any("script" in p or "LibreOffice Help" == p for p in doc.paragraphs)
    assert doc.doc_id == "lo-help:shared/page0.html"


def test_lo_help_rejects_unknown_language(tmp_path):
    with pytest.raises(ValueError, match="lang"):
        list(extract_lo_help.read_pages(tmp_path, "fr"))


def test_handbook_nested_paragraphs_stay_separate_and_ordered(tmp_path):
    write_handbook(tmp_path)
    (en,) = extract_handbook.read_pages(tmp_path, "en")
    (de,) = extract_handbook.read_pages(tmp_path, "de")
    assert en.paragraphs == ["The first paragraph about apt sources.", "A nested list item about mirrors.",
                             "The last paragraph about keys."]
    assert en.keys == de.keys == ["0", "1", "2"] and en.doc_id == de.doc_id == "handbook:apt.html"
    assert en.title == "Chapter one title"


def test_gettext_catalog_context_accelerators_header(tmp_path):
    mo = tmp_path / "usr/share/locale/de/LC_MESSAGES/x.mo"
    write_mo(mo, {"~Open a file": "Datei ö~ffnen", "ctx\x04Save it all": "Alles speichern", "Untranslated": ""})
    catalog = extract_gettext.read_catalog(mo)
    assert catalog == {"~Open a file": "Datei ö~ffnen", "Save it all": "Alles speichern"}
    pairs = sorted((p.src, p.tgt) for p in extract_gettext.read_pairs(tmp_path, "x", "de", "~_"))
    assert pairs == [("Open a file", "Datei öffnen"), ("Save it all", "Alles speichern")]


def test_gettext_message_translated_differently_in_its_contexts_is_dropped(tmp_path):
    """The last context's translation used to win: "Select data range" became "Positiven Datenbereich auswählen"
    (one of LibreOffice's contexts). A message its contexts translate alike stays."""
    mo = tmp_path / "usr/share/locale/de/LC_MESSAGES/x.mo"
    write_mo(mo, {"a\x04Select data range": "Datenbereich auswählen",
                  "b\x04Select data range": "Positiven Datenbereich auswählen",
                  "a\x04Close the window": "Fenster schließen", "b\x04Close the window": "Fenster schließen",
                  "Open the file": "Datei öffnen"})
    assert extract_gettext.read_catalog(mo) == {"Close the window": "Fenster schließen", "Open the file": "Datei öffnen"}


@pytest.mark.parametrize("src, tgt, chars, want_src, want_tgt", [
    ("~Open a file", "Datei ö~ffnen", "~_", "Open a file", "Datei öffnen"),
    ("Save _As...", "Speichern _unter...", "~_", "Save As...", "Speichern unter..."),
    ("Value %AVERAGE_VALUE", "Wert %AVERAGE_VALUE", "~_", "Value %AVERAGE_VALUE", "Wert %AVERAGE_VALUE"),
    ("Error ($exception_type$)", "Fehler ($exception_type$)", "~_", "Error ($exception_type$)",
     "Fehler ($exception_type$)"),
    ("Copy to ~/backup", "Nach ~/backup kopieren", "~_", "Copy to ~/backup", "Nach ~/backup kopieren"),
    ("Compare with HEAD~1", "Mit HEAD~1 vergleichen", "~_", "Compare with HEAD~1", "Mit HEAD~1 vergleichen"),
    ("Not NU_LL", "Nicht N_ULL", "~_", "Not NULL", "Nicht NULL"),
    ("_One and _Two", "_Eins und _Zwei", "~_", "One and _Two", "Eins und _Zwei"),  # at most one mark
    ("Run -O shopt_option", "-O shopt_option ausführen", "", "Run -O shopt_option", "-O shopt_option ausführen"),
    ("Dates from AT&T", "Daten von AT&T", "", "Dates from AT&T", "Daten von AT&T"),  # no marks in CLI catalogs
])
def test_gettext_accelerators_only_where_the_catalog_uses_them(src, tgt, chars, want_src, want_tgt):
    assert extract_gettext.strip_accelerator(src, tgt, chars) == want_src
    assert extract_gettext.strip_accelerator(tgt, src, chars) == want_tgt


def test_gettext_skips_corrupt_catalog(tmp_path, caplog):
    bad = tmp_path / "usr/share/locale/de/LC_MESSAGES/bad.mo"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not a catalog at all")
    assert list(extract_gettext.read_pairs(tmp_path, "x", "de")) == []
    assert "bad.mo" in caplog.text


def test_roff_to_paragraphs():
    title, paras = roff_to_paragraphs('.\\" comment\n.TH LS 1 "2022"\n.SH NAME\nls \\- list\n.PP\n'
                                      'Show \\fBfiles\\fP in\nthe \\fIcurrent\\fR directory.\n'
                                      '.BR "ls foo" (1)\n.TP\n\\fB\\-a\\fP all\n')
    assert title == "LS"
    assert paras == ["NAME", "ls - list", "Show files in the current directory. ls foo (1)", "-a all"]


def test_roff_tables_give_their_cells_without_option_and_format_lines():
    source = ("Text before.\n.TS\nallbox tab(:);\nlB lB.\nT{\nName\nT}:T{\nMeaning\nT}\n.T&\nl l\nl l.\n"
              "T{\n\"%a\"\nT}:T{\nDie \\fBArchitektur\\fP des\n.sp\n.B lokalen\nSystems.\nT}\n_\n.TE\nText after.\n")
    assert roff_to_paragraphs(source)[1] == [
        "Text before.", "Name", "Meaning", '"%a"', "Die Architektur des lokalen Systems.", "Text after."]
    assert roff_to_paragraphs(".TS\ncenter;\nl l.\na\tb c d\n.TE\n")[1] == ["a", "b c d"]  # default tab: \t
    assert roff_to_paragraphs(".TS\nl l.\nx\ty\n.TE\n")[1] == ["x", "y"]  # no options line


def test_roff_macro_definitions_equations_and_ignored_blocks_give_nothing():
    source = (".de  URL\n\\fI\\\\$2\\fP <\\\\$1>\n..\n.  am MTO\n.    ad l\n.  .\n.de XX END\nmacro body\n.END\n"
              ".EQ\nx sup 2\n.EN\n.ig\nignored\n..\n.PP\nProse stays here.\n")
    assert roff_to_paragraphs(source)[1] == ["Prose stays here."]


def test_manpages_read_gz_and_drop_short(tmp_path):
    page = tmp_path / "usr/share/man/de/man1/x.1.gz"
    page.parent.mkdir(parents=True)
    page.write_bytes(gzip.compress(b".TH X 1\n.SH NAME\nx \\- ein kleines Programm hier\n.PP\nkurz\n"))
    (doc,) = read_manpages(tmp_path, "de")
    assert doc.paragraphs == ["x - ein kleines Programm hier"] and doc.doc_id == "man:de:man1/x.1.gz"


def test_fortunes_split_join_and_latin1(tmp_path):
    assert extract_fortunes.split_cookies("one two three\nfour\n%\nshort\n%\n") == ["one two three four"]
    f = tmp_path / "usr/share/games/fortunes/de/alt"
    f.parent.mkdir(parents=True)
    f.write_bytes("Größe ist nicht alles hier\n%\n".encode("latin-1"))
    (tmp_path / "usr/share/games/fortunes/de/alt.dat").write_bytes(b"\0\1")
    docs = list(extract_fortunes.read_cookies(tmp_path, "fortunes-de", "de"))
    assert [d.paragraphs for d in docs] == [["Größe ist nicht alles hier"]]


def test_fortunes_skip_the_rot13_offensive_files(tmp_path):
    for rel in ("es/off/sexo", "es/refranes"):
        f = tmp_path / "usr/share/games/fortunes" / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(f"Un refrán bastante largo de {f.name}\n%\n", encoding="utf-8")
    docs = list(extract_fortunes.read_cookies(tmp_path, "fortunes-es", "es"))
    assert [d.doc_id for d in docs] == ["fortune:fortunes-es:es/refranes:0"]


def test_bible_encoding_artifacts_mapped_per_translation():
    assert extract_bible.clean_verse("God`s Spirit said, `Go.`", "4") == "God's Spirit said, 'Go.'"
    assert extract_bible.clean_verse("y dijo: \u00adCuán terrible!", "v") == "y dijo: ¡Cuán terrible!"
    assert extract_bible.clean_verse("soft\u00adhyphen`", "e") == "soft\u00adhyphen`"  # only where it is a mark


def test_bible_hebrew_verse_numbers_removed_and_other_parentheses_kept():
    assert extract_bible.clean_verse("(51:3) O Gott, sei mir gnädig; (51:4) wasche mich!", "s") == \
        "O Gott, sei mir gnädig; wasche mich!"
    kept = "(a shekel is twenty gerahs:) an half"
    assert extract_bible.clean_verse(kept, "k") == kept


def test_bible_psalm_first_verses_dropped_in_every_translation(tmp_path):
    db = tmp_path / "bible.db"
    write_bible_db(db, books=(18, 19, 20), chapters=2)
    for code in extract_bible.TRANSLATIONS:
        docs = {d.doc_id: d for d in extract_bible.read_chapters(db, code)}
        assert docs["bible:19:1"].keys == [str(v) for v in range(2, 9)], code  # headings live in verse 1
        assert docs["bible:19:2"].keys[0] == "2"
        assert docs["bible:18:1"].keys[0] == docs["bible:20:2"].keys[0] == "1"


def test_bible_web_next_psalm_heading_cut_from_the_chapter_before(tmp_path):
    import sqlite3

    db = tmp_path / "bible.db"
    write_bible_db(db, books=(18, 19), chapters=2)
    conn = sqlite3.connect(db)
    conn.execute("UPDATE bible SET vText = vText || ' BOOK I Psalm 1' WHERE bbName = '4' AND bNumber = 18 AND "
                 "cNumber = 2 AND vNumber = 8")
    conn.execute("UPDATE bible SET vText = vText || ' Psalm 2 A Psalm by David, when he fled.' WHERE bbName = '4' "
                 "AND bNumber = 19 AND cNumber = 1 AND vNumber = 8")
    conn.commit()
    conn.close()
    web = {d.doc_id: d for d in extract_bible.read_chapters(db, "4")}
    assert web["bible:18:2"].paragraphs[-1].endswith("were made on this day.")
    assert web["bible:19:1"].paragraphs[-1].endswith("were made on this day.")


def test_a_line_break_separates_the_words_around_it():
    """<br> was dropped with nothing in its place: "toolbar<br>and" became "toolbarand" in 114 English and
    168 German help paragraphs."""
    from bembed.data.html_blocks import read_blocks

    html = ('<html><head><title>T</title></head><body><p id="p1">Click the icon on the toolbar<br>and use the'
            ' mouse.<br/>Done.</p><p id="p2">Writing Aids,<hr>in the dialog; a long<wbr>word</p></body></html>')
    _, blocks = read_blocks(html, lambda tag, attrs: attrs.get("id") if tag == "p" else None)
    assert blocks == [("p1", "Click the icon on the toolbar and use the mouse. Done."),
                      ("p2", "Writing Aids, in the dialog; a longword")]


def test_bible_german_psalm_13_is_dropped_not_misaligned(tmp_path):
    """Elberfelder and Schlachter give Psalm 13's heading a verse of its own: their verse v is WEB's v − 1, so
    every pair of the chapter paired one verse with the next."""
    db = tmp_path / "bible.db"
    write_bible_db(db, books=(19,), chapters=14)
    for code in extract_bible.TRANSLATIONS:
        docs = {d.doc_id for d in extract_bible.read_chapters(db, code)}
        assert ("bible:19:13" in docs) == (code not in ("e", "s")), code
        assert "bible:19:12" in docs and "bible:19:14" in docs
