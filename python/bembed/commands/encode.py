"""`bembed encode`: embed the texts of a .txt (one text a line) or .jsonl file into .npy or .parquet.

A .jsonl line is a JSON string or an object whose --field (default "text") holds the text; other fields
are carried into a parquet output as columns (ids, labels). Rows keep the input order.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from bembed.files import NotUTF8Error, replacing_file, user_text_lines

INPUT_SUFFIXES = (".txt", ".jsonl")
OUTPUT_SUFFIXES = (".npy", ".parquet")


def add_arguments(parser) -> None:
    parser.add_argument("--model", required=True, metavar="PATH", help="a bembed model folder")
    parser.add_argument("--input", required=True, metavar="FILE", help="texts: .txt (one a line) or .jsonl")
    parser.add_argument("--output", required=True, metavar="FILE", help="vectors: .npy or .parquet")
    parser.add_argument("--prompt-name", help="a prompt of the model, e.g. query or document")
    parser.add_argument("--no-normalize", action="store_true", help="keep the raw mean-pooled vectors")
    add_reading_and_encoding_arguments(parser)


def add_reading_and_encoding_arguments(parser) -> None:
    """The options every command that reads texts from files and encodes them takes (encode, search)."""
    parser.add_argument("--field", default="text", help="the text field of .jsonl objects (default: text)")
    parser.add_argument("--batch-size", type=int, default=32, help="token budget = batch size × typical length")
    parser.add_argument("--max-length", type=int,
                        help="tokens per text, specials included (default: the model's max_seq_length)")
    parser.add_argument("--chunk-long", action="store_true",
                        help="average windows of texts over --max-length instead of truncating them")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def read_texts(path: Path, field: str, option: str = "--input") -> tuple[list[str], list[dict]]:
    """The texts of a .txt or .jsonl file, and for .jsonl the other fields of each object; errors name
    `option`, the command-line option that gave the file."""
    suffix = path.suffix.lower()
    if suffix not in INPUT_SUFFIXES:
        raise ValueError(f"{option}: {path} must end in one of {INPUT_SUFFIXES}")
    texts, extras = [], []
    # Lines end at "\n" (or "\r\n") only: a lone "\r" inside a line must not make two texts of one line.
    for number, line in user_text_lines(path):  # a line that is not UTF-8: NotUTF8Error, which run() reports
        line = line.removesuffix("\n").removesuffix("\r")
        if suffix == ".txt":
            texts.append(line)
            continue
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{option}: {path}:{number} is not JSON ({error.msg})") from None
        if isinstance(item, dict):
            if not isinstance(item.get(field), str):
                raise ValueError(f"{option}: {path}:{number} has no string field {field!r} (see --field)")
            texts.append(item[field])
            extras.append({k: v for k, v in item.items() if k != field})
        elif isinstance(item, str):
            texts.append(item)
            extras.append({})
        else:
            raise ValueError(f"{option}: {path}:{number} must be a JSON string or object, got {type(item).__name__}")
    return texts, extras


def extra_columns(extras: list[dict]) -> dict:
    """The other .jsonl fields as parquet columns, built before encoding: a field that cannot be a column (mixed
    types) must fail before the encoding time is spent, not after."""
    import pyarrow as pa

    columns = {}
    for key in sorted({k for extra in extras for k in extra}):
        if key == "embedding":
            raise ValueError("--input: a field named 'embedding' would clash with the vectors' column")
        try:
            columns[key] = pa.array([extra.get(key) for extra in extras])
        except pa.ArrowException as error:
            raise ValueError(f"--input: field {key!r} cannot be a parquet column ({error}); give it one type on "
                             "every line, or write .npy") from None
    return columns


def check_output_path(option: str, path: Path) -> None:
    """SystemExit, naming the option, for an output path that could not be written: checked before encoding,
    not after the time is spent. The file is written as a temporary file in its folder, then renamed, so the
    folder must take one."""
    if path.is_dir():
        raise SystemExit(f"{option}: {path} is a folder")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise SystemExit(f"{option}: cannot create the folder of {path}: {error}") from None
    try:
        with tempfile.TemporaryFile(dir=path.parent):
            pass
    except OSError as error:
        raise SystemExit(f"{option}: cannot write in {path.parent}: {error}") from None


def write_vectors(path: Path, vectors, columns: dict) -> None:
    """.npy: the vectors; .parquet: the columns of `extra_columns` and an "embedding" column. Written to a
    temporary file and renamed, so an interrupted run leaves the previous output whole."""
    import numpy as np

    with replacing_file(path) as handle:
        if path.suffix.lower() == ".npy":
            np.save(handle, vectors)
            return
        import pyarrow as pa
        import pyarrow.parquet as pq

        columns = dict(columns)
        flat = pa.array(vectors.reshape(-1), type=pa.float32())
        columns["embedding"] = pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])
        pq.write_table(pa.table(columns), handle)


def run(args) -> int:
    from bembed.encode import Embedder

    output = Path(args.output)
    suffix = output.suffix.lower()
    parquet = suffix == ".parquet"
    if suffix not in OUTPUT_SUFFIXES:
        raise SystemExit(f"--output: {output} must end in one of {OUTPUT_SUFFIXES}")
    if parquet:
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise SystemExit("--output .parquet needs pyarrow (pip install pyarrow), or write .npy") from None
    check_output_path("--output", output)
    try:
        texts, extras = read_texts(Path(args.input), args.field)
        columns = extra_columns(extras) if parquet else {}
    except NotUTF8Error as error:
        raise SystemExit(f"--input: {error}") from None
    except (OSError, ValueError) as error:
        raise SystemExit(str(error)) from None
    try:  # a bad option value (--batch-size 0, an unknown --prompt-name, --model not a folder) is one line
        embedder = Embedder.from_pretrained(args.model, device=args.device)
        vectors = embedder.encode(texts, batch_size=args.batch_size, max_length=args.max_length,
                                  normalize_embeddings=False if args.no_normalize else None,
                                  prompt_name=args.prompt_name, show_progress_bar=not args.no_progress,
                                  truncate=not args.chunk_long)
    except ValueError as error:
        raise SystemExit(f"bembed encode: {error}") from None
    try:
        write_vectors(output, vectors, columns)
    except OSError as error:  # a full disk: the previous output stays whole (written aside, then renamed)
        raise SystemExit(f"--output: cannot write {output}: {error}") from None
    print(f"wrote {vectors.shape[0]} vectors of dimension {vectors.shape[1]} to {output}")
    return 0
