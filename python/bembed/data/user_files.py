"""The user's own training/evaluation data: jsonl, csv or parquet files, or a HF dataset name when online.

Four kinds, told apart by their columns (extra columns are ignored):
  text     ``text``                                  monolingual text (tokenizer, MLM)
  pairs    ``query``, ``document``                   positive pairs (stage 2)
  triples  ``query``, ``positive``, ``negatives``    hard-negative triples (stage 3); ``negatives`` is a list
                                                     (in csv: a JSON array, e.g. ["neg 1", "neg 2"])
  sts      ``sentence1``, ``sentence2``, ``score``   graded similarity (score a finite number)
A malformed row (bad JSON, missing/empty column, wrong type, non-numeric score) raises ``UserDataError``
naming the file and line — or, with ``on_error="skip"``, is skipped and counted, with the first few
problems kept for the report. Rows are checked when the file is loaded, never later in the middle of training.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from collections.abc import Iterator
from pathlib import Path

from bembed.files import NotUTF8Error, user_text_lines

KINDS = {
    "text": ("text",),
    "pairs": ("query", "document"),
    "triples": ("query", "positive", "negatives"),
    "sts": ("sentence1", "sentence2", "score"),
}
FORMATS = (".jsonl", ".csv", ".parquet")
_KEEP_PROBLEMS = 10
_CSV_CELL_LIMIT = 2**31 - 1


class UserDataError(ValueError):
    """A malformed row; the message starts with ``file:line``."""


@dataclasses.dataclass
class LoadReport:
    path: str
    kind: str
    rows: int = 0
    skipped: int = 0
    problems: list[str] = dataclasses.field(default_factory=list)


def infer_kind(columns) -> str:
    """The most specific kind whose columns are all present."""
    columns = set(columns)
    for kind in ("triples", "sts", "pairs", "text"):
        if set(KINDS[kind]) <= columns:
            return kind
    raise UserDataError(f"columns {sorted(columns)} match no kind; expected one of "
                        + "; ".join(f"{k}: {', '.join(c)}" for k, c in KINDS.items()))


def _nonempty_str(row: dict, col: str) -> str:
    value = row.get(col)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"column {col!r} must be a non-empty string, got {value!r}")
    return value


def validate_row(row: dict, kind: str) -> dict:
    """Return the row reduced to the kind's columns with normalised types; raise ValueError if malformed."""
    if not isinstance(row, dict):
        raise ValueError(f"expected an object with columns, got {type(row).__name__}")
    missing = [c for c in KINDS[kind] if c not in row or row[c] is None]
    if missing:
        raise ValueError(f"missing column(s) {missing}")
    if kind == "triples":
        negatives = row["negatives"]
        if isinstance(negatives, str):  # csv cells hold a JSON array
            try:
                negatives = json.loads(negatives)
            except json.JSONDecodeError as exc:
                raise ValueError(f"column 'negatives' is not a JSON array: {exc.msg}") from None
        if hasattr(negatives, "tolist"):  # parquet list columns come back as numpy arrays
            negatives = negatives.tolist()
        if not isinstance(negatives, list) or not all(isinstance(n, str) and n.strip() for n in negatives):
            raise ValueError("column 'negatives' must be a list of non-empty strings")
        positive = _nonempty_str(row, "positive")
        if any(n.strip() == positive.strip() for n in negatives):  # the row would push its own answer away
            raise ValueError("a negative is the row's own positive")
        return {"query": _nonempty_str(row, "query"), "positive": positive, "negatives": negatives}
    if kind == "sts":
        if isinstance(row["score"], bool):  # float(True) is 1.0: a boolean is no graded score
            raise ValueError(f"column 'score' must be a number, got {row['score']!r}")
        try:
            score = float(row["score"])
        except (TypeError, ValueError):
            raise ValueError(f"column 'score' must be a number, got {row['score']!r}") from None
        if not math.isfinite(score):
            raise ValueError(f"column 'score' must be finite, got {score}")
        return {"sentence1": _nonempty_str(row, "sentence1"), "sentence2": _nonempty_str(row, "sentence2"),
                "score": score}
    return {c: _nonempty_str(row, c) for c in KINDS[kind]}


def _raw_rows(path: Path) -> Iterator[tuple[str, object]]:
    """(location, row or exception) for every record; a location is 'line N' or 'row N'."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        for n, line in user_text_lines(path):
            if not line.strip():
                continue
            try:
                yield f"line {n}", json.loads(line)
            except json.JSONDecodeError as exc:
                yield f"line {n}", ValueError(f"invalid JSON: {exc.msg}")
    elif suffix == ".csv":
        # Long documents (an 8192-token model's) outgrow the csv module's default 128 KiB cell limit.
        csv.field_size_limit(max(csv.field_size_limit(), _CSV_CELL_LIMIT))
        # the csv module wants the lines with their ends (newline=""): quoted cells may span lines
        reader = csv.DictReader(line for _, line in user_text_lines(path))
        try:
            reader.fieldnames  # reads the header (which may span lines): the first row starts after it
            start = reader.line_num + 1
            for row in reader:
                if None in row:  # more cells than header columns
                    yield f"line {start}", ValueError(f"{len(row[None])} cell(s) beyond the header's columns")
                else:
                    yield f"line {start}", row
                start = reader.line_num + 1
        except csv.Error as exc:  # the reader cannot go on past it: no row to skip
            # line_num counts the lines read whole; the one it failed in is the next
            raise UserDataError(f"{path}:line {reader.line_num + 1}: not readable as CSV: {exc}") from None
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        for n, row in enumerate(pq.read_table(path).to_pylist(), 1):
            yield f"row {n}", row
    else:
        raise ValueError(f"path must end in one of {FORMATS}, got {path.name!r}")


def _user_data_errors(rows: Iterator[tuple[str, object]]) -> Iterator[tuple[str, object]]:
    """rows, with a file that is not UTF-8 (which stops the reading) raised as UserDataError."""
    try:
        yield from rows
    except NotUTF8Error as exc:
        raise UserDataError(str(exc)) from None


def load_user_file(path, kind: str | None = None, on_error: str = "raise") -> tuple[list[dict], LoadReport]:
    """Read and validate every row of ``path``. ``kind`` is inferred from the first row when None;
    ``on_error`` is "raise" (UserDataError at the first bad row) or "skip" (count it and go on)."""
    path = Path(path)
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    if kind is not None and kind not in KINDS:
        raise ValueError(f"kind must be one of {sorted(KINDS)}, got {kind!r}")
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    return _checked_rows(_user_data_errors(_raw_rows(path)), LoadReport(path=str(path), kind=kind or ""), on_error)


def load_hf_dataset(name: str, kind: str, split: str = "train", on_error: str = "raise", **kwargs
                    ) -> tuple[list[dict], LoadReport]:
    """A dataset from the HF hub (needs internet), checked row by row like a local file."""
    from datasets import load_dataset

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {sorted(KINDS)}, got {kind!r}")
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    dataset = load_dataset(name, split=split, **kwargs)
    return _checked_rows(((f"row {n}", raw) for n, raw in enumerate(dataset, 1)),
                         LoadReport(path=f"{name}[{split}]", kind=kind), on_error)


def _checked_rows(items, report: LoadReport, on_error: str) -> tuple[list[dict], LoadReport]:
    """The valid rows of `items` ((where, row or the Exception reading it), in order) and `report` filled in;
    the kind is inferred from the first row when the report has none. on_error "raise": UserDataError at the
    first bad row, naming where it is; "skip": counted, the first few kept as problems."""
    rows: list[dict] = []
    for where, raw in items:
        try:
            if isinstance(raw, Exception):
                raise raw
            if not report.kind:
                report.kind = infer_kind(raw.keys() if isinstance(raw, dict) else ())
            rows.append(validate_row(raw, report.kind))
        except ValueError as exc:
            message = f"{report.path}:{where}: {exc}"
            if on_error == "raise":
                raise UserDataError(message) from None
            report.skipped += 1
            if len(report.problems) < _KEEP_PROBLEMS:
                report.problems.append(message)
    report.rows = len(rows)
    if not rows:
        raise UserDataError(f"{report.path}: no valid rows ({report.skipped} skipped)")
    return rows, report
