"""`bembed encode`: .txt/.jsonl in, .npy/.parquet out, in input order, written atomically, with one-line errors."""

import json

import numpy as np
import pytest
import torch

from bembed.encode import Embedder
from encode_fixtures import TEXTS, embedder, folder, tokenizer  # noqa: F401


def test_cli_writes_npy_and_parquet_in_input_order(folder, embedder, tmp_path, monkeypatch):
    from bembed.cli import main

    txt = tmp_path / "texts.txt"  # with a byte-order mark (Notepad's UTF-8), which is not part of the first text
    txt.write_text("\n".join(TEXTS[:4]) + "\n", encoding="utf-8-sig")
    assert main(["encode", "--model", str(folder), "--input", str(txt), "--output", str(tmp_path / "v.npy"),
                 "--device", "cpu", "--no-progress"]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "v.npy"), embedder.encode(TEXTS[:4]), rtol=1e-5, atol=1e-6)

    jsonl = tmp_path / "texts.jsonl"
    jsonl.write_text("\n".join(json.dumps({"id": i, "body": t}) for i, t in enumerate(TEXTS[:3])) + "\n",
                     encoding="utf-8-sig")
    assert main(["encode", "--model", str(folder), "--input", str(jsonl), "--field", "body", "--prompt-name",
                 "query", "--output", str(tmp_path / "v.parquet"), "--device", "cpu", "--no-progress"]) == 0
    pq = pytest.importorskip("pyarrow.parquet")
    table = pq.read_table(tmp_path / "v.parquet").to_pydict()
    assert table["id"] == [0, 1, 2]
    np.testing.assert_allclose(np.array(table["embedding"]), embedder.encode_query(TEXTS[:3]), rtol=1e-5, atol=1e-6)

    mixed = tmp_path / "mixed.jsonl"  # a carried field of two types fails before anything is encoded
    mixed.write_text('{"text": "a", "id": 1}\n{"text": "b", "id": "x"}\n', encoding="utf-8")
    with monkeypatch.context() as patch:
        patch.setattr(Embedder, "encode", lambda *args, **kwargs: pytest.fail("encoded before checking the columns"))
        with pytest.raises(SystemExit, match="field 'id' cannot be a parquet column"):
            main(["encode", "--model", str(folder), "--input", str(mixed), "--output", str(tmp_path / "m.parquet")])
    assert not (tmp_path / "m.parquet").exists()

    jsonl.write_text('{"body": "x"}\n', encoding="utf-8")
    with pytest.raises(SystemExit, match="field 'text'"):
        main(["encode", "--model", str(folder), "--input", str(jsonl), "--output", str(tmp_path / "v.npy")])
    with pytest.raises(SystemExit, match=r"\.npy"):
        main(["encode", "--model", str(folder), "--input", str(txt), "--output", str(tmp_path / "v.csv")])
    assert main(["encode", "--model", str(folder), "--input", str(txt), "--output", str(tmp_path / "V.NPY"),
                 "--device", "cpu", "--no-progress"]) == 0  # suffixes in any case
    np.testing.assert_array_equal(np.load(tmp_path / "V.NPY"), np.load(tmp_path / "v.npy"))
    with pytest.raises(SystemExit, match="batch_size"):
        main(["encode", "--model", str(folder), "--input", str(txt), "--output", str(tmp_path / "v.npy"),
              "--batch-size", "0"])
    with pytest.raises(SystemExit, match="not a local folder"):
        main(["encode", "--model", str(tmp_path / "none"), "--input", str(txt), "--output", str(tmp_path / "v.npy")])
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("ok\nGröße\n".encode("latin-1"))
    with pytest.raises(SystemExit, match=r"--input: .*latin1\.txt:2: not UTF-8 text"):
        main(["encode", "--model", str(folder), "--input", str(latin1), "--output", str(tmp_path / "v.npy")])
    for device, message in (("bogus", "device 'bogus' is not a torch device"),
                            ("cuda:0", "device 'cuda:0': this torch has no usable CUDA device")):
        if device.startswith("cuda") and torch.cuda.is_available():
            continue
        with pytest.raises(SystemExit, match=message):  # were tracebacks
            main(["encode", "--model", str(folder), "--input", str(txt), "--output", str(tmp_path / "v.npy"),
                  "--device", device])


def test_cli_txt_lines_end_at_newlines_only(folder, embedder, tmp_path):
    """A lone carriage return inside a line is part of that line's text; CRLF endings are line ends."""
    from bembed.cli import main

    txt = tmp_path / "texts.txt"
    txt.write_bytes("first\rstill first\r\nsecond\n\nthird\r\n".encode())
    assert main(["encode", "--model", str(folder), "--input", str(txt), "--output", str(tmp_path / "v.npy"),
                 "--device", "cpu", "--no-progress"]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "v.npy"), embedder.encode(["first\rstill first", "second", "",
                                                                              "third"]), rtol=1e-5, atol=1e-6)


def test_cli_output_is_replaced_whole_or_not_at_all(folder, tmp_path, monkeypatch):
    from bembed.cli import main

    txt = tmp_path / "texts.txt"
    txt.write_text("\n".join(TEXTS[:3]) + "\n", encoding="utf-8")
    args = ["encode", "--model", str(folder), "--input", str(txt), "--output", str(tmp_path / "v.npy"),
            "--device", "cpu", "--no-progress"]
    assert main(args) == 0
    before = np.load(tmp_path / "v.npy")

    def interrupted_save(handle, array):
        handle.write(b"\x93NUMPY half of a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "save", interrupted_save)
    txt.write_text("\n".join(TEXTS[3:6]) + "\n", encoding="utf-8")
    with pytest.raises(KeyboardInterrupt):
        main(args)
    np.testing.assert_array_equal(np.load(tmp_path / "v.npy"), before)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["texts.txt", "v.npy"]


def test_cli_output_that_cannot_be_written_is_refused_before_encoding(folder, tmp_path, monkeypatch):
    """An output path that is a folder failed only after every text was encoded, as a traceback; a write that
    fails (a full disk) is one line too, and the previous output stays whole."""
    from bembed.cli import main
    from bembed.encode import Embedder

    txt = tmp_path / "texts.txt"
    txt.write_text("\n".join(TEXTS[:3]) + "\n", encoding="utf-8")
    (tmp_path / "taken.npy").mkdir()

    def no_encoding(*args, **kwargs):
        raise AssertionError("the model was loaded before the output was checked")

    with monkeypatch.context() as patch:
        patch.setattr(Embedder, "from_pretrained", no_encoding)
        with pytest.raises(SystemExit, match=r"--output: .*taken.npy is a folder"):
            main(["encode", "--model", str(folder), "--input", str(txt), "--output", str(tmp_path / "taken.npy")])

    def full_disk(handle, array):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "save", full_disk)
    with pytest.raises(SystemExit, match=r"--output: cannot write .*v.npy: .*No space left on device"):
        main(["encode", "--model", str(folder), "--input", str(txt), "--output", str(tmp_path / "v.npy"),
              "--device", "cpu", "--no-progress"])
    assert not (tmp_path / "v.npy").exists()
