"""The trainer core on a tiny MLM stage: exact resume, atomic checkpoints kept and cleaned, Ctrl-C and SIGTERM
checkpointing, the optimizer and its resumed hyperparameters, and a NaN loss stopping the run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from bembed.training import checkpoint as ckpt
from bembed.training import trainer as trainer_module
from bembed.training.batching import Batch
from bembed.training.config import to_dict
from bembed.training.metrics import read_metrics
from bembed.training.trainer import NonFiniteLossError, Trainer

import training_utils as U
from stage_fixtures import files, fit, mlm_run  # noqa: F401


single_thread = pytest.fixture(autouse=True)(U.one_thread)


def _weights(folder: Path) -> dict:
    return load_file(str(folder / "model.safetensors"))


def test_resume_is_exact(files, tmp_path):
    """N steps straight == k steps, Ctrl-C (checkpoint), resume to N — with dropout and grad accumulation,
    so the RNG state, the optimizer state and the data position must all come back. The Ctrl-C comes in the
    middle of step 4, after one micro-batch has drawn its dropout masks."""
    extra = ["train.grad_accum=2", "train.max_steps=6"]
    stage, cfg = mlm_run(files, tmp_path / "straight", 6, *extra, hidden_dropout_prob=0.1)
    straight = fit(stage, cfg)

    stage, cfg = mlm_run(files, tmp_path / "resumed", 6, *extra, hidden_dropout_prob=0.1)
    loss, calls = stage.loss, []

    def interrupted(tensors):
        calls.append(1)
        if len(calls) == 2 * 3 + 2:  # the second micro-batch of step 4
            raise KeyboardInterrupt
        return loss(tensors)

    stage.loss = interrupted
    with pytest.raises(KeyboardInterrupt):
        fit(stage, cfg)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "resumed" / "checkpoints")] == ["step-00000003"]
    stage, cfg = mlm_run(files, tmp_path / "resumed", 6, *extra, hidden_dropout_prob=0.1)
    torch.manual_seed(999)  # whatever the RNG now, the checkpoint's state must win
    resumed = Trainer(stage, cfg.train, to_dict(cfg)).fit(resume="latest")
    assert [m["loss"] for m in resumed] == [m["loss"] for m in straight[3:]]
    a = _weights(tmp_path / "straight" / "checkpoints" / "step-00000006")
    b = _weights(tmp_path / "resumed" / "checkpoints" / "step-00000006")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_updates_use_fused_adamw_and_older_checkpoints_keep_their_update(files, tmp_path, monkeypatch):
    """Training uses torch's fused AdamW; a checkpoint written with the per-tensor AdamW (bembed before the
    switch) resumes with the update it began with, so the resumed run equals that run's straight version."""
    stage, cfg = mlm_run(files, tmp_path / "fused", 4)
    assert all(group["fused"] for group in Trainer(stage, cfg.train, to_dict(cfg)).optimizer.param_groups)

    monkeypatch.setattr(trainer_module, "fused_adamw_supported", lambda params: False)
    stage, cfg = mlm_run(files, tmp_path / "straight", 4)
    fit(stage, cfg)
    stage, cfg = mlm_run(files, tmp_path / "resumed", 4)
    loss, calls = stage.loss, []

    def interrupted(tensors):
        calls.append(1)
        if len(calls) == 3:  # step 3: a checkpoint of step 2
            raise KeyboardInterrupt
        return loss(tensors)

    stage.loss = interrupted
    with pytest.raises(KeyboardInterrupt):
        fit(stage, cfg)
    monkeypatch.undo()
    stage, cfg = mlm_run(files, tmp_path / "resumed", 4)
    resumed = Trainer(stage, cfg.train, to_dict(cfg))
    resumed.fit(resume="latest")
    assert not any(group["fused"] for group in resumed.optimizer.param_groups)
    a = _weights(tmp_path / "straight" / "checkpoints" / "step-00000004")
    b = _weights(tmp_path / "resumed" / "checkpoints" / "step-00000004")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_takes_the_configs_optimizer_hyperparameters(files, tmp_path):
    """Loading the optimizer state brought back the checkpoint's weight decay, betas and eps, so a resume with
    new values logged them as changed but trained with the old ones."""
    stage, cfg = mlm_run(files, tmp_path, 2)
    fit(stage, cfg)
    stage, cfg = mlm_run(files, tmp_path, 3, "train.weight_decay=0.5", "train.betas=[0.5, 0.6]", "train.eps=1e-3")
    trainer = Trainer(stage, cfg.train, to_dict(cfg))
    trainer.fit(resume="latest")
    decay, no_decay = trainer.optimizer.param_groups
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.5, 0.0)
    assert all(g["betas"] == (0.5, 0.6) and g["eps"] == 1e-3 and g["fused"] for g in (decay, no_decay))


@pytest.mark.parametrize("signal_name", ["SIGINT", "SIGTERM"])
def test_ctrl_c_during_the_optimizer_update_finishes_the_step(files, tmp_path, signal_name):
    """A SIGINT that lands while optimizer.step() updates the weights is held until the step is complete: the
    checkpoint must not store updated weights and moments under the old step number, and the step's metrics
    are logged before the run stops (they were lost: the resumed run starts after that step). A checkpoint
    due at that step is written once, by the periodic save. SIGTERM (a preemption notice) is taken the same way
    (it killed the run, losing the steps since the last periodic checkpoint), and only while fit runs."""
    import os
    import signal

    sigterm_before = signal.getsignal(signal.SIGTERM)

    stage, cfg = mlm_run(files, tmp_path / "straight", 6)
    fit(stage, cfg)
    stage, cfg = mlm_run(files, tmp_path / "killed", 6, "train.save_every=4")
    trainer = Trainer(stage, cfg.train, to_dict(cfg))
    update, saves = trainer.optimizer.step, []
    save = trainer.save_checkpoint
    trainer.save_checkpoint = lambda: (saves.append(trainer.on_disk), save())[1]

    def interrupted_update():
        update()
        if trainer.step == 3:
            os.kill(os.getpid(), getattr(signal, signal_name))

    trainer.optimizer.step = interrupted_update
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    assert signal.getsignal(signal.SIGTERM) is sigterm_before
    root = tmp_path / "killed" / "checkpoints"
    assert [p.name for p in ckpt.list_checkpoints(root)] == ["step-00000004"]
    assert saves == [None, 4]  # the periodic save, then the Ctrl-C save keeps that folder
    metrics = tmp_path / "killed" / "metrics.jsonl"
    assert [json.loads(line)["step"] for line in metrics.read_text().splitlines()] == [1, 2, 3, 4]
    stage, cfg = mlm_run(files, tmp_path / "killed", 6)
    fit(stage, cfg, resume="latest")
    assert [json.loads(line)["step"] for line in metrics.read_text().splitlines()] == [1, 2, 3, 4, 5, 6]
    a = _weights(tmp_path / "straight" / "checkpoints" / "step-00000006")
    b = _weights(root / "step-00000006")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_ctrl_c_between_a_steps_update_and_its_record_keeps_the_record(files, tmp_path):
    """The update is done, the record not yet written (Ctrl-C inside the progress bar's update, say): the
    checkpoint is of that step, so the resumed run starts after it, and its record was lost for good."""
    stage, cfg = mlm_run(files, tmp_path / "straight", 5)
    fit(stage, cfg)
    stage, cfg = mlm_run(files, tmp_path / "cut", 5)
    trainer = Trainer(stage, cfg.train, to_dict(cfg))
    log_record = trainer._log

    def interrupted_log(metrics, bar):
        if metrics["step"] == 3 and bar is not None:  # the loop's own call, not the handler's
            raise KeyboardInterrupt
        log_record(metrics, bar)

    trainer._log = interrupted_log
    trainer.cfg.progress = True  # the loop passes a bar, as a terminal run does
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "cut" / "checkpoints")] == ["step-00000003"]
    stage, cfg = mlm_run(files, tmp_path / "cut", 5)
    fit(stage, cfg, resume="latest")
    records = read_metrics(tmp_path / "cut" / "metrics.jsonl")
    straight = read_metrics(tmp_path / "straight" / "metrics.jsonl")
    assert sorted(records) == [1, 2, 3, 4, 5]
    assert [records[s]["loss"] for s in records] == [straight[s]["loss"] for s in records]


def test_a_checkpoint_of_another_stage_is_refused_by_name(files, tmp_path):
    """The stage was checked after the weights were loaded: another stage's checkpoint was refused as weights
    that do not fit, which does not say what is wrong."""
    stage, cfg = mlm_run(files, tmp_path, 2)
    fit(stage, cfg)
    stage, cfg = mlm_run(files, tmp_path, 3)
    stage.__class__ = type("OtherStage", (type(stage),), {})
    stage.model.extra = torch.nn.Linear(2, 2)  # and its weights differ, as another stage's model's do
    with pytest.raises(ckpt.CheckpointError, match="was written by stage MLMStage, not OtherStage"):
        Trainer(stage, cfg.train, to_dict(cfg)).fit(resume="latest")


@pytest.mark.parametrize("edit", ["drop", "retype"])
def test_an_edited_optimizer_state_is_refused(files, tmp_path, edit):
    """A parameter whose moments are missing restarted them silently; another dtype was converted silently."""
    from safetensors.torch import save_file

    stage, cfg = mlm_run(files, tmp_path, 2)
    fit(stage, cfg)
    path = tmp_path / "checkpoints" / "step-00000002" / "optimizer.safetensors"
    tensors = load_file(str(path))
    name = sorted(k for k in tensors if k.endswith("exp_avg"))[0]
    if edit == "drop":
        del tensors[name]
    else:
        tensors[name] = tensors[name].to(torch.bfloat16)
    save_file(tensors, str(path))
    stage, cfg = mlm_run(files, tmp_path, 3)
    with pytest.raises(ckpt.CheckpointError, match=f"optimizer state does not fit.*{name}"):
        Trainer(stage, cfg.train, to_dict(cfg)).fit(resume="latest")


def test_resuming_past_max_steps_says_so(files, tmp_path, caplog):
    stage, cfg = mlm_run(files, tmp_path, 3)
    fit(stage, cfg)
    stage, cfg = mlm_run(files, tmp_path, 2)
    with caplog.at_level("WARNING"):
        assert fit(stage, cfg, resume="latest") == []
    assert "is at step 3, not below train.max_steps=2: no step is taken" in caplog.text


def test_a_repeated_stop_signal_is_one_request_and_only_a_later_ctrl_c_stops_at_once(monkeypatch):
    """A preemption often reaches a worker twice (the scheduler signals every process and torchrun forwards
    its own copy milliseconds later): the second copy counted as "Ctrl-C again: stop now", and the run ended
    without its checkpoint."""
    import os
    import signal

    from bembed.training import stop_signals
    from bembed.training.stop_signals import agreed_sigint, sigterm_as_sigint

    with sigterm_as_sigint(), agreed_sigint() as requests:
        try:
            for signum in (signal.SIGTERM, signal.SIGTERM, signal.SIGINT):  # one request, however it repeats
                os.kill(os.getpid(), signum)
        except KeyboardInterrupt:
            pytest.fail("a repeated stop signal was taken for 'Ctrl-C again: stop now'")
        assert len(requests) == 1
        monkeypatch.setattr(stop_signals, "REPEAT_GRACE_S", 0.0)
        os.kill(os.getpid(), signal.SIGTERM)  # a notice repeated late still asks for the checkpoint
        with pytest.raises(KeyboardInterrupt):  # a Ctrl-C well after the first is the user insisting
            os.kill(os.getpid(), signal.SIGINT)


def test_a_stop_signal_while_the_interrupted_run_saves_does_not_lose_the_checkpoint(files, tmp_path):
    """The stop handlers were restored before the Ctrl-C checkpoint was written: a SIGTERM then (a repeated
    preemption notice) killed the save."""
    import os
    import signal

    class Killed(BaseException):
        pass

    def die(*_):
        raise Killed
    previous = signal.signal(signal.SIGTERM, die)  # what the process's own SIGTERM handler would do: end it
    try:
        stage, cfg = mlm_run(files, tmp_path / "run", 6)
        trainer = Trainer(stage, cfg.train, to_dict(cfg))
        update, save = trainer.optimizer.step, trainer.save_checkpoint

        def interrupted_update():
            update()
            if trainer.step == 3:
                os.kill(os.getpid(), signal.SIGINT)

        def save_under_fire():
            os.kill(os.getpid(), signal.SIGTERM)
            return save()

        trainer.optimizer.step, trainer.save_checkpoint = interrupted_update, save_under_fire
        with pytest.raises(KeyboardInterrupt):
            trainer.fit()
    finally:
        signal.signal(signal.SIGTERM, previous)
    # the Ctrl-C came during step 4's update: the step finishes, and its checkpoint is written in full
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "run" / "checkpoints")] == ["step-00000004"]


def test_mlm_step_is_the_mean_over_its_masked_tokens_however_accumulated(files, tmp_path):
    """grad_accum=2 gives the loss and gradient of grad_accum=1 on the same 8 rows: each micro-batch was a
    mean over its own masked tokens, so the tokens of one with fewer masked tokens weighed more."""
    split, cfg_split = mlm_run(files, tmp_path / "split", 1, "train.batch_size=8", "train.grad_accum=2",
                               "train.max_grad_norm=null")
    halves = [split.batch(i, 0, 1, 4) for i in (0, 1)]
    assert halves[0].weight != halves[1].weight  # different masked-token counts: the case that went wrong
    whole, cfg_whole = mlm_run(files, tmp_path / "whole", 1, "train.batch_size=8", "train.max_grad_norm=null")
    length = max(h.tensors["input_ids"].shape[1] for h in halves)
    fill = {"input_ids": whole.tokenizer.pad_token_id, "attention_mask": 0, "labels": -100}
    both = {k: torch.cat([torch.nn.functional.pad(h.tensors[k], (0, length - h.tensors[k].shape[1]), value=v)
                          for h in halves]) for k, v in fill.items()}
    whole.batch = lambda *_: Batch(both, tokens=sum(h.tokens for h in halves), source="both halves",
                                   weight=sum(h.weight for h in halves))
    a, b = fit(split, cfg_split)[0], fit(whole, cfg_whole)[0]
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    for p, q in zip(split.model.parameters(), whole.model.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-7)


def test_max_grad_norm_zero_does_not_clip(files, tmp_path):
    """0 means no clipping, as null: clipping to norm 0 would zero every gradient."""
    stage, cfg = mlm_run(files, tmp_path, 1, "train.max_grad_norm=0")
    before = [p.detach().clone() for p in stage.model.parameters()]
    (step,) = fit(stage, cfg)
    assert "grad_norm" not in step
    assert any(not torch.equal(a, p) for a, p in zip(before, stage.model.parameters()))


def test_checkpoints_keep_last_k_and_clear_errors(files, tmp_path):
    stage, cfg = mlm_run(files, tmp_path, 5, "train.save_every=1", "train.keep_last=2")
    fit(stage, cfg)
    root = tmp_path / "checkpoints"
    assert [p.name for p in root.iterdir()] and sorted(p.name for p in root.iterdir()) == ["step-00000004", "step-00000005"]
    state = json.loads((root / "step-00000005" / "state.json").read_text())
    assert state["step"] == 5 and state["config"]["train"]["max_steps"] == 5
    opt = load_file(str(root / "step-00000005" / "optimizer.safetensors"))
    assert any(k.endswith(".exp_avg_sq") for k in opt)

    def resume_error(path):
        stage, cfg = mlm_run(files, tmp_path, 6)
        with pytest.raises(ckpt.CheckpointError) as info:
            Trainer(stage, cfg.train, to_dict(cfg)).fit(resume=str(path))
        return str(info.value)

    assert "no such checkpoint" in resume_error(tmp_path / "nowhere")
    (root / "step-00000004" / "optimizer.safetensors").unlink()
    assert "optimizer.safetensors is missing" in resume_error(root / "step-00000004")
    data = (root / "step-00000005" / "model.safetensors").read_bytes()
    (root / "step-00000005" / "model.safetensors").write_bytes(data[: len(data) // 2])
    assert "model.safetensors is corrupt" in resume_error(root / "step-00000005")
    (root / "step-00000005" / "model.safetensors").write_bytes(data)
    stage, cfg = mlm_run(files, tmp_path, 6, intermediate_size=48)  # another model: a RuntimeError traceback
    with pytest.raises(ckpt.CheckpointError, match=r"step-00000005: weights do not fit this model \(shape in "
                                                   r"checkpoint vs model: bert.encoder.layer.0.*\(128, 32\) vs \(96, 32\)"):
        Trainer(stage, cfg.train, to_dict(cfg)).fit(resume=str(root / "step-00000005"))
    (root / "step-00000005" / "rng-rank0.safetensors").unlink()  # the rank that saved it: resume is not exact
    assert "rng-rank0.safetensors is missing" in resume_error(root / "step-00000005")
    empty = tmp_path / "empty"
    stage, cfg = mlm_run(files, empty, 2)
    with pytest.raises(ckpt.CheckpointError, match="no checkpoint under"):
        Trainer(stage, cfg.train, to_dict(cfg)).fit(resume="latest")


def test_resume_cleans_stale_folders_skips_unreadable_and_keeps_a_same_step_checkpoint(files, tmp_path):
    """Folders a killed run left are removed; --resume latest falls back past a corrupt newest checkpoint (and
    the resumed run replaces it); Ctrl-C right after a save keeps that step's folder instead of removing and
    re-creating it (a second Ctrl-C in between left no step-N at all)."""
    stage, cfg = mlm_run(files, tmp_path, 4, "train.save_every=2")
    fit(stage, cfg)
    root = tmp_path / "checkpoints"
    (root / ".tmp-step-00000006").mkdir()
    (root / ".old-step-00000001").mkdir()
    (root / "step-00000004" / "model.safetensors").write_bytes(b"garbage")
    stage, cfg = mlm_run(files, tmp_path, 6, "train.save_every=2")
    loss, calls = stage.loss, []

    def interrupted(tensors):
        calls.append(1)
        if len(calls) == 3:  # step 5, after step 4's save
            raise KeyboardInterrupt
        return loss(tensors)

    stage.loss = interrupted
    trainer = Trainer(stage, cfg.train, to_dict(cfg))
    save = trainer.save_checkpoint
    inodes = []
    trainer.save_checkpoint = lambda: (save(), inodes.append((root / "step-00000004").stat().st_ino))[0]
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(resume="latest")
    assert sorted(p.name for p in root.iterdir()) == ["step-00000002", "step-00000004"]
    assert len(inodes) == 2 and inodes[0] == inodes[1]
    ckpt.read(root / "step-00000004", 0)


def test_resuming_an_older_checkpoint_sets_the_later_ones_aside(files, tmp_path):
    """A run resumed from step 2 while steps 4 and 6 exist is another history: after its Ctrl-C at step 3,
    --resume latest must continue it, not the abandoned step 6, and the loss curve must not mix the two."""
    stage, cfg = mlm_run(files, tmp_path, 6, "train.save_every=2", "train.keep_last=0", "train.log_every=1")
    fit(stage, cfg)
    root = tmp_path / "checkpoints"
    stage, cfg = mlm_run(files, tmp_path, 6, "train.save_every=2", "train.keep_last=0", "train.log_every=1")
    loss, calls = stage.loss, []

    def interrupted(tensors):
        calls.append(1)
        if len(calls) == 2:  # in step 4, after step 3 was logged
            raise KeyboardInterrupt
        return loss(tensors)

    stage.loss = interrupted
    with pytest.raises(KeyboardInterrupt):
        Trainer(stage, cfg.train, to_dict(cfg)).fit(resume=str(root / "step-00000002"))
    assert sorted(p.name for p in root.iterdir()) == [
        "abandoned-step-00000004", "abandoned-step-00000006", "step-00000002", "step-00000003"]
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]
    assert ckpt.load("latest", root, 0)[0].name == "step-00000003"


def test_a_metrics_line_torn_by_a_kill_is_dropped_on_resume(files, tmp_path):
    """A kill mid-write leaves a torn last line; the resumed run appended its next record to it (one more
    lost line) and then failed to draw loss.png on the unparsable line."""
    stage, cfg = mlm_run(files, tmp_path, 2, "train.log_every=1")
    fit(stage, cfg)
    with open(tmp_path / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write('{"step": 3, "loss": 5.')  # what a kill while logging step 3 leaves
    stage, cfg = mlm_run(files, tmp_path, 4, "train.log_every=1")
    fit(stage, cfg, resume="latest")
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3, 4]


def test_fresh_run_into_a_used_output_dir_is_refused(files, tmp_path):
    stage, cfg = mlm_run(files, tmp_path, 1)
    fit(stage, cfg)
    stage, cfg = mlm_run(files, tmp_path, 2, "train.lr=1e-3")
    with pytest.raises(ckpt.CheckpointError, match="--resume latest, or give a new train.output_dir"):
        fit(stage, cfg)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "checkpoints")] == ["step-00000001"]


def test_nan_loss_stops_naming_step_and_batch(files, tmp_path):
    stage, cfg = mlm_run(files, tmp_path, 5)
    loss = stage.loss
    calls = []

    def poisoned(tensors):
        calls.append(1)
        value, metrics = loss(tensors)
        return (value * float("nan") if len(calls) == 3 else value), metrics

    stage.loss = poisoned
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at step 3: batch mlm\[(en|de)\] sequences \[") as info:
        fit(stage, cfg)
    assert "micro-batch 2" in str(info.value)


def test_steps_take_consecutive_micro_batches_in_train_mode_with_the_schedule_and_decay_groups(files, tmp_path):
    """What the resume tests cannot see, as they compare the trainer with itself (mutation review): step s of
    grad_accum k reads micro-batches s·k … s·k+k−1 (no overlap, none skipped); the model trains in train mode
    even when the stage loaded it in eval mode (from_pretrained does); each step's lr is the schedule's for that
    step (warm-up from lr/warmup_steps); biases and LayerNorm weights get no weight decay."""
    stage, cfg = mlm_run(files, tmp_path, 3, "train.batch_size=8", "train.grad_accum=2", "train.warmup_steps=2",
                         "train.weight_decay=0.1", "train.lr=1e-3")
    read, modes = [], []
    real_batch, real_loss = stage.batch, stage.loss

    def batch(index, *args):
        read.append(index)
        return real_batch(index, *args)

    def loss(tensors):
        modes.append(stage.model.training)
        return real_loss(tensors)

    stage.batch, stage.loss = batch, loss
    stage.model.eval()
    trainer = Trainer(stage, cfg.train, to_dict(cfg))
    read.clear()  # the start-up check draws batches too
    history = trainer.fit()
    assert read == [0, 1, 2, 3, 4, 5]
    assert modes == [True] * 6
    assert [m["lr"] for m in history] == pytest.approx([1e-3 * f for f in (0.5, 1.0, 1.0)])
    decay, no_decay = trainer.optimizer.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    names = {id(p): n for n, p in stage.model.named_parameters()}
    assert {names[id(p)].rsplit(".", 1)[-1] for p in no_decay["params"]} == {"bias", "weight"}  # LayerNorm weights
    assert len(decay["params"]) + len(no_decay["params"]) == len(trainer.params)


def test_ctrl_c_right_after_a_resume_leaves_the_checkpoint_it_resumed_from(files, tmp_path, monkeypatch):
    """(Mutation review.) Stopped before its first step, a resumed run has nothing new: its Ctrl-C checkpoint is the
    folder it loaded, kept as it is (rewriting a folder in place cannot be atomic)."""
    stage, cfg = mlm_run(files, tmp_path, 2, "train.save_every=2")
    fit(stage, cfg)
    folder = ckpt.checkpoint_dir(tmp_path / "checkpoints", 2)
    before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    stage, cfg = mlm_run(files, tmp_path, 4, "train.save_every=2")

    def stopped(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "train_step", stopped)
    with pytest.raises(KeyboardInterrupt):
        fit(stage, cfg, resume="latest")
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == before
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "checkpoints")] == ["step-00000002"]
