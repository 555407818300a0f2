"""Stage 2: contrastive pair training — mean pooling, bidirectional InfoNCE (τ 0.05) through
`bembed_ext.contrastive_loss`, in-batch negatives gathered across all ranks (those of one micro-batch: see
TrainConfig on grad_accum; GradCache keeps a large micro-batch in memory: PairsConfig), optional E5 prefixes,
optional Matryoshka widths."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist

import bembed_ext

from .batching import Batch, DistinctBatches, shard
from .config import PairsRun
from .data import describe_rows, read_pair_rows
from .encoder import check_max_length, embed, export_encoder, load_encoder, stage_prompts, tokenize
from .losses import check_matryoshka_width, matryoshka_mean


def gathering() -> bool:
    return dist.is_initialized() and dist.get_world_size() > 1


class PairStage:
    def __init__(self, cfg: PairsRun, rank: int = 0):
        cfg.validate()  # again: code may have edited the loaded config
        if not cfg.data.train:
            raise ValueError("data.train: give at least one pairs source")
        self.cfg = cfg
        self.model, self.tokenizer = load_encoder(cfg.model)
        check_max_length(self.model, cfg.model.max_length)
        # a composite config (text_config) may have no hidden_size: the first batch then checks the width
        check_matryoshka_width(cfg.pairs.matryoshka_dims, getattr(self.model.config, "hidden_size", None),
                              "pairs.matryoshka_dims")
        self.rows, self.origins = read_pair_rows(cfg.data.train)
        self.batches = None

    def batch(self, index: int, rank: int, world: int, size: int) -> Batch:
        p = self.cfg.pairs
        if self.batches is None or self.batches.size != size * world:
            texts = [(r["query"], r["document"]) for r in self.rows]
            self.batches = DistinctBatches(texts, size * world, self.cfg.train.seed, stream=("pairs",))
        picked = shard(self.batches(index), rank, world)
        rows = [self.rows[i] for i in picked]
        q = tokenize(self.tokenizer, [p.query_prefix + r["query"] for r in rows], self.cfg.model.max_length)
        d = tokenize(self.tokenizer, [p.passage_prefix + r["document"] for r in rows], self.cfg.model.max_length)
        tokens = int(q["attention_mask"].sum() + d["attention_mask"].sum())
        return Batch({"q_ids": q["input_ids"], "q_mask": q["attention_mask"], "d_ids": d["input_ids"],
                      "d_mask": d["attention_mask"]}, tokens=tokens,
                     source=describe_rows(picked, self.origins))

    def loss(self, t: dict) -> tuple[torch.Tensor, dict]:
        p = self.cfg.pairs
        q = embed(self.model, t["q_ids"], t["q_mask"], p.grad_cache_chunk)
        d = embed(self.model, t["d_ids"], t["d_mask"], p.grad_cache_chunk)

        def infonce(q, d):
            return bembed_ext.contrastive_loss(q, d, temperature=p.temperature, bidirectional=p.bidirectional,
                                               gather_across_ranks=gathering())

        return matryoshka_mean(infonce, (q, d), p.matryoshka_dims), {}

    def export(self, folder: Path, model: torch.nn.Module) -> None:
        export_encoder(model, self.tokenizer, folder, source=self.cfg.model.init_from,
                       prompts=stage_prompts(self.cfg.pairs), matryoshka_dims=self.cfg.pairs.matryoshka_dims)
