"""`bembed search`: the best documents of a corpus file for each query, by the model's embeddings.

The corpus (.txt, one document a line, or .jsonl) is embedded with the model's document prompt, the queries with
its query prompt, and `bembed.search.semantic_search` ranks exactly (no approximate index). `--corpus-vectors
FILE.npz` keeps the corpus embeddings with a record of what made them (model, corpus file, length, prompt), so
the next search of the same corpus with the same model skips the encoding; a record that does not match means
encoding again, never reusing vectors of another model or another version of the file.
"""

from __future__ import annotations

import hashlib
import json
import sys
import zipfile
from pathlib import Path

from bembed.commands.encode import add_reading_and_encoding_arguments, check_output_path, read_texts
from bembed.files import NotUTF8Error, replacing_file

SNIPPET_CHARS = 100


def add_arguments(parser) -> None:
    parser.add_argument("--model", required=True, metavar="PATH", help="a bembed model folder")
    parser.add_argument("--corpus", required=True, metavar="FILE", help="documents: .txt (one a line) or .jsonl")
    queries = parser.add_mutually_exclusive_group(required=True)
    queries.add_argument("--query", action="append", metavar="TEXT", help="a query (repeatable)")
    queries.add_argument("--queries", metavar="FILE", help="queries: .txt (one a line) or .jsonl")
    parser.add_argument("--top-k", type=int, default=10, help="hits per query (default 10)")
    parser.add_argument("--output", metavar="FILE",
                        help="write the hits as .jsonl (one line per query) instead of printing them")
    parser.add_argument("--corpus-vectors", metavar="FILE.npz",
                        help="keep the corpus embeddings here and reuse them while model, corpus and settings match")
    add_reading_and_encoding_arguments(parser)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


MODEL_TEXT_SUFFIXES = (".json", ".txt", ".model")     # configs, tokenizer files, prompts: hashed whole
MODEL_WEIGHT_SUFFIXES = (".safetensors", ".bin")       # by size and time


def _model_files(folder: Path) -> list[Path]:
    """The files that make the model: the folder's own configs, tokenizer and weights, and the module folders
    its modules.json names; not what else lives there (kept embeddings, search results, notes)."""
    suffixes = MODEL_TEXT_SUFFIXES + MODEL_WEIGHT_SUFFIXES
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix in suffixes]
    try:
        modules = json.loads((folder / "modules.json").read_text(encoding="utf-8"))
        module_paths = [m.get("path") for m in modules if isinstance(m, dict)]
    except (OSError, ValueError, TypeError):  # none, or not what sentence-transformers writes: no module folders
        module_paths = []
    for path in module_paths:
        if isinstance(path, str) and path and (folder / path).is_dir():
            files += [p for p in (folder / path).rglob("*") if p.is_file() and p.suffix in suffixes]
    return sorted({p for p in files if not p.name.startswith(".")})  # hidden: temporary files among them


def _model_fingerprint(folder: Path) -> str:
    """The model's files (_model_files) hashed, weights by size and modification time: hashing gigabytes on
    every search would cost more than the encoding it saves on a small corpus."""
    digest = hashlib.sha256()
    for path in _model_files(folder):
        name = path.relative_to(folder).as_posix()
        if path.suffix in MODEL_TEXT_SUFFIXES:
            digest.update(f"{name}:{path.stat().st_size}:".encode() + path.read_bytes())
        else:
            stat = path.stat()
            digest.update(f"{name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


def corpus_record(args, embedder) -> dict:
    """What the corpus embeddings depend on: equal records mean equal embeddings. (The prompts and the
    normalisation are read from the model folder's json files, which the fingerprint hashes; the device
    decides the precision: GPUs encode under bf16/fp16 autocast.)"""
    return {"model": _model_fingerprint(Path(args.model)), "corpus": _sha256(Path(args.corpus)),
            "field": args.field, "max_length": args.max_length or embedder.max_seq_length,
            "chunk_long": args.chunk_long, "device": embedder.device.type}


def load_corpus_vectors(path: Path, record: dict):
    """The kept embeddings when `path` holds them with this `record`, else None."""
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as saved:
            if json.loads(str(saved["record"])) == record:
                return saved["embeddings"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):  # missing, not ours, empty, cut short
        pass
    return None


def save_corpus_vectors(path: Path, embeddings, record: dict) -> None:
    import numpy as np

    with replacing_file(path) as handle:  # one file, renamed into place: the record always matches the vectors
        np.savez(handle, embeddings=embeddings, record=np.array(json.dumps(record, sort_keys=True)))


def _read(path: str, field: str, option: str):
    try:
        return read_texts(Path(path), field, option)
    except NotUTF8Error as error:
        raise SystemExit(f"{option}: {error}") from None
    except (OSError, ValueError) as error:
        raise SystemExit(str(error)) from None


def run(args) -> int:
    import numpy as np

    from bembed.encode import Embedder
    from bembed.search import semantic_search

    if args.top_k < 1:
        raise SystemExit(f"--top-k must be ≥ 1, got {args.top_k}")
    vectors_path = Path(args.corpus_vectors) if args.corpus_vectors else None
    if vectors_path is not None and vectors_path.suffix.lower() != ".npz":
        raise SystemExit(f"--corpus-vectors: {vectors_path} must end in .npz")
    output = Path(args.output) if args.output else None
    if output is not None and output.suffix.lower() != ".jsonl":
        raise SystemExit(f"--output: {output} must end in .jsonl")
    for option, path in (("--output", output), ("--corpus-vectors", vectors_path)):
        if path is not None:
            check_output_path(option, path)  # now, not after the corpus has been encoded
    documents, extras = _read(args.corpus, args.field, "--corpus")
    if not documents:
        raise SystemExit(f"--corpus: {args.corpus} holds no documents")
    queries = args.query if args.query else _read(args.queries, args.field, "--queries")[0]
    if not queries:
        raise SystemExit(f"--queries: {args.queries} holds no queries")

    options = dict(batch_size=args.batch_size, max_length=args.max_length, show_progress_bar=not args.no_progress)
    try:  # a bad option value (--batch-size 0, --model not a folder) is one line
        embedder = Embedder.from_pretrained(args.model, device=args.device)
        record = corpus_record(args, embedder)
        corpus = load_corpus_vectors(vectors_path, record) if vectors_path else None
        if corpus is not None:
            print(f"reusing the {len(corpus)} corpus embeddings kept in {vectors_path}")
        else:
            corpus = embedder.encode_document(documents, truncate=not args.chunk_long, **options)
            if vectors_path:
                try:  # the search goes on without them (a full disk, say): the encoding is not lost
                    save_corpus_vectors(vectors_path, corpus, record)
                except OSError as error:
                    print(f"warning: --corpus-vectors: could not keep the embeddings in {vectors_path}: {error}",
                          file=sys.stderr)
        query_vectors = embedder.encode_query(queries, **options)
    except ValueError as error:
        raise SystemExit(f"bembed search: {error}") from None
    hits = semantic_search(np.asarray(query_vectors), np.asarray(corpus), top_k=args.top_k)

    def hit_record(rank: int, hit: dict) -> dict:
        record = {"rank": rank, "corpus_id": hit["corpus_id"], "score": round(hit["score"], 6),
                  "text": documents[hit["corpus_id"]]}
        if extras and extras[hit["corpus_id"]]:  # the document's other .jsonl fields, apart: they may be named "score"
            record["fields"] = extras[hit["corpus_id"]]
        return record

    results = [{"query": query, "hits": [hit_record(rank, hit) for rank, hit in enumerate(query_hits, 1)]}
               for query, query_hits in zip(queries, hits)]
    if output is not None:
        try:
            with replacing_file(output) as handle:
                handle.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in results).encode())
        except OSError as error:
            raise SystemExit(f"--output: cannot write {output}: {error}") from None
        print(f"wrote the top {args.top_k} of {len(documents)} documents for {len(queries)} queries to {output}")
        return 0
    for result in results:
        print(f"\nquery: {result['query']}")
        for hit in result["hits"]:
            text = " ".join(hit["text"].split())
            text = text if len(text) <= SNIPPET_CHARS else text[:SNIPPET_CHARS - 1] + "…"
            print(f"{hit['rank']:>4}  {hit['score']:.4f}  [{hit['corpus_id']}]  {text}")
    return 0
