"""Peak extra host memory of `Embedder.encode` on one long document, measured in this (fresh) process, and
the inputs shared with bench_encode.py (a tokenizer over pseudo-words, texts of exact token lengths, a
JinaBERT-base-shaped random model).

    python bench/encode_memory.py --impl bembed|reference --seqlens 4096 8192 [--layers 2] [--threads 2]

Prints one JSON line: for each seqlen the peak resident memory during encode minus the resident memory
just before it (model, tokenizer and text already loaded), and the growth between consecutive seqlens.
Memory linear in L doubles when L doubles; any L×L tensor makes it quadruple. For scale: one L×L float32
matrix at L=8192 is 256 MiB, the reference's (heads, L, L) bias 3 GiB. Linux only (/proc/self/clear_refs).
"""

from __future__ import annotations

import argparse
import json
import random
import string

from peak_memory import peak_extra_mb

WORDS = 400


def make_tokenizer():
    """A byte-level BPE tokenizer trained on sentences of WORDS random pseudo-words, so that each word of
    a benchmark text is about one token (the exact lengths come from make_texts)."""
    from bembed.tokenizer import train_bilingual_tokenizer

    rng = random.Random(0)
    words = ["".join(rng.choices(string.ascii_lowercase, k=rng.randint(3, 8))) for _ in range(WORDS)]
    sentences = [" ".join(rng.choices(words, k=12)) for _ in range(400)]
    tokenizer = train_bilingual_tokenizer(sentences[:200], sentences[200:], 1200, min_frequency=1)
    tokenizer.bench_words = words
    return tokenizer


def make_texts(tokenizer, lengths: list[int], seed: int = 0) -> list[str]:
    """One text per length whose tokenization (specials included) has exactly that many tokens."""
    rng = random.Random(seed)
    texts = []
    for length in lengths:
        words = rng.choices(tokenizer.bench_words, k=length)
        text = " ".join(words)
        ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
        # Words are 1-2 tokens: keep whole words while they fit, then pad with single-letter tokens.
        while len(ids) > length - 2:
            words = words[:max(1, len(words) * (length - 2) // len(ids) - 1)]
            text = " ".join(words)
            ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
        text += " a" * (length - 2 - len(ids))
        n = len(tokenizer(text, verbose=False)["input_ids"])
        if n != length:
            raise RuntimeError(f"make_texts: built {n} tokens for a target of {length}")
        texts.append(text)
    return texts


def base_model(layers: int, device: str = "cpu"):
    """JinaBERT-base shape (vocab 61056, 768 wide, 12 heads, 3072 GEGLU) with `layers` layers, random weights."""
    import torch

    import bembed

    torch.manual_seed(0)
    config = bembed.JinaBertConfig(num_hidden_layers=layers, hidden_dropout_prob=0.0, pad_token_id=1)
    return bembed.JinaBertModel(config, add_pooling_layer=False).to(device).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--impl", choices=("bembed", "reference"), default="bembed")
    parser.add_argument("--seqlens", type=int, nargs="+", default=[4096, 8192])
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch

    from bembed.encode import Embedder

    torch.set_num_threads(args.threads)
    tokenizer = make_tokenizer()
    model = base_model(args.layers)
    model.config.attention_impl = args.impl
    embedder = Embedder(model, tokenizer)
    texts = make_texts(tokenizer, args.seqlens)
    embedder.encode(make_texts(tokenizer, [64]), show_progress_bar=False)  # page in code used on first call

    extra = {}
    for seqlen, text in zip(args.seqlens, texts):
        with peak_extra_mb() as measured:
            embedder.encode([text], max_length=seqlen, show_progress_bar=False)
        extra[seqlen] = round(measured.mb, 1)
    growth = [round(extra[b] / max(extra[a], 1e-9), 2) for a, b in zip(args.seqlens, args.seqlens[1:])]
    print(json.dumps({"impl": args.impl, "layers": args.layers, "extra_mb": extra, "growth": growth,
                      "lxl_fp32_mb": {s: round(s * s * 4 / 2**20, 1) for s in args.seqlens}}))


if __name__ == "__main__":
    main()
