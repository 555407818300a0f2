"""Stage 3: multi-task fine-tuning. Every micro-batch comes from one task, drawn with probability
proportional to the task's size (or its configured `weight`):
  retrieval (triples: query, positive, negatives — or plain pairs): InfoNCE over the in-batch positives
            plus `num_negatives` hard negatives per query, all in every query's denominator;
  sts (sentence1, sentence2, score): `sts_loss` — negative Pearson (default), MSE or CoSENT — on the
            cosines of the pairs over the global micro-batch; `none` leaves STS data out (the paper's ablation).
One shared encoder, no task heads. The task and rows of micro-batch i depend only on (seed, i): micro-batch i
draws its task from stream (seed, "task draw", i), and task t reads its own batches in order (epochs of rows
shuffled by stream (seed, "task", t, epoch); duplicate-free batches for retrieval), so every row of a small task
comes round once before any repeats, and no two tasks share a row order.
"""

from __future__ import annotations

import logging
from array import array
from pathlib import Path

import torch

import bembed_ext
from bembed_ext.distributed import all_gather_rows

from .batching import Batch, DistinctBatches, epoch_indices, generator, shard
from .config import MultitaskRun
from .data import describe_rows, read_rows, row_origins
from .encoder import check_max_length, embed, export_encoder, load_encoder, stage_prompts, tokenize
from .losses import check_matryoshka_width, matryoshka_mean, sts_loss
from .pairs import gathering

log = logging.getLogger(__name__)


class MultitaskStage:
    def __init__(self, cfg: MultitaskRun, rank: int = 0):
        cfg.validate()  # again: code may have edited the loaded config
        mt = cfg.multitask
        self.cfg = cfg
        self.sts_loss = sts_loss(mt.sts_loss, score_max=mt.score_max, cosent_scale=mt.cosent_scale)
        self.model, self.tokenizer = load_encoder(cfg.model)
        check_max_length(self.model, cfg.model.max_length)
        # a composite config (text_config) may have no hidden_size: the first batch then checks the width
        check_matryoshka_width(mt.matryoshka_dims, getattr(self.model.config, "hidden_size", None),
                              "multitask.matryoshka_dims")
        self.tasks: list[tuple[str, str, list[dict]]] = []
        self.origins: list[list[tuple[str, int]]] = []  # per task, each row's (source, number there)
        weights = []
        for source in cfg.data.train:
            kind, rows = read_rows(source)
            if kind == "text":
                raise ValueError(f"data source {source.path}: text rows have no task in multi-task training")
            if kind == "sts" and self.sts_loss is None:
                log.info("sts_loss: none — leaving out %s", source.path)
                continue
            origins = row_origins(source, len(rows))
            if kind == "triples" and mt.num_negatives:
                before = len(rows)
                origins = [o for o, r in zip(origins, rows) if r["negatives"]]
                rows = [r for r in rows if r["negatives"]]
                if len(rows) < before:
                    log.info("%s: %d rows without negatives left out", source.path, before - len(rows))
            self.tasks.append(("sts" if kind == "sts" else "retrieval", source.path, rows))
            self.origins.append(origins)
            weights.append(source.weight if source.weight is not None else float(len(rows)))
        if not self.tasks:
            raise ValueError("data.train: no retrieval or STS source left to train on")
        micro = cfg.train.batch_size // cfg.train.grad_accum
        for _, path, rows in self.tasks:  # checked here, not when the sampler first draws the task mid-run
            if len(rows) < micro:
                raise ValueError(f"data source {path}: {len(rows)} rows, fewer than one global micro-batch of "
                                 f"{micro} (train.batch_size / train.grad_accum)")
        if mt.sts_loss == "pearson" and micro < 3 and any(kind == "sts" for kind, _, _ in self.tasks):
            raise ValueError(f"train.batch_size={cfg.train.batch_size} over train.grad_accum={cfg.train.grad_accum} "
                             f"leaves micro-batches of {micro} rows; sts_loss pearson needs at least 3 rows")
        self.weights = torch.tensor(weights, dtype=torch.float64)
        # Retrieval batches hold no repeated query or document (a false in-batch negative), as in `pairs`; the
        # batches are checked here, not when the sampler first draws the task mid-run.
        self.batches = []
        for task, (kind, path, rows) in enumerate(self.tasks):
            if kind == "sts":
                self.batches.append(None)
                continue
            texts = [(r["query"], r.get("positive", r.get("document"))) for r in rows]
            negatives = [tuple(r.get("negatives", ())[:mt.num_negatives]) for r in rows]
            self.batches.append(DistinctBatches(texts, micro, cfg.train.seed, shared=negatives, stream=("task", task)))
            try:
                self.batches[-1](0)
            except ValueError as exc:
                raise ValueError(f"data source {path}: {exc}") from None
        # Per micro-batch index, filled on demand: its task, and how many earlier micro-batches drew that task.
        self._task, self._position, self._drawn = array("q"), array("q"), [0] * len(self.tasks)

    def _schedule(self, index: int) -> tuple[int, int]:
        """(task, position in that task's own stream) of micro-batch `index`. Reading a task's stream at the
        global index instead would use only the task's share of each pass over its rows (a fifth, for a fifth of
        the draws): the rest of the pass would never be seen. A resume at micro-batch N replays N draws
        (~30 µs each), once."""
        while len(self._task) <= index:
            g = generator(self.cfg.train.seed, "task draw", len(self._task))
            task = int(torch.multinomial(self.weights, 1, generator=g))
            self._task.append(task)
            self._position.append(self._drawn[task])
            self._drawn[task] += 1
        return self._task[index], self._position[index]

    def batch(self, index: int, rank: int, world: int, size: int) -> Batch:
        task, position = self._schedule(index)
        kind, _, rows = self.tasks[task]
        if kind == "sts":
            picked = epoch_indices(len(rows), size * world, position, self.cfg.train.seed, stream=("task", task))
        else:
            picked = self.batches[task](position)
        picked = shard(picked, rank, world)
        chosen = [rows[i] for i in picked]
        mt, length = self.cfg.multitask, self.cfg.model.max_length
        source = f"{kind} {describe_rows(picked, self.origins[task])}"
        if kind == "sts":
            a = tokenize(self.tokenizer, [r["sentence1"] for r in chosen], length)
            b = tokenize(self.tokenizer, [r["sentence2"] for r in chosen], length)
            return Batch({"kind": kind, "a_ids": a["input_ids"], "a_mask": a["attention_mask"],
                          "b_ids": b["input_ids"], "b_mask": b["attention_mask"],
                          "score": torch.tensor([r["score"] for r in chosen])},
                         tokens=int(a["attention_mask"].sum() + b["attention_mask"].sum()), source=source)
        docs = [r.get("positive", r.get("document")) for r in chosen]
        if mt.num_negatives and "negatives" in chosen[0]:
            # hard negative j of every query, j = 0..m-1; a row with fewer negatives repeats its own
            docs += [r["negatives"][j % len(r["negatives"])] for j in range(mt.num_negatives) for r in chosen]
        q = tokenize(self.tokenizer, [mt.query_prefix + r["query"] for r in chosen], length)
        d = tokenize(self.tokenizer, [mt.passage_prefix + t for t in docs], length)
        return Batch({"kind": kind, "q_ids": q["input_ids"], "q_mask": q["attention_mask"], "d_ids": d["input_ids"],
                      "d_mask": d["attention_mask"]},
                     tokens=int(q["attention_mask"].sum() + d["attention_mask"].sum()), source=source)

    def _embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return embed(self.model, input_ids, attention_mask, self.cfg.multitask.grad_cache_chunk)

    def loss(self, t: dict) -> tuple[torch.Tensor, dict]:
        mt = self.cfg.multitask
        if t["kind"] == "sts":
            a, b = self._embed(t["a_ids"], t["a_mask"]), self._embed(t["b_ids"], t["b_mask"])
            gold = t["score"].to(a.device, torch.float32)
            if gathering():  # the correlation is over the global batch; see trainer.py for the convention
                gold = all_gather_rows(gold)
            if mt.sts_loss == "pearson" and bool((gold == gold[0]).all()):
                # One gold score (likely in micro-batches of a few rows and a few levels): the correlation is
                # undefined and the batch teaches nothing. It adds zero through the graph, so that DDP still
                # sees every parameter used, and every rank (same gathered gold) takes this branch.
                return ((a * b).sum() * 0), {}

            def sts(a, b):
                cos = (a * b).sum(-1)
                return self.sts_loss(all_gather_rows(cos) if gathering() else cos, gold)

            loss = matryoshka_mean(sts, (a, b), mt.matryoshka_dims)
            return loss, {"sts_loss": loss.detach()}
        q = self._embed(t["q_ids"], t["q_mask"])
        d = self._embed(t["d_ids"], t["d_mask"])

        def infonce(q, d):
            return bembed_ext.contrastive_loss(q, d, temperature=mt.temperature, bidirectional=False,
                                               gather_across_ranks=gathering())

        loss = matryoshka_mean(infonce, (q, d), mt.matryoshka_dims)
        return loss, {"retrieval_loss": loss.detach()}

    def export(self, folder: Path, model: torch.nn.Module) -> None:
        export_encoder(model, self.tokenizer, folder, source=self.cfg.model.init_from,
                       prompts=stage_prompts(self.cfg.multitask), matryoshka_dims=self.cfg.multitask.matryoshka_dims)
