"""User files: each format and kind, and malformed rows reported with file and line (or skipped, counted)."""

import json

import pytest

from bembed.data.user_files import UserDataError, infer_kind, load_user_file


def _jsonl(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_jsonl_kinds_are_inferred(tmp_path):
    rows, report = load_user_file(_jsonl(tmp_path / "a.jsonl", [json.dumps({"query": "q", "document": "d", "x": 1})]))
    assert rows == [{"query": "q", "document": "d"}] and report.kind == "pairs"
    assert infer_kind(["query", "positive", "negatives", "document"]) == "triples"
    with pytest.raises(UserDataError, match="match no kind"):
        infer_kind(["foo"])


def test_jsonl_bad_json_names_file_and_line(tmp_path):
    path = _jsonl(tmp_path / "b.jsonl", [json.dumps({"text": "ok"}), "", "{not json"])
    with pytest.raises(UserDataError, match=r"b\.jsonl:line 3: invalid JSON"):
        load_user_file(path)


@pytest.mark.parametrize("suffix, content, byte", [(".jsonl", '{"text": "ok"}\n{"text": "Gr\xf6\xdfe"}\n', 13),
                                                   (".csv", "query,document\nGr\xf6\xdfe,Ma\xdf\n", 3)])
def test_a_file_that_is_not_utf8_names_file_and_line(tmp_path, suffix, content, byte):
    """The codec's error named a position in a read-ahead block and neither the file nor the line."""
    path = tmp_path / f"latin1{suffix}"
    path.write_bytes(content.encode("latin-1"))
    with pytest.raises(UserDataError, match=rf"latin1\{suffix}:2: not UTF-8 text \(invalid start byte at byte {byte} "):
        load_user_file(path)


def test_skip_mode_counts_problems(tmp_path):
    path = _jsonl(tmp_path / "c.jsonl", [json.dumps({"sentence1": "a", "sentence2": "b", "score": 4.5}),
                                         json.dumps({"sentence1": "a", "sentence2": "b", "score": "high"}),
                                         json.dumps({"sentence1": "", "sentence2": "b", "score": 1}),
                                         json.dumps({"sentence1": "a", "sentence2": "b"})])
    rows, report = load_user_file(path, kind="sts", on_error="skip")
    assert rows == [{"sentence1": "a", "sentence2": "b", "score": 4.5}]
    assert report.skipped == 3 and len(report.problems) == 3
    assert "line 2" in report.problems[0] and "score" in report.problems[0]
    assert "line 3" in report.problems[1] and "sentence1" in report.problems[1]
    assert "line 4" in report.problems[2] and "missing" in report.problems[2]


def test_csv_triples_with_json_negatives_and_line_numbers(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text('query,positive,negatives\nq1,"p1\nspans two lines","[""n1"", ""n2""]"\nq2,p2,not-json\n',
                    encoding="utf-8")
    with pytest.raises(UserDataError, match=r"t\.csv:line 4: column 'negatives' is not a JSON array"):
        load_user_file(path)
    rows, report = load_user_file(path, on_error="skip")
    assert rows == [{"query": "q1", "positive": "p1\nspans two lines", "negatives": ["n1", "n2"]}]
    assert report.skipped == 1


def test_csv_extra_cells_reported(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("text\nfine\ntoo,many\n", encoding="utf-8")
    with pytest.raises(UserDataError, match=r"x\.csv:line 3: 1 cell"):
        load_user_file(path)
    path.write_text("text\ntoo,many\n", encoding="utf-8")  # the first row: its number read 1, the header's
    with pytest.raises(UserDataError, match=r"x\.csv:line 2: 1 cell"):
        load_user_file(path)


def test_parquet_rows(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    path = tmp_path / "p.parquet"
    pq.write_table(pa.table({"query": ["q", None], "positive": ["p", "p"], "negatives": [["n"], ["m"]]}), path)
    with pytest.raises(UserDataError, match=r"p\.parquet:row 2: missing column"):
        load_user_file(path)
    rows, _ = load_user_file(path, on_error="skip")
    assert rows == [{"query": "q", "positive": "p", "negatives": ["n"]}]


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="path must end"):
        load_user_file(_jsonl(tmp_path / "a.txt", ["x"]))
    with pytest.raises(ValueError, match="on_error"):
        load_user_file(tmp_path / "a.txt", on_error="ignore")
    with pytest.raises(ValueError, match="kind"):
        load_user_file(tmp_path / "a.txt", kind="qa")
    with pytest.raises(FileNotFoundError):
        load_user_file(tmp_path / "missing.jsonl")
    with pytest.raises(UserDataError, match="no valid rows"):
        load_user_file(_jsonl(tmp_path / "e.jsonl", [json.dumps({"text": " "})]), on_error="skip")


def test_bembed_data_check_cli(tmp_path, capsys):
    load_from_disk = pytest.importorskip("datasets").load_from_disk

    from bembed.cli import main

    path = _jsonl(tmp_path / "u.jsonl", [json.dumps({"text": "good row"}), "{broken", json.dumps({"text": "more"})])
    assert main(["data", "check", str(path)]) == 1
    assert "u.jsonl:line 2: invalid JSON" in capsys.readouterr().out
    assert main(["data", "check", str(path), "--skip-bad", "--save", str(tmp_path / "ds")]) == 0
    assert "2 valid rows, 1 skipped" in capsys.readouterr().out
    assert load_from_disk(str(tmp_path / "ds"))["text"] == ["good row", "more"]
    # a missing file or an unsupported suffix is a message and exit code 1, not a traceback
    assert main(["data", "check", str(tmp_path / "missing.jsonl")]) == 1
    assert "no such file" in capsys.readouterr().out
    (tmp_path / "t.txt").write_text("text\n")
    assert main(["data", "check", str(tmp_path / "t.txt")]) == 1
    assert ".jsonl" in capsys.readouterr().out


def test_a_byte_order_mark_is_not_part_of_the_first_column(tmp_path):
    csv_path = tmp_path / "bom.csv"
    csv_path.write_bytes("\ufeffsentence1,sentence2,score\na,b,4.5\n".encode())
    rows, report = load_user_file(csv_path)
    assert rows == [{"sentence1": "a", "sentence2": "b", "score": 4.5}] and report.kind == "sts"
    jsonl_path = tmp_path / "bom.jsonl"
    jsonl_path.write_bytes(("\ufeff" + json.dumps({"text": "hallo"}) + "\n").encode())
    assert load_user_file(jsonl_path)[0] == [{"text": "hallo"}]


def test_csv_cells_longer_than_the_csv_modules_default_limit_load(tmp_path):
    """A 200k-character document (an 8192-token model's) failed with _csv.Error: field larger than field limit."""
    path = tmp_path / "long.csv"
    path.write_text("query,document\nq1," + "wort " * 40_000 + "\n", encoding="utf-8")
    rows, _ = load_user_file(path)
    assert len(rows[0]["document"]) == 200_000


def test_csv_the_reader_cannot_parse_is_a_user_data_error_naming_file_and_line(tmp_path):
    """Lone \\r line ends gave a bare _csv.Error traceback naming neither the file nor the line."""
    path = tmp_path / "cr.csv"
    path.write_bytes(b"query,document\rq1,d1\rq2,d2\r")
    for on_error in ("raise", "skip"):  # the reader cannot go past it: there is no row to skip
        with pytest.raises(UserDataError, match=r"cr.csv:line 1: not readable as CSV"):
            load_user_file(path, on_error=on_error)


def test_rows_that_contradict_themselves_are_refused(tmp_path):
    """A triple whose negative is its own positive asks the model to push its answer away; a boolean is no
    graded score (it was read as 1.0)."""
    path = _jsonl(tmp_path / "t.jsonl", [json.dumps({"query": "q", "positive": "same text",
                                                     "negatives": ["other", " same text "]})])
    with pytest.raises(UserDataError, match="t.jsonl:line 1: a negative is the row's own positive"):
        load_user_file(path)
    path = _jsonl(tmp_path / "s.jsonl", [json.dumps({"sentence1": "a", "sentence2": "b", "score": True})])
    with pytest.raises(UserDataError, match="s.jsonl:line 1: column 'score' must be a number, got True"):
        load_user_file(path)


def test_a_hub_dataset_with_no_valid_rows_is_an_error_like_a_file(tmp_path, capsys):
    """`data check --hf` exited 0 with "0 valid rows" (and --save saved an empty dataset) where the same rows
    in a local file are an error; a dataset the hub cannot give was a traceback."""
    pytest.importorskip("datasets")
    from bembed.cli import main
    from bembed.data.user_files import load_hf_dataset

    data = _jsonl(tmp_path / "bad.jsonl", [json.dumps({"text": ""}), json.dumps({"text": "  "})])
    with pytest.raises(UserDataError, match=r"no valid rows \(2 skipped\)"):
        load_hf_dataset("json", "text", on_error="skip", data_files=str(data))
    assert main(["data", "check", str(tmp_path / "no-such-local-dataset"), "--hf", "--kind", "text"]) == 1
    assert capsys.readouterr().out.startswith("error: ")


def test_data_check_save_replaces_only_its_own_output(tmp_path, capsys):
    pytest.importorskip("datasets")
    from bembed.cli import main

    path = _jsonl(tmp_path / "u.jsonl", [json.dumps({"text": "good row"})])
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["data", "check", str(path), "--save", str(tmp_path / "notes.txt")]) == 2
    assert "--save" in capsys.readouterr().out and (tmp_path / "notes.txt").read_text() == "mine"
    for _ in range(2):  # the second run replaces the first run's folder
        assert main(["data", "check", str(path), "--save", str(tmp_path / "saved")]) == 0
    assert json.loads((tmp_path / "saved" / "bembed_report.json").read_text())["rows"] == 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left beside it
