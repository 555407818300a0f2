"""Each stage trains a tiny model on generated data: the loss goes down, the export loads, and the
trainer core resumes exactly, checkpoints atomically, stops on NaN and checkpoints on Ctrl-C."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import bembed
from bembed.training import checkpoint as ckpt
from bembed.training import trainer as trainer_module
from bembed.training.batching import Batch
from bembed.training.config import AlignRun, ModelConfig, MultitaskRun, PairsRun, PretrainRun, load_config, to_dict
from bembed.training.trainer import NonFiniteLossError, Trainer

import training_utils as U


single_thread = pytest.fixture(autouse=True)(U.one_thread)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    en, de = U.text_files(root)
    return {"root": root, "tok": U.tokenizer_dir(root), "en": en, "de": de, "pairs": U.pair_file(root),
            "triples": U.triple_file(root), "sts": U.sts_file(root), "parallel": U.parallel_file(root)}


def _model_overrides(files, **config):
    return [f"model.tokenizer={files['tok']}", "model.max_length=24",
            f"model.config={json.dumps({**U.TINY_MODEL, **config})}"]


def mlm_run(files, out, steps, *extra, **config):
    from bembed.training.mlm import MLMStage

    cfg = load_config(PretrainRun, None, [f"data.train=[{{path: {files['en']}, lang: en}}, {{path: {files['de']}, lang: de}}]",
                                          *_model_overrides(files, **config), *U.train_overrides(out, steps), *extra])
    torch.manual_seed(cfg.train.seed)  # the fresh model's initial weights
    return MLMStage(cfg), cfg


def _fit(stage, cfg, resume=None):
    return Trainer(stage, cfg.train, to_dict(cfg)).fit(resume=resume)


def _mean(values):
    return sum(values) / len(values)


# ---------------------------------------------------------------------------- the stages learn
def test_mlm_loss_decreases_and_export_loads(files, tmp_path):
    from bembed.model import JinaBertForMaskedLM, JinaBertModel

    stage, cfg = mlm_run(files, tmp_path, 30)
    history = _fit(stage, cfg)
    losses = [m["loss"] for m in history]
    assert _mean(losses[-5:]) < _mean(losses[:5]) - 0.5, losses
    assert all("mlm_accuracy" in m for m in history)
    final = tmp_path / "final"
    reloaded = JinaBertForMaskedLM.from_pretrained(final)
    for name, value in stage.model.state_dict().items():
        assert torch.equal(reloaded.state_dict()[name], value.cpu()), name
    JinaBertModel.from_pretrained(final)  # the encoder alone (bert. prefix, MLM head ignored) loads too
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 31)) and (tmp_path / "loss.png").stat().st_size > 0


def test_mlm_language_too_small_for_a_batch_is_refused_at_start(files, tmp_path):
    """Batches take turns over the languages: a language with fewer sequences than a micro-batch was let
    through by the start-up check (which drew batch 0, German) and failed at step 2 with a traceback."""
    from bembed.training.mlm import MLMStage

    small = U.write_jsonl(tmp_path / "en_small.jsonl", [{"text": "the house"}, {"text": "the river"}])
    cfg = load_config(PretrainRun, None, [f"data.train=[{{path: {files['de']}, lang: de}}, {{path: {small}, lang: en}}]",
                                          *_model_overrides(files), *U.train_overrides(tmp_path / "out", 2, batch=8)])
    with pytest.raises(ValueError, match=r"data.train: the 'en' sequences: the data has 2 rows, fewer than one "
                                         r"global micro-batch of 8"):
        Trainer(MLMStage(cfg), cfg.train, to_dict(cfg))


def test_mlm_from_a_model_folder_keeps_its_tokenizer(files, tmp_path):
    """Continued pretraining (model.init_from, no model.tokenizer) must tokenise with the folder's tokenizer, not
    train a new one whose ids mean other tokens to the loaded embeddings."""
    from bembed.training.mlm import MLMStage

    first, cfg = mlm_run(files, tmp_path / "first", 1)
    _fit(first, cfg)
    cfg = load_config(PretrainRun, None, [f"data.train=[{{path: {files['en']}, lang: en}}, {{path: {files['de']}, lang: de}}]",
                                          f"model.init_from={tmp_path / 'first' / 'final'}", "model.max_length=24",
                                          *U.train_overrides(tmp_path / "second", 1)])
    second = MLMStage(cfg)
    assert second.tokenizer.get_vocab() == first.tokenizer.get_vocab()
    assert not (tmp_path / "second" / "tokenizer").exists()


def test_pairs_loss_decreases_and_sentence_transformers_loads(files, tmp_path):
    from bembed.training.encoder import embed, tokenize
    from bembed.training.pairs import PairStage

    cfg = load_config(PairsRun, None, [f"data.train=[{{path: {files['pairs']}}}]", *_model_overrides(files),
                                       *U.train_overrides(tmp_path, 20), "pairs.query_prefix='query: '"])
    torch.manual_seed(0)
    stage = PairStage(cfg)
    losses = [m["loss"] for m in _fit(stage, cfg)]
    assert _mean(losses[-4:]) < 0.5 * _mean(losses[:4]), losses
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(tmp_path / "final"), device="cpu")
    texts = ["the house garden", "das haus"]
    mine = embed(stage.model.eval(), **{k: v for k, v in tokenize(stage.tokenizer, texts, 24).items()})
    theirs = st.encode(texts, convert_to_tensor=True)
    assert torch.allclose(mine, theirs, atol=1e-5)
    # the prefix the stage trained with travels with the model: encode_query and `bembed eval` apply it
    from bembed.encode import Embedder

    assert Embedder.from_pretrained(tmp_path / "final", device="cpu").prompts == {"query": "query: "}
    assert st.prompts["query"] == "query: "


def test_multitask_both_tasks_learn(files, tmp_path):
    from bembed.training.multitask import MultitaskStage

    cfg = load_config(MultitaskRun, None, [f"data.train=[{{path: {files['triples']}}}, {{path: {files['sts']}}}]",
                                           *_model_overrides(files), *U.train_overrides(tmp_path, 40),
                                           "multitask.num_negatives=2"])
    torch.manual_seed(0)
    history = _fit(MultitaskStage(cfg), cfg)
    retrieval = [m["retrieval_loss"] for m in history if "retrieval_loss" in m]
    sts = [m["sts_loss"] for m in history if "sts_loss" in m]
    assert len(retrieval) >= 6 and len(sts) >= 6  # both tasks drawn (equal sizes → equal odds)
    assert _mean(retrieval[-3:]) < _mean(retrieval[:3]) - 0.3, retrieval
    assert _mean(sts[-3:]) < _mean(sts[:3]) - 0.2, sts  # −Pearson goes towards −1


def test_multitask_metrics_average_over_the_micro_batches_of_their_task(files, tmp_path):
    """With grad_accum=2 a step may mix one retrieval and one STS micro-batch: each task's loss is logged at its
    value, not divided by grad_accum."""
    from bembed.training.multitask import MultitaskStage

    cfg = load_config(MultitaskRun, None, [f"data.train=[{{path: {files['triples']}}}, {{path: {files['sts']}}}]",
                                           *_model_overrides(files), *U.train_overrides(tmp_path, 6),
                                           "train.grad_accum=2", "multitask.sts_loss=mse"])
    stage = MultitaskStage(cfg)
    loss, seen = stage.loss, []

    def recorded(tensors):
        value, metrics = loss(tensors)
        seen.append((tensors["kind"], float(value.detach())))
        return value, metrics

    stage.loss = recorded
    history = _fit(stage, cfg)
    mixed = 0
    for step, metrics in enumerate(history):
        micro = seen[2 * step:2 * step + 2]
        mixed += micro[0][0] != micro[1][0]
        for kind, key in (("retrieval", "retrieval_loss"), ("sts", "sts_loss")):
            values = [v for k, v in micro if k == kind]
            assert (key in metrics) == bool(values)
            if values:
                assert metrics[key] == pytest.approx(_mean(values), rel=1e-6)
    assert mixed


def test_pairs_and_retrieval_batches_hold_no_duplicate_texts(files, tmp_path):
    """15 distinct queries over 64 rows: a random batch of 8 almost surely repeats one (a false negative)."""
    from bembed.training.multitask import MultitaskStage
    from bembed.training.pairs import PairStage

    rng = random.Random(0)
    rows = [{"query": f"q {rng.randrange(15)}", "document": f"d {i}", "positive": f"d {i}", "negatives": ["n"]}
            for i in range(64)]
    dup = U.write_jsonl(tmp_path / "dup.jsonl", rows)
    overrides = [f"data.train=[{{path: {dup}}}]", *_model_overrides(files), *U.train_overrides(tmp_path, 1, batch=8)]
    pairs = PairStage(load_config(PairsRun, None, overrides))
    multitask = MultitaskStage(load_config(MultitaskRun, None, overrides))
    for stage in (pairs, multitask):
        for index in range(20):
            # a batch's source ends with the rows it holds
            picked = [i for rank in (0, 1)
                      for i in json.loads(stage.batch(index, rank, 2, 4).source.rsplit("rows ", 1)[1])]
            assert len({rows[i]["query"] for i in picked}) == 8, (type(stage).__name__, index)


def _picked(stage, index, world=1, size=2):
    """The rows of global micro-batch `index` (a batch's source ends with the rows it holds)."""
    return [i for rank in range(world) for i in json.loads(stage.batch(index, rank, world, size).source.rsplit("rows ", 1)[1])]


def test_multitask_each_task_reads_whole_passes_over_its_rows(files, tmp_path):
    """A task drawn for a fraction of the micro-batches still sees every row once before any row twice (each
    task reads its own batch stream in order; reading it at the global index used only that fraction of every
    pass), and a stage built afresh at micro-batch N (a resume) picks what the one that walked there picked."""
    from bembed.training.multitask import MultitaskStage

    overrides = [f"data.train=[{{path: {files['triples']}, weight: 1}}, {{path: {files['sts']}, weight: 3}}]",
                 *_model_overrides(files), *U.train_overrides(tmp_path, 1, batch=8), "multitask.num_negatives=0"]
    stage = MultitaskStage(load_config(MultitaskRun, None, overrides))
    kinds = {index: stage.batch(index, 0, 1, 8).source.split(" ", 1)[0] for index in range(200)}
    for kind, rows in (("retrieval", 128), ("sts", 128)):
        indices = [i for i in range(200) if kinds[i] == kind]
        passes = [_picked(stage, i, size=8) for i in indices[:rows // 8]]
        assert len(indices) >= rows // 8 and sorted(r for batch in passes for r in batch) == list(range(rows)), kind
    fresh = MultitaskStage(load_config(MultitaskRun, None, overrides))
    assert [_picked(fresh, i, size=8) for i in (150, 7, 199)] == [_picked(stage, i, size=8) for i in (150, 7, 199)]


def test_multitask_retrieval_batches_never_fail_mid_run(files, tmp_path):
    """Rows (a,x),(a,y),(b,x) hold one distinct pair, but a greedy fill from some shuffles finds none: drawing
    a batch raised mid-run on such indices (0, 5, 7, …). The first epoch is checked at start-up; a later
    epoch with no full batch is skipped. A source with no distinct pair at all is refused at start-up."""
    from bembed.training.multitask import MultitaskStage

    def stage(rows, name):
        path = U.write_jsonl(tmp_path / name, rows)
        return MultitaskStage(load_config(MultitaskRun, None, [f"data.train=[{{path: {path}}}]", *_model_overrides(files),
                                                               *U.train_overrides(tmp_path, 1, batch=2)]))

    rows = [{"query": q, "document": d} for q, d in (("a", "x"), ("a", "y"), ("b", "x"))]
    tiny = stage(rows, "tiny.jsonl")
    for index in range(20):
        assert sorted(_picked(tiny, index)) in ([0, 2], [1, 2])
    with pytest.raises(ValueError, match=r"same.jsonl: no global micro-batch of 2 rows with distinct texts"):
        stage([{"query": "same", "document": f"d {i}"} for i in range(8)], "same.jsonl")


def test_multitask_hard_negative_never_shares_a_batch_with_the_row_it_is_positive_for(files, tmp_path):
    """Row i's mined negative is row i+1's positive: in one batch it is a false negative for query i+1.
    A negative that several rows share ("common") is no false negative and must not keep rows apart."""
    from bembed.training.multitask import MultitaskStage

    rows = [{"query": f"q {i}", "positive": f"d {i}", "negatives": [f"d {(i + 1) % 16}", "common"]} for i in range(16)]
    path = U.write_jsonl(tmp_path / "neg.jsonl", rows)
    stage = MultitaskStage(load_config(MultitaskRun, None, [f"data.train=[{{path: {path}}}]", *_model_overrides(files),
                                                            *U.train_overrides(tmp_path, 1, batch=4),
                                                            "multitask.num_negatives=2"]))
    for index in range(30):
        picked = _picked(stage, index, world=2)
        positives = {rows[i]["positive"] for i in picked}
        assert len(picked) == 4 and not positives & {rows[i]["negatives"][0] for i in picked}, (index, picked)


def test_multitask_sts_none_leaves_sts_out(files, tmp_path):
    from bembed.training.multitask import MultitaskStage

    cfg = load_config(MultitaskRun, None, [f"data.train=[{{path: {files['triples']}}}, {{path: {files['sts']}}}]",
                                           *_model_overrides(files), *U.train_overrides(tmp_path, 1),
                                           "multitask.sts_loss=none"])
    stage = MultitaskStage(cfg)
    assert [kind for kind, _, _ in stage.tasks] == ["retrieval"]


def test_multitask_pearson_with_small_micro_batches(files, tmp_path):
    """Gradient accumulation leaves micro-batches of a few rows, whose gold scores (a few discrete levels) are
    all equal now and then: the correlation is undefined there, so such a batch adds nothing (through the
    graph, for DDP) instead of stopping the run; micro-batches of fewer than 3 rows are refused up front."""
    from bembed.training.multitask import MultitaskStage

    def stage(*extra):
        return MultitaskStage(load_config(MultitaskRun, None, [f"data.train=[{{path: {files['sts']}}}]",
                                                               *_model_overrides(files), *extra]))

    with pytest.raises(ValueError, match=r"train.grad_accum.*3 rows"):
        stage("train.batch_size=8", "train.grad_accum=4")
    sts = stage("train.batch_size=16", "train.grad_accum=4")
    tensors = sts.batch(0, 0, 1, 4).tensors
    loss, metrics = sts.loss({**tensors, "score": torch.full((4,), 2.0)})
    loss.backward()
    assert float(loss.detach()) == 0.0 and metrics == {}
    assert all(p.grad is not None for p in sts.model.parameters() if p.requires_grad)
    loss, metrics = sts.loss({**tensors, "score": torch.tensor([0.0, 1.0, 2.0, 4.0])})
    assert float(loss.detach()) != 0.0 and "sts_loss" in metrics


def test_multitask_source_smaller_than_a_batch_is_refused_at_start(files, tmp_path):
    """It crashed when the sampler first drew that task, many steps in, losing the training so far."""
    from bembed.training.multitask import MultitaskStage

    cfg = load_config(MultitaskRun, None, [f"data.train=[{{path: {files['triples']}}}, {{path: {files['sts']}, max_rows: 12}}]",
                                           *_model_overrides(files), *U.train_overrides(tmp_path, 1, batch=16)])
    with pytest.raises(ValueError, match=r"sts.jsonl: 12 rows, fewer than one global micro-batch of 16"):
        MultitaskStage(cfg)


def _tiny_hf_student(files, folder: Path) -> Path:
    """A 2-layer HF BertModel (not JinaBERT): alignment must work on any AutoModel folder."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from bembed.tokenizer import save_tokenizer

    tok = AutoTokenizer.from_pretrained(files["tok"])
    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                 intermediate_size=64, max_position_embeddings=64, pad_token_id=tok.pad_token_id,
                                 hidden_dropout_prob=0.0))
    model.save_pretrained(folder)
    save_tokenizer(tok, folder)
    return folder


def test_align_reduces_cross_lingual_distance(files, tmp_path):
    from bembed.training.align import AlignStage, cross_lingual_distance
    from bembed.training.encoder import load_encoder

    student = _tiny_hf_student(files, tmp_path / "student")
    rng = random.Random(123)  # held-out pairs, not in the training file
    held = [(" ".join(w), " ".join(U.translate(w))) for w in (U.sentence(U.EN, rng, 6) for _ in range(64))]
    model, tok = load_encoder(ModelConfig(init_from=str(student)))
    before = cross_lingual_distance(model, tok, held)
    cfg = load_config(AlignRun, None, [f"data.train=[{{path: {files['parallel']}}}]", f"model.init_from={student}",
                                       "model.max_length=24", *U.train_overrides(tmp_path / "run", 25)])
    stage = AlignStage(cfg)
    history = _fit(stage, cfg)
    after = cross_lingual_distance(stage.model, tok, held)
    mismatched = cross_lingual_distance(stage.model, tok, [(a, held[(i + 1) % 64][1]) for i, (a, _) in enumerate(held)])
    assert after < 0.5 * before, (before, after)
    assert after < 0.7 * mismatched  # translations closer than non-translations, not a collapse
    assert history[0]["teacher_distance"] == pytest.approx(0.0, abs=1e-6)  # teacher = student at the start
    exported, _ = load_encoder(ModelConfig(init_from=str(tmp_path / "run" / "final")))
    assert type(exported).__name__ == "BertModel"


def test_align_checks_its_teacher_and_keeps_the_students_prompts(files, tmp_path):
    """A teacher of another width crashed at step 1; a JinaBERT student lost its query/passage prompts."""
    from bembed.encode import Embedder
    from bembed.training.align import AlignStage

    stage, cfg = mlm_run(files, tmp_path / "mlm", 1)
    student = Embedder(stage.model.bert, stage.tokenizer, prompts={"query": "query: ", "document": "passage: "})
    student.save_pretrained(tmp_path / "student")
    wide = Embedder(bembed.JinaBertModel(bembed.JinaBertConfig(**{**stage.model.bert.config.to_dict(),
                                                                  "hidden_size": 48})), stage.tokenizer)
    wide.save_pretrained(tmp_path / "wide")
    args = [f"data.train=[{{path: {files['parallel']}}}]", f"model.init_from={tmp_path / 'student'}",
            "model.max_length=24", *U.train_overrides(tmp_path / "run", 1)]
    with pytest.raises(ValueError, match="align.teacher: its embeddings have 48 dimensions, the student's"):
        AlignStage(load_config(AlignRun, None, [*args, f"align.teacher={tmp_path / 'wide'}"]))
    with pytest.raises(FileNotFoundError, match="align.teacher: no model folder"):
        AlignStage(load_config(AlignRun, None, [*args, f"align.teacher={tmp_path / 'absent'}"]))
    cfg = load_config(AlignRun, None, args)
    _fit(AlignStage(cfg), cfg)
    assert Embedder.from_pretrained(tmp_path / "run" / "final", device="cpu").prompts == student.prompts


def test_a_pickle_only_model_folder_is_refused(files, tmp_path):
    from transformers import BertModel

    from bembed.training.encoder import load_encoder

    student = _tiny_hf_student(files, tmp_path / "student")
    model = BertModel.from_pretrained(student)
    for weights in student.glob("*.safetensors"):
        weights.unlink()
    torch.save(model.state_dict(), student / "pytorch_model.bin")  # what transformers would unpickle
    with pytest.raises(ValueError, match="no .safetensors weights"):
        load_encoder(ModelConfig(init_from=str(student)))


# ---------------------------------------------------------------------------- the trainer core
def _weights(folder: Path) -> dict:
    return load_file(str(folder / "model.safetensors"))


def test_resume_is_exact(files, tmp_path):
    """N steps straight == k steps, Ctrl-C (checkpoint), resume to N — with dropout and grad accumulation,
    so the RNG state, the optimizer state and the data position must all come back. The Ctrl-C comes in the
    middle of step 4, after one micro-batch has drawn its dropout masks."""
    extra = ["train.grad_accum=2", "train.max_steps=6"]
    stage, cfg = mlm_run(files, tmp_path / "straight", 6, *extra, hidden_dropout_prob=0.1)
    straight = _fit(stage, cfg)

    stage, cfg = mlm_run(files, tmp_path / "resumed", 6, *extra, hidden_dropout_prob=0.1)
    loss, calls = stage.loss, []

    def interrupted(tensors):
        calls.append(1)
        if len(calls) == 2 * 3 + 2:  # the second micro-batch of step 4
            raise KeyboardInterrupt
        return loss(tensors)

    stage.loss = interrupted
    with pytest.raises(KeyboardInterrupt):
        _fit(stage, cfg)
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
    _fit(stage, cfg)
    stage, cfg = mlm_run(files, tmp_path / "resumed", 4)
    loss, calls = stage.loss, []

    def interrupted(tensors):
        calls.append(1)
        if len(calls) == 3:  # step 3: a checkpoint of step 2
            raise KeyboardInterrupt
        return loss(tensors)

    stage.loss = interrupted
    with pytest.raises(KeyboardInterrupt):
        _fit(stage, cfg)
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
    _fit(stage, cfg)
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
    _fit(stage, cfg)
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
    _fit(stage, cfg, resume="latest")
    assert [json.loads(line)["step"] for line in metrics.read_text().splitlines()] == [1, 2, 3, 4, 5, 6]
    a = _weights(tmp_path / "straight" / "checkpoints" / "step-00000006")
    b = _weights(root / "step-00000006")
    assert all(torch.equal(a[k], b[k]) for k in a)


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
    a, b = _fit(split, cfg_split)[0], _fit(whole, cfg_whole)[0]
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    for p, q in zip(split.model.parameters(), whole.model.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-7)


def test_max_grad_norm_zero_does_not_clip(files, tmp_path):
    """0 means no clipping, as null: clipping to norm 0 would zero every gradient."""
    stage, cfg = mlm_run(files, tmp_path, 1, "train.max_grad_norm=0")
    before = [p.detach().clone() for p in stage.model.parameters()]
    (step,) = _fit(stage, cfg)
    assert "grad_norm" not in step
    assert any(not torch.equal(a, p) for a, p in zip(before, stage.model.parameters()))


def test_checkpoints_keep_last_k_and_clear_errors(files, tmp_path):
    stage, cfg = mlm_run(files, tmp_path, 5, "train.save_every=1", "train.keep_last=2")
    _fit(stage, cfg)
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
    _fit(stage, cfg)
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
    _fit(stage, cfg)
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
    _fit(stage, cfg)
    with open(tmp_path / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write('{"step": 3, "loss": 5.')  # what a kill while logging step 3 leaves
    stage, cfg = mlm_run(files, tmp_path, 4, "train.log_every=1")
    _fit(stage, cfg, resume="latest")
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3, 4]


def test_fresh_run_into_a_used_output_dir_is_refused(files, tmp_path):
    stage, cfg = mlm_run(files, tmp_path, 1)
    _fit(stage, cfg)
    stage, cfg = mlm_run(files, tmp_path, 2, "train.lr=1e-3")
    with pytest.raises(ckpt.CheckpointError, match="--resume latest, or give a new train.output_dir"):
        _fit(stage, cfg)
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
        _fit(stage, cfg)
    assert "micro-batch 2" in str(info.value)
