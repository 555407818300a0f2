"""Local mteb tasks built from the held-out (test) splits that `bembed data build` writes — no download.

For each built pair (en-de, en-es):
  BembedBitextMining.<pair>         parallel test pairs (LibreOffice help, gettext, handbook, Bible 1–39)
  BembedSTSConstructed.<pair>       the constructed graded similarity set (NOT human-graded)
  BembedPairClassification.<pair>   from the same rows: paraphrase (5) → 1, same chapter / random (≤ 1) → 0
  BembedRetrieval.<q>-<d>           LibreOffice help page title → page body, monolingual and en → other
  BembedClustering.<pair>           LibreOffice help pages of both languages, grouped by the application
Each task keeps at most ``max_items`` rows (a seeded sample), and retrieval and clustering documents are cut
to ``max_chars`` characters, so the whole suite runs in minutes on a laptop CPU.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import logging
import random
from pathlib import Path

log = logging.getLogger(__name__)

ISO = {"en": "eng-Latn", "de": "deu-Latn", "es": "spa-Latn"}
# The kinds of local task (`bembed eval --tasks`, the quickstart's evaluation), by mteb task type.
KIND_OF_TYPE = {"BitextMining": "bitext", "STS": "sts", "PairClassification": "pair_classification",
                "Retrieval": "retrieval", "Clustering": "clustering"}
TASK_KINDS = tuple(KIND_OF_TYPE.values())


@dataclasses.dataclass(frozen=True)
class TaskSizes:
    max_items: int = 1000
    max_chars: int = 2000
    seed: int = 0

    def __post_init__(self):
        if self.max_items < 1 or self.max_chars < 1:
            raise ValueError(f"max_items and max_chars must be positive, got {self.max_items}, {self.max_chars}")


def _metadata(name: str, task_type: str, main_score: str, langs: list[str], description: str, domains):
    from mteb.abstasks.task_metadata import TaskMetadata

    return TaskMetadata(
        name=name, description=description, reference=None, type=task_type, main_score=main_score,
        dataset={"path": "local/bembed-data-build", "revision": "local"},  # never fetched: load_data fills it
        category="t2t", modalities=["text"], eval_splits=["test"], eval_langs=[ISO[x] for x in langs],
        date=("2022-01-01", "2023-12-31"), dialect=[], domains=domains, task_subtypes=[],
        license="not specified", annotations_creators="derived",
        sample_creation="created" if "Constructed" in name or "PairClassification" in name else "found",
        bibtex_citation="",
    )


class NoRows(ValueError):
    """A task with no test rows: mteb would fail on it with an IndexError deep inside its evaluators."""


def _check_rows(rows: list, name: str) -> None:
    if not rows:
        raise NoRows(f"{name} has no test rows")


def _sample(rows: list, n: int, seed: int) -> list:
    return rows if len(rows) <= n else random.Random(seed).sample(rows, n)


def _make(base, metadata, dataset, **methods):
    """An instance of a one-off subclass of mteb's ``base`` whose load_data hands over ``dataset``."""
    def load_data(self, num_proc=None, **kwargs):
        self.dataset = dataset
        self.data_loaded = True

    cls = type(metadata.name.replace(".", "_").replace("-", "_"), (base,), {"metadata": metadata,
                                                                              "load_data": load_data, **methods})
    return cls()


def bitext_task(rows: list[dict], pair: str, sizes: TaskSizes):
    from datasets import Dataset, DatasetDict
    from mteb.abstasks.text.bitext_mining import AbsTaskBitextMining

    # Row i's gold match is row i's translation: a sentence on a side twice (one English string with two
    # translations) makes a perfect model miss one of them, so only a side's first occurrence is kept.
    seen_src, seen_tgt, unique = set(), set(), []
    for r in rows:
        if r["src"] not in seen_src and r["tgt"] not in seen_tgt:
            seen_src.add(r["src"])
            seen_tgt.add(r["tgt"])
            unique.append(r)
    _check_rows(unique, f"BembedBitextMining.{pair}")
    rows = _sample(unique, sizes.max_items, sizes.seed)
    data = DatasetDict({"test": Dataset.from_dict({"sentence1": [r["src"] for r in rows],
                                                   "sentence2": [r["tgt"] for r in rows]})})
    meta = _metadata(f"BembedBitextMining.{pair}", "BitextMining", "f1", pair.split("-"),
                     "Held-out translation pairs (LibreOffice help, gettext, Debian handbook, Bible 1-39).",
                     ["Written", "Programming", "Religious"])
    return _make(AbsTaskBitextMining, meta, data)


def _check_varied(values: list, name: str, what: str) -> None:
    """A correlation (STS) or an average precision (pair classification) needs two different gold values: with
    one, scipy raises mid-run, the score is NaN (poisoning the table's mean), or AP is 1 or 0 for any model."""
    if len(set(values)) < 2:
        raise NoRows(f"{name} has {len(values)} row(s) with {len(set(values))} distinct {what} (in the sample): "
                     "two are needed")


def sts_task(rows: list[dict], pair: str, sizes: TaskSizes):
    _check_rows(rows, f"BembedSTSConstructed.{pair}")
    rows = _sample(rows, sizes.max_items, sizes.seed)
    _check_varied([r["score"] for r in rows], f"BembedSTSConstructed.{pair}", "scores")
    data = {"test": {k: [r[k] for r in rows] for k in ("sentence1", "sentence2", "score")}}
    meta = _metadata(f"BembedSTSConstructed.{pair}", "STS", "cosine_spearman", pair.split("-"),
                     "CONSTRUCTED graded similarity (not human-graded) from aligned Bible verses, books 1-39.",
                     ["Religious", "Written"])
    return _sts(meta, data, 0, 5)


def _sts(meta, columns: dict, min_score: float, max_score: float):
    """An STS task on ``columns`` ({"test": {"sentence1": [...], "sentence2": [...], "score": [...]}})."""
    from datasets import Dataset, DatasetDict
    from mteb.abstasks.sts import AbsTaskSTS

    task = _make(AbsTaskSTS, meta, DatasetDict({split: Dataset.from_dict(c) for split, c in columns.items()}))
    task.min_score, task.max_score = min_score, max_score
    return task


def pair_classification_task(rows: list[dict], pair: str, sizes: TaskSizes):
    from datasets import Dataset, DatasetDict
    from mteb.abstasks.pair_classification import AbsTaskPairClassification

    rows = [r for r in rows if r["score"] >= 5 or r["score"] <= 1]
    _check_rows(rows, f"BembedPairClassification.{pair}")
    rows = _sample(rows, sizes.max_items, sizes.seed)
    _check_varied([int(r["score"] >= 5) for r in rows], f"BembedPairClassification.{pair}", "labels")
    data = DatasetDict({"test": Dataset.from_dict({
        "sentence1": [r["sentence1"] for r in rows], "sentence2": [r["sentence2"] for r in rows],
        "labels": [int(r["score"] >= 5) for r in rows]})})
    meta = _metadata(f"BembedPairClassification.{pair}", "PairClassification", "max_ap", pair.split("-"),
                     "CONSTRUCTED: same verse in another translation (1) vs a verse of the same chapter or a "
                     "random verse (0).", ["Religious", "Written"])
    return _make(AbsTaskPairClassification, meta, data)


def _doc_id(text: str) -> str:
    return "d" + hashlib.sha1(text.encode()).hexdigest()[:16]


def retrieval_task(rows: list[dict], query_lang: str, doc_lang: str, sizes: TaskSizes):
    """Queries: sampled titles (a title on several rows is one query, with each of their pages relevant); corpus:
    every positive and negative of the split's rows (same languages)."""
    name = f"BembedRetrieval.{query_lang}-{doc_lang}"
    rows = [r for r in rows if r["query_lang"] == query_lang and r["doc_lang"] == doc_lang]
    _check_rows(rows, name)
    meta = _metadata(name, "Retrieval", "ndcg_at_10", sorted({query_lang, doc_lang}),
                     "Held-out LibreOffice help pages: page title -> page body (title lines removed).",
                     ["Written", "Programming"])
    return _retrieval(meta, _relevant_by_query(rows, "positive"),
                      [t for r in rows for t in (r["positive"], *r["negatives"])], sizes)


def _relevant_by_query(rows: list[dict], positive: str) -> list[tuple[str, list[str]]]:
    """Each distinct query with all its rows' `positive` texts, in first-seen order. A query repeated as
    queries of its own, one relevant text each, would count each one's relevant text as the other's miss."""
    relevant: dict[str, list[str]] = {}
    for r in rows:
        relevant.setdefault(r["query"], [])
        if r[positive] not in relevant[r["query"]]:
            relevant[r["query"]].append(r[positive])
    return list(relevant.items())


def _retrieval(meta, queries: list[tuple[str, list[str]]], documents: list[str], sizes: TaskSizes):
    """A retrieval task: each (query, its relevant documents) of a seeded sample of ``queries`` against a corpus
    of every one of ``documents`` (which holds the relevant ones), cut to ``max_chars``."""
    from datasets import Dataset
    from mteb.abstasks.retrieval import AbsTaskRetrieval
    from mteb.abstasks.retrieval_dataset_loaders import RetrievalSplitData

    corpus = {}
    for text in documents:
        corpus.setdefault(_doc_id(text), text[:sizes.max_chars])
    queries = _sample(queries, sizes.max_items, sizes.seed)
    split = RetrievalSplitData(
        queries=Dataset.from_dict({"id": [f"q{i}" for i in range(len(queries))], "text": [q for q, _ in queries]}),
        corpus=Dataset.from_dict({"id": list(corpus), "text": list(corpus.values())}),
        relevant_docs={f"q{i}": {_doc_id(text): 1 for text in relevant} for i, (_, relevant) in enumerate(queries)},
        top_ranked=None)
    return _make(AbsTaskRetrieval, meta, {"default": {"test": split}})


# The help pages' first folder names the application they document; `shared` pages (menus, dialogs and
# options common to all of them) and the few top-level pages belong to none, so they are left out.
HELP_APPLICATIONS = {"sbasic": "Basic", "scalc": "Calc", "schart": "Chart", "sdatabase": "Base", "sdraw": "Draw",
                     "simpress": "Impress", "smath": "Math", "swriter": "Writer"}
MIN_CLUSTER_PAGES = 4


def help_application(doc_id: str) -> str | None:
    """The application a LibreOffice help page documents, from its document id (`lo-help:scalc/01/….html`)."""
    prefix, _, path = doc_id.partition(":")
    folder = path.split("/", 1)[0] if "/" in path else None
    return HELP_APPLICATIONS.get(folder) if prefix == "lo-help" else None


def clustering_task(docs: list[dict], pair: str, sizes: TaskSizes, bootstraps: int = 10):
    """Held-out help pages of both languages (cut to ``max_chars``), labelled by application; mteb runs k-means
    with k = the number of applications on ``bootstraps`` resamples of all of them and reports V-measure. The
    languages are mixed on purpose: a model that groups pages by language rather than by subject loses."""
    from datasets import Dataset, DatasetDict
    from mteb.abstasks.clustering import AbsTaskClustering

    name = f"BembedClustering.{pair}"
    rows = [(d["text"][:sizes.max_chars], help_application(d["doc_id"])) for d in docs if d["text"].strip()]
    rows = _sample([(text, app) for text, app in rows if app is not None], sizes.max_items, sizes.seed)
    # An application with a page or two (in the sample) is a cluster k-means cannot be expected to find: left out.
    counts = collections.Counter(app for _, app in rows)
    rows = [(text, app) for text, app in rows if counts[app] >= MIN_CLUSTER_PAGES]
    if len({app for _, app in rows}) < 2:
        raise NoRows(f"{name} has fewer than two applications with {MIN_CLUSTER_PAGES} test pages (in the sample)")
    data = DatasetDict({"test": Dataset.from_dict({"sentences": [t for t, _ in rows],
                                                   "labels": [a for _, a in rows]})})
    meta = _metadata(name, "Clustering", "v_measure", pair.split("-"),
                     "Held-out LibreOffice help pages in both languages, clustered by the application they "
                     "document (Writer, Calc, Basic, ...).", ["Written", "Programming"])

    def _evaluate_subset(self, *args, **kwargs):
        # mteb draws the resamples from one generator per task object: without a fresh one, each model that
        # bembed eval runs on the same task would be scored on other resamples than the model before it
        self.rng_state = random.Random(self.seed)
        return AbsTaskClustering._evaluate_subset(self, *args, **kwargs)

    task = _make(AbsTaskClustering, meta, data, _evaluate_subset=_evaluate_subset)
    # every page is embedded once; each of the `bootstraps` k-means runs clusters a resample of all of them
    task.max_fraction_of_documents_to_embed, task.max_document_to_embed = None, None
    task.max_documents_per_cluster, task.n_clusters = len(rows), bootstraps
    return task


def file_task(path: str | Path, sizes: TaskSizes, name: str | None = None):
    """A task made from a file of your own in `bembed data check`'s formats (.jsonl/.csv/.parquet), by its kind:
    pairs (query, document) and triples (query, positive, negatives) are retrieval — each distinct query against
    every document of the file, its own documents relevant (nDCG@10); sts (sentence1, sentence2, score) is STS
    (Spearman). Named ``File.<file stem>`` unless ``name`` is given. A malformed row raises UserDataError."""
    from bembed.data.user_files import load_user_file

    path = Path(path)
    rows, report = load_user_file(path)
    name = name or f"File.{path.stem}"
    description = f"The user's file {path.name} ({report.kind}, {len(rows)} rows); its language is not recorded."
    if report.kind == "sts":
        rows = _sample(rows, sizes.max_items, sizes.seed)
        data = {"test": {k: [r[k] for r in rows] for k in ("sentence1", "sentence2", "score")}}
        if len(set(data["test"]["score"])) < 2:  # Spearman needs two different gold scores
            raise ValueError(f"{path}: every score is {rows[0]['score']}: an STS file needs at least two "
                             "different scores" + (" in the --max-items sample" if len(rows) < report.rows else ""))
        return _sts(_metadata(name, "STS", "cosine_spearman", ["en"], description, []), data,
                    min(data["test"]["score"]), max(data["test"]["score"]))
    if report.kind not in ("pairs", "triples"):
        raise ValueError(f"{path}: a {report.kind} file has nothing to score: give pairs (query, document), "
                         "triples (query, positive, negatives) or sts (sentence1, sentence2, score)")
    positive = "document" if report.kind == "pairs" else "positive"
    documents = [t for r in rows for t in (r[positive], *r.get("negatives", ()))]
    meta = _metadata(name, "Retrieval", "ndcg_at_10", ["en"], description, [])
    return _retrieval(meta, _relevant_by_query(rows, positive), documents, sizes)


def file_tasks(paths, sizes: TaskSizes) -> list:
    """A task per file (file_task), named File.<stem>, or File.<stem>.2, .3 ... for stems already taken."""
    tasks, names = [], set()
    for path in paths:
        name, number = f"File.{Path(path).stem}", 1
        while name in names:  # scores are kept by task name: two files must never share one
            number += 1
            name = f"File.{Path(path).stem}.{number}"
        names.add(name)
        tasks.append(file_task(path, sizes, name))
    return tasks


def _test_rows(root: Path, name: str) -> list[dict]:
    """The test split of the built set ``root/name``; [] when the set or its split is missing, which a legal
    build produces (`bembed data build` writes no split that got no rows)."""
    from datasets import load_from_disk

    if not (root / name).is_dir():
        log.warning("no %s set under %s", name, root)
        return []
    sets = load_from_disk(str(root / name))
    if "test" not in sets:
        log.warning("the %s set under %s has no test split", name, root)
        return []
    return sets["test"].to_list()


def task_kind(task) -> str:
    """The kind (one of TASK_KINDS) of a local task."""
    return KIND_OF_TYPE[task.metadata.type]


def local_tasks(data_root: str | Path, pairs=("en-de", "en-es"), sizes: TaskSizes = TaskSizes(),
                kinds=TASK_KINDS) -> list:
    """The tasks of every built pair under ``data_root``. Pairs not built, and tasks whose set, test split or
    rows are missing, are skipped with a warning."""
    tasks = []

    def add(make, *args):
        try:
            tasks.append(make(*args))
        except NoRows as e:
            log.warning("skipping a task: %s", e)

    for pair in pairs:
        root = Path(data_root) / pair
        if not (root / "counts.json").is_file():
            log.warning("no built data for %s under %s: run `bembed data build --pair %s`", pair, root, pair)
            continue
        if "bitext" in kinds:
            add(bitext_task, _test_rows(root, "parallel"), pair, sizes)
        sts_rows = _test_rows(root, "sts_constructed") if (
            "sts" in kinds or "pair_classification" in kinds) else []
        if "sts" in kinds:
            add(sts_task, sts_rows, pair, sizes)
        if "pair_classification" in kinds:
            add(pair_classification_task, sts_rows, pair, sizes)
        if "retrieval" in kinds:
            rows = _test_rows(root, "retrieval")
            other = pair.split("-")[1]
            for q, d in (("en", "en"), (other, other), ("en", other)):
                # en → en once, from the first pair's build: each build holds it, less the rows that build's
                # own stage-2 train pairs leaked (a handful), so its scores can differ by a little between
                # `--pairs en-de ...` and `--pairs en-es`
                if f"BembedRetrieval.{q}-{d}" not in {t.metadata.name for t in tasks}:
                    add(retrieval_task, rows, q, d, sizes)
        if "clustering" in kinds:
            add(clustering_task, [*_test_rows(root, "mono_en"), *_test_rows(root, f"mono_{pair.split('-')[1]}")],
                pair, sizes)
    return tasks
