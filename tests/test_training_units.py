"""Training building blocks: configs, whole-word masking, STS losses, the schedule, batching."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from bembed.tokenizer import word_ids, word_start_table
from bembed.training import batching
from bembed.training.config import AlignRun, MultitaskRun, PairsRun, PretrainRun, TrainConfig, load_config
from bembed.training.losses import CoSENTLoss, MSELoss, PearsonLoss, matryoshka_mean, sts_loss
from bembed.training.masking import whole_word_mask
from bembed.training.run import CONFIG_DIR, config_path
from bembed.training.trainer import lr_factor

import training_utils as U


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(U.tokenizer_dir(tmp_path_factory.mktemp("tok")))


# ---------------------------------------------------------------------------- configs
def test_config_yaml_and_dotted_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 1.0e-3\n  max_steps: 7\ndata:\n  train:\n    - path: a.jsonl\n      lang: en\n")
    cfg = load_config(PretrainRun, path, ["train.lr=3e-4", "mlm.mask_prob=0.15", "train.betas=[0.9, 0.999]",
                                          "model.config={hidden_size: 32, num_attention_heads: 2}"])
    assert cfg.train.lr == pytest.approx(3e-4) and cfg.train.max_steps == 7
    assert cfg.mlm.mask_prob == 0.15 and cfg.train.betas == (0.9, 0.999)
    assert cfg.data.train[0].path == "a.jsonl" and cfg.data.train[0].lang == "en"
    assert cfg.model.config == {"hidden_size": 32, "num_attention_heads": 2}
    assert cfg.train.weight_decay == TrainConfig().weight_decay  # untouched default


@pytest.mark.parametrize("override, message", [
    ("train.lrr=1", "unknown key"), ("mlm.mask_prob=x", "expected float"), ("train.max_steps=1.5", "expected int"),
    ("train", "section.field=value"), ("pairs.temperature=1", "unknown key"),
    ("train.max_grad_norm=-1.0", "max_grad_norm must be ≥ 0"), ("model.config={tie_word_embedding: false}", "unknown"),
    ("mlm.mask_prob=1.0", "mlm.mask_prob must be in"),
    ("model.config={num_hidden_layer: 2}", r"model.config: unknown key\(s\) \['num_hidden_layer'\]"),
    # a YAML boolean is not a number: lr=yes trained at 1.0
    ("train.lr=yes", "train.lr: expected float, got True"), ("train.max_grad_norm=on", "expected float"),
    ("train.lr=[1,", "not valid YAML"), ("train.lr=.inf", "train.lr must be finite"),
    ("train.device=gpu", "train.device must be a torch device"),
    ("train.parallel=zero3", "train.parallel must be ddp or fsdp, got 'zero3'"),
    ("mlm.tokenizer_vocab_size=0", "mlm.tokenizer_vocab_size must be ≥"),
    # the architecture's numbers: 0 heads divided by zero (a traceback), -1 failed at the first step
    ("model.config={num_attention_heads: 0}", "num_attention_heads must be a positive int"),
    ("model.config={intermediate_size: -1}", "intermediate_size must be a positive int"),
    ("model.config={hidden_dropout_prob: 1.5}", "hidden_dropout_prob must be a probability"),
    ("model.config={qk_layer_norm: maybe}", "qk_layer_norm must be true or false"),
])
def test_config_rejects_bad_overrides(override, message):
    with pytest.raises(ValueError, match=message):
        load_config(PretrainRun, None, [override])


def test_config_paths_expand_home_and_variables(tmp_path, monkeypatch):
    """`model.init_from=~/x` failed ("no model folder at ~/x") where data paths took `~`; an output_dir of
    `~/runs` made a folder named "~"."""
    from bembed.training.config import AlignRun

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("RUNS", str(tmp_path / "runs"))
    cfg = load_config(AlignRun, None, ["model.init_from=~/student", "model.tokenizer=~/tok", "align.teacher=~/teacher",
                                       "train.output_dir=$RUNS/align"])
    assert (cfg.model.init_from, cfg.model.tokenizer, cfg.align.teacher, cfg.train.output_dir) == (
        f"{tmp_path}/student", f"{tmp_path}/tok", f"{tmp_path}/teacher", f"{tmp_path}/runs/align")


def test_a_config_file_that_is_not_yaml_is_a_config_error(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  lr: [1,\n")
    with pytest.raises(ValueError, match="bad.yaml: not valid YAML"):
        load_config(PretrainRun, path)


def test_config_refuses_keys_that_would_do_nothing_and_accepts_no_clipping():
    """model.config keys the tokenizer decides (they were overridden) or that a fresh JinaBERT ignores
    (tie_word_embeddings: the MLM decoder is always tied) are refused, not silently dropped; and
    train.max_grad_norm=0 means no clipping again, as null does."""
    cfg = load_config(PretrainRun, None, ["model.config={hidden_size: 32, num_attention_heads: 2, qk_layer_norm: true}",
                                          "train.max_grad_norm=0"])
    assert cfg.model.config["qk_layer_norm"] is True and cfg.train.max_grad_norm == 0
    with pytest.raises(ValueError, match="model.config must be empty when model.init_from is set"):
        load_config(PretrainRun, None, ["model.init_from=some/folder", "model.config={num_hidden_layers: 6}"])
    for key, message in (("bos_token_id: 7", "decided by the tokenizer"),
                         ("vocab_size: 100", "decided by the tokenizer"),
                         ("tie_word_embeddings: false", "unknown key"), ("model_type: bogus", "unknown key")):
        with pytest.raises(ValueError, match=message):
            load_config(PretrainRun, None, [f"model.config={{{key}}}"])


@pytest.mark.parametrize("override, message", [
    ("train.grad_accum=0", "train.grad_accum must be ≥ 1"), ("train.batch_size=0", "train.batch_size must be ≥ 1"),
    ("train.max_steps=0", "train.max_steps must be ≥ 1"), ("train.lr=-1", "train.lr must be ≥ 0"),
    ("train.weight_decay=-0.1", "train.weight_decay must be ≥ 0"), ("train.keep_last=-1", "train.keep_last must be ≥ 0"),
    ("train.save_every=-2", "train.save_every must be ≥ 0"), ("train.betas=[0.9]", "train.betas must be two values"),
    ("pairs.temperature=-0.05", "pairs.temperature must be > 0"), ("model.max_length=2", "model.max_length must be ≥ 3"),
    ("data.train=[{lang: en}]", "data source path must be a file"),
    ("data.train=[{path: a.jsonl, max_rows: -1}]", "max_rows must be ≥ 1"),
    ("data.train=[{path: a.jsonl, weight: .inf}]", "weight must be > 0 and finite"),
    ("pairs.temperature=.inf", "pairs.temperature must be > 0 and finite"),
    ("train.seed=18446744073709551621", r"train.seed must be in \[0, 2\*\*63\)"),
    ("train.seed=-1", r"train.seed must be in \[0, 2\*\*63\)"),
    ("multitask.cosent_scale=-20", "multitask.cosent_scale must be > 0 and finite"),
    ("multitask.cosent_scale=.nan", "multitask.cosent_scale must be > 0 and finite"),
    ("multitask.sts_loss=foo", "multitask.sts_loss must be pearson | mse | cosent | none"),
    ("multitask.score_max=.inf", "multitask.score_max must be > 0 and finite"),
    ("align.beta=.nan", "align.beta must be ≥ 0 and finite"),
    ("data.train=[{path: a.jsonl, weight: 2}]", "weight must be unset \\(only multitask draws"),  # did nothing
    ("pairs.matryoshka_dims=[64, 0]", "pairs.matryoshka_dims must be distinct dimensions ≥ 1"),
    ("multitask.matryoshka_dims=[64, 32, 64]", "multitask.matryoshka_dims must be distinct dimensions ≥ 1"),
])
def test_config_rejects_out_of_range_values(override, message):
    """Caught at load time, naming the field: they crashed deep inside training (an infinite weight in
    torch.multinomial, a seed torch cannot take), trained the wrong thing (a negative CoSENT scale reverses the
    order it teaches) or were silently accepted."""
    section = override.split(".")[0]
    run = {"multitask": MultitaskRun, "align": AlignRun}.get(section, PairsRun)
    with pytest.raises(ValueError, match=message):
        load_config(run, None, [override])


def test_multitask_weights_are_set_on_every_source_or_none():
    """A source without a weight weighs its row count: a weight of 2 beside one was drawn almost never."""
    with pytest.raises(ValueError, match="data.train weights must be set on every source or on none"):
        load_config(MultitaskRun, None, ["data.train=[{path: a.jsonl, weight: 2}, {path: b.jsonl}]"])
    load_config(MultitaskRun, None, ["data.train=[{path: a.jsonl, weight: 2}, {path: b.jsonl, weight: 1}]"])


def test_configs_edited_after_loading_are_checked_where_used():
    """The fields stay mutable and the quickstart edits them after loading: the checks run again in the Trainer
    and the stages (they ran only at load time, so max_steps=0 or a negative beta went through)."""
    from bembed.training.align import AlignStage
    from bembed.training.config import AlignRun
    from bembed.training.mlm import MLMStage
    from bembed.training.trainer import Trainer

    cfg = load_config(PretrainRun, None, ["data.train=[{path: a.jsonl}]"])
    cfg.train.max_steps = 0
    with pytest.raises(ValueError, match="train.max_steps must be ≥ 1"):
        Trainer(None, cfg.train)
    cfg.train.max_steps, cfg.model.max_length = 1, 2
    with pytest.raises(ValueError, match="model.max_length must be ≥ 3"):
        MLMStage(cfg)
    cfg = load_config(AlignRun, None, ["model.init_from=m", "data.train=[{path: a.jsonl}]"])
    cfg.align.beta = -0.4
    with pytest.raises(ValueError, match="align.beta must be ≥ 0"):
        AlignStage(cfg)
    cfg.align.beta, cfg.data.train[0].max_rows = 0.4, 0
    with pytest.raises(ValueError, match="max_rows must be ≥ 1"):
        AlignStage(cfg)


def test_align_has_no_source_lang_field():
    """align.source_lang was accepted and did nothing: the first column is always the teacher's language."""
    from bembed.training.config import AlignRun

    with pytest.raises(ValueError, match="unknown key"):
        load_config(AlignRun, None, ["align.source_lang=de"])


def test_shipped_configs_load():
    names = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
    stages = {"pretrain": PretrainRun, "pairs": PairsRun}
    from bembed.training.config import AlignRun, MultitaskRun

    stages.update(multitask=MultitaskRun, align=AlignRun)
    for stage, cls in stages.items():
        for size in ("tiny", "base"):
            assert f"{stage}_{size}" in names
            cfg = load_config(cls, config_path(f"{stage}_{size}"))
            assert cfg.data.train, f"{stage}_{size} names no data"
    with pytest.raises(FileNotFoundError, match="no shipped config"):
        config_path("no_such_config")


# ---------------------------------------------------------------------------- masking
def _mask_batch(tokenizer, texts, seed=0, prob=0.3):
    table = word_start_table(tokenizer)
    specials = sorted(set(tokenizer.all_special_ids))
    random_ids = torch.tensor([i for i in range(len(tokenizer)) if i not in specials])
    out = []
    for n, text in enumerate(texts):
        ids = torch.tensor(tokenizer(text)["input_ids"])
        words = word_ids(ids, table, specials)
        masked, labels = whole_word_mask(ids, words, mask_prob=prob, mask_id=tokenizer.mask_token_id,
                                         random_ids=random_ids, generator=batching.generator(seed, n))
        out.append((ids, words, masked, labels))
    return out, specials


def test_whole_word_masking_never_splits_words_nor_masks_specials(tokenizer):
    rng = random.Random(0)
    # long invented words split into several BPE pieces: a split word would show up here
    texts = [" ".join(U.sentence(U.EN + U.DE + ["Donaudampfschifffahrt", "unbelievably"], rng, 20)) for _ in range(50)]
    results, specials = _mask_batch(tokenizer, texts)
    multi_piece_words = 0
    for ids, words, masked, labels in results:
        chosen = labels != -100
        for w in words.unique().tolist():
            if w < 0:
                continue
            in_word = words == w
            multi_piece_words += int(in_word.sum() > 1)
            assert chosen[in_word].all() or not chosen[in_word].any(), "a word was partly masked"
        special = torch.isin(ids, torch.tensor(specials))
        assert not chosen[special].any() and torch.equal(masked[special], ids[special])
        assert torch.equal(labels[chosen], ids[chosen])
        assert torch.equal(masked[~chosen], ids[~chosen])
        n_words = len(words[words >= 0].unique())
        assert chosen.any()
        assert abs(len(words[chosen].unique()) / n_words - 0.3) <= 0.5 / n_words + 1e-9  # round(0.3·n) words
    assert multi_piece_words > 50  # the test really covers multi-token words


def test_whole_word_masking_80_10_10(tokenizer):
    rng = random.Random(1)
    texts = [" ".join(U.sentence(U.EN, rng, 30)) for _ in range(200)]
    results, _ = _mask_batch(tokenizer, texts, seed=3)
    actions = {"mask": 0, "keep": 0, "other": 0}
    for ids, words, masked, labels in results:
        for w in words[labels != -100].unique().tolist():
            tokens = masked[words == w]
            if (tokens == tokenizer.mask_token_id).all():
                actions["mask"] += 1
            elif torch.equal(tokens, ids[words == w]):
                actions["keep"] += 1
            else:
                actions["other"] += 1
    total = sum(actions.values())
    assert total > 1500
    assert abs(actions["mask"] / total - 0.8) < 0.04
    assert abs(actions["keep"] / total - 0.1) < 0.03  # random draws that hit the same token are rare
    assert abs(actions["other"] / total - 0.1) < 0.03


def test_whole_word_masking_bad_input():
    g = torch.Generator()
    with pytest.raises(ValueError, match="mask_prob"):
        whole_word_mask(torch.zeros(4, dtype=torch.long), torch.zeros(4, dtype=torch.long), mask_prob=1.5,
                        mask_id=4, random_ids=torch.arange(5, 10), generator=g)
    with pytest.raises(ValueError, match="same shape|one shape"):
        whole_word_mask(torch.zeros(4, dtype=torch.long), torch.zeros(3, dtype=torch.long), mask_prob=0.3,
                        mask_id=4, random_ids=torch.arange(5, 10), generator=g)


# ---------------------------------------------------------------------------- STS losses
def test_pearson_loss_is_negative_pearson():
    cos = torch.rand(17, dtype=torch.float64) * 2 - 1
    gold = torch.rand(17, dtype=torch.float64) * 5
    expected = -np.corrcoef(cos.numpy(), gold.numpy())[0, 1]
    assert float(PearsonLoss()(cos, gold)) == pytest.approx(expected, abs=1e-12)
    # invariant to the gold scale and offset; perfect order gives −1
    assert float(PearsonLoss()(cos, 3 * gold + 7)) == pytest.approx(expected, abs=1e-12)
    assert float(PearsonLoss()(cos, 2 * cos + 1)) == pytest.approx(-1.0, abs=1e-12)
    cos.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda c: PearsonLoss()(c, gold), (cos,))


def test_pearson_loss_rejects_constant_gold_and_small_batches():
    with pytest.raises(ValueError, match="constant"):
        PearsonLoss()(torch.rand(8), torch.full((8,), 2.5))
    with pytest.raises(ValueError, match="at least 3"):
        PearsonLoss()(torch.rand(2), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="one shape"):
        PearsonLoss()(torch.rand(5), torch.rand(4))


def test_mse_and_cosent_losses():
    cos = torch.rand(9, dtype=torch.float64)
    gold = torch.tensor([0, 1, 2, 3, 4, 5, 1, 2, 3], dtype=torch.float64)
    assert float(MSELoss(5.0)(cos, gold)) == pytest.approx(float(((cos - gold / 5) ** 2).mean()))
    terms = [float(torch.exp(20 * (cos[j] - cos[i]))) for i in range(9) for j in range(9) if gold[i] > gold[j]]
    assert float(CoSENTLoss(20.0)(cos, gold)) == pytest.approx(float(np.log1p(sum(terms))), rel=1e-10)
    ordered = torch.linspace(-1, 1, 9, dtype=torch.float64)
    assert float(CoSENTLoss(20.0)(ordered, ordered)) < float(CoSENTLoss(20.0)(-ordered, ordered))
    assert sts_loss("none") is None
    with pytest.raises(ValueError, match="sts_loss"):
        sts_loss("pearsn")


def test_matryoshka_mean_is_the_mean_over_cut_and_renormalised_embeddings():
    g = torch.Generator().manual_seed(0)
    q, d = (torch.nn.functional.normalize(torch.randn(6, 16, dtype=torch.float64, generator=g), dim=-1)
            for _ in range(2))
    infonce = lambda a, b: torch.nn.functional.cross_entropy(a @ b.T / 0.05, torch.arange(6))  # noqa: E731
    cut = lambda e, k: torch.nn.functional.normalize(e[:, :k], dim=-1)  # noqa: E731
    expected = (infonce(q, d) + infonce(cut(q, 8), cut(d, 8)) + infonce(cut(q, 2), cut(d, 2))) / 3
    assert float(matryoshka_mean(infonce, (q, d), [16, 8, 2])) == pytest.approx(float(expected), rel=1e-12)
    assert float(matryoshka_mean(infonce, (q, d), [])) == float(infonce(q, d))
    q.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda q: matryoshka_mean(infonce, (q, d), [16, 4]), (q,))
    with pytest.raises(ValueError, match=r"\[32, 8\] exceeds the model's 16 embedding dimensions"):
        matryoshka_mean(infonce, (q, d), [32, 8])


# ---------------------------------------------------------------------------- schedule and batching
def test_lr_schedule_warmup_then_linear_decay():
    factors = [lr_factor(s, 4, 10) for s in range(10)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0]
    assert factors[4:] == pytest.approx([1.0, 5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6])


def test_each_stream_of_a_seed_is_its_own():
    """A stream is named by its keys: the same keys give the same numbers, any other keys (reordered, or of
    another length) others; an epoch's shuffle reads its stage's stream."""
    def draw(*keys):
        return torch.randint(0, 2**31, (4,), generator=batching.generator(0, *keys)).tolist()

    assert draw("task", 0, 1) == draw("task", 0, 1)
    streams = [draw(*keys) for keys in [("task", 0, 1), ("task", 1, 0), ("task", 0), ("task draw", 0, 1), (0, 1)]]
    assert len({tuple(s) for s in streams}) == len(streams)
    assert draw() != torch.randint(0, 2**31, (4,), generator=batching.generator(1)).tolist()
    assert batching.epoch_indices(40, 8, 0, 5, ("a",)) == batching.epoch_indices(40, 8, 0, 5, ("a",))
    assert batching.epoch_indices(40, 8, 0, 5, ("a",)) != batching.epoch_indices(40, 8, 0, 5, ("b",))
    texts = [(f"q{i}", f"d{i}") for i in range(40)]
    assert batching.DistinctBatches(texts, 8, 5, stream=("a",))(0) != batching.DistinctBatches(texts, 8, 5)(0)


def test_distinct_batches_share_no_text_and_are_a_pure_function_of_the_index():
    """Duplicate texts in an InfoNCE batch are false negatives: no two rows of a batch may share one, and
    batch i must not depend on which batches were drawn before (resume reads batch i directly)."""
    rng = random.Random(0)
    texts = [(f"q{rng.randrange(15)}", f"d{rng.randrange(40)}") for _ in range(60)]
    sampler = batching.DistinctBatches(texts, 8, seed=3)
    batches = [sampler(i) for i in range(30)]  # several epochs
    for batch in batches:
        assert len(batch) == 8 and len({t for i in batch for t in texts[i]}) == 16
    epoch = batches[:sampler.counts[0]]
    assert len({i for b in epoch for i in b}) == 8 * len(epoch)  # an epoch uses every row at most once
    assert batches[sampler.counts[0]] != batches[0]  # the next epoch reshuffles
    assert [batching.DistinctBatches(texts, 8, seed=3)(i) for i in (29, 0, 17)] == [batches[29], batches[0], batches[17]]
    with pytest.raises(ValueError, match="distinct texts"):
        batching.DistinctBatches([("same", f"d{i}") for i in range(20)], 2, seed=0)(0)
    with pytest.raises(ValueError, match="the data has 10 rows, fewer than one global micro-batch of 32"):
        batching.DistinctBatches(texts[:10], 32, seed=0)(0)  # it blamed repeated texts


def test_epoch_batches_cover_the_data_and_shards_partition():
    seen = [i for k in range(5) for i in batching.epoch_indices(23, 4, k, seed=1)]
    assert len(set(seen)) == 20  # one epoch: 5 disjoint batches (3 rows dropped)
    assert batching.epoch_indices(23, 4, 5, seed=1) != batching.epoch_indices(23, 4, 0, seed=1)  # next epoch reshuffles
    rows = batching.epoch_indices(23, 8, 2, seed=0)
    assert batching.shard(rows, 0, 2) + batching.shard(rows, 1, 2) == rows
    with pytest.raises(ValueError, match="fewer than one"):
        batching.epoch_indices(3, 4, 0, seed=0)


def test_loss_settings_reach_the_losses_and_a_short_sequence_still_predicts_a_word(tokenizer):
    """(Mutation review.) sts_loss passes score_max and the CoSENT scale on; round(3 · 0.15) is 0 words, yet a
    sequence must predict at least one (otherwise short rows teach nothing); a word right after a special token
    mid-sequence starts anew ("a</s>b" is two words, not one)."""
    assert sts_loss("mse", score_max=1.0).score_max == 1.0
    assert sts_loss("cosent", cosent_scale=7.0).scale == 7.0
    cos, gold = torch.tensor([0.9, 0.1]), torch.tensor([1.0, 0.0])
    assert float(sts_loss("mse", score_max=1.0)(cos, gold)) == pytest.approx(0.01)

    ids = torch.tensor(tokenizer("a b c")["input_ids"])
    words = word_ids(ids, word_start_table(tokenizer), tokenizer.all_special_ids)
    _, labels = whole_word_mask(ids, words, mask_prob=0.15, mask_id=tokenizer.mask_token_id,
                                random_ids=torch.arange(10, 20), generator=torch.Generator().manual_seed(0))
    assert (labels != -100).sum() >= 1

    eos = tokenizer.eos_token_id
    a, b = tokenizer("haus", add_special_tokens=False)["input_ids"], tokenizer("baum", add_special_tokens=False)["input_ids"]
    ids = torch.tensor([tokenizer.bos_token_id, *a, eos, *b, eos])
    words = word_ids(ids, word_start_table(tokenizer), tokenizer.all_special_ids)
    assert words[1 + len(a) + 1] != words[1]  # "baum" (no space mark) begins a word after </s>


def test_rows_passed_over_go_back_to_the_front_in_their_order():
    """(Mutation review.) A clashing row waits for the next batch at the front of the queue, in the order it
    came, as sentence-transformers' NoDuplicatesBatchSampler does; at the back it would wait a whole epoch."""
    from collections import deque

    texts = [("a", "x"), ("a", "y"), ("a", "z"), ("b", "w"), ("c", "v"), ("d", "u")]
    rows = deque(range(6))
    assert batching.first_distinct(rows, texts, 3) == [0, 3, 4]
    assert list(rows) == [1, 2, 5]
    assert batching.first_distinct(rows, texts, 3) == [1, 5]
    assert list(rows) == [2]
