"""`bembed.semantic_search` against brute force (any blocking, ties, dtypes, bad input), and `bembed search` end to
end on the tiny encode model: hits, the .jsonl output, and the corpus embeddings kept only while they match."""

import json

import numpy as np
import pytest
import torch

from bembed.encode import Embedder
from bembed.search import semantic_search
from encode_fixtures import TEXTS, embedder, folder, tokenizer  # noqa: F401


def brute_force(queries, corpus, top_k, normalise=True):
    q, c = torch.as_tensor(queries, dtype=torch.float64), torch.as_tensor(corpus, dtype=torch.float64)
    if normalise:
        q, c = torch.nn.functional.normalize(q, dim=1), torch.nn.functional.normalize(c, dim=1)
    scores = (q @ c.T).tolist()
    # best first, ties by lower index
    return [sorted(range(len(row)), key=lambda j: (-row[j], j))[:top_k] for row in scores], scores


@pytest.mark.parametrize("query_chunk, corpus_chunk", [(100, 500_000), (3, 7), (1, 1), (5, 64)])
def test_matches_brute_force_under_any_blocking(query_chunk, corpus_chunk):
    generator = np.random.default_rng(query_chunk * 1000 + corpus_chunk)
    queries, corpus = generator.normal(size=(11, 24)), generator.normal(size=(97, 24))
    hits = semantic_search(queries.astype(np.float32), torch.from_numpy(corpus).float(), top_k=5,
                           query_chunk_size=query_chunk, corpus_chunk_size=corpus_chunk)
    expected, scores = brute_force(queries, corpus, 5)
    assert [[h["corpus_id"] for h in row] for row in hits] == expected
    for i, row in enumerate(hits):
        assert [h["score"] for h in row] == pytest.approx([scores[i][j] for j in expected[i]], abs=1e-5)


def test_ties_are_ordered_by_index_whatever_the_blocking():
    generator = np.random.default_rng(0)
    rows = generator.normal(size=(6, 8))
    corpus = np.concatenate([rows, rows, rows])  # every document three times: scores tie exactly
    for corpus_chunk in (1, 4, 6, 7, 100):
        hits = semantic_search(rows[:2], corpus, top_k=4, corpus_chunk_size=corpus_chunk)
        assert [h["corpus_id"] for h in hits[0]][:3] == [0, 6, 12]
        assert [h["corpus_id"] for h in hits[1]][:3] == [1, 7, 13]
        assert hits[0][0]["score"] == hits[0][1]["score"] == hits[0][2]["score"]
    # ties at the cut: of equal scores, the lower indices are kept (a duplicate's copies at the k-th place)
    assert [h["corpus_id"] for h in semantic_search(rows[:1], corpus, top_k=2, corpus_chunk_size=18)[0]] == [0, 6]
    assert [h["corpus_id"] for h in semantic_search(rows[:1], corpus, top_k=2, corpus_chunk_size=5)[0]] == [0, 6]


def test_score_functions_dtypes_and_shapes():
    generator = np.random.default_rng(1)
    queries, corpus = generator.normal(size=(4, 16)), generator.normal(size=(30, 16))
    dot = semantic_search(queries, corpus, top_k=3, score_function="dot")
    expected, scores = brute_force(queries, corpus, 3, normalise=False)
    assert [[h["corpus_id"] for h in row] for row in dot] == expected
    assert dot[0][0]["score"] == pytest.approx(scores[0][expected[0][0]], rel=1e-12)  # float64 stays float64
    custom = semantic_search(queries, corpus, top_k=3, score_function=lambda a, b: -torch.cdist(a, b))
    distances = np.linalg.norm(queries[:, None] - corpus[None], axis=2)
    assert [h["corpus_id"] for h in custom[2]] == list(np.argsort(distances[2])[:3])
    single = semantic_search(queries[0], corpus, top_k=50)  # a (dim,) query; top_k beyond the corpus
    assert len(single) == 1 and len(single[0]) == 30
    quantized = np.clip(np.round(corpus * 40), -128, 127).astype(np.int8)
    assert [h["corpus_id"] for h in semantic_search(quantized[:1], quantized, top_k=1)[0]] == [0]
    assert semantic_search(queries, np.zeros((0, 16)), top_k=3) == [[], [], [], []]
    as_rows = semantic_search(list(torch.from_numpy(queries)), corpus, top_k=np.int64(3))  # encode's list of rows
    assert [[h["corpus_id"] for h in row] for row in as_rows] == brute_force(queries, corpus, 3)[0]
    assert semantic_search(np.zeros((0, 16)), corpus) == []
    assert semantic_search([], corpus) == [] and semantic_search(queries, []) == [[], [], [], []]  # no rows at all


@pytest.mark.parametrize("kwargs, error, message", [
    ({"top_k": 0}, ValueError, "top_k"),
    ({"top_k": True}, ValueError, "top_k"),
    ({"corpus_chunk_size": 0}, ValueError, "corpus_chunk_size"),
    ({"query_chunk_size": 2.5}, ValueError, "query_chunk_size"),
    ({"score_function": "euclid"}, ValueError, "score_function"),
    ({"score_function": 3}, TypeError, "score_function"),
    ({"corpus_embeddings": np.zeros((5, 7))}, ValueError, "7"),
    ({"corpus_embeddings": np.zeros((2, 5, 8))}, ValueError, "corpus_embeddings must be"),
    ({"query_embeddings": np.array([[np.nan] * 8])}, ValueError, "query_embeddings hold NaN"),
    ({"corpus_embeddings": np.array([[1.0] * 7 + [np.inf]])}, ValueError, "corpus_embeddings hold NaN or infinite"),
    ({"query_embeddings": np.array([[-np.inf] * 8], dtype=np.float32)}, ValueError, "query_embeddings hold NaN"),
    ({"query_embeddings": [torch.ones(8), torch.ones(7)]}, ValueError, "query_embeddings: the rows have different"),
    ({"query_embeddings": np.ones((1, 8), dtype=bool)}, TypeError, "query_embeddings must hold floats"),
    ({"corpus_embeddings": [["a"] * 8]}, TypeError, "corpus_embeddings"),
])
def test_bad_input_names_the_argument(kwargs, error, message):
    arguments = {"query_embeddings": np.ones((2, 8)), "corpus_embeddings": np.ones((5, 8)), **kwargs}
    with pytest.raises(error, match=message):
        semantic_search(**arguments)


def test_same_hits_as_sentence_transformers():
    util = pytest.importorskip("sentence_transformers.util")
    generator = np.random.default_rng(2)
    queries, corpus = (torch.from_numpy(generator.normal(size=s)).float() for s in ((9, 32), (211, 32)))
    theirs = util.semantic_search(queries, corpus, top_k=7, corpus_chunk_size=50)
    ours = semantic_search(queries, corpus, top_k=7, corpus_chunk_size=50)
    assert [[h["corpus_id"] for h in row] for row in ours] == [[h["corpus_id"] for h in row] for row in theirs]
    assert [h["score"] for row in ours for h in row] == pytest.approx(
        [h["score"] for row in theirs for h in row], abs=1e-6)


# ---- bembed search ---------------------------------------------------------------------------------------------

def _search(*args):
    from bembed.cli import main

    return main(["search", *map(str, args), "--device", "cpu", "--no-progress"])


def test_cli_ranks_documents_for_each_query(folder, embedder, tmp_path, capsys):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"id": f"doc{i}", "text": t}) + "\n" for i, t in enumerate(TEXTS[:8])))
    queries = tmp_path / "queries.txt"
    queries.write_text(f"{TEXTS[1]}\n{TEXTS[6]}\n")
    assert _search("--model", folder, "--corpus", corpus, "--queries", queries, "--top-k", 3,
                   "--output", tmp_path / "hits.jsonl") == 0
    lines = [json.loads(line) for line in (tmp_path / "hits.jsonl").read_text().splitlines()]
    documents, query_vectors = embedder.encode_document(TEXTS[:8]), embedder.encode_query([TEXTS[1], TEXTS[6]])
    scores = query_vectors @ documents.T
    for line, query, row in zip(lines, (TEXTS[1], TEXTS[6]), scores):
        best = list(np.argsort(-row, kind="stable")[:3])
        assert line["query"] == query and [h["corpus_id"] for h in line["hits"]] == best
        assert [h["rank"] for h in line["hits"]] == [1, 2, 3]
        assert [h["fields"] for h in line["hits"]] == [{"id": f"doc{i}"} for i in best]  # the corpus's other fields
        assert [h["text"] for h in line["hits"]] == [TEXTS[i] for i in best]
        assert [h["score"] for h in line["hits"]] == pytest.approx(row[best], abs=1e-5)

    assert _search("--model", folder, "--corpus", corpus, "--query", TEXTS[1], "--top-k", 2) == 0
    printed = capsys.readouterr().out
    assert f"query: {TEXTS[1]}" in printed and printed.count("\n   ") == 2


def test_cli_keeps_a_documents_fields_apart_from_the_hits_own(folder, tmp_path, capsys):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"body": t, "text": 5, "score": 99, "rank": "x"}) + "\n" for t in TEXTS[:3]))
    assert _search("--model", folder, "--corpus", corpus, "--field", "body", "--query", TEXTS[0], "--top-k", 1,
                   "--output", tmp_path / "hits.jsonl") == 0
    hit = json.loads((tmp_path / "hits.jsonl").read_text())["hits"][0]
    assert hit["rank"] == 1 and hit["text"] == TEXTS[0] and hit["score"] < 1.01
    assert hit["fields"] == {"text": 5, "score": 99, "rank": "x"}
    assert _search("--model", folder, "--corpus", corpus, "--field", "body", "--query", TEXTS[0]) == 0  # printed


def test_cli_reuses_corpus_vectors_only_while_they_match(folder, tmp_path, monkeypatch, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(TEXTS[:6]) + "\n")
    kept = tmp_path / "kept" / "corpus.npz"
    common = ("--model", folder, "--corpus", corpus, "--query", TEXTS[0], "--corpus-vectors", kept)
    assert _search(*common) == 0 and kept.is_file()
    first = capsys.readouterr().out
    calls = []
    original = Embedder.encode_document
    monkeypatch.setattr(Embedder, "encode_document", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))

    assert _search(*common) == 0  # same model, corpus and settings: no corpus encoding
    again = capsys.readouterr().out
    assert calls == [] and "reusing the 6 corpus embeddings" in again
    assert again.split("\n", 1)[1] == first  # the same hits

    assert _search(*common, "--max-length", 8) == 0  # another length: encoded again
    assert calls == [1]
    capsys.readouterr()
    corpus.write_text("\n".join(TEXTS[:5]) + "\n")  # another corpus: encoded again, and the hits follow it
    assert _search(*common, "--top-k", 10) == 0
    assert calls == [1, 1] and "[5]" not in capsys.readouterr().out
    assert _search(*common, "--chunk-long") == 0  # long documents averaged over windows: encoded again
    assert calls == [1, 1, 1]
    intact = kept.read_bytes()
    for damaged in (b"not an npz", b"", intact[:300]):  # a damaged file is encoded over, not trusted
        kept.write_bytes(damaged)
        assert _search(*common) == 0
    assert calls == [1, 1, 1] + [1] * 3
    with np.load(kept) as saved:
        assert saved["embeddings"].shape[0] == 5


def test_cli_kept_vectors_follow_the_model_and_the_field(folder, tmp_path, monkeypatch):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(folder, model)
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": a, "other": b}) + "\n" for a, b in zip(TEXTS[:4], TEXTS[4:8])))
    kept = model / "corpus.npz"  # kept inside the model folder: not part of the model's fingerprint
    common = ("--model", model, "--corpus", corpus, "--query", TEXTS[0], "--corpus-vectors", kept)
    calls = []
    original = Embedder.encode_document
    monkeypatch.setattr(Embedder, "encode_document", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    assert _search(*common) == 0 and _search(*common) == 0 and calls == [1]
    # what else is written into the model folder is not the model: results, another corpus's vectors, notes
    assert _search(*common, "--output", model / "hits.jsonl") == 0 and calls == [1]
    other = (*common[:-1], model / "other.npz")
    assert _search(*other) == 0 and _search(*common) == 0 and _search(*other) == 0 and calls == [1, 1]
    (model / "notes.md").write_text("trained on ...")
    (model / "1_Pooling" / "scratch.npz").write_bytes(b"x")
    assert _search(*common) == 0 and calls == [1, 1]
    assert _search(*common, "--field", "other") == 0 and calls == [1, 1, 1]  # other texts
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes())  # the model written again (retrained in place): a new time
    assert _search(*common, "--field", "other") == 0 and calls == [1, 1, 1, 1]
    assert _search(*common, "--field", "other") == 0 and calls == [1, 1, 1, 1]
    settings = model / "1_Pooling" / "config.json"  # a module's settings are the model too
    settings.write_text(settings.read_text() + "\n")
    assert _search(*common, "--field", "other") == 0 and calls == [1, 1, 1, 1, 1]


def test_cli_errors_are_one_line(folder, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("a\nb\n")
    (tmp_path / "dir.jsonl").mkdir()
    (tmp_path / "dir.npz").mkdir()
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    for args, message in (
            (["--corpus", corpus, "--query", "x", "--top-k", 0], "--top-k must be ≥ 1"),
            (["--corpus", corpus, "--query", "x", "--output", tmp_path / "hits.txt"], "--output: .* must end in .jsonl"),
            (["--corpus", corpus, "--query", "x", "--corpus-vectors", tmp_path / "v.npy"], "must end in .npz"),
            (["--corpus", empty, "--query", "x"], "--corpus: .* holds no documents"),
            (["--corpus", corpus, "--queries", empty], "--queries: .* holds no queries"),
            (["--corpus", tmp_path / "corpus.csv", "--query", "x"], "--corpus: .* must end in one of"),
            (["--corpus", corpus, "--query", "x", "--batch-size", 0], "batch_size"),
            (["--corpus", corpus, "--query", "x", "--output", tmp_path / "dir.jsonl"], "--output: .* is a folder"),
            (["--corpus", corpus, "--query", "x", "--corpus-vectors", tmp_path / "dir.npz"], "is a folder"),
            (["--corpus", corpus, "--query", "x", "--corpus-vectors", corpus / "v.npz"], "cannot create the folder"),
    ):
        with pytest.raises(SystemExit, match=message):
            _search("--model", folder, *args)
    with pytest.raises(SystemExit, match="not a local folder"):
        _search("--model", tmp_path / "none", "--corpus", corpus, "--query", "x")


def test_cli_unwritable_outputs_stop_before_encoding_and_a_failed_save_keeps_the_hits(folder, tmp_path, monkeypatch,
                                                                                        capsys):
    import tempfile

    import bembed.commands.search as command

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(TEXTS[:6]) + "\n")
    loads = []
    original_load = Embedder.from_pretrained.__func__
    monkeypatch.setattr(Embedder, "from_pretrained",
                        classmethod(lambda cls, *a, **k: loads.append(1) or original_load(cls, *a, **k)))
    real_temporary_file = tempfile.TemporaryFile

    def read_only(*args, dir=None, **kwargs):  # a folder that exists and cannot be written (root ignores chmod)
        if dir is not None and "locked" in str(dir):
            raise PermissionError(13, "Permission denied", str(dir))
        return real_temporary_file(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "TemporaryFile", read_only)
    (tmp_path / "locked").mkdir()
    for option, name in (("--output", "hits.jsonl"), ("--corpus-vectors", "v.npz")):
        with pytest.raises(SystemExit, match=f"{option}: cannot write in .*locked"):
            _search("--model", folder, "--corpus", corpus, "--query", "x", option, tmp_path / "locked" / name)
    assert loads == []  # stopped before the model was even loaded

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(command, "save_corpus_vectors", full_disk)
    assert _search("--model", folder, "--corpus", corpus, "--query", TEXTS[0], "--corpus-vectors",
                   tmp_path / "v.npz") == 0
    captured = capsys.readouterr()
    assert "could not keep the embeddings" in captured.err and "No space left" in captured.err
    assert "query: " + TEXTS[0] in captured.out and "   1  " in captured.out  # the search still answered
