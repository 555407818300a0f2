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
_ACCEL = re.compile(r"~|&(?=\w)|_(?=\w)")  # menu accelerators: "~Open", "&File", "_Save"


def _strip_ui(text: str) -> str:
    return clean(_ACCEL.sub("", text))


def read_catalog(path: Path) -> dict[str, str]:
    """msgid → msgstr of one .mo file (plural forms: the singular); untranslated entries are omitted."""
    with open(path, "rb") as f:
        catalog = gettext.GNUTranslations(f)._catalog  # the parsed table; there is no public accessor
    out: dict[str, str] = {}
    for key, value in catalog.items():
        if isinstance(key, tuple):
            if key[1] != 0:
                continue
            key = key[0]
        if not key or not value:
            continue  # the header entry, or untranslated
        out[key.split(_CONTEXT_SEP, 1)[-1]] = value
    return out


def catalog_paths(source_dir: Path, lang: str) -> list[Path]:
    root = Path(source_dir)
    patterns = [f"usr/share/locale/{lang}/LC_MESSAGES/*.mo",
                f"usr/lib/libreoffice/program/resource/{lang}/LC_MESSAGES/*.mo"]
    return sorted(p for pattern in patterns for p in root.glob(pattern))


def read_pairs(source_dir: Path, package: str, lang: str) -> Iterator[Pair]:
    """English → ``lang`` pairs from every catalog of one unpacked package."""
    for path in catalog_paths(source_dir, lang):
        try:
            catalog = read_catalog(path)
        except (OSError, UnicodeDecodeError) as exc:  # a corrupt catalog should not end the build
            log.warning("skipping unreadable catalog %s: %s", path, exc)
            continue
        for msgid, msgstr in catalog.items():
            src, tgt = _strip_ui(msgid), _strip_ui(msgstr)
            if src and tgt:
                yield Pair(doc_id=f"gettext:{src}", src=src, tgt=tgt, src_lang="en", tgt_lang=lang,
                           source=f"gettext-{package}")
