"""The trainer core every stage shares: device, bf16 autocast on GPU, gradient accumulation, clipping,
AdamW with linear warm-up and linear decay, tqdm progress, jsonl metrics and a loss-curve PNG (metrics.py),
atomic checkpoints with exact resume (checkpoint.py), Ctrl-C → checkpoint (stop_signals.py), NaN/inf → stop,
and data parallelism under torchrun.

A stage supplies `model` (the trained nn.Module), `batch(index, rank, world, size) -> Batch` (rank-local
micro-batch `index` of `size` rows) and `loss(tensors) -> (loss, metrics)`, plus `export(folder, model)` (writes
`model`, the trained model made whole, to `folder`), and
`weighted_batches = True` if its Batch weights are not all 1 (see `Batch`). Optional: `groups`, the parts of
its data that batch indices take turns over (MLM's languages), each checked for a whole batch at start.
Loss convention across ranks (the one `bembed_ext.contrastive_loss` uses): the mean of the rank losses is
the loss of the global batch, and averaging the ranks' parameter gradients gives its gradient (gathers
inside a loss sum gradients back to the owning rank). That is DDP's and FSDP's convention: under torchrun the
stage's loss runs inside `DistributedDataParallel` or over a `fully_shard`ed model (`train.parallel`,
parallel.py), which average gradients while backward runs, and skip that on every accumulation micro-batch
but the last.
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import math
import os
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.distributed as dist

from bembed.data.provenance import record_training_data
from bembed.files import replacing_folder, write_text_atomic

from . import checkpoint as ckpt
from . import parallel
from .batching import DATA_ORDER
from .config import TrainConfig
from .metrics import plot_losses, read_metrics
from .stop_signals import StepInterrupted, agreed_sigint, deferred_sigint, held_stop_signals, sigterm_as_sigint

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or inf; the message names the step and the batch's source."""


def init_distributed() -> tuple[int, int, int]:
    """(rank, world_size, local_rank). Under torchrun (WORLD_SIZE > 1) initialise the default process group:
    NCCL when CUDA is available, gloo otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank()))
    return 0, 1, 0


def release_distributed() -> None:
    """Destroy the default process group if there is one (the end of a torchrun stage, on every path out), as
    torch's documentation asks, rather than leaving its communicators and threads to the interpreter's
    teardown. (torch 2.13's gloo can still abort at exit after a DDP run now and then; see the README.)"""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up over `warmup` steps to 1, then linear decay to 0 at `total` (step counts from 0)."""
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


class StageLoss(torch.nn.Module):
    """A stage's loss as a module over the stage's model, so that DDP or FSDP can wrap it: they hook the model's
    parameters and see one forward (the whole loss, however many encoder calls it makes) per micro-batch."""

    def __init__(self, stage):
        super().__init__()
        self.model = stage.model
        self._loss = stage.loss

    def forward(self, tensors: dict):
        return self._loss(tensors)


def fused_adamw_supported(params: list[torch.Tensor]) -> bool:
    """Whether torch's fused AdamW (one kernel over every parameter) takes these parameters: torch fuses
    floating-point parameters on CPU and CUDA. Its update is the per-tensor loop's to float rounding; for the
    quickstart model's 5.5M weights on 2 cores it takes 4.4-5.2 ms against 17-20 ms (the quickstart's stage-2
    step, 0.32-0.38 s, gets 1-2% faster)."""
    return bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)


def _config_changes(saved: dict, current: dict, prefix: str = "") -> list[str]:
    """The dotted keys whose value differs between two configs, as "key: old -> new"."""
    changes = []
    for key in sorted(set(saved) | set(current), key=str):
        old, new = saved.get(key, "(unset)"), current.get(key, "(unset)")
        if isinstance(old, dict) and isinstance(new, dict):
            changes += _config_changes(old, new, f"{prefix}{key}.")
        elif old != new:
            changes.append(f"{prefix}{key}: {old!r} -> {new!r}")
    return changes


class Trainer:
    def __init__(self, stage, config: TrainConfig, full_config: dict | None = None):
        config.validate()  # again: code may have edited the loaded config (the quickstart sets max_steps)
        self.stage, self.cfg = stage, config
        self.full_config = full_config or {}
        self.rank, self.world, local_rank = init_distributed()
        if config.device:
            self.device = torch.device(config.device)  # a malformed name: TrainConfig.validate
            if self.device.type == "cuda" and not torch.cuda.is_available():
                raise ValueError(f"train.device={config.device!r}, but this torch has no usable CUDA device")
        else:
            self.device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
        micro = config.batch_size // config.grad_accum  # whole: TrainConfig.validate
        if micro % self.world:
            raise ValueError(f"train.batch_size={config.batch_size} over train.grad_accum={config.grad_accum} gives "
                             f"micro-batches of {micro} rows, which world size {self.world} does not divide")
        self.local_size = micro // self.world
        try:  # data too small for one batch fails here, as a config error, not mid-run; a stage whose batches
            # take turns over groups of its data (MLM's languages) has each group checked
            for index in range(len(getattr(stage, "groups", ())) or 1):
                stage.batch(index, self.rank, self.world, self.local_size)
        except ValueError as exc:
            raise ValueError(f"data.train: {exc} (train.batch_size / train.grad_accum)") from None
        self.weighted = getattr(stage, "weighted_batches", False)
        # FSDP leaves no rank a whole model to export at the end: rank 0 keeps a copy on the CPU, which takes the
        # gathered weights then (the memory a whole checkpoint needs on rank 0 anyway)
        self.sharded = config.parallel == "fsdp" and self.world > 1
        self.whole_copy = copy.deepcopy(stage.model).cpu() if self.sharded and self.rank == 0 else None
        self.model = stage.model.to(self.device)
        for module in self.model.modules():  # what would fail at step 1 fails now, as a config error
            if hasattr(module, "check_trainable"):
                module.check_trainable()
        if config.gradient_checkpointing and hasattr(self.model, "gradient_checkpointing_enable"):
            self.model.gradient_checkpointing_enable()
        # under FSDP the parameters become shards in place: the optimizer is built over those
        self.stage_loss = parallel.wrap(StageLoss(stage), self.device, config.parallel)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        decay = [p for p in self.params if p.dim() >= 2]
        no_decay = [p for p in self.params if p.dim() < 2]  # biases and LayerNorm weights
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=config.lr, betas=tuple(config.betas), eps=config.eps, fused=fused_adamw_supported(self.params))
        self.step = 0
        self.stop_requests: list = []  # Ctrl-C seen by this rank, under agreed_sigint (world > 1)
        self.on_disk = None  # the step whose checkpoint in ckpt_root this trainer wrote or loaded
        self.out = Path(config.output_dir)
        self.ckpt_root = self.out / "checkpoints"
        self.autocast = self.device.type == "cuda" and config.bf16

    # ------------------------------------------------------------------ distributed helpers
    def _sum_across_ranks(self, values: list[float]) -> list[float]:
        if self.world == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def _barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def _all_ranks_ok(self, ok: bool) -> bool:
        if self.world == 1:
            return ok
        t = torch.tensor([1.0 if ok else 0.0], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return bool(t.item())

    # ------------------------------------------------------------------ one optimizer step
    def _to_device(self, tensors: dict) -> dict:
        return {k: v.to(self.device, non_blocking=True) if isinstance(v, torch.Tensor) else v
                for k, v in tensors.items()}

    def _accumulate_gradients(self) -> tuple[float, int, list[str], dict, dict]:
        """Forward and backward over this step's grad_accum micro-batches, each loss weighted by its share of
        the step. Returns this rank's (weighted loss, tokens, the non-finite batches, weighted metric sums, the
        shares each metric was summed over)."""
        loss_sum, tokens, bad, sums, shares = 0.0, 0, [], {}, {}
        accum = self.cfg.grad_accum
        first = self.step * accum
        batches = [self.stage.batch(first + a, self.rank, self.world, self.local_size) for a in range(accum)]
        # Batches are built first: each one's share of the step's loss needs the step's total weight (all ranks),
        # which only a stage with weighted batches has to add up across ranks; else it is world × grad_accum.
        local = sum(b.weight for b in batches)
        total = (self._sum_across_ranks([local])[0] if self.weighted else local * self.world) or 1.0
        for a, batch in enumerate(batches):
            index, share = first + a, batch.weight * self.world / total
            last = a == accum - 1
            with parallel.gradient_sync(self.stage_loss, last):
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.autocast):
                    loss, metrics = self.stage_loss(self._to_device(batch.tensors))
                value = float(loss.detach())
                if not math.isfinite(value):
                    bad.append(f"{batch.source} (micro-batch {index}, rank {self.rank})")
                # backward even for a bad loss: gathers inside the loss and the gradients' reduction are collectives
                # every rank must join
                (loss * share).backward()
            loss_sum += value * share
            tokens += batch.tokens
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + float(v) * share
                shares[k] = shares.get(k, 0.0) + share
        return loss_sum, tokens, bad, sums, shares

    def train_step(self) -> dict:
        """Accumulate grad_accum micro-batches, sync, clip, step. Returns the step's metrics."""
        cfg = self.cfg
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum, tokens, bad, sums, shares = self._accumulate_gradients()
        keys = sorted(sums)
        reduced = self._sum_across_ranks([loss_sum, float(tokens), float(len(bad)), float(bool(self.stop_requests)),
                                          *[sums[k] for k in keys], *[shares[k] for k in keys]])
        stop_agreed, reduced_metrics = reduced[3] > 0, reduced[4:]
        if reduced[2] > 0:
            where = "; ".join(bad) if bad else "on another rank"
            # steps are counted from 1, as in the logs and metrics.jsonl
            raise NonFiniteLossError(f"loss is {loss_sum if bad else 'non-finite'} at step {self.step + 1}: "
                                     f"batch {where}")
        grad_norm = None
        lr = cfg.lr * lr_factor(self.step, cfg.warmup_steps, cfg.max_steps)
        # One process stops the moment Ctrl-C comes (after the optimizer update); ranks stop where they agreed.
        with deferred_sigint() if self.world == 1 else nullcontext([]) as caught:
            if cfg.max_grad_norm:  # 0 or None: no clipping
                norm = torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm)
                grad_norm = float(parallel.full_tensor(norm))  # under FSDP a DTensor, reduced over the shards
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            self.optimizer.step()
            self.step += 1
            out = {"step": self.step, "loss": reduced[0] / self.world, "lr": lr, "tokens": int(reduced[1])}
            # a metric is the mean over the micro-batches (and ranks) that produced it: a multi-task step mixes tasks
            out.update({k: s / w for k, s, w in zip(keys, reduced_metrics[:len(keys)], reduced_metrics[len(keys):])})
            if grad_norm is not None:
                out["grad_norm"] = grad_norm
        if caught or stop_agreed:
            raise StepInterrupted(out)
        return out

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self) -> Path | None:
        from safetensors.torch import save_file

        if self.step == self.on_disk:
            # same step, same state (Ctrl-C right after a periodic save or a resume): keep that folder, as
            # replacing it cannot be atomic
            return ckpt.checkpoint_dir(self.ckpt_root, self.step) if self.rank == 0 else None
        tmp = ckpt.temp_dir(self.ckpt_root, self.step)
        if self.rank == 0:
            if tmp.exists():
                import shutil

                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)
        self._barrier()
        tensors, meta = ckpt.rng_state()
        save_file(tensors, str(tmp / f"rng-rank{self.rank}.safetensors"))
        ckpt.write_json(tmp / f"rng-rank{self.rank}.json", meta)
        final = None
        if self.rank == 0 or self.sharded:  # whole tensors: under FSDP every rank takes part in gathering them
            keep = self.rank == 0
            weights = ckpt.tensor_dict(parallel.full_tensors(self.model.state_dict(), keep))
            opt_tensors, opt_meta = ckpt.optimizer_state(self.optimizer,
                                                         whole=functools.partial(parallel.full_tensor, keep=keep))
        if self.rank == 0:
            save_file(weights, str(tmp / "model.safetensors"))
            save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
            ckpt.write_json(tmp / "state.json", {
                "step": self.step, "micro_batches_done": self.step * self.cfg.grad_accum,
                "schedule": {"kind": "linear_warmup_linear_decay", "lr": self.cfg.lr,
                             "warmup_steps": self.cfg.warmup_steps, "max_steps": self.cfg.max_steps},
                "optimizer": opt_meta, "world_size": self.world, "stage": type(self.stage).__name__,
                "data_order": DATA_ORDER, "config": self.full_config})
        self._barrier()
        if self.rank == 0:
            final = ckpt.finalize(self.ckpt_root, self.step, self.cfg.keep_last)
            log.info("checkpoint written: %s", final)
        self._barrier()
        self.on_disk = self.step
        return final

    def load_checkpoint(self, resume: str) -> None:
        path, data = ckpt.load(resume, self.ckpt_root, self.rank, self._all_ranks_ok)
        state = data["state"]
        if state.get("stage") != type(self.stage).__name__:  # first: another stage's weights would not fit either
            raise ckpt.CheckpointError(f"checkpoint {path} was written by stage {state.get('stage')}, "
                                       f"not {type(self.stage).__name__}")
        self._load_weights(path, data["model"])
        try:
            ckpt.load_optimizer_state(self.optimizer, self._placed_like_parameters(data["optimizer"]),
                                      state["optimizer"])
        except (KeyError, ValueError) as exc:
            raise ckpt.CheckpointError(f"checkpoint {path}: optimizer state does not fit ({exc})") from None
        # The loaded param groups carry the hyperparameters the checkpoint was written with; the config's win, as
        # lr, max_steps and max_grad_norm do (a change is logged below). The update's kind (fused or not) stays.
        for group, weight_decay in zip(self.optimizer.param_groups, (self.cfg.weight_decay, 0.0)):
            group.update(weight_decay=weight_decay, betas=tuple(self.cfg.betas), eps=self.cfg.eps)
        self._warn_of_resume_differences(path, state)
        self.step = int(state["step"])
        if self.step >= self.cfg.max_steps and self.rank == 0:
            log.warning("checkpoint %s is at step %d, not below train.max_steps=%d: no step is taken, and the "
                        "final model is the checkpoint's weights", path, self.step, self.cfg.max_steps)
        if path.resolve() == ckpt.checkpoint_dir(self.ckpt_root, self.step).resolve():
            self.on_disk = self.step
        if "rng" in data:
            ckpt.set_rng_state(data["rng"], data["rng_meta"])
        log.info("resumed from %s at step %d", path, self.step)

    def _load_weights(self, path: Path, weights: dict) -> None:
        """The checkpoint's weights into the model, refused by name when they do not fit it."""
        current = self.model.state_dict()
        resized = [f"{name} {tuple(value.shape)} vs {tuple(current[name].shape)}"
                   for name, value in weights.items() if name in current and value.shape != current[name].shape]
        if resized:  # load_state_dict would raise a RuntimeError that names no checkpoint
            raise ckpt.CheckpointError(f"checkpoint {path}: weights do not fit this model (shape in checkpoint vs "
                                       f"model: {'; '.join(resized[:5])})")
        weights = {name: parallel.shard_like(value, current[name]) if name in current else value
                   for name, value in weights.items()}
        missing, unexpected = self.model.load_state_dict(weights, strict=False)
        if missing or unexpected:
            raise ckpt.CheckpointError(f"checkpoint {path}: weights do not fit this model (missing {missing[:5]}, "
                                       f"unexpected {unexpected[:5]})")
        if hasattr(self.model, "tie_decoder"):
            self.model.tie_decoder()

    def _placed_like_parameters(self, tensors: dict) -> dict:
        """A checkpoint's optimizer tensors (`state.<param index>.<name>`, whole) sharded as their parameters are
        (under FSDP; else as they are)."""
        if not self.sharded:
            return tensors
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        placed = {}
        for key, value in tensors.items():
            index = int(key.split(".")[1])
            placed[key] = parallel.shard_like(value, params[index]) if index < len(params) else value
        return placed

    def _warn_of_resume_differences(self, path: Path, state: dict) -> None:
        """Resuming with another config, world size or grad_accum than the checkpoint's is allowed, and said."""
        # as saved (JSON: tuples are lists), since a caller's full_config need not come from to_dict
        changed = _config_changes(state.get("config") or {}, json.loads(json.dumps(self.full_config)))
        if changed and self.full_config and self.rank == 0:
            log.warning("resuming %s with a different config than it was saved with: %s", path, "; ".join(changed))
        saved_world = int(state.get("world_size", 1))
        if saved_world != self.world and self.rank == 0:
            log.warning("resuming a checkpoint of %d rank(s) with %d: each step takes the same global batch, but "
                        "the ranks' dropout RNG streams are not the saved ones, so the run does not replay an "
                        "uninterrupted %d-rank run exactly", saved_world, self.world, saved_world)
        saved_order = int(state.get("data_order", 1))
        if saved_order != DATA_ORDER and self.rank == 0:
            log.warning("checkpoint %s was saved by a bembed that read the data in another order (data order %d, "
                        "now %d): the resumed run reads other rows than the saved run would have", path, saved_order,
                        DATA_ORDER)
        if state["micro_batches_done"] != state["step"] * self.cfg.grad_accum:
            log.warning("resuming with grad_accum=%d (checkpoint used a different value): the data position "
                        "follows the step count", self.cfg.grad_accum)

    def _set_aside_later_checkpoints(self) -> None:
        """Resumed from an older checkpoint than the newest: the later ones belong to the abandoned
        continuation, which --resume latest would otherwise return to."""
        for path in ckpt.set_aside_later(self.ckpt_root, self.step):
            log.warning("resumed at step %d: set aside the later checkpoint as %s", self.step, path.name)

    def _metrics_up_to_resumed_step(self) -> None:
        """metrics.jsonl as it was at the resumed step: the steps after it are re-run (or belong to an abandoned
        continuation), and a line torn by the kill would otherwise swallow the next record appended to it."""
        path = self.out / "metrics.jsonl"
        if path.is_file():
            records = read_metrics(path)
            write_text_atomic(path, "".join(json.dumps(records[s]) + "\n" for s in sorted(records) if s <= self.step))

    # ------------------------------------------------------------------ the loop
    def fit(self, resume: str | None = None) -> list[dict]:
        """Train to cfg.max_steps; returns the metrics of the steps run. Ctrl-C or SIGTERM writes a checkpoint
        and raises KeyboardInterrupt."""
        self._prepare_run(resume)
        history: list[dict] = []
        bar = self._progress()
        t0 = time.perf_counter()
        started = None  # (step, RNG state) at the start of the current step
        unlogged = None  # the metrics of a finished step not yet in metrics.jsonl
        try:
            with sigterm_as_sigint(), (agreed_sigint() if self.world > 1 else nullcontext([])) as self.stop_requests:
                while self.step < self.cfg.max_steps:
                    started = (self.step, ckpt.rng_state())
                    stop = None
                    try:
                        metrics = self.train_step()
                    except StepInterrupted as exc:
                        metrics, stop = exc.metrics, exc
                    unlogged = metrics
                    now = time.perf_counter()
                    metrics["tokens_per_s"] = metrics["tokens"] / max(now - t0, 1e-9)
                    t0 = now
                    history.append(metrics)
                    self._log(metrics, bar)
                    unlogged = None
                    if self.cfg.save_every and self.step % self.cfg.save_every == 0 and self.step < self.cfg.max_steps:
                        self.save_checkpoint()
                    if stop is not None:
                        raise stop
        except KeyboardInterrupt as interrupt:
            self._checkpoint_interrupted(interrupt, unlogged, started, t0)
            raise
        finally:
            if bar is not None:
                bar.close()
        self._finish()
        self._barrier()
        return history

    def _prepare_run(self, resume: str | None) -> None:
        """Before the first step: stale checkpoint folders cleaned, the checkpoint to resume from (`auto`:
        the latest, if any) loaded, a fresh run over an earlier run's checkpoints refused, config.json written."""
        if self.rank == 0:
            ckpt.clean_stale(self.ckpt_root)
        self._barrier()  # it may put a checkpoint back: every rank must list the same ones
        if resume == "auto":  # one command line that starts a job and continues it (torchrun restarts, requeues)
            resume = "latest" if ckpt.list_checkpoints(self.ckpt_root) else None
            if resume is None:
                log.info("--resume auto: no checkpoint under %s, starting from step 0", self.ckpt_root)
        if resume:
            self.load_checkpoint(resume)
            if self.rank == 0:
                if resume != "latest":  # "latest" leaves only unreadable later ones behind
                    self._set_aside_later_checkpoints()
                self._metrics_up_to_resumed_step()
        elif ckpt.list_checkpoints(self.ckpt_root):
            # a fresh run here would interleave its checkpoints and metrics with the earlier run's
            raise ckpt.CheckpointError(f"{self.ckpt_root} holds checkpoints of an earlier run: continue it with "
                                       f"--resume latest, or give a new train.output_dir")
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
            if not resume:  # left by a fresh run that stopped before its first checkpoint
                (self.out / "metrics.jsonl").unlink(missing_ok=True)
            (self.out / "config.json").write_text(json.dumps(self.full_config, indent=1), encoding="utf-8")

    def _checkpoint_interrupted(self, interrupt: KeyboardInterrupt, unlogged: dict | None, started, t0: float) -> None:
        """On Ctrl-C / SIGTERM: the finished step's record and a checkpoint from which the resumed run replays
        the interrupted step exactly. The caller re-raises."""
        if self.world > 1 and not isinstance(interrupt, StepInterrupted):
            # a second Ctrl-C: the ranks are not at one step, and saving would wait on the others forever
            log.warning("interrupted again at step %d: no checkpoint written", self.step)
            return
        log.warning("interrupted at step %d: writing a checkpoint", self.step)
        if unlogged is not None:  # Ctrl-C between a step's update and its record: the resumed run starts after it
            unlogged.setdefault("tokens_per_s", unlogged["tokens"] / max(time.perf_counter() - t0, 1e-9))
            self._log(unlogged, None)  # (written twice if it came mid-_log: the last record of a step wins)
        if started is not None and started[0] == self.step:
            # Interrupted inside a step: its micro-batches are discarded, so the randomness they drew (dropout)
            # is given back too, and the resumed run replays the step exactly.
            ckpt.set_rng_state(*started[1])
        # the stop signals stay held while it is written: a repeated preemption notice must not kill the save
        with sigterm_as_sigint(), held_stop_signals("already stopping: writing the checkpoint (Ctrl-C again: "
                                                    "abandon it)"):
            self.save_checkpoint()

    def _finish(self) -> None:
        """After the last step: the final checkpoint, and on rank 0 the final/ export and the loss curve."""
        self.save_checkpoint()
        model = self._whole_model()
        if self.rank == 0:
            config = getattr(model, "config", None)
            if config is not None:  # the built splits it trained on go along in its config.json (for bembed eval)
                record_training_data(config, (self.full_config.get("data") or {}).get("train") or [])
            with replacing_folder(self.out / "final") as folder:  # never a half-written final/ after a kill
                self.stage.export(folder, model)
            log.info("final model written to %s", self.out / "final")
            plot_losses(self.out / "metrics.jsonl", self.out / "loss.png")

    def _whole_model(self) -> torch.nn.Module | None:
        """The trained model, whole, on rank 0 (the model itself; under FSDP rank 0's CPU copy, loaded with the
        gathered weights: a collective, every rank calls it); None on the other ranks of an FSDP run."""
        if not self.sharded:
            return self.model
        weights = parallel.full_tensors(self.model.state_dict(), keep=self.rank == 0)
        if self.rank != 0:
            return None
        self.whole_copy.load_state_dict(weights)
        return self.whole_copy

    def _progress(self):
        if self.rank != 0 or not self.cfg.progress:
            return None
        from tqdm.auto import tqdm

        return tqdm(total=self.cfg.max_steps, initial=self.step, desc=type(self.stage).__name__, unit="step")

    def _log(self, metrics: dict, bar) -> None:
        if self.rank != 0:
            return
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{metrics['loss']:.4f}", tok_s=f"{metrics['tokens_per_s']:.0f}")
        if self.step % max(1, self.cfg.log_every) == 0 or self.step == self.cfg.max_steps:
            self.out.mkdir(parents=True, exist_ok=True)
            with open(self.out / "metrics.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(metrics) + "\n")
            if bar is None:
                log.info("step %d loss %.4f lr %.2e tok/s %.0f", self.step, metrics["loss"], metrics["lr"],
                         metrics["tokens_per_s"])
