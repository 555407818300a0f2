"""A bilingual byte-level BPE tokenizer, trained with `tokenizers` on a balanced mix of two languages.

Specials are RoBERTa's, in RoBERTa's order: `<s>`=0, `<pad>`=1, `</s>`=2, `<unk>`=3, `<mask>`=4. So a
model trained with this tokenizer needs `pad_token_id=1` in its config (the published JinaBERT configs
say 0, which is BERT's `[PAD]`): build the config with `**model_config_kwargs(tokenizer)`. Text is
NFC-normalised (a decomposed "ü" and a composed one become the same tokens), so NFC text round-trips
exactly through encode/decode. Word boundaries for whole-word masking come from the pre-tokenizer's
word-start marker "Ġ" (a token that begins with the space of a new word).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch

from bembed.files import replacing_folder, user_text_lines, write_json_atomic

logger = logging.getLogger(__name__)

SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")
MIN_VOCAB_SIZE = 256 + len(SPECIAL_TOKENS)  # every byte, then the specials
WORD_START = "Ġ"  # byte-level BPE's picture of the space that starts a word
WHITESPACE_PICTURES = ("Ġ", "Ċ", "ĉ", "č")  # its pictures of space, newline, tab and carriage return


def _read_lines(path: Path) -> Iterator[str]:
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        for _, line in user_text_lines(file):
            line = line.removesuffix("\n").removesuffix("\r")
            if line.strip():
                yield line


def _is_path(source) -> bool:
    try:
        return Path(source).exists()
    except OSError:  # a text where a path goes, too long to be a file name
        return False


def read_corpus(source, argument: str) -> list[str]:
    """A corpus argument as a non-empty list of texts: a path (str or Path) to a file or folder of UTF-8 text
    files (one text a line), a sequence of pathlib.Path, or an iterable of strings. ValueError, naming
    `argument` (and the path), when it holds no non-empty text."""
    texts = _corpus_texts(source, argument)
    if not texts:
        where = f"{argument} {source}" if isinstance(source, (str, os.PathLike)) else argument
        raise ValueError(f"{where}: no non-empty text")
    return texts


def _corpus_texts(source, argument: str) -> list[str]:
    if isinstance(source, (str, os.PathLike)) and _is_path(source):
        return list(_read_lines(Path(source)))
    if isinstance(source, (str, os.PathLike)):
        shown = str(source) if len(str(source)) <= 80 else str(source)[:77] + "..."
        raise ValueError(f"{argument}: {shown!r} is not an existing file or folder (pass texts as a list)")
    if not isinstance(source, Iterable):
        raise TypeError(f"{argument} must be a path or an iterable of texts, got {type(source).__name__}")
    items = list(source)
    if items and all(isinstance(item, os.PathLike) for item in items):
        return [line for item in items for line in _read_lines(Path(item))]
    if not all(isinstance(item, str) for item in items):
        raise TypeError(f"{argument}: every item must be a str (a text) or every item a pathlib.Path")
    return [text for text in items if text.strip()]


def balanced_stream(texts_a: list[str], texts_b: list[str]) -> Iterator[str]:
    """Both corpora with the same weight in characters: the smaller one is cycled until it has contributed
    as many characters as the larger, the two interleaved. The BPE merges then serve both languages."""
    chars_a, chars_b = sum(map(len, texts_a)), sum(map(len, texts_b))
    if chars_a < chars_b:
        texts_a, texts_b, chars_a, chars_b = texts_b, texts_a, chars_b, chars_a
    budget = chars_a
    cycled = itertools.cycle(texts_b)
    for text in texts_a:
        yield text
        taken = 0
        while budget > 0 and taken < len(text):
            extra = next(cycled)
            taken += len(extra)
            budget -= len(extra)
            yield extra
    while budget > 0:
        extra = next(cycled)
        budget -= len(extra)
        yield extra


def train_bilingual_tokenizer(texts_or_files_lang_a, texts_or_files_lang_b, vocab_size: int, *,
                              min_frequency: int = 2, model_max_length: int = 8192,
                              output_dir: str | os.PathLike | None = None, show_progress: bool = False):
    """Train a byte-level BPE tokenizer with `vocab_size` entries (specials included) on a character-balanced
    mix of two languages, and return it as a `transformers.PreTrainedTokenizerFast` (saved to output_dir
    when given, loadable by `AutoTokenizer.from_pretrained`).

    Each corpus is a path to a UTF-8 file or folder (one text a line), a list of pathlib.Path, or an
    iterable of strings. The vocabulary reaches vocab_size unless the corpus runs out of pairs seen
    min_frequency times (then it is smaller, with a warning).
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int):
        raise TypeError(f"vocab_size must be an int, got {type(vocab_size).__name__}")
    if vocab_size < MIN_VOCAB_SIZE:
        raise ValueError(f"vocab_size must be at least {MIN_VOCAB_SIZE} (256 bytes + {len(SPECIAL_TOKENS)} specials), "
                         f"got {vocab_size}")
    texts_a = read_corpus(texts_or_files_lang_a, "texts_or_files_lang_a")
    texts_b = read_corpus(texts_or_files_lang_b, "texts_or_files_lang_b")
    if output_dir is not None:
        check_tokenizer_folder(output_dir)

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                  special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=show_progress)
    tokenizer.train_from_iterator(balanced_stream(texts_a, texts_b), trainer=trainer)
    # Positional: the keyword for the CLS pair is `cls` in some tokenizers releases, `cls_token` in others.
    tokenizer.post_processor = processors.RobertaProcessing(("</s>", tokenizer.token_to_id("</s>")),
                                                            ("<s>", tokenizer.token_to_id("<s>")), True, False)
    if tokenizer.get_vocab_size() < vocab_size:
        logger.warning("tokenizer: the corpus yielded %d tokens, fewer than vocab_size=%d",
                       tokenizer.get_vocab_size(), vocab_size)

    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", pad_token="<pad>",
                                   eos_token="</s>", unk_token="<unk>", mask_token="<mask>", cls_token="<s>",
                                   sep_token="</s>", model_max_length=model_max_length)
    if output_dir is not None:  # whole or not at all: a killed save must not leave a folder that looks done
        with replacing_folder(output_dir) as tmp:
            save_tokenizer(fast, tmp)
    return fast


# What save_pretrained writes for a fast tokenizer: a folder holding only these may be replaced by a new one.
TOKENIZER_FILES = {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"}


def check_tokenizer_folder(output_dir: str | os.PathLike, argument: str = "output_dir") -> None:
    """Raise ValueError unless `output_dir` can take a new tokenizer: absent, or a folder of tokenizer files
    only (it is replaced whole, so other files, a model's weights say, would go with it)."""
    path = Path(output_dir)
    if not path.exists():
        return
    others = sorted(p.name for p in path.iterdir()) if path.is_dir() else None
    if others is None or set(others) - TOKENIZER_FILES:
        raise ValueError(f"{argument}: {path} exists and is not a tokenizer folder (it would be replaced whole); "
                         "give a new folder")


def save_tokenizer(tokenizer, output_dir: str | os.PathLike) -> None:
    """save_pretrained, naming the class "PreTrainedTokenizerFast": transformers 5 writes its new
    "TokenizersBackend", which transformers 4 cannot resolve; the old name loads in both."""
    tokenizer.save_pretrained(output_dir)
    path = Path(output_dir) / "tokenizer_config.json"
    settings = json.loads(path.read_text(encoding="utf-8"))
    settings["tokenizer_class"] = "PreTrainedTokenizerFast"
    write_json_atomic(path, settings, indent=2)


def model_config_kwargs(tokenizer) -> dict:
    """The JinaBertConfig fields a tokenizer decides: vocab_size and the special token ids."""
    return {"vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}


def _word_marking(tokenizer) -> tuple[str, str]:
    """How a fast tokenizer's vocabulary marks words, from its pipeline: ("byte-level", "Ġ") as bembed's,
    ("continuation", "##") for WordPiece (BERT, jina-embeddings-v2-base-en), or ("prefix", "▁") for a Metaspace
    (SentencePiece-style) pre-tokenizer. ValueError for any other: whole-word masking would see one word."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ValueError(f"whole-word masking needs a fast tokenizer (tokenizer.json), got {type(tokenizer).__name__}")
    spec = json.loads(backend.to_str())
    if spec["model"]["type"] == "WordPiece":
        return "continuation", spec["model"].get("continuing_subword_prefix") or "##"
    steps, kinds = [spec.get("pre_tokenizer") or {}], {}
    while steps:  # a Sequence nests its pre-tokenizers
        step = steps.pop()
        steps.extend(step.get("pretokenizers") or [])
        kinds[step.get("type")] = step
    if "ByteLevel" in kinds:
        return "byte-level", WHITESPACE_PICTURES[0]
    if "Metaspace" in kinds:
        return "prefix", kinds["Metaspace"].get("replacement") or "▁"
    raise ValueError(f"whole-word masking: cannot tell where words start in this tokenizer (model "
                     f"{spec['model']['type']}, pre-tokenizers {sorted(k for k in kinds if k)}); bembed knows "
                     "byte-level BPE (Ġ), WordPiece (##) and Metaspace (▁)")


def word_start_table(tokenizer) -> torch.Tensor:
    """(vocab, 2) bool. Column 0: tokens that begin a word, and special tokens (each a word of its own).
    Byte-level BPE (bembed's): tokens that start with a whitespace picture ("Ġ" space, "Ċ" newline, "ĉ" tab,
    "č" carriage return). Column 1 (byte-level only): tokens that end in a newline, tab or carriage return,
    after which the next token begins a word although it carries no mark ("haus", "Ċ", "der"): the
    pre-tokenizer gives a word at most the one space before it, so any other whitespace run is a word of its
    own. A token ending in "Ġ" may be that space, split from its word by BPE ("Ġ", "Ã¼ber"). WordPiece: tokens
    without the continuation prefix "##". Metaspace: tokens that start with "▁"."""
    marking, mark = _word_marking(tokenizer)
    table = torch.zeros(len(tokenizer), 2, dtype=torch.bool)
    for token, index in tokenizer.get_vocab().items():
        if marking == "byte-level":
            table[index, 0] = token.startswith(WHITESPACE_PICTURES)
            table[index, 1] = token.endswith(WHITESPACE_PICTURES[1:])
        else:
            table[index, 0] = token.startswith(mark) != (marking == "continuation")
    specials = torch.tensor(tokenizer.all_special_ids, dtype=torch.long)
    table[specials, 0], table[specials, 1] = True, False
    return table


def word_ids(input_ids: torch.Tensor, table: torch.Tensor, special_ids: Iterable[int] = ()) -> torch.Tensor:
    """Word index of every token of input_ids (..., L), counted from 0 along the last dimension, for
    whole-word masking: a new word starts at a token marked in `table` (see word_start_table), after one
    that ends in a newline or tab, at the first token, and right after a special token (so "<s>Hallo" starts
    a word at "Hallo"). Tokens whose ids are in special_ids get −1."""
    marks = table.to(input_ids.device)[input_ids]
    starts = marks[..., 0].clone()
    starts[..., 1:] |= marks[..., :-1, 1]
    special = torch.zeros_like(starts)
    for sid in special_ids:
        special |= input_ids == sid
    after_special = torch.zeros_like(starts)
    after_special[..., 1:] = special[..., :-1]
    starts = starts | after_special
    starts[..., 0] = True
    ids = torch.cumsum(starts.long(), dim=-1) - 1
    return torch.where(special, torch.full_like(ids, -1), ids)
