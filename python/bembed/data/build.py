"""`bembed data build`: turn the fetched sources into `datasets` on disk for one language pair.

Writes ``<out>/<pair>/`` with one ``DatasetDict`` (train/validation/test) per set:
  mono_<lang>      monolingual documents (``text`` = paragraphs joined by blank lines) for tokenizer/MLM
  parallel         translation pairs (src = English)
  pairs            stage-2 monolingual pairs: title → body, adjacent paragraphs, verse ↔ other translation
  retrieval        stage-3 triples (query, positive, negatives) with BM25 hard negatives, mono + cross-lingual
  sts_constructed  the constructed graded similarity set (see constructed_sts.py)
plus ``counts.json`` (rows per set and split, and what cleaning dropped) and ``manifest.json`` (source
versions, split fractions). Every split is decided by the document id (split.py).
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from pathlib import Path

from bembed.data import (extract_bible, extract_fortunes, extract_gettext, extract_handbook, extract_lo_help,
                         extract_manpages)
from bembed.data.align import align_documents, clean_pairs, dedupe, normalize, remove_leaks
from bembed.data.constructed_sts import build_sts
from bembed.data.records import Document, Pair
from bembed.data.sources import MARKER, fetched_sources
from bembed.data.split import DEFAULT_FRACTIONS, SPLITS, split_of
from bembed.files import write_json_atomic
from bembed.data.triples import (adjacent_pairs, mine_negatives_with_encoder, retrieval_triples, title_body_pairs,
                                 translation_paraphrase_pairs)
from bembed.data.untranslated import drop_english, left_in_english

log = logging.getLogger(__name__)

PAIRS = ("en-de", "en-es")
# A second public-domain translation of the same language, for paraphrase pairs and monolingual STS.
SECOND_TRANSLATION = {"en": "3", "de": "s"}  # BBE, Schlachter 1951


def _lo_help(cache: Path, lang: str) -> list[Document]:
    return [d for s, p in fetched_sources(cache, "lo_help") if lang in s.langs
            for d in extract_lo_help.read_pages(p, lang)]


def _handbook(cache: Path, lang: str) -> list[Document]:
    return [d for _, p in fetched_sources(cache, "handbook") for d in extract_handbook.read_pages(p, lang)]


def _bible(cache: Path, code: str) -> list[Document]:
    return [d for _, p in fetched_sources(cache, "bible")
            for d in extract_bible.read_chapters(extract_bible.bible_db_path(p), code)]


def _prose(cache: Path, lang: str) -> list[Document]:
    """Monolingual-only sources: man pages and fortune cookies (duplicate cookies, compared as every text is,
    up to case and punctuation, dropped)."""
    docs = [d for s, p in fetched_sources(cache, "manpages") if lang in s.langs
            for d in extract_manpages.read_pages(p, lang)]
    seen = set()
    for s, p in fetched_sources(cache, "fortunes"):
        if lang in s.langs:
            for d in extract_fortunes.read_cookies(p, s.package, lang):
                if normalize(d.paragraphs[0]) not in seen:
                    seen.add(normalize(d.paragraphs[0]))
                    docs.append(d)
    return docs


def _gettext(cache: Path, lang: str) -> list[Pair]:
    return [pair for s, p in [*fetched_sources(cache, "gettext"), *fetched_sources(cache, "lo_l10n")]
            if lang in s.langs
            for pair in extract_gettext.read_pairs(p, s.package, lang, extract_gettext.ACCELERATORS[s.family])]


def _by_split(rows, fractions) -> dict[str, list]:
    out = {s: [] for s in SPLITS}
    for row in rows:
        doc_id = row.doc_id if isinstance(row, (Pair, Document)) else row["doc_id"]
        out[split_of(doc_id, fractions)].append(row)
    return out


def _pair_key(a: str, b: str) -> tuple[str, str]:
    # Pair sets leak by pair, not by text: help titles like "Options" and recurring verses occur in many
    # documents, so a text-level check would drop a third of the retrieval queries.
    return a, b


def _save(out: Path, name: str, by_split: dict[str, list], counts: dict) -> None:
    from datasets import Dataset, DatasetDict

    dd = DatasetDict({s: Dataset.from_list(rows) for s, rows in by_split.items() if rows})
    dd.save_to_disk(str(out / name))
    counts[name] = {s: len(by_split[s]) for s in SPLITS}
    log.info("%s: %s", name, counts[name])


# What the extraction and cleaning write changes between releases (2: psalm verse 1 and Hebrew verse numbers
# out of the Bible, man-page tables as cells, duplicates across splits keep their train copy, pairs left in
# English with small edits dropped; 3: <br> separates words in help pages, stage-2 pairs and constructed STS
# partners equal up to case and punctuation dropped, the German Psalm 13 dropped; 4: no retrieval hard
# negative repeats its positive's body; 5: fortune cookies citing a New Testament verse (reserved) dropped and
# duplicates compared up to case and punctuation, and the eval splits of parallel and sts_constructed checked
# against every training set, not their own only; 6: a gettext message its contexts translate differently
# dropped): a build by another version is rebuilt by the quickstart.
BUILD_VERSION = 6


def stale_build(folder: Path) -> int | None:
    """The build version of the bembed that built `folder` (a <datasets>/<pair> folder) when it is not this
    one's, else None. Builds before versions were recorded count as 1; a folder without bembed's manifest
    (datasets made some other way) is never stale."""
    manifest = Path(folder) / "manifest.json"
    if not manifest.is_file():
        return None
    version = json.loads(manifest.read_text(encoding="utf-8")).get("build_version", 1)
    return None if version == BUILD_VERSION else version


def build(cache: Path, out: Path, pair: str = "en-de", fractions=DEFAULT_FRACTIONS, n_negatives: int = 3,
          negatives_encoder=None) -> dict:
    """Build every set for ``pair`` from the sources in ``cache``; returns the counts written to counts.json.
    Retrieval negatives are mined with BM25, or with ``negatives_encoder`` (bembed.eval.encoder interface)."""
    if pair not in PAIRS:
        raise ValueError(f"pair must be one of {PAIRS}, got {pair!r}")
    split_of("probe", fractions)  # validates fractions before any work
    other = pair.split("-")[1]
    fetched = fetched_sources(cache)
    if not fetched:
        raise FileNotFoundError(f"no fetched sources under {cache}: run `bembed data fetch` first")
    out = Path(out) / pair
    out.mkdir(parents=True, exist_ok=True)
    # counts.json says "built" (quickstart and the eval tasks look for it): a rebuild killed midway must not
    # leave the old one beside half-rewritten sets, so it goes first and is written back last.
    for marker in ("counts.json", "manifest.json"):
        (out / marker).unlink(missing_ok=True)
    counts: dict = {"dropped": {}}

    lo = {lang: _lo_help(cache, lang) for lang in ("en", other)}
    hb = {lang: _handbook(cache, lang) for lang in ("en", other)}
    bible = {lang: _bible(cache, extract_bible.PRIMARY[lang]) for lang in ("en", other)}
    bible2 = {lang: _bible(cache, code) for lang, code in SECOND_TRANSLATION.items() if lang in ("en", other)}
    prose = {lang: _prose(cache, lang) for lang in ("en", other)}
    # Untranslated English goes from every non-English set but the parallel one, whose cleaning drops it
    # as pairs with identical sides (the handbook's positional alignment needs its paragraphs all there).
    lo_mono, hb_mono = dict(lo), dict(hb)
    lo_mono[other], lo_drop = drop_english(lo[other], lo["en"])
    hb_mono[other], hb_drop = drop_english(hb[other], hb["en"], positional=True)
    prose[other], prose_drop = drop_english(prose[other], [])
    counts["dropped"][f"mono_{other}"] = dict(lo_drop + hb_drop + prose_drop)

    mono_train_paragraphs = []
    for lang in ("en", other):
        docs = [*lo_mono[lang], *hb_mono[lang], *bible[lang], *prose[lang]]
        mono_train_paragraphs += [p for d in docs if split_of(d.doc_id, fractions) == "train" for p in d.paragraphs]
        rows = [{"doc_id": d.doc_id, "source": d.source, "title": d.title, "text": "\n\n".join(d.paragraphs)}
                for d in docs]
        _save(out, f"mono_{lang}", _by_split(rows, fractions), counts)

    help_docs = [*lo_mono["en"], *lo_mono[other], *hb_mono["en"], *hb_mono[other]]
    stage2 = [*title_body_pairs(help_docs), *adjacent_pairs(help_docs),
              *(row for lang in bible2 for row in translation_paraphrase_pairs(bible[lang], bible2[lang]))]
    # A duplicate row is an in-batch negative equal to the positive, and extra weight on boilerplate. Keeping the
    # train copy of each also keeps the eval splits free of train pairs: no leak check is left to do.
    stage2, duplicates = dedupe(stage2, lambda r: _pair_key(r["anchor"], r["positive"]),
                                lambda r: SPLITS.index(split_of(r["doc_id"], fractions)))
    pairs = _by_split(stage2, fractions)
    counts["dropped"]["pairs"] = {"duplicate": duplicates}
    _save(out, "pairs", pairs, counts)

    raw = [*align_documents(lo["en"], lo[other]), *align_documents(hb["en"], hb[other], positional=True),
           *align_documents(bible["en"], bible[other]), *_gettext(cache, other)]
    cleaned, dropped = clean_pairs(raw, prefer=lambda p: SPLITS.index(split_of(p.doc_id, fractions)))
    kept = [p for p in cleaned if not left_in_english(p.src, p.tgt, other)]
    dropped["left_in_english"] = len(cleaned) - len(kept)
    parallel = _by_split([vars(p) for p in kept], fractions)
    # a side that any training set holds: a train paragraph of mono_* (a cookie, a man page) or stage-2 text
    trained = [*mono_train_paragraphs, *(t for r in pairs["train"] for t in (r["anchor"], r["positive"]))]
    dropped["leaked_into_eval"] = remove_leaks(parallel, lambda r: (r["src"], r["tgt"]), also_trained_on=trained)
    counts["dropped"]["parallel"] = dropped
    _save(out, "parallel", parallel, counts)

    lo_split = {lang: _by_split(docs, fractions) for lang, docs in lo_mono.items()}
    retrieval = {}
    for s in SPLITS:
        retrieval[s] = []
        for q, c in (("en", "en"), (other, other), ("en", other)):
            rows = retrieval_triples(lo_split[q][s], lo_split[c][s], n_negatives)
            if negatives_encoder is not None:
                rows = mine_negatives_with_encoder(rows, negatives_encoder, n_negatives)
            retrieval[s].extend(rows)
    # a help page's (title, body) is also a stage-2 title_body pair: the retrieval eval must not hold one
    stage2_train = [_pair_key(r["anchor"], r["positive"]) for r in pairs["train"]]
    counts["dropped"]["retrieval"] = {"leaked_into_eval": remove_leaks(
        retrieval, lambda r: [_pair_key(r["query"], r["positive"])], also_trained_on=stage2_train)}
    _save(out, "retrieval", retrieval, counts)

    sts_sources = [(bible["en"], bible2["en"]), (bible["en"], bible[other])]
    if other in bible2:
        sts_sources.append((bible[other], bible2[other]))
    sts = defaultdict(list)
    for a_docs, b_docs in sts_sources:
        a_split, b_split = _by_split(a_docs, fractions), _by_split(b_docs, fractions)
        for s in SPLITS:
            sts[s].extend(build_sts(a_split[s], b_split[s]))
    sts = dict(sts)
    # the same pair, either way round, in train here or as a translation pair or stage-2 pair (a verse another
    # chapter repeats word for word: Exodus 25 and 37, Samuel and Chronicles)
    trained_pairs = [*((r["src"], r["tgt"]) for r in parallel["train"]),
                     *((r["anchor"], r["positive"]) for r in pairs["train"])]
    trained_pairs += [(b, a) for a, b in trained_pairs]
    counts["dropped"]["sts_constructed"] = {"leaked_into_eval": remove_leaks(
        sts, lambda r: [_pair_key(r["sentence1"], r["sentence2"])], also_trained_on=trained_pairs)}
    _save(out, "sts_constructed", sts, counts)

    miner = "bm25" if negatives_encoder is None else getattr(negatives_encoder, "name", "encoder")
    manifest = {"pair": pair, "build_version": BUILD_VERSION, "fractions": list(fractions), "n_negatives": n_negatives,
                "negatives_mined_by": miner, "sources": [json.loads((p / MARKER).read_text()) for _, p in fetched],
                "note": "sts_constructed is constructed from translation alignment, not human-graded"}
    write_json_atomic(out / "manifest.json", manifest)
    write_json_atomic(out / "counts.json", counts)
    return counts
