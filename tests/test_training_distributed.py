"""Data parallelism: a 2-process gloo run equals a 1-process run on the same global batch (losses and
weights after a few steps) for every stage whose loss couples rows across ranks: MLM (token count over
the global batch), pairs (negatives gathered across ranks; also through GradCache), multi-task (retrieval with
hard negatives, and Pearson over the global batch; also through GradCache with Matryoshka widths); under DDP and
under FSDP (`train.parallel=fsdp`: sharded weights, gradients and AdamW moments), whose checkpoints hold whole
tensors and resume exactly, under FSDP again or in one process."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

import training_utils as U
from rank_processes import exit_rank_process, free_port, torchrun_rank

single_thread = pytest.fixture(autouse=True)(U.one_thread)
STEPS = 3


def _configs(files: dict, out: Path):
    from bembed.training.config import MultitaskRun, PairsRun, PretrainRun, load_config

    model = [f"model.tokenizer={files['tok']}", "model.max_length=24", f"model.config={json.dumps(U.TINY_MODEL)}"]
    train = lambda name, *x: [*U.train_overrides(out / name, STEPS, batch=8), "train.grad_accum=2", *x]  # noqa: E731
    return {
        "mlm": load_config(PretrainRun, None, [f"data.train=[{{path: {files['en']}, lang: en}}, {{path: {files['de']}, lang: de}}]",
                                               *model, *train("mlm")]),
        # recomputing layers in backward must not upset DDP's gradient hooks
        "pairs": load_config(PairsRun, None, [f"data.train=[{{path: {files['pairs']}}}]", *model,
                                              *train("pairs", "train.gradient_checkpointing=true")]),
        # GradCache: each parameter gets one gradient per backward, from the chunks' sum, as DDP's hooks expect
        "pairs cached": load_config(PairsRun, None, [f"data.train=[{{path: {files['pairs']}}}]", *model,
                                                     *train("pairs cached", "train.grad_accum=1"),
                                                     "pairs.grad_cache_chunk=2"]),
        "multitask": load_config(MultitaskRun, None, [f"data.train=[{{path: {files['triples']}}}, {{path: {files['sts']}}}]",
                                                      *model, *train("multitask", "train.seed=3"),
                                                      "multitask.num_negatives=2"]),
        "multitask cached": load_config(MultitaskRun, None, [f"data.train=[{{path: {files['triples']}}}, {{path: {files['sts']}}}]",
                                                             *model, *train("multitask cached", "train.seed=3",
                                                                            "train.grad_accum=1"),
                                                             "multitask.num_negatives=2", "multitask.grad_cache_chunk=2",
                                                             "multitask.matryoshka_dims=[32, 8]"]),
    }


def _run_all(files: dict, out: Path, all_reduces: list | None = None, parallel: str = "ddp",
             init_seed: int = 0) -> dict:
    from bembed.training.config import to_dict
    from bembed.training.mlm import MLMStage
    from bembed.training.multitask import MultitaskStage
    from bembed.training.pairs import PairStage
    from bembed.training.trainer import Trainer

    stages = {"mlm": MLMStage, "pairs": PairStage, "pairs cached": PairStage, "multitask": MultitaskStage,
              "multitask cached": MultitaskStage}
    histories = {}
    for name, cfg in _configs(files, out).items():
        if parallel == "fsdp" and "cached" in name:  # GradCache under FSDP is refused (test_grad_cache.py)
            continue
        cfg.train.parallel = parallel
        torch.manual_seed(init_seed)
        stage = stages[name](cfg)
        before = len(all_reduces or ())
        histories[name] = Trainer(stage, cfg.train, to_dict(cfg)).fit()
        if all_reduces is not None:
            histories[f"{name} all_reduces"] = len(all_reduces) - before
    return histories


def _worker(rank: int, world: int, port: int, files: dict, out: str, parallel: str = "ddp") -> None:
    import torch.distributed as dist

    calls, all_reduce = [], dist.all_reduce
    dist.all_reduce = lambda *args, **kwargs: (calls.append(1), all_reduce(*args, **kwargs))[1]
    with torchrun_rank(rank, world, port):
        # each rank builds other initial weights: DDP and FSDP must start every rank from rank 0's
        histories = _run_all(files, Path(out), calls, parallel, init_seed=rank)
        if rank == 0:
            (Path(out) / "histories.json").write_text(json.dumps(histories))
    exit_rank_process()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    en, de = U.text_files(root)
    return {"tok": str(U.tokenizer_dir(root)), "en": str(en), "de": str(de), "pairs": str(U.pair_file(root)),
            "triples": str(U.triple_file(root)), "sts": str(U.sts_file(root))}


@pytest.fixture(scope="module")
def one_process(files, tmp_path_factory):
    """Every stage's run in this process: the histories, and the folder of their outputs."""
    out = tmp_path_factory.mktemp("one")
    return _run_all(files, out), out


def _assert_runs_equal(one: dict, one_dir: Path, two: dict, two_dir: Path, names) -> None:
    """The same losses, metrics, tokens and grad norms at every step, and the same weights at the last."""
    for name in names:
        assert [m["step"] for m in two[name]] == list(range(1, STEPS + 1))
        for a, b in zip(one[name], two[name]):
            for key in a:
                if key.endswith("loss") or key in ("mlm_accuracy", "grad_norm"):
                    assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), (name, a["step"], key)
            assert b["tokens"] == a["tokens"]
        w1 = load_file(str(one_dir / name / "checkpoints" / f"step-{STEPS:08d}" / "model.safetensors"))
        w2 = load_file(str(two_dir / name / "checkpoints" / f"step-{STEPS:08d}" / "model.safetensors"))
        assert w1.keys() == w2.keys()
        for key in w1:
            # Adam divides by the gradient's own scale: where a gradient is small (an embedding row seen once),
            # float noise from the other reduction order moves the weight by up to ~1e-5 in 3 steps of lr 3e-3
            torch.testing.assert_close(w2[key], w1[key], rtol=1e-4, atol=2e-5, msg=f"{name}: {key}")


@pytest.mark.slow  # ~1 min on 2 busy cores: two spawned interpreters import torch + transformers
def test_two_gloo_processes_equal_one_process(files, one_process, tmp_path):
    one, one_dir = one_process
    mp.spawn(_worker, args=(2, free_port(), files, str(tmp_path / "two")), nprocs=2, join=True)
    two = json.loads((tmp_path / "two" / "histories.json").read_text())
    kinds = {k for m in one["multitask"] for k in m if k.endswith("_loss")}
    assert kinds == {"retrieval_loss", "sts_loss"}, kinds  # both tasks (and both gathers) exercised
    # One all-reduce per step (the metrics; DDP reduces gradients itself) and one more for MLM's total masked
    # tokens: the micro-batch weights of the other stages are all 1, and the MLM loss needs no count of its own.
    names = ("mlm", "pairs", "pairs cached", "multitask", "multitask cached")
    assert {name: two[f"{name} all_reduces"] for name in names} == {"mlm": 2 * STEPS, "pairs": STEPS,
                                                                   "pairs cached": STEPS, "multitask": STEPS,
                                                                   "multitask cached": STEPS}
    kinds = {k for m in one["multitask cached"] for k in m if k.endswith("_loss")}
    assert kinds == {"retrieval_loss", "sts_loss"}, kinds
    _assert_runs_equal(one, one_dir, two, tmp_path / "two", names)


@pytest.mark.slow
def test_two_fsdp_processes_equal_one_process(files, one_process, tmp_path):
    """The same steps with every weight, gradient and AdamW moment sharded over the two ranks (MLM's decoder
    tied to its embeddings, pairs with gradient checkpointing, two accumulation micro-batches a step); the
    checkpoints and final/ folders hold the whole tensors, as one process writes them."""
    one, one_dir = one_process
    mp.spawn(_worker, args=(2, free_port(), files, str(tmp_path / "two"), "fsdp"), nprocs=2, join=True)
    two = json.loads((tmp_path / "two" / "histories.json").read_text())
    names = ("mlm", "pairs", "multitask")
    _assert_runs_equal(one, one_dir, two, tmp_path / "two", names)
    for name in names:
        final1 = load_file(str(one_dir / name / "final" / "model.safetensors"))
        final2 = load_file(str(tmp_path / "two" / name / "final" / "model.safetensors"))
        assert final1.keys() == final2.keys()
        for key in final1:
            torch.testing.assert_close(final2[key], final1[key], rtol=1e-4, atol=2e-5, msg=f"{name}: {key}")
        step = f"step-{STEPS:08d}"
        moments1 = load_file(str(one_dir / name / "checkpoints" / step / "optimizer.safetensors"))
        moments2 = load_file(str(tmp_path / "two" / name / "checkpoints" / step / "optimizer.safetensors"))
        assert {k: v.shape for k, v in moments2.items()} == {k: v.shape for k, v in moments1.items()}


def _fsdp_pairs_trainer(files: dict, out: Path, parallel: str = "fsdp"):
    from bembed.training.config import PairsRun, load_config, to_dict
    from bembed.training.pairs import PairStage
    from bembed.training.trainer import Trainer

    cfg = load_config(PairsRun, None, [
        f"data.train=[{{path: {files['pairs']}}}]", f"model.tokenizer={files['tok']}", "model.max_length=24",
        f"model.config={json.dumps(U.TINY_MODEL)}", *U.train_overrides(out, 4, batch=8), "train.grad_accum=2",
        "train.save_every=2", f"train.parallel={parallel}"])
    torch.manual_seed(0)
    return Trainer(PairStage(cfg), cfg.train, to_dict(cfg))


class _Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.parts = torch.nn.ModuleList([torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)])

    def forward(self, x):
        for part in self.parts:
            x = part(x)
        return x


class _Nested(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = torch.nn.ModuleList([_Block(), _Block()])

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return x


def _fsdp_resume_worker(rank: int, world: int, port: int, files: dict, out: str) -> None:
    """Pairs under FSDP straight to 4 steps, and again from its step-2 checkpoint into another folder; then
    GradCache on the sharded model. Rank 0 writes what GradCache said to results.json."""
    from bembed.training.grad_cache import cached_encode

    with torchrun_rank(rank, world, port):
        _fsdp_pairs_trainer(files, Path(out) / "straight").fit()
        resumed = _fsdp_pairs_trainer(files, Path(out) / "resumed")
        resumed.fit(resume=str(Path(out) / "straight" / "checkpoints" / "step-00000002"))
        ids = torch.ones(4, 5, dtype=torch.long)
        try:
            cached_encode(resumed.model.embed, resumed.model, ids, torch.ones_like(ids), 2)
            refusal = None
        except ValueError as exc:
            refusal = str(exc)
        from torch.distributed.fsdp import FSDPModule
        from torch.distributed.tensor import DTensor

        from bembed.training import parallel

        def half(t):  # this rank's rows of a sharded tensor (the odd row of an odd count on rank 0)
            return isinstance(t, DTensor) and t.to_local().shape[0] == (t.shape[0] + 1 - rank) // 2

        # each transformer layer gathers its own weights (a group of its own), and each rank holds half of every
        # parameter; so of every gradient also on an accumulation micro-batch (no sync skipped)
        resumed.optimizer.zero_grad(set_to_none=True)
        with parallel.gradient_sync(resumed.stage_loss, False):
            batch = resumed.stage.batch(0, rank, world, resumed.local_size)
            resumed.stage_loss(resumed._to_device(batch.tensors))[0].backward()
        structure = {"layers": [isinstance(layer, FSDPModule) for layer in resumed.model.encoder.layer],
                     "halves": all(half(p) for p in resumed.model.parameters()),
                     "gradient halves": all(half(p.grad) for p in resumed.params)}

        # a model whose layers hold lists of their own (T5's blocks): the outer list's members are the groups
        nested = parallel.wrap(_Nested(), torch.device("cpu"), "fsdp")
        nested(torch.randn(3, 4)).sum().backward()
        structure["nested groups"] = [isinstance(m, FSDPModule) for m in (nested.blocks[0], nested.blocks[0].parts[0])]
        if rank == 0:
            (Path(out) / "results.json").write_text(json.dumps({"grad_cache": refusal, **structure}))
    exit_rank_process()


@pytest.mark.slow
def test_fsdp_checkpoints_resume_exactly_and_in_one_process(files, tmp_path):
    """An FSDP checkpoint is whole tensors: resumed under FSDP it continues exactly (the sharded AdamW moments
    and steps put back where they were), and one process resumes it too (the same steps, to float rounding)."""
    mp.spawn(_fsdp_resume_worker, args=(2, free_port(), files, str(tmp_path)), nprocs=2, join=True)
    straight = load_file(str(tmp_path / "straight" / "final" / "model.safetensors"))
    resumed = load_file(str(tmp_path / "resumed" / "final" / "model.safetensors"))
    assert straight.keys() == resumed.keys()
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key
    single = _fsdp_pairs_trainer(files, tmp_path / "single")
    single.fit(resume=str(tmp_path / "straight" / "checkpoints" / "step-00000002"))
    alone = load_file(str(tmp_path / "single" / "final" / "model.safetensors"))
    for key in straight:
        torch.testing.assert_close(alone[key], straight[key], rtol=1e-4, atol=2e-5, msg=key)
    results = json.loads((tmp_path / "results.json").read_text())
    assert "sharded" in results["grad_cache"]
    assert results["layers"] == [True] * U.TINY_MODEL["num_hidden_layers"] and results["halves"]
    assert results["gradient halves"] and results["nested groups"] == [True, False]


def _interrupt_worker(rank: int, world: int, port: int, files: dict, out: str) -> None:
    """Runs pairs straight to 4 steps, then again with SIGINT sent to rank 1 alone in the middle of step 2,
    then resumes that run to 4 steps; rank 0 writes what happened to results.json."""
    import signal

    import torch.distributed as dist

    from bembed.training.config import PairsRun, load_config, to_dict
    from bembed.training.pairs import PairStage
    from bembed.training.trainer import Trainer

    def trainer(name, interrupt_at=None):
        cfg = load_config(PairsRun, None, [
            f"data.train=[{{path: {files['pairs']}}}]", f"model.tokenizer={files['tok']}", "model.max_length=24",
            f"model.config={json.dumps({**U.TINY_MODEL, 'hidden_dropout_prob': 0.1})}",
            *U.train_overrides(Path(out) / name, 4, batch=8), "train.grad_accum=2", "train.save_every=100"])
        torch.manual_seed(0)
        stage = PairStage(cfg)
        if interrupt_at is not None:
            loss, calls = stage.loss, []

            def loss_then_ctrl_c(tensors):
                calls.append(1)
                if rank == 1 and len(calls) == interrupt_at:
                    os.kill(os.getpid(), signal.SIGINT)
                return loss(tensors)

            stage.loss = loss_then_ctrl_c
        return Trainer(stage, cfg.train, to_dict(cfg))

    with torchrun_rank(rank, world, port):
        trainer("straight").fit()
        interrupted = False
        try:
            trainer("cut", interrupt_at=3).fit()  # micro-batch 3 of 8: the first of step 2
        except KeyboardInterrupt:
            interrupted = True
        saved = sorted(p.name for p in (Path(out) / "cut" / "checkpoints").iterdir())
        dist.barrier()
        resumed = trainer("cut").fit(resume="latest")
        if rank == 0:
            (Path(out) / "results.json").write_text(json.dumps(
                {"interrupted": interrupted, "saved": saved, "resumed_steps": [m["step"] for m in resumed]}))
        else:
            (Path(out) / "rank1.json").write_text(json.dumps({"interrupted": interrupted}))
    exit_rank_process()


@pytest.mark.slow
def test_ctrl_c_on_one_rank_stops_every_rank_after_the_same_step(files, tmp_path):
    """torchrun passes Ctrl-C to each worker, which it reaches at a different point of its step: ranks that
    stopped where it found them waited forever in each other's collectives, and no checkpoint was written.
    Now every rank finishes the step the signal was reported in, they write its checkpoint together, and
    resuming from it gives the weights of the uninterrupted run (dropout on)."""
    context = mp.spawn(_interrupt_worker, args=(2, free_port(), files, str(tmp_path)), nprocs=2, join=False)
    deadline = time.monotonic() + 300  # the bug this guards against is a hang
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("the ranks did not finish: one waits in a collective the other left")
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["interrupted"] and json.loads((tmp_path / "rank1.json").read_text())["interrupted"]
    assert results["saved"] == ["step-00000002"]
    assert results["resumed_steps"] == [3, 4]
    straight = load_file(str(tmp_path / "straight" / "final" / "model.safetensors"))
    resumed = load_file(str(tmp_path / "cut" / "final" / "model.safetensors"))
    assert straight.keys() == resumed.keys()
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key


def _tokenizer_worker(rank: int, world: int, port: int, files: dict, out: str) -> None:
    """Rank 1 comes late, after rank 0 has trained and saved the tokenizer: it used to see the folder, skip the
    barrier rank 0 waited in, and leave rank 0 hanging there (30 min, gloo's default timeout)."""
    import datetime

    import torch.distributed as dist

    from bembed.training.config import PretrainRun, load_config
    from bembed.training.mlm import _tokenizer

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=30))
    try:
        cfg = load_config(PretrainRun, None, [f"data.train=[{{path: {files['en']}, lang: en}}]",
                                              f"train.output_dir={out}", "mlm.tokenizer_vocab_size=300"])
        texts = {"en": ["the house is red and the boat is small"] * 30,
                 "de": ["das haus ist rot und das boot ist klein"] * 30}
        if rank == 1:
            time.sleep(4)  # rank 0 has long saved its tokenizer by now
        tokenizer = _tokenizer(cfg, texts, rank)
        (Path(out) / f"rank{rank}.txt").write_text(str(len(tokenizer)))
    finally:
        dist.destroy_process_group()
    exit_rank_process()


def test_ranks_agree_on_training_the_tokenizer_however_late_one_comes(files, tmp_path):
    mp.spawn(_tokenizer_worker, args=(2, free_port(), files, str(tmp_path)), nprocs=2, join=True)
    assert (tmp_path / "rank0.txt").read_text() == (tmp_path / "rank1.txt").read_text()
