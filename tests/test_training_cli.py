"""The training subcommands end to end through `bembed.cli.main`: config file + dotted overrides, the
final export, resume, and exit codes for bad configs and bad checkpoints."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from bembed.cli import main
from bembed.training.batching import DATA_ORDER

import training_utils as U

single_thread = pytest.fixture(autouse=True)(U.one_thread)


def test_pretrain_then_pairs_through_the_cli(tmp_path, caplog):
    en, de = U.text_files(tmp_path)
    config = tmp_path / "pretrain.yaml"
    config.write_text(
        "model:\n  max_length: 24\n"
        f"  config: {json.dumps(U.TINY_MODEL)}\n"
        f"data:\n  train:\n    - {{path: {en}, lang: en}}\n    - {{path: {de}, lang: de}}\n"
        "mlm:\n  tokenizer_vocab_size: 400\n")
    out = tmp_path / "pretrain"
    # no tokenizer yet: the stage trains one from the two languages into <output_dir>/tokenizer
    assert main(["pretrain", "--config", str(config), *U.train_overrides(out, 2)]) == 0
    assert (out / "tokenizer" / "tokenizer.json").is_file() and (out / "final" / "model.safetensors").is_file()
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # filled aside, renamed into place
    assert main(["pretrain", "--config", str(config), *U.train_overrides(out, 3), "--resume", "latest"]) == 0
    changes = [r.getMessage() for r in caplog.records if "different config" in r.getMessage()]
    assert len(changes) == 1 and changes[0].endswith("saved with: train.max_steps: 2 -> 3")
    assert json.loads((out / "checkpoints" / "step-00000003" / "state.json").read_text())["step"] == 3

    pairs = tmp_path / "pairs.yaml"
    pairs.write_text(f"model:\n  init_from: {out / 'final'}\n  max_length: 24\n"
                     f"data:\n  train:\n    - {{path: {U.pair_file(tmp_path)}}}\n")
    assert main(["pairs", "--config", str(pairs), *U.train_overrides(tmp_path / "pairs", 2)]) == 0
    assert (tmp_path / "pairs" / "final" / "modules.json").is_file()


def test_resume_auto_starts_a_fresh_folder_and_continues_a_started_one(tmp_path, caplog):
    """No command line could both start and continue a job (torchrun --max-restarts re-runs the same argv; a
    requeued job too): without --resume a folder with checkpoints is refused, and --resume latest on an empty
    one exits 1. A checkpoint of another world size, or saved by a bembed with another data order, resumes with a
    warning that it is not an exact replay."""
    caplog.set_level(logging.INFO)
    pairs = tmp_path / "pairs.yaml"
    pairs.write_text(f"model:\n  tokenizer: {U.tokenizer_dir(tmp_path)}\n  max_length: 24\n"
                     f"  config: {json.dumps(U.TINY_MODEL)}\n"
                     f"data:\n  train:\n    - {{path: {U.pair_file(tmp_path)}}}\n")
    out = tmp_path / "pairs"
    assert main(["pairs", "--config", str(pairs), *U.train_overrides(out, 2), "--resume", "auto"]) == 0
    assert "no checkpoint" in caplog.text and (out / "checkpoints" / "step-00000002").is_dir()
    state = out / "checkpoints" / "step-00000002" / "state.json"
    assert json.loads(state.read_text())["data_order"] == DATA_ORDER
    state.write_text(json.dumps({**json.loads(state.read_text()), "world_size": 2, "data_order": DATA_ORDER - 1}))
    caplog.clear()
    assert main(["pairs", "--config", str(pairs), *U.train_overrides(out, 3), "--resume", "auto"]) == 0
    assert "resumed from" in caplog.text and (out / "checkpoints" / "step-00000003").is_dir()
    assert "resuming a checkpoint of 2 rank(s) with 1" in caplog.text
    assert f"another order (data order {DATA_ORDER - 1}, now {DATA_ORDER})" in caplog.text


def test_a_full_disk_while_saving_exits_1_with_one_line_and_the_run_continues(tmp_path, caplog, monkeypatch):
    import errno

    import safetensors.torch

    from bembed.training.metrics import read_metrics

    pairs = tmp_path / "pairs.yaml"
    pairs.write_text(f"model:\n  tokenizer: {U.tokenizer_dir(tmp_path)}\n  max_length: 24\n"
                     f"  config: {json.dumps(U.TINY_MODEL)}\n"
                     f"data:\n  train:\n    - {{path: {U.pair_file(tmp_path)}}}\n")
    out, save_file, saves = tmp_path / "pairs", safetensors.torch.save_file, []

    def full_disk_at_the_second_checkpoint(tensors, path, *args, **kwargs):
        saves.append(path)
        if "step-00000004" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device", path)
        return save_file(tensors, path, *args, **kwargs)

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk_at_the_second_checkpoint)
    args = ["pairs", "--config", str(pairs), *U.train_overrides(out, 5), "train.save_every=2", "--resume", "auto"]
    assert main(args) == 1
    assert "stopped: [Errno 28] No space left on device" in caplog.text
    assert [p.name for p in (out / "checkpoints").iterdir() if not p.name.startswith(".")] == ["step-00000002"]
    monkeypatch.undo()
    assert main(args) == 0 and (out / "final" / "model.safetensors").is_file()
    assert read_metrics(out / "metrics.jsonl").keys() == {1, 2, 3, 4, 5}


def test_cli_exit_codes(tmp_path, caplog):
    assert main(["pairs", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert main(["pairs", "--config", "pairs_tiny", "train.no_such_field=1"]) == 2
    assert "unknown key" in caplog.text
    tok = U.tokenizer_dir(tmp_path)
    args = ["pairs", "--config", "pairs_tiny", f"data.train=[{{path: {U.pair_file(tmp_path)}}}]", "model.init_from=null",
            f"model.tokenizer={tok}", f"model.config={json.dumps(U.TINY_MODEL)}", "model.max_length=24",
            *U.train_overrides(tmp_path / "run", 1)]
    assert main([*args, "--resume", str(tmp_path / "no_checkpoint")]) == 1
    assert "no such checkpoint folder" in caplog.text
    # errors while building the stage and the trainer are config errors too, not tracebacks
    assert main([*args, "data.train=[{path: /nonexistent.jsonl}]"]) == 2
    assert "no such file or folder: /nonexistent.jsonl" in caplog.text
    assert main([*args, "train.batch_size=15", "train.grad_accum=2"]) == 2
    assert "must split into train.grad_accum=2 micro-batches" in caplog.text
    # too little data for one batch is refused before the run starts (it was a traceback at step 1)
    assert main([*args, "train.batch_size=100000"]) == 2
    assert "data.train: " in caplog.text and "micro-batch of 100000" in caplog.text
    # the fused attention has no dropout: refused before step 1 (it was a traceback there)
    dropout = {**U.TINY_MODEL, "attention_probs_dropout_prob": 0.1}
    assert main([*args, f"model.config={json.dumps(dropout)}"]) == 2
    assert "attention_probs_dropout_prob=0.1: the bembed attention kernels have no dropout" in caplog.text
    assert not (tmp_path / "run").exists()
    if not torch.cuda.is_available():
        assert main([*args, "train.device=cuda"]) == 2
        assert "train.device='cuda', but this torch has no usable CUDA device" in caplog.text


def test_a_stage_destroys_its_process_group_on_every_way_out(tmp_path):
    """Under torchrun the stage owns the process; a group left to the interpreter's teardown can abort the
    process at exit after the run was saved (torchrun then calls the run failed). A one-rank gloo group stands
    in for torchrun's."""
    import torch.distributed as dist

    tok = U.tokenizer_dir(tmp_path)
    args = ["pairs", "--config", "pairs_tiny", f"data.train=[{{path: {U.pair_file(tmp_path)}}}]", "model.init_from=null",
            f"model.tokenizer={tok}", f"model.config={json.dumps(U.TINY_MODEL)}", "model.max_length=24",
            *U.train_overrides(tmp_path / "run", 1)]
    try:
        for argv, code in ((args, 0), ([*args, "train.batch_size=100000"], 2),
                           ([*args, "--resume", str(tmp_path / "none")], 1)):
            dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
            assert main(argv) == code
            assert not dist.is_initialized(), argv
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
