"""Tiny generated corpora, tokenizer and configs for the training tests (no downloads, seconds on CPU)."""

from __future__ import annotations

import json
import random
from pathlib import Path

EN = ("the house garden water light stone river small green old window table music evening morning friend "
      "book letter city road bridge forest mountain summer winter number paper school teacher mother father "
      "child horse flower tree").split()
DE = ("das haus garten wasser licht stein fluss klein grün alt fenster tisch musik abend morgen freund buch "
      "brief stadt straße brücke wald berg sommer winter zahl papier schule lehrer mutter vater kind pferd "
      "blume baum").split()


def sentence(words, rng: random.Random, n: int | None = None) -> list[str]:
    return [rng.choice(words) for _ in range(n or rng.randint(5, 12))]


def translate(words: list[str]) -> list[str]:
    return [DE[EN.index(w)] for w in words]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def text_files(root: Path, n: int = 200, seed: int = 0) -> tuple[Path, Path]:
    rng = random.Random(seed)
    en = write_jsonl(root / "en.jsonl", [{"text": " ".join(sentence(EN, rng))} for _ in range(n)])
    de = write_jsonl(root / "de.jsonl", [{"text": " ".join(sentence(DE, rng))} for _ in range(n)])
    return en, de


def pair_file(root: Path, n: int = 256, seed: int = 1) -> Path:
    """query = a sentence, document = the same words shuffled plus one more (learnable by word overlap)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        words = sentence(EN + DE, rng, 6)
        doc = words[:]
        rng.shuffle(doc)
        rows.append({"query": " ".join(words), "document": " ".join(doc + [rng.choice(EN)])})
    return write_jsonl(root / "pairs.jsonl", rows)


def triple_file(root: Path, n: int = 128, seed: int = 2) -> Path:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        words = sentence(EN, rng, 6)
        rows.append({"query": " ".join(words[:3]), "positive": " ".join(words),
                     "negatives": [" ".join(sentence(EN, rng, 6)) for _ in range(2)]})
    return write_jsonl(root / "triples.jsonl", rows)


def sts_file(root: Path, n: int = 128, seed: int = 3) -> Path:
    """score = how many of 4 words sentence2 translates from sentence1 (English → German, 0..4): no token
    overlap, so an untrained model scores no better than chance and the correlation must be learned."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a = sentence(EN, rng, 4)
        k = rng.randint(0, 4)
        b = translate(a[:k]) + sentence(DE, rng, 4 - k)
        rows.append({"sentence1": " ".join(a), "sentence2": " ".join(b), "score": float(k)})
    return write_jsonl(root / "sts.jsonl", rows)


def parallel_file(root: Path, n: int = 256, seed: int = 4) -> Path:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        words = sentence(EN, rng, 6)
        rows.append({"query": " ".join(words), "document": " ".join(translate(words))})
    return write_jsonl(root / "parallel.jsonl", rows)


def tokenizer_dir(root: Path) -> Path:
    from bembed.tokenizer import train_bilingual_tokenizer

    rng = random.Random(5)
    en = [" ".join(sentence(EN, rng)) for _ in range(300)]
    de = [" ".join(sentence(DE, rng)) for _ in range(300)]
    out = root / "tokenizer"
    train_bilingual_tokenizer(en, de, 400, output_dir=out)
    return out


def one_thread():
    """Run a test single-threaded and restore the thread count: the tiny tensors gain nothing from
    threads, and on a shared 2-core machine OpenMP workers spin-waiting on busy cores slow the ALiBi
    CPU kernel by ~1000× (measured 2.6 s vs 0.3 ms for one 300-token call)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


TINY_MODEL = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
              "hidden_dropout_prob": 0.0, "max_position_embeddings": 128}


def train_overrides(out: Path, steps: int, batch: int = 16, lr: float = 3e-3, **extra) -> list[str]:
    values = {"train.output_dir": str(out), "train.max_steps": steps, "train.batch_size": batch, "train.lr": lr,
              "train.warmup_steps": 2, "train.log_every": 1, "train.progress": False, "train.seed": 0, **extra}
    return [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in values.items()]
