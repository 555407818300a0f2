"""Stage 1: masked-language-model pretraining with whole-word masking (no NSP).

Text rows are tokenised once, cut into sequences of at most `model.max_length` tokens (<s> … </s>, or the
tokenizer's own special tokens), and grouped by the sources' `lang`; `mlm.language_batches: alternate` draws
micro-batch i from language i mod n (one language per batch), `mix` draws from all texts together. The masks
of a row depend only on (seed, its position in the global batch), so they are the same for any world size and
on resume.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

from bembed.model import JinaBertConfig, JinaBertForMaskedLM
from bembed.st_folder import transformer_folder
from bembed.tokenizer import model_config_kwargs, save_tokenizer, word_ids, word_start_table

from .batching import Batch, epoch_indices, generator, shard
from .config import PretrainRun
from .data import read_rows
from .encoder import check_vocabulary, init_tokenizer, load_tokenizer, record_matryoshka_dims
from .masking import whole_word_mask

log = logging.getLogger(__name__)


def _tokenizer(cfg: PretrainRun, texts_by_lang: dict[str, list[str]], rank: int):
    """The model.init_from folder's tokenizer (the ids its embeddings were trained on; encoder.init_tokenizer),
    else model.tokenizer, else <output_dir>/tokenizer. A fresh model's tokenizer that is missing (a
    model.tokenizer that does not exist yet, or no model.tokenizer) is trained by rank 0 on the text of the
    first two languages and saved there."""
    from bembed.tokenizer import train_bilingual_tokenizer

    if cfg.model.init_from:
        return init_tokenizer(cfg.model)
    path = Path(cfg.model.tokenizer or Path(cfg.train.output_dir) / "tokenizer")
    missing = not path.is_dir()
    if dist.is_initialized():  # rank 0's answer for all: a rank that looked after rank 0 saved would skip the barrier
        decision = [missing]
        dist.broadcast_object_list(decision, src=0)
        missing = decision[0]
    if missing:
        if len(texts_by_lang) < 2:
            raise ValueError(f"model.tokenizer {path} does not exist, and training one needs text in two "
                             f"languages (data.train sources with lang tags), got {sorted(texts_by_lang)}")
        if rank == 0:
            a, b = list(texts_by_lang.values())[:2]
            log.info("training a %d-token tokenizer into %s", cfg.mlm.tokenizer_vocab_size, path)
            # saved whole or not at all: a kill mid-save must not leave a torn tokenizer there
            train_bilingual_tokenizer(a, b, cfg.mlm.tokenizer_vocab_size, output_dir=path)
        if dist.is_initialized():
            dist.barrier()
    return load_tokenizer(path)


def _special_ends(tokenizer) -> tuple[list[int], list[int]]:
    """The special tokens the tokenizer puts before and after a text: <s> … </s> (bembed's), [CLS] … [SEP]
    (WordPiece), read off one word encoded with and without them (the word may itself be an unknown token)."""
    text = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    start = next(i for i in range(len(full) - len(text) + 1) if full[i:i + len(text)] == text)
    return full[:start], full[start + len(text):]


class MLMStage:
    weighted_batches = True  # a micro-batch weighs its masked tokens

    def __init__(self, cfg: PretrainRun, rank: int = 0):
        cfg.validate()  # again: code may have edited the loaded config
        if not cfg.data.train:
            raise ValueError("data.train: give at least one text source")
        self.cfg = cfg
        texts_by_lang: dict[str, list[str]] = {}
        for source in cfg.data.train:
            _, rows = read_rows(source, "text")
            texts_by_lang.setdefault(source.lang or "all", []).extend(r["text"] for r in rows)
        self.tokenizer = _tokenizer(cfg, texts_by_lang, rank)
        if cfg.model.init_from:
            self.model = JinaBertForMaskedLM.from_pretrained(transformer_folder(cfg.model.init_from))
            record_matryoshka_dims(self.model.config)  # MLM trains no cut widths
            check_vocabulary(self.model, self.tokenizer, "model.init_from")
        else:
            config = JinaBertConfig(**{**cfg.model.config, **model_config_kwargs(self.tokenizer)})
            self.model = JinaBertForMaskedLM(config)
        tok = self.tokenizer
        if tok.mask_token_id is None:
            raise ValueError("model: the tokenizer has no mask token, which masked-language modelling needs")
        self.special_ids = sorted(set(tok.all_special_ids))
        self.table = word_start_table(tok)
        self.random_ids = torch.tensor([i for i in range(len(tok)) if i not in set(self.special_ids)])
        self.sequences = {lang: self._chunk(texts) for lang, texts in texts_by_lang.items()}
        if cfg.mlm.language_batches == "mix":
            self.sequences = {"mix": [s for seqs in self.sequences.values() for s in seqs]}
        self.groups = sorted(self.sequences)
        log.info("MLM sequences: %s", {g: len(s) for g, s in self.sequences.items()})

    def _chunk(self, texts: list[str]) -> list[list[int]]:
        tok = self.tokenizer
        before, after = _special_ends(tok)
        body = self.cfg.model.max_length - len(before) - len(after)
        # whole documents, cut into sequences below: the tokenizer's warning about sequences past its limit is noise
        ids = tok(texts, add_special_tokens=False, verbose=False)["input_ids"]
        return [[*before, *seq[i:i + body], *after] for seq in ids for i in range(0, len(seq), body)]

    def batch(self, index: int, rank: int, world: int, size: int) -> Batch:
        group = self.groups[index % len(self.groups)]
        try:
            rows = epoch_indices(len(self.sequences[group]), size * world, index // len(self.groups),
                                 self.cfg.train.seed, stream=("mlm rows", group))
        except ValueError as exc:
            raise ValueError(f"the {group!r} sequences: {exc}") from None
        positions = shard(list(range(len(rows))), rank, world)
        seqs = [self.sequences[group][rows[p]] for p in positions]
        length = max(map(len, seqs))
        pad = self.tokenizer.pad_token_id
        input_ids = torch.full((len(seqs), length), pad, dtype=torch.long)
        attention = torch.zeros((len(seqs), length), dtype=torch.long)
        for i, seq in enumerate(seqs):
            input_ids[i, :len(seq)] = torch.tensor(seq)
            attention[i, :len(seq)] = 1
        words = word_ids(input_ids, self.table, self.special_ids)
        masked, labels = [], []
        for i, p in enumerate(positions):
            m, lab = whole_word_mask(input_ids[i], words[i], mask_prob=self.cfg.mlm.mask_prob,
                                     mask_id=self.tokenizer.mask_token_id, random_ids=self.random_ids,
                                     generator=generator(self.cfg.train.seed, "mlm mask", index, p))
            masked.append(m)
            labels.append(lab)
        labels = torch.stack(labels)
        return Batch({"input_ids": torch.stack(masked), "attention_mask": attention, "labels": labels},
                     tokens=int(attention.sum()), source=f"mlm[{group}] sequences {[rows[p] for p in positions]}",
                     weight=float((labels != -100).sum()))

    def loss(self, t: dict) -> tuple[torch.Tensor, dict]:
        """Cross-entropy, mean over this rank's masked tokens of the micro-batch. The trainer weighs it by
        those tokens (Batch.weight) over the step's total on all ranks, so a step's loss is the mean over all
        of its masked tokens however it is split, with no collective here."""
        logits, targets = self.model.masked_logits(t["input_ids"], t["attention_mask"], t["labels"])
        count = max(len(targets), 1)  # a micro-batch may draw no masked token: 0, not NaN
        loss = F.cross_entropy(logits, targets, reduction="sum") / count
        accuracy = (logits.argmax(-1) == targets).sum().float() / count
        return loss, {"mlm_accuracy": accuracy.detach()}

    def export(self, folder: Path, model: torch.nn.Module) -> None:
        model.save_pretrained(folder)
        save_tokenizer(self.tokenizer, folder)
