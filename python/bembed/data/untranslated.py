"""English left untranslated inside the German/Spanish sources.

The localised help and handbook fall back to the English paragraph where a translation is missing, and
man pages and help pages are sometimes English throughout; read as German/Spanish they teach the model
that English is the other language.
"""

from __future__ import annotations

from collections import Counter

from bembed.data.align import normalize
from bembed.data.records import Document, words

STOPWORDS = {
    "en": frozenset("the of and to is in that it for with as are be this by on or not you can from which an if"
                    .split()),
    "de": frozenset("der die das und ist nicht sie zu den mit von für auf ein eine im dem des werden wird oder "
                    "auch es".split()),
    "es": frozenset("el la de que y en los las se del un una por con para es no al lo como más su o".split()),
}
# Under this many words the stopword counts are too small to tell the languages apart.
MIN_WORDS = 8


def looks_english(text: str, lang: str) -> bool:
    """True when ``text`` has at least two English stopwords and more of them than stopwords of ``lang``."""
    w = words(text)
    if len(w) < MIN_WORDS:
        return False
    english = sum(x in STOPWORDS["en"] for x in w)
    own = sum(x in STOPWORDS[lang] for x in w)
    return english >= 2 and english > own


def left_in_english(src: str, tgt: str, tgt_lang: str) -> bool:
    """A translation pair whose target is the English source with small edits (a link, a term, a chapter
    name translated): it looks English and repeats at least three quarters of the source's words. The
    handbook ships ~60 such paragraphs per language; the exact-copy test for untranslated pairs misses them."""
    if not looks_english(tgt, tgt_lang):
        return False
    source_words, target_words = set(words(src)), words(tgt)
    return sum(w in source_words for w in target_words) >= 0.75 * len(target_words)


def drop_english(docs: list[Document], english_docs: list[Document], *, positional: bool = False
                 ) -> tuple[list[Document], Counter]:
    """``docs`` (one non-English language) without untranslated paragraphs: those equal (``align.normalize``)
    to the paragraph with the same key in the English document of the same id and holding an English stopword
    (names, numbers and code are the same in every language), and those that look English.
    A document that loses over half its characters is dropped whole (its title and the rest of its body
    are mostly untranslated too). ``positional`` keys only align documents with equally many paragraphs."""
    english = {d.doc_id: d for d in english_docs if d.keys is not None}
    kept, dropped = [], Counter()
    for doc in docs:
        en = english.get(doc.doc_id)
        if en is None or doc.keys is None or (positional and len(en.paragraphs) != len(doc.paragraphs)):
            en_text = {}
        else:
            en_text = {k: normalize(p) for k, p in zip(en.keys, en.paragraphs)}
        keys = doc.keys or [None] * len(doc.paragraphs)
        paragraphs, new_keys, lost = [], [], 0
        for key, text in zip(keys, doc.paragraphs):
            if key in en_text and en_text[key] == normalize(text) and STOPWORDS["en"].intersection(words(text)):
                dropped["untranslated_paragraphs"] += 1
            elif looks_english(text, doc.lang):
                dropped["english_paragraphs"] += 1
            else:
                paragraphs.append(text)
                new_keys.append(key)
                continue
            lost += len(text)
        if not paragraphs or lost > sum(map(len, doc.paragraphs)) / 2:
            dropped["english_documents"] += 1
            continue
        kept.append(Document(doc.doc_id, doc.lang, doc.source, doc.title, paragraphs,
                             new_keys if doc.keys is not None else None))
    return kept, dropped
