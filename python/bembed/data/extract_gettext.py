"""Translation pairs from gettext ``.mo`` catalogs, read with the standard library's ``gettext`` module.

Sources: the Debian packages of ``sources.GETTEXT_PACKAGES`` (``usr/share/locale/<lang>/LC_MESSAGES``) and
libreoffice-l10n-* (``usr/lib/libreoffice/program/resource/<lang>/LC_MESSAGES``). Each msgid (English) is
its own document, so the same English string lands in one split whichever catalog it came from.
"""

from __future__ import annotations

import gettext
import logging
import re
from collections.abc import Iterator
from pathlib import Path

from bembed.data.records import Pair, clean

log = logging.getLogger(__name__)

_CONTEXT_SEP = "\x04"  # gettext stores msgctxt + "\x04" + msgid
# Menu accelerators per source family: LibreOffice marks them "~Open" (VCL) and "_Open" (GTK dialogs); the
# command-line tools' catalogs have none, and there "_", "~" and "&" belong to identifiers, paths and prose.
ACCELERATORS = {"lo_l10n": "~_", "gettext": ""}
_TOKEN = re.compile(r"[\w~]+")
_IDENTIFIER = re.compile(r"[A-Z0-9]+(_[A-Z0-9]+)+|[a-z0-9]+(_[a-z0-9]+)+")


def _is_accelerator(text: str, i: int, other: str) -> bool:
    """Whether ``text[i]`` marks an accelerator rather than belonging to a token such as %AVERAGE_VALUE, or
    $exception_type$, kept verbatim in the other side ("Ma_ximum" is a mark even where both sides share it)."""
    after = text[i + 1:i + 2]
    if not (after.isalpha() or text[i] == "_" and after.isdigit()):
        return False  # "~/path", "HEAD~1", a trailing "_"; GTK's "Line _1" is a mark
    token = next(m.group() for m in _TOKEN.finditer(text) if m.start() <= i < m.end())
    return not (_IDENTIFIER.fullmatch(token) and token in _TOKEN.findall(other))


def strip_accelerator(text: str, other: str, chars: str) -> str:
    """``text`` without its accelerator mark (at most one, from ``chars``); ``other`` is the other side of
    the pair, where an identifier recurs unchanged."""
    for i, ch in enumerate(text):
        if ch in chars and _is_accelerator(text, i, other):
            return clean(text[:i] + text[i + 1:])
    return clean(text)


def read_catalog(path: Path) -> dict[str, str]:
    """msgid → msgstr of one .mo file (plural forms: the singular); untranslated entries are omitted, and so is
    a message that its contexts (msgctxt) translate differently: without its context neither translation is the
    pair ("Select data range" is also "Positiven Datenbereich auswählen" in LibreOffice's German)."""
    with open(path, "rb") as f:
        catalog = gettext.GNUTranslations(f)._catalog  # the parsed table; there is no public accessor
    translations: dict[str, list[str]] = {}
    for key, value in catalog.items():
        if isinstance(key, tuple):
            if key[1] != 0:
                continue
            key = key[0]
        if not key or not value:
            continue  # the header entry, or untranslated
        translations.setdefault(key.split(_CONTEXT_SEP, 1)[-1], []).append(value)
    return {msgid: values[0] for msgid, values in translations.items() if len(set(values)) == 1}


def catalog_paths(source_dir: Path, lang: str) -> list[Path]:
    root = Path(source_dir)
    patterns = [f"usr/share/locale/{lang}/LC_MESSAGES/*.mo",
                f"usr/lib/libreoffice/program/resource/{lang}/LC_MESSAGES/*.mo"]
    return sorted(p for pattern in patterns for p in root.glob(pattern))


def read_pairs(source_dir: Path, package: str, lang: str, accelerators: str = "") -> Iterator[Pair]:
    """English → ``lang`` pairs from every catalog of one unpacked package, accelerator marks (characters
    of ``accelerators``, see ACCELERATORS) stripped."""
    for path in catalog_paths(source_dir, lang):
        try:
            catalog = read_catalog(path)
        except (OSError, UnicodeDecodeError) as exc:  # a corrupt catalog should not end the build
            log.warning("skipping unreadable catalog %s: %s", path, exc)
            continue
        for msgid, msgstr in catalog.items():
            src = strip_accelerator(msgid, msgstr, accelerators)
            tgt = strip_accelerator(msgstr, msgid, accelerators)
            if src and tgt:
                yield Pair(doc_id=f"gettext:{src}", src=src, tgt=tgt, src_lang="en", tgt_lang=lang,
                           source=f"gettext-{package}")
