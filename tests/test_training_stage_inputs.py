"""What each training stage takes in, checked against what it should be: the tokenizer of an init_from folder
(another one refused; WordPiece and Metaspace tokenizers as well as byte-level BPE), the loss settings of the
contrastive stages, and the MLM and multi-task batches. The stages learning: test_training_stages.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bembed.training.config import ModelConfig, MultitaskRun, PairsRun, PretrainRun, load_config

import training_utils as U
from stage_fixtures import files, fit, mlm_run, model_overrides  # noqa: F401


single_thread = pytest.fixture(autouse=True)(U.one_thread)


def test_a_tokenizer_other_than_the_init_from_folders_is_refused(files, tmp_path):
    """`bembed pretrain --config pretrain_tiny model.init_from=FOLDER` kept the shipped config's model.tokenizer,
    which won over the folder's: when it did not exist a new tokenizer was trained, and the folder's weights
    trained on under unrelated ids, silently. Every stage now takes the folder's tokenizer; another one is
    refused, the same one saved elsewhere accepted."""
    import shutil

    from bembed.training.encoder import load_encoder
    from bembed.training.mlm import MLMStage

    first, cfg = mlm_run(files, tmp_path / "first", 1)
    fit(first, cfg)
    folder = tmp_path / "first" / "final"
    from bembed.tokenizer import train_bilingual_tokenizer

    other = tmp_path / "other"  # trained on other text: other ids for the same tokens
    train_bilingual_tokenizer([" ".join(reversed(U.EN))] * 50, [" ".join(U.DE[::2])] * 50, 300, output_dir=other,
                              min_frequency=1)
    same = tmp_path / "same"
    shutil.copytree(files["tok"], same)
    data = f"data.train=[{{path: {files['en']}, lang: en}}, {{path: {files['de']}, lang: de}}]"

    def pretrain(*items):
        return MLMStage(load_config(PretrainRun, None, [data, f"model.init_from={folder}", "model.max_length=24",
                                                        *U.train_overrides(tmp_path / "second", 1), *items]))

    for tokenizer in (other, tmp_path / "missing"):
        with pytest.raises((ValueError, FileNotFoundError), match="model.tokenizer"):
            pretrain(f"model.tokenizer={tokenizer}")
        with pytest.raises((ValueError, FileNotFoundError), match="model.tokenizer"):
            load_encoder(ModelConfig(init_from=str(folder), tokenizer=str(tokenizer)))
    assert not (tmp_path / "missing").exists() and not (tmp_path / "second" / "tokenizer").exists()
    assert pretrain(f"model.tokenizer={same}").tokenizer.get_vocab() == first.tokenizer.get_vocab()
    assert load_encoder(ModelConfig(init_from=str(folder), tokenizer=str(same)))[1].get_vocab() == \
        first.tokenizer.get_vocab()

    # a folder without a tokenizer needs model.tokenizer, and one with fewer ids than the tokenizer is refused
    bare = tmp_path / "bare"
    shutil.copytree(folder, bare)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (bare / name).unlink()
    with pytest.raises(ValueError, match="holds no tokenizer.*give model.tokenizer"):
        load_encoder(ModelConfig(init_from=str(bare)))
    load_encoder(ModelConfig(init_from=str(bare), tokenizer=str(same)))
    big = tmp_path / "big"
    words = [f"w{i}x{i * 7}" for i in range(3000)]
    train_bilingual_tokenizer(words, words[::-1], 1200, output_dir=big, min_frequency=1)
    with pytest.raises(ValueError, match=r"the tokenizer has \d+ ids, the model's embeddings \d+"):
        load_encoder(ModelConfig(init_from=str(bare), tokenizer=str(big)))


def test_mlm_runs_on_wordpiece_and_metaspace_tokenizers(files, tmp_path):
    """A folder with a BERT WordPiece tokenizer (jina-embeddings-v2-base-en's kind: [CLS] … [SEP], "##"
    continuations) failed at the first sequence (no bos_token_id); a Metaspace ("▁") one trained with whole
    sentences counted as one word. Words now come from each tokenizer's own marks, as its pre-tokenizer splits."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from bembed.model import JinaBertConfig, JinaBertForMaskedLM
    from bembed.tokenizer import word_ids, word_start_table
    from bembed.training.mlm import MLMStage

    corpus = [json.loads(line)["text"] for name in ("en", "de") for line in files[name].read_text().splitlines()]
    wordpiece = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    wordpiece.normalizer = normalizers.BertNormalizer(lowercase=True)
    wordpiece.pre_tokenizer, wordpiece.decoder = pre_tokenizers.BertPreTokenizer(), decoders.WordPiece()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    wordpiece.train_from_iterator(corpus, trainers.WordPieceTrainer(vocab_size=120, special_tokens=specials,
                                                                    show_progress=False))
    wordpiece.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[
        ("[CLS]", wordpiece.token_to_id("[CLS]")), ("[SEP]", wordpiece.token_to_id("[SEP]"))])
    metaspace = Tokenizer(models.BPE(unk_token="<unk>"))
    metaspace.pre_tokenizer, metaspace.decoder = pre_tokenizers.Metaspace(), decoders.Metaspace()
    specials_sp = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    metaspace.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=120, special_tokens=specials_sp,
                                                              show_progress=False))
    metaspace.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    kinds = {"wordpiece": (wordpiece, dict(cls_token="[CLS]", sep_token="[SEP]", pad_token="[PAD]", unk_token="[UNK]",
                                           mask_token="[MASK]"), ("[CLS]", "[SEP]")),
             "metaspace": (metaspace, dict(bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
                                           mask_token="<mask>"), ("<s>", "</s>"))}
    for name, (backend, special_tokens, (first, last)) in kinds.items():
        tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, **special_tokens)
        text = "das haus am fluss ist alt the window is green"
        encoding = tokenizer(text)
        got = word_ids(torch.tensor(encoding["input_ids"]), word_start_table(tokenizer), tokenizer.all_special_ids)
        reference = torch.tensor([-1 if w is None else w + 1 for w in encoding.word_ids()])
        assert torch.equal(got, reference), name  # the pre-tokenizer's own words
        folder = tmp_path / name
        model = JinaBertForMaskedLM(JinaBertConfig(**U.TINY_MODEL, vocab_size=len(tokenizer),
                                                   pad_token_id=tokenizer.pad_token_id))
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        cfg = load_config(PretrainRun, None, [f"data.train=[{{path: {files['en']}, lang: en}}, {{path: {files['de']}, lang: de}}]",
                                              f"model.init_from={folder}", "model.max_length=12",
                                              *U.train_overrides(tmp_path / f"run_{name}", 3, batch=8)])
        stage = MLMStage(cfg)
        sequences = [s for group in stage.sequences.values() for s in group]
        assert all(len(s) <= 12 for s in sequences)
        assert all(s[0] == tokenizer.convert_tokens_to_ids(first) and s[-1] == tokenizer.convert_tokens_to_ids(last)
                   for s in sequences), name
        batch = stage.batch(0, 0, 1, 8).tensors
        masked = batch["labels"] != -100
        assert 0 < masked.sum() < batch["attention_mask"].sum()
        fit(stage, cfg)


def test_contrastive_stages_apply_their_settings(files, tmp_path):
    """The stages' loss settings were only ever run at their defaults (mutation review: a temperature applied
    twice, bidirectional forced on, the prefixes swapped or dropped, one hard negative too few all passed). Each
    stage's loss on its first batch must be the reference InfoNCE with the configured settings, on texts that
    carry the configured prefixes."""
    from bembed.training.encoder import embed
    from bembed.training.multitask import MultitaskStage
    from bembed.training.pairs import PairStage
    from bembed_ext.ops.contrastive_loss import contrastive_loss_reference

    def check_first_batch(stage, temperature, bidirectional):
        torch.manual_seed(0)
        t = stage.batch(0, 0, 1, 8).tensors
        for ids, prefix in ((t["q_ids"], "q: "), (t["d_ids"], "p: ")):
            assert all(s.startswith(prefix) for s in stage.tokenizer.batch_decode(ids, skip_special_tokens=True))
        with torch.no_grad():
            got, _ = stage.loss(t)
            want = contrastive_loss_reference(embed(stage.model, t["q_ids"], t["q_mask"]),
                                              embed(stage.model, t["d_ids"], t["d_mask"]), temperature=temperature,
                                              bidirectional=bidirectional)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        return t

    common = [*model_overrides(files), *U.train_overrides(tmp_path / "out", 1, batch=8)]
    for bidirectional in (True, False):
        cfg = load_config(PairsRun, None, [f"data.train=[{{path: {files['pairs']}}}]", *common,
                                           "pairs.temperature=0.2", f"pairs.bidirectional={bidirectional}",
                                           "pairs.query_prefix='q: '", "pairs.passage_prefix='p: '"])
        check_first_batch(PairStage(cfg), 0.2, bidirectional)

    cfg = load_config(MultitaskRun, None, [f"data.train=[{{path: {files['triples']}}}]", *common,
                                           "multitask.temperature=0.3", "multitask.num_negatives=2",
                                           "multitask.query_prefix='q: '", "multitask.passage_prefix='p: '"])
    t = check_first_batch(MultitaskStage(cfg), 0.3, False)
    assert t["q_ids"].shape[0] == 8 and t["d_ids"].shape[0] == 8 * 3  # positives, then 2 hard negatives each


def test_mlm_batches_mask_padding_draw_no_special_token_and_cover_each_language(files, tmp_path):
    """(Mutation review.) Padding is outside the attention mask; the "random token" replacement never draws a
    special token (a <mask> or <pad> there teaches nothing true); with alternating languages, one epoch of each
    language's batches reads each of its sequences once."""
    stage, _ = mlm_run(files, tmp_path, 1, "train.batch_size=8")
    assert not set(stage.random_ids.tolist()) & set(stage.special_ids)
    assert len(stage.random_ids) == len(stage.tokenizer) - len(stage.special_ids)
    pad = stage.tokenizer.pad_token_id
    seen = {group: [] for group in stage.groups}
    per_epoch = {g: len(stage.sequences[g]) // 8 for g in stage.groups}
    for index in range(len(stage.groups) * max(per_epoch.values())):
        group = stage.groups[index % len(stage.groups)]
        batch = stage.batch(index, 0, 1, 8)
        t = batch.tensors
        assert batch.tokens == int(t["attention_mask"].sum())
        lengths = t["attention_mask"].sum(1)
        for row, n in enumerate(lengths.tolist()):
            assert (t["input_ids"][row, n:] == pad).all() and not (t["attention_mask"][row, n:]).any()
        if index // len(stage.groups) < per_epoch[group]:
            seen[group] += [int(r) for r in batch.source.split("sequences ")[1].strip("[]").split(", ")]
    for group in stage.groups:
        assert len(seen[group]) == len(set(seen[group])) == per_epoch[group] * 8, group


def test_no_two_tasks_or_language_groups_read_their_rows_in_one_order(files, tmp_path):
    """(Module review.) Every retrieval task shuffled its epochs with the stream the task draws used, so two
    retrieval sources of one size read their rows in the same order (batch k of one held the rows at the places
    of batch k of the other: pairs of parallel files came as translations of each other), and so did MLM
    language groups of one size. Each task and each group has its own stream now."""
    from bembed.training.multitask import MultitaskStage

    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
    first, second = U.pair_file(tmp_path / "a", n=64, seed=7), U.pair_file(tmp_path / "b", n=64, seed=8)
    cfg = load_config(MultitaskRun, None, [f"data.train=[{{path: {first}}}, {{path: {second}}}]",
                                           *model_overrides(files), *U.train_overrides(tmp_path / "mt", 1, batch=16)])
    stage = MultitaskStage(cfg)
    assert [len(rows) for _, _, rows in stage.tasks] == [64, 64]
    orders = [[stage.batches[task](k) for k in range(3)] for task in (0, 1)]
    assert orders[0] != orders[1]
    assert orders[0] == [MultitaskStage(cfg).batches[0](k) for k in range(3)]  # still a function of the seed

    stage, _ = mlm_run(files, tmp_path / "mlm", 1, "train.batch_size=8")
    assert len(stage.groups) == 2
    stage.sequences = {group: stage.sequences[stage.groups[0]] for group in stage.groups}  # one size for both
    picked = [stage.batch(index, 0, 1, 8).source.split("sequences ")[1] for index in (0, 1)]
    assert picked[0] != picked[1]


def test_mlm_cuts_documents_past_the_tokenizers_limit_without_its_warning(files, tmp_path, caplog):
    """The quickstart's log said "Token indices sequence length is longer than the specified maximum sequence
    length (8276 > 8192)... will result in indexing errors" when MLM read a long document: it is cut into
    sequences of max_length, as meant."""
    stage, cfg = mlm_run(files, tmp_path, 1)
    stage.tokenizer.model_max_length = 16
    caplog.clear()
    sequences = stage._chunk([" ".join(U.EN * 4)])
    assert len(sequences) > 1 and max(map(len, sequences)) == cfg.model.max_length
    assert "Token indices" not in caplog.text


def test_multitask_draws_unweighted_sources_by_their_size(files, tmp_path):
    """(Mutation review.) Without `weight`, a source is drawn in proportion to its rows: 256 pairs against
    128 triples come 2:1 (a weight of 1 each would draw them 1:1)."""
    from bembed.training.multitask import MultitaskStage

    cfg = load_config(MultitaskRun, None, [f"data.train=[{{path: {files['pairs']}}}, {{path: {files['triples']}}}]",
                                           *model_overrides(files), *U.train_overrides(tmp_path, 1, batch=8)])
    stage = MultitaskStage(cfg)
    assert [len(rows) for _, _, rows in stage.tasks] == [256, 128]
    draws = [stage._schedule(i)[0] for i in range(3000)]
    assert draws.count(0) / draws.count(1) == pytest.approx(2.0, rel=0.1)


def test_a_batch_names_its_rows_by_source_and_their_number_there(files, tmp_path):
    """A NaN report named a batch's rows by their index in all sources read together (after the rows a
    multi-task source leaves out): no row of any file. Each source now names the numbers of its own rows."""
    import re

    from bembed.training.multitask import MultitaskStage
    from bembed.training.pairs import PairStage

    for folder in ("a", "b", "t"):
        (tmp_path / folder).mkdir()
    first, second = U.pair_file(tmp_path / "a", n=20, seed=7), U.pair_file(tmp_path / "b", n=30, seed=8)
    cfg = load_config(PairsRun, None, [f"data.train=[{{path: {first}}}, {{path: {second}}}]",
                                       *model_overrides(files), *U.train_overrides(tmp_path / "run", 1, batch=40)])
    stage = PairStage(cfg)
    batch = stage.batch(0, 0, 1, 40)
    named = re.findall(r"(\S+) rows \[([\d, ]+)\]", batch.source)
    assert sorted(path for path, _ in named) == sorted([str(first), str(second)])
    lines = {path: Path(path).read_text().splitlines() for path, _ in named}
    queries = {json.loads(lines[path][int(n) - 1])["query"] for path, numbers in named for n in numbers.split(", ")}
    decoded = {stage.tokenizer.decode(row, skip_special_tokens=True).strip() for row in batch.tensors["q_ids"]}
    assert decoded == {" ".join(q.split()) for q in queries}

    rows = [json.loads(line) for line in U.triple_file(tmp_path / "t").read_text().splitlines()]
    rows[0]["negatives"] = []  # left out by a stage that trains with hard negatives: the numbers after it keep
    triples = U.write_jsonl(tmp_path / "t" / "gaps.jsonl", rows)
    cfg = load_config(MultitaskRun, None, [f"data.train=[{{path: {triples}}}]", *model_overrides(files),
                                           *U.train_overrides(tmp_path / "mt", 1, batch=16)])
    stage = MultitaskStage(cfg)
    batch = stage.batch(0, 0, 1, 16)
    numbers = [int(n) for n in re.search(r"rows \[([\d, ]+)\]", batch.source).group(1).split(", ")]
    assert 1 not in numbers
    want = {" ".join(rows[n - 1]["query"].split()) for n in numbers}
    query_ids = batch.tensors["q_ids"]
    assert {stage.tokenizer.decode(r, skip_special_tokens=True).strip() for r in query_ids} == want
