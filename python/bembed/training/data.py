"""Stage inputs: rows from the user's files (jsonl/csv/parquet) or from datasets built by `bembed data
build`, read into the column conventions of `bembed.data.user_files`:

  text     text
  pairs    query, document      (built folders also: anchor/positive of `pairs`, src/tgt of `parallel`,
                                 query/positive of `retrieval`)
  triples  query, positive, negatives
  sts      sentence1, sentence2, score
"""

from __future__ import annotations

import logging

from bembed.files import user_path

from .config import Source

log = logging.getLogger(__name__)

_PAIR_COLUMNS = (("query", "document"), ("anchor", "positive"), ("src", "tgt"), ("query", "positive"))


def _raw_rows(source: Source) -> list[dict]:
    path = user_path(source.path)
    if path.is_dir():
        from datasets import Dataset, DatasetDict, load_from_disk

        data = load_from_disk(str(path))
        if isinstance(data, DatasetDict):
            if source.split not in data:
                raise ValueError(f"data source {path}: no split {source.split!r} (has {sorted(data)})")
            data = data[source.split]
        if not isinstance(data, Dataset):
            raise ValueError(f"data source {path}: not a dataset folder")
        if source.max_rows is not None:
            data = data.select(range(min(source.max_rows, len(data))))
        return data.to_list()
    if not path.exists():
        raise FileNotFoundError(f"data source: no such file or folder: {path}")
    from bembed.data.user_files import load_user_file

    rows, report = load_user_file(path)
    return rows[:source.max_rows] if source.max_rows is not None else rows


def kind_of(columns) -> str:
    """The kind of rows with these columns (most specific first)."""
    columns = set(columns)
    if {"query", "positive", "negatives"} <= columns:
        return "triples"
    if {"sentence1", "sentence2", "score"} <= columns:
        return "sts"
    if any(set(c) <= columns for c in _PAIR_COLUMNS):
        return "pairs"
    if "text" in columns:
        return "text"
    raise ValueError(f"columns {sorted(columns)} fit no kind (text; query/document; query/positive/negatives; "
                     "sentence1/sentence2/score)")


def read_rows(source: Source, kind: str | None = None) -> tuple[str, list[dict]]:
    """(kind, rows) of a source, rows reduced to the kind's columns. With `kind` given the rows must
    provide it (a triples file serves as pairs: query/positive)."""
    rows = _raw_rows(source)
    if not rows:
        raise ValueError(f"data source {source.path}: no rows")
    found = kind_of(rows[0].keys())
    kind = kind or found
    if kind == "text":
        if "text" not in rows[0]:
            raise ValueError(f"data source {source.path}: needs a 'text' column for text, has {sorted(rows[0])}")
        out = [{"text": r["text"]} for r in rows if r["text"] and r["text"].strip()]
    elif kind == "pairs":
        cols = next((c for c in _PAIR_COLUMNS if set(c) <= set(rows[0])), None)
        if cols is None:
            raise ValueError(f"data source {source.path}: needs pair columns (query/document, anchor/positive, "
                             f"src/tgt), has {sorted(rows[0])}")
        out = [{"query": r[cols[0]], "document": r[cols[1]]} for r in rows]
    elif kind == "triples":
        if found != "triples":
            raise ValueError(f"data source {source.path}: needs query/positive/negatives, has {sorted(rows[0])}")
        out = [{"query": r["query"], "positive": r["positive"], "negatives": list(r["negatives"])} for r in rows]
    elif kind == "sts":
        if found != "sts":
            raise ValueError(f"data source {source.path}: needs sentence1/sentence2/score, has {sorted(rows[0])}")
        out = [{"sentence1": r["sentence1"], "sentence2": r["sentence2"], "score": float(r["score"])} for r in rows]
    else:
        raise ValueError(f"kind must be text, pairs, triples or sts, got {kind!r}")
    log.info("data source %s: %d %s rows", source.path, len(out), kind)
    return kind, out


def read_pair_rows(sources: list[Source]) -> tuple[list[dict], list[tuple[str, int]]]:
    """All (query, document) rows of the given sources, and beside each row where it came from: its source's
    path and its number there (from 1, in the order read), for `describe_rows`."""
    rows, where = [], []
    for source in sources:
        _, source_rows = read_rows(source, "pairs")
        rows.extend(source_rows)
        where.extend(row_origins(source, len(source_rows)))
    return rows, where


def row_origins(source: Source, count: int) -> list[tuple[str, int]]:
    """(path, number from 1) of each of a source's `count` rows, as `describe_rows` names them."""
    return [(source.path, n) for n in range(1, count + 1)]


def describe_rows(picked, where: list[tuple[str, int]]) -> str:
    """The rows of a batch as a loss report names them: each source with the numbers of its rows there."""
    by_source: dict[str, list[int]] = {}
    for i in picked:
        path, number = where[i]
        by_source.setdefault(path, []).append(number)
    return "; ".join(f"{path} rows {numbers}" for path, numbers in by_source.items())
