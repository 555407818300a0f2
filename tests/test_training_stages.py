"""Each stage trains a tiny model on generated data: the loss goes down, the export loads, its data and
configuration errors are caught before step 1. The trainer core they share: test_trainer_core.py; stages
that start from an existing model folder (alignment among them): test_training_from_folders.py."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from bembed.training.config import MultitaskRun, PairsRun, PretrainRun, load_config, to_dict
from bembed.training.trainer import Trainer

import training_utils as U
from stage_fixtures import files, fit, mlm_run, model_overrides  # noqa: F401


single_thread = pytest.fixture(autouse=True)(U.one_thread)


def _mean(values):
    return sum(values) / len(values)


# ---------------------------------------------------------------------------- the stages learn
def test_mlm_loss_decreases_and_export_loads(files, tmp_path):
    from bembed.model import JinaBertForMaskedLM, JinaBertModel

    stage, cfg = mlm_run(files, tmp_path, 30)
    history = fit(stage, cfg)
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
                                          *model_overrides(files), *U.train_overrides(tmp_path / "out", 2, batch=8)])
    with pytest.raises(ValueError, match=r"data.train: the 'en' sequences: the data has 2 rows, fewer than one "
                                         r"global micro-batch of 8"):
        Trainer(MLMStage(cfg), cfg.train, to_dict(cfg))


def test_mlm_from_a_model_folder_keeps_its_tokenizer(files, tmp_path):
    """Continued pretraining (model.init_from, no model.tokenizer) must tokenise with the folder's tokenizer, not
    train a new one whose ids mean other tokens to the loaded embeddings."""
    from bembed.training.mlm import MLMStage

    first, cfg = mlm_run(files, tmp_path / "first", 1)
    fit(first, cfg)
    cfg = load_config(PretrainRun, None, [f"data.train=[{{path: {files['en']}, lang: en}}, {{path: {files['de']}, lang: de}}]",
                                          f"model.init_from={tmp_path / 'first' / 'final'}", "model.max_length=24",
                                          *U.train_overrides(tmp_path / "second", 1)])
    second = MLMStage(cfg)
    assert second.tokenizer.get_vocab() == first.tokenizer.get_vocab()
    assert not (tmp_path / "second" / "tokenizer").exists()


def test_pairs_loss_decreases_and_sentence_transformers_loads(files, tmp_path):
    from bembed.training.encoder import embed, tokenize
    from bembed.training.multitask import MultitaskStage
    from bembed.training.pairs import PairStage

    cfg = load_config(PairsRun, None, [f"data.train=[{{path: {files['pairs']}}}]", *model_overrides(files),
                                       *U.train_overrides(tmp_path, 20), "pairs.query_prefix='query: '"])
    torch.manual_seed(0)
    stage = PairStage(cfg)
    losses = [m["loss"] for m in fit(stage, cfg)]
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

    # a model folder that sets its max_seq_length keeps it through a stage, as a sentence-transformers model
    # does (the next stage's export wrote the architecture's 8192 instead)
    source = Embedder.from_pretrained(tmp_path / "final", device="cpu")
    source.max_seq_length = 40
    source.save_pretrained(tmp_path / "source")
    cfg = load_config(MultitaskRun, None, [f"data.train=[{{path: {files['triples']}}}]", "model.max_length=16",
                                           f"model.init_from={tmp_path / 'source'}", *U.train_overrides(tmp_path / "next", 1)])
    fit(MultitaskStage(cfg), cfg)
    assert Embedder.from_pretrained(tmp_path / "next" / "final", device="cpu").max_seq_length == 40


def test_matryoshka_dims_train_the_cut_embeddings(files, tmp_path):
    """With matryoshka_dims [32, 4] the first 4 of 32 dimensions learn to retrieve on their own: their InfoNCE
    loss on the training pairs ends well below a run without (which trains all 32 together)."""
    import bembed_ext
    from bembed.training.encoder import embed, tokenize
    from bembed.training.pairs import PairStage

    def cut_loss(extra, name):
        cfg = load_config(PairsRun, None, [f"data.train=[{{path: {files['pairs']}}}]", *model_overrides(files),
                                           *U.train_overrides(tmp_path / name, 30), *extra])
        torch.manual_seed(0)
        stage = PairStage(cfg)
        fit(stage, cfg)
        rows = [json.loads(line) for line in Path(files["pairs"]).read_text().splitlines()[:64]]
        with torch.no_grad():
            q, d = (embed(stage.model.eval(), **tokenize(stage.tokenizer, [r[k] for r in rows], 24))
                    for k in ("query", "document"))
        cut = lambda e: torch.nn.functional.normalize(e[:, :4], dim=-1)  # noqa: E731
        return float(bembed_ext.contrastive_loss(cut(q), cut(d), temperature=0.05))

    plain, matryoshka = cut_loss([], "plain"), cut_loss(["pairs.matryoshka_dims=[32, 4]"], "matryoshka")
    assert matryoshka < 0.8 * plain, (matryoshka, plain)  # 2.90 vs 4.27 when written


def test_the_model_folder_records_the_widths_its_last_stage_trained(files, tmp_path):
    """config.json keeps the last contrastive stage's matryoshka_dims (Embedder.matryoshka_dims reads them, and
    a re-save keeps them); a stage trained without them removes the record its starting model carried."""
    from bembed.encode import Embedder
    from bembed.training.multitask import MultitaskStage
    from bembed.training.pairs import PairStage

    cfg = load_config(PairsRun, None, [f"data.train=[{{path: {files['pairs']}}}]", *model_overrides(files),
                                       *U.train_overrides(tmp_path / "pairs", 1), "pairs.matryoshka_dims=[4, 32]"])
    fit(PairStage(cfg), cfg)
    final = tmp_path / "pairs" / "final"
    assert json.loads((final / "config.json").read_text())["matryoshka_dims"] == [32, 4]
    embedder = Embedder.from_pretrained(final, device="cpu")
    assert embedder.matryoshka_dims == (32, 4)
    embedder.save_pretrained(tmp_path / "resaved")
    assert Embedder.from_pretrained(tmp_path / "resaved", device="cpu").matryoshka_dims == (32, 4)

    for name, extra, expected in (("plain", [], ()), ("cut", ["multitask.matryoshka_dims=[8]"], (8,))):
        cfg = load_config(MultitaskRun, None, [f"data.train=[{{path: {files['triples']}}}]", f"model.init_from={final}",
                                               f"model.tokenizer={files['tok']}", "model.max_length=24",
                                               *U.train_overrides(tmp_path / name, 1, batch=8), *extra])
        fit(MultitaskStage(cfg), cfg)
        assert Embedder.from_pretrained(tmp_path / name / "final", device="cpu").matryoshka_dims == expected, name

    from bembed.training.mlm import MLMStage  # continued pretraining from the Matryoshka folder: the record goes

    cfg = load_config(PretrainRun, None, [f"data.train=[{{path: {files['en']}, lang: en}}]", f"model.init_from={final}",
                                          "model.max_length=24", *U.train_overrides(tmp_path / "mlm", 1, batch=8)])
    fit(MLMStage(cfg), cfg)
    assert "matryoshka_dims" not in json.loads((tmp_path / "mlm" / "final" / "config.json").read_text())


def test_multitask_losses_average_over_the_matryoshka_dims(files, tmp_path):
    """Both task kinds: the stage's loss is the mean of its loss on the embeddings cut to each width."""
    import bembed_ext
    from bembed.training.encoder import embed
    from bembed.training.losses import PearsonLoss
    from bembed.training.multitask import MultitaskStage

    cfg = load_config(MultitaskRun, None, [f"data.train=[{{path: {files['triples']}}}, {{path: {files['sts']}}}]",
                                           *model_overrides(files), *U.train_overrides(tmp_path, 1, batch=8),
                                           "multitask.num_negatives=1", "multitask.matryoshka_dims=[32, 4]"])
    stage = MultitaskStage(cfg)
    cut = lambda e, k: torch.nn.functional.normalize(e[:, :k], dim=-1)  # noqa: E731
    seen = set()
    for index in range(8):
        t = stage.batch(index, 0, 1, 8).tensors
        if t["kind"] in seen:
            continue
        seen.add(t["kind"])
        got = float(stage.loss(t)[0].detach())
        with torch.no_grad():
            if t["kind"] == "sts":
                a, b = embed(stage.model, t["a_ids"], t["a_mask"]), embed(stage.model, t["b_ids"], t["b_mask"])
                each = [PearsonLoss()((cut(a, k) * cut(b, k)).sum(-1), t["score"].float()) for k in (32, 4)]
            else:
                q, d = embed(stage.model, t["q_ids"], t["q_mask"]), embed(stage.model, t["d_ids"], t["d_mask"])
                each = [bembed_ext.contrastive_loss(cut(q, k), cut(d, k), temperature=0.05, bidirectional=False)
                        for k in (32, 4)]
        assert got == pytest.approx(float(sum(each)) / 2, rel=1e-5), t["kind"]
        assert abs(float(each[0]) - float(each[1])) > 1e-3  # the cut width changes the loss
    assert seen == {"sts", "retrieval"}


@pytest.mark.parametrize("dims", ["[]", "[32, 4]"])
def test_multitask_sts_batch_with_one_gold_score_adds_zero_through_every_parameter(files, tmp_path, dims):
    """Pearson is undefined for one gold score: the batch adds 0 to the loss, but through the encoder, so that
    DDP still sees a gradient for every trainable parameter."""
    from bembed.training.multitask import MultitaskStage

    cfg = load_config(MultitaskRun, None, [f"data.train=[{{path: {files['sts']}}}]", *model_overrides(files),
                                           *U.train_overrides(tmp_path, 1, batch=8), f"multitask.matryoshka_dims={dims}"])
    stage = MultitaskStage(cfg)
    t = stage.batch(0, 0, 1, 8).tensors
    t["score"] = torch.full_like(t["score"], 3.0)
    loss, metrics = stage.loss(t)
    loss.backward()
    assert float(loss.detach()) == 0.0 and metrics == {}
    trainable = [(name, p) for name, p in stage.model.named_parameters() if p.requires_grad]
    assert trainable and all(p.grad is not None and not p.grad.any() for _, p in trainable)


def test_matryoshka_dims_wider_than_the_model_are_refused_at_start(files, tmp_path):
    from bembed.training.multitask import MultitaskStage
    from bembed.training.pairs import PairStage

    for stage, run, key, data in ((PairStage, PairsRun, "pairs", "pairs"), (MultitaskStage, MultitaskRun, "multitask", "triples")):
        cfg = load_config(run, None, [f"data.train=[{{path: {files[data]}}}]", *model_overrides(files),
                                      *U.train_overrides(tmp_path, 1), f"{key}.matryoshka_dims=[64, 8]"])
        with pytest.raises(ValueError, match=rf"{key}\.matryoshka_dims: \[64, 8\] exceeds the model's 32"):
            stage(cfg)


def test_multitask_both_tasks_learn(files, tmp_path):
    from bembed.training.multitask import MultitaskStage

    cfg = load_config(MultitaskRun, None, [f"data.train=[{{path: {files['triples']}}}, {{path: {files['sts']}}}]",
                                           *model_overrides(files), *U.train_overrides(tmp_path, 40),
                                           "multitask.num_negatives=2"])
    torch.manual_seed(0)
    history = fit(MultitaskStage(cfg), cfg)
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
                                           *model_overrides(files), *U.train_overrides(tmp_path, 6),
                                           "train.grad_accum=2", "multitask.sts_loss=mse"])
    stage = MultitaskStage(cfg)
    loss, seen = stage.loss, []

    def recorded(tensors):
        value, metrics = loss(tensors)
        seen.append((tensors["kind"], float(value.detach())))
        return value, metrics

    stage.loss = recorded
    history = fit(stage, cfg)
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
    overrides = [f"data.train=[{{path: {dup}}}]", *model_overrides(files), *U.train_overrides(tmp_path, 1, batch=8)]
    pairs = PairStage(load_config(PairsRun, None, overrides))
    multitask = MultitaskStage(load_config(MultitaskRun, None, overrides))
    for stage in (pairs, multitask):
        for index in range(20):
            picked = _picked(stage, index, world=2, size=4)
            assert len({rows[i]["query"] for i in picked}) == 8, (type(stage).__name__, index)


def _picked(stage, index, world=1, size=2):
    """The rows (indices from 0) of global micro-batch `index` of a one-source stage: a batch's source ends with
    the numbers (from 1) of the rows it holds."""
    return [n - 1 for rank in range(world)
            for n in json.loads(stage.batch(index, rank, world, size).source.rsplit("rows ", 1)[1])]


def test_multitask_each_task_reads_whole_passes_over_its_rows(files, tmp_path):
    """A task drawn for a fraction of the micro-batches still sees every row once before any row twice (each
    task reads its own batch stream in order; reading it at the global index used only that fraction of every
    pass), and a stage built afresh at micro-batch N (a resume) picks what the one that walked there picked."""
    from bembed.training.multitask import MultitaskStage

    overrides = [f"data.train=[{{path: {files['triples']}, weight: 1}}, {{path: {files['sts']}, weight: 3}}]",
                 *model_overrides(files), *U.train_overrides(tmp_path, 1, batch=8), "multitask.num_negatives=0"]
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
        return MultitaskStage(load_config(MultitaskRun, None, [f"data.train=[{{path: {path}}}]", *model_overrides(files),
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
    stage = MultitaskStage(load_config(MultitaskRun, None, [f"data.train=[{{path: {path}}}]", *model_overrides(files),
                                                            *U.train_overrides(tmp_path, 1, batch=4),
                                                            "multitask.num_negatives=2"]))
    for index in range(30):
        picked = _picked(stage, index, world=2)
        positives = {rows[i]["positive"] for i in picked}
        assert len(picked) == 4 and not positives & {rows[i]["negatives"][0] for i in picked}, (index, picked)


def test_multitask_sts_none_leaves_sts_out(files, tmp_path):
    from bembed.training.multitask import MultitaskStage

    cfg = load_config(MultitaskRun, None, [f"data.train=[{{path: {files['triples']}}}, {{path: {files['sts']}}}]",
                                           *model_overrides(files), *U.train_overrides(tmp_path, 1),
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
                                                               *model_overrides(files), *extra]))

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
                                           *model_overrides(files), *U.train_overrides(tmp_path, 1, batch=16)])
    with pytest.raises(ValueError, match=r"sts.jsonl: 12 rows, fewer than one global micro-batch of 16"):
        MultitaskStage(cfg)
