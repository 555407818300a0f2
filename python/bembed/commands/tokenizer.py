"""`bembed tokenizer`: train the bilingual byte-level BPE tokenizer (bembed.tokenizer) for a language pair,
from the monolingual corpora that `bembed data build --pair P` wrote (train split only, so no test text
shapes the vocabulary), or from two text files / folders given with --files (one text a line)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

log = logging.getLogger(__name__)


def add_arguments(parser) -> None:
    parser.add_argument("--pair", default="en-de", choices=["en-de", "en-es"])
    parser.add_argument("--vocab-size", type=int, default=16000, help="entries, specials included (default 16000)")
    parser.add_argument("--out", required=True, metavar="DIR", help="where the tokenizer folder is written")
    parser.add_argument("--data", help="built datasets root (default: <cache>/datasets)")
    parser.add_argument("--files", nargs=2, metavar=("EN", "OTHER"),
                        help="train on these two files or folders instead of the built corpora")
    parser.add_argument("--max-chars", type=int, default=None,
                        help="train on a random sample of documents with about this many characters per language "
                             "(default: the whole corpus)")


def seeded_sample(texts: list[str], max_chars: int, seed: int = 0, cut=lambda text: text) -> list[str]:
    """Texts in a seeded random order, each passed through `cut`, until about max_chars characters: a sample
    rather than a prefix, so a corpus ordered by source is represented whole."""
    import random

    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    sample, total = [], 0
    for index in order:
        if total >= max_chars:
            break
        text = cut(texts[index])
        if text.strip():
            sample.append(text)
            total += len(text)
    return sample


def _first_paragraphs(document: str, doc_chars: int) -> str:
    """The document cut at the paragraph boundary after doc_chars characters."""
    text = ""
    for paragraph in document.split("\n\n"):
        if text and len(text) + len(paragraph) > doc_chars:
            break
        text = f"{text}\n\n{paragraph}" if text else paragraph
    return text


def sample_documents(data_root: str | Path, pair: str, lang: str, max_chars: int | None = None, seed: int = 0,
                     doc_chars: int = 4000) -> list[str]:
    """Documents of the built `mono_<lang>` train split of `pair` (never validation/test text). With
    max_chars, a seeded_sample of documents, each cut at a paragraph boundary after doc_chars characters:
    every source is represented (the split is ordered by source, so a prefix would be LibreOffice help only)."""
    from datasets import load_from_disk

    folder = Path(data_root) / pair / f"mono_{lang}"
    if not folder.is_dir():
        raise FileNotFoundError(f"no built corpus at {folder}: run `bembed data build --pair {pair}` first")
    documents = load_from_disk(str(folder))["train"]["text"]
    if max_chars is None:
        return [d for d in documents if d.strip()]
    return [d.strip() for d in seeded_sample(documents, max_chars, seed, lambda d: _first_paragraphs(d, doc_chars))]


def corpus_texts(data_root: str | Path, pair: str, lang: str, max_chars: int | None = None,
                 seed: int = 0) -> list[str]:
    """The paragraphs of `sample_documents(...)`: the tokenizer's training texts for one language."""
    return [p.strip() for d in sample_documents(data_root, pair, lang, max_chars, seed) for p in d.split("\n\n")
            if p.strip()]


def train_for_pair(out: str | Path, pair: str = "en-de", vocab_size: int = 16000, data_root: str | Path | None = None,
                   files: tuple[str, str] | None = None, max_chars: int | None = None):
    """Train and save the pair's tokenizer into `out`; returns it (a PreTrainedTokenizerFast)."""
    from bembed.data.sources import cache_dir
    from bembed.tokenizer import check_tokenizer_folder, read_corpus, train_bilingual_tokenizer

    if max_chars is not None and max_chars < 1:
        raise ValueError(f"max_chars must be positive, got {max_chars}")
    check_tokenizer_folder(out, "--out")
    if files is not None:
        corpus_a, corpus_b = (read_corpus(f, "--files") for f in files)
        if max_chars is not None:
            corpus_a, corpus_b = (seeded_sample(texts, max_chars) for texts in (corpus_a, corpus_b))
    else:
        root = Path(data_root) if data_root is not None else cache_dir() / "datasets"
        corpus_a, corpus_b = (corpus_texts(root, pair, lang, max_chars) for lang in pair.split("-"))
    return train_bilingual_tokenizer(corpus_a, corpus_b, vocab_size, output_dir=out)


def run(args) -> int:
    start = time.perf_counter()
    try:
        tokenizer = train_for_pair(args.out, args.pair, args.vocab_size, args.data, args.files, args.max_chars)
    except FileNotFoundError as exc:  # no built corpus for the pair (as `bembed eval` without data: 1)
        print(exc)
        return 1
    except ValueError as exc:  # a bad --vocab-size, --max-chars or file (as every command's bad argument: 2)
        print(exc)
        return 2
    print(f"wrote {args.out}: {len(tokenizer)} tokens in {time.perf_counter() - start:.0f} s")
    sample = "Die Datei wurde gespeichert. The file was saved."
    print(f"{sample!r} -> {tokenizer.tokenize(sample)}")
    return 0
