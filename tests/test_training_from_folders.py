"""Stages that start from an existing model folder: alignment with a frozen teacher, students that are not
JinaBERT (any HF AutoModel folder), position tables that bound the length, the older sentence-transformers
layout, and folders refused before any step (pickles, pooling other than the mean)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

import bembed
from bembed.training.config import AlignRun, ModelConfig, PairsRun, PretrainRun, load_config

import training_utils as U
from stage_fixtures import files, fit, mlm_run  # noqa: F401


single_thread = pytest.fixture(autouse=True)(U.one_thread)


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
    history = fit(stage, cfg)
    after = cross_lingual_distance(stage.model, tok, held)
    mismatched = cross_lingual_distance(stage.model, tok, [(a, held[(i + 1) % 64][1]) for i, (a, _) in enumerate(held)])
    assert after < 0.5 * before, (before, after)
    assert after < 0.7 * mismatched  # translations closer than non-translations, not a collapse
    assert history[0]["teacher_distance"] == pytest.approx(0.0, abs=1e-6)  # teacher = student at the start
    exported, _ = load_encoder(ModelConfig(init_from=str(tmp_path / "run" / "final")))
    assert type(exported).__name__ == "BertModel"


def test_model_lengths_past_a_position_table_are_refused_or_cut_for_the_teacher(files, tmp_path):
    """A model.max_length past an HF model's position table failed at the first long batch, mid-run; an align
    teacher with a shorter table than the student's length did the same. The student is refused at start;
    the teacher reads as far as its table reaches, as sentence-transformers would cut it."""
    from transformers import XLMRobertaConfig, XLMRobertaModel

    from bembed.encode import Embedder
    from bembed.training.align import AlignStage, cross_lingual_distance
    from bembed.training.encoder import load_encoder, position_limit
    from bembed.training.pairs import PairStage

    student = _tiny_hf_student(files, tmp_path / "student")  # a 64-row position table
    model, tokenizer = load_encoder(ModelConfig(init_from=str(student)))
    assert position_limit(model) == 64
    roberta = XLMRobertaModel(XLMRobertaConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                                               num_attention_heads=2, intermediate_size=32,
                                               max_position_embeddings=66, pad_token_id=1))
    assert position_limit(roberta) == 64  # its positions start at padding_idx + 1
    with pytest.raises(ValueError, match=r"model.max_length=100: the model of model.init_from takes at most 64"):
        PairStage(load_config(PairsRun, None, [f"data.train=[{{path: {files['pairs']}}}]",
                                               f"model.init_from={student}", "model.max_length=100",
                                               *U.train_overrides(tmp_path / "pairs", 1)]))

    first, _ = mlm_run(files, tmp_path / "mlm", 1, hidden_size=32, intermediate_size=64)
    assert position_limit(first.model.bert) is None  # ALiBi: no table
    Embedder(first.model.bert, first.tokenizer).save_pretrained(tmp_path / "jina")
    rng = random.Random(5)
    long_rows = [{"query": " ".join(U.sentence(U.EN, rng, 90)), "document": " ".join(U.sentence(U.EN, rng, 90))}
                 for _ in range(32)]
    cfg = load_config(AlignRun, None, [f"data.train=[{{path: {U.write_jsonl(tmp_path / 'long.jsonl', long_rows)}}}]",
                                       f"model.init_from={tmp_path / 'jina'}", f"align.teacher={student}",
                                       "model.max_length=96", *U.train_overrides(tmp_path / "align", 1, batch=8)])
    stage = AlignStage(cfg)
    tensors = stage.batch(0, 0, 1, 8).tensors
    assert tensors["en_ids"].shape[1] == 96 and tensors["t_ids"].shape[1] == 64
    fit(stage, cfg)

    stage.model.train()
    cross_lingual_distance(stage.model, stage.tokenizer, [("a b", "c d")])
    assert stage.model.training  # given back in its mode (it was left in eval mode)
    with pytest.raises(ValueError, match="at least one"):
        cross_lingual_distance(stage.model, stage.tokenizer, [])


def test_align_checks_its_teacher_and_keeps_the_students_prompts(files, tmp_path):
    """A teacher of another width crashed at step 1; a JinaBERT student lost its query/passage prompts."""
    from bembed.encode import Embedder
    from bembed.training.align import AlignStage

    stage, cfg = mlm_run(files, tmp_path / "mlm", 1)
    student = Embedder(stage.model.bert, stage.tokenizer, prompts={"query": "query: ", "document": "passage: "},
                       default_prompt_name="query", max_seq_length=64)
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
    fit(AlignStage(cfg), cfg)
    aligned = Embedder.from_pretrained(tmp_path / "run" / "final", device="cpu")
    assert aligned.prompts == student.prompts  # and how it is used, which alignment does not change:
    assert (aligned.default_prompt_name, aligned.max_seq_length) == ("query", 64)


def test_align_pairs_each_student_prompt_with_the_teachers_of_that_name_or_alias():
    """A bembed folder's "document" copies its "passage"; an E5 teacher has only "passage"; a multitask export
    has only "document": each student prefix gets the teacher's prompt under any name the student gives it, a
    document prompt under any document alias."""
    from bembed.training.align import prompt_turns

    e5 = {"query": "query: ", "passage": "passage: "}
    saved = {**e5, "document": "passage: "}
    assert prompt_turns(saved, e5) == [("", ""), ("passage: ", "passage: "), ("query: ", "query: ")]
    assert prompt_turns({"query": "q: ", "document": "d: "}, e5) == [("", ""), ("d: ", "passage: "), ("q: ", "query: ")]
    assert prompt_turns({"query": "q: ", "classify": "c: ", "blank": ""}, {"corpus": "x"}) == [
        ("", ""), ("c: ", ""), ("q: ", "")]


def test_align_trains_under_each_of_the_students_prompts_and_none(files, tmp_path):
    """Rows take turns over no prompt and each prompt, one prompt on both sides of a pair and the teacher's prompt
    of the same name (none where it has no such prompt); align.prompts=false trains without them."""
    from bembed.encode import Embedder
    from bembed.training.align import AlignStage

    stage, _ = mlm_run(files, tmp_path / "mlm", 1)
    Embedder(stage.model.bert, stage.tokenizer, prompts={"query": "query: ", "document": "passage: ", "empty": ""}
             ).save_pretrained(tmp_path / "student")
    Embedder(stage.model.bert, stage.tokenizer, prompts={"query": "question: "}).save_pretrained(tmp_path / "teacher")
    args = [f"data.train=[{{path: {files['parallel']}}}]", f"model.init_from={tmp_path / 'student'}",
            "model.max_length=24", *U.train_overrides(tmp_path / "run", 1, batch=16)]

    def sides(extra, index=0):
        aligner = AlignStage(load_config(AlignRun, None, [*args, *extra]))
        t = aligner.batch(index, 0, 1, 16).tensors
        text = lambda ids: [aligner.tokenizer.decode(row, skip_special_tokens=True) for row in ids]  # noqa: E731
        return text(t["en_ids"]), text(t["xx_ids"]), text(t["t_ids"])

    en, xx, teacher = sides([f"align.teacher={tmp_path / 'teacher'}"])
    starts = ["query:" if e.startswith("query:") else "passage:" if e.startswith("passage:") else "" for e in en]
    assert sorted(set(starts)) == ["", "passage:", "query:"]  # the empty prompt is no turn of its own
    for start, e, x, t in zip(starts, en, xx, teacher):
        assert x.startswith(start) and (start == "" or not x.startswith(start + " " + start))
        assert t.startswith("question:") == (start == "query:") and not t.startswith("passage:")
        body, teacher_body = e.removeprefix(start).strip(), t.removeprefix("question:").strip()
        assert body.startswith(teacher_body) or teacher_body.startswith(body)  # cut at 24 tokens, prompt included
    assert sides([f"align.teacher={tmp_path / 'teacher'}"], 1)[0] != en  # another batch, other turns
    Embedder(stage.model.bert, stage.tokenizer, prompts={"query": "query: ", "passage": "passage: ",
                                                         "document": "passage: "}).save_pretrained(tmp_path / "e5")
    e5 = AlignStage(load_config(AlignRun, None, [*args, f"model.init_from={tmp_path / 'e5'}"]))
    assert [student for student, _ in e5.prefixes] == ["", "passage: ", "query: "]  # one turn per distinct prompt
    en, xx, teacher = sides(["align.prompts=false"])
    assert not any(e.startswith(("query:", "passage:")) for e in en + xx) and teacher == en


def _as_sentence_transformers_folder(folder: Path, max_seq_length: int) -> Path:
    """The module files sentence-transformers saves beside a transformer: mean pooling, Normalize, a length."""
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 32,
                                                                   "pooling_mode_mean_tokens": True}))
    (folder / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]))
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": max_seq_length}))
    return folder


def test_stages_start_from_the_older_sentence_transformers_layout(files, tmp_path):
    """An older sentence-transformers folder keeps its transformer in 0_Transformer/ (as the Embedder reads it):
    training said "no config.json". Now every stage reads it from there, and an export puts the transformer at
    its root, with a modules.json that says so (a copied one pointed at a 0_Transformer/ the export lacks)."""
    from encode_fixtures import older_layout

    from bembed.encode import Embedder
    from bembed.training.encoder import embed, load_encoder, tokenize
    from bembed.training.mlm import MLMStage
    from bembed.training.pairs import PairStage

    student = _as_sentence_transformers_folder(_tiny_hf_student(files, tmp_path / "student"), max_seq_length=20)
    old = older_layout(student, tmp_path / "old")
    assert not (old / "config.json").exists()
    model, tokenizer = load_encoder(ModelConfig(init_from=str(old)))
    want, _ = load_encoder(ModelConfig(init_from=str(student)))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), want.state_dict().values()))
    assert tokenizer.get_vocab() == load_encoder(ModelConfig(init_from=str(student)))[1].get_vocab()

    cfg = load_config(PairsRun, None, [f"data.train=[{{path: {files['pairs']}}}]", f"model.init_from={old}",
                                       "model.max_length=24", *U.train_overrides(tmp_path / "pairs", 1)])
    stage = PairStage(cfg)
    fit(stage, cfg)
    final = tmp_path / "pairs" / "final"
    modules = json.loads((final / "modules.json").read_text())
    assert modules[0]["path"] == "" and (final / "config.json").is_file() and (final / "1_Pooling").is_dir()
    assert json.loads((final / "sentence_bert_config.json").read_text())["max_seq_length"] == 20
    st = pytest.importorskip("sentence_transformers").SentenceTransformer(str(final), device="cpu")
    texts = ["the house garden", "das haus"]
    mine = embed(stage.model.eval(), **tokenize(stage.tokenizer, texts, 20))
    assert st.max_seq_length == 20
    assert torch.allclose(st.encode(texts, convert_to_tensor=True), mine, atol=1e-5)

    first, _ = mlm_run(files, tmp_path / "mlm", 1)  # a JinaBERT folder of the older layout, through MLM too
    Embedder(first.model.bert, first.tokenizer).save_pretrained(tmp_path / "jina")
    jina = older_layout(tmp_path / "jina", tmp_path / "jina_old")
    cfg = load_config(PretrainRun, None, [f"data.train=[{{path: {files['en']}, lang: en}}, {{path: {files['de']}, lang: de}}]",
                                          f"model.init_from={jina}", "model.max_length=24",
                                          *U.train_overrides(tmp_path / "mlm2", 1)])
    again = MLMStage(cfg)
    assert torch.equal(again.model.bert.embeddings.word_embeddings.weight,
                       first.model.bert.embeddings.word_embeddings.weight)
    assert again.tokenizer.get_vocab() == first.tokenizer.get_vocab()


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


def test_a_folder_that_embeds_otherwise_than_mean_pooling_is_refused(files, tmp_path):
    """A sentence-transformers folder asking for CLS pooling (or a Dense layer, lowercasing) is refused by
    Embedder.from_pretrained, but the training stages took it and trained mean-pooled embeddings, dropping the
    Dense layer from the export without a word."""
    from bembed.training.encoder import load_encoder

    student = _tiny_hf_student(files, tmp_path / "student")
    (student / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    (student / "1_Pooling").mkdir()
    for mean, cls in ((True, False), (False, True)):
        (student / "1_Pooling" / "config.json").write_text(json.dumps(
            {"word_embedding_dimension": 32, "pooling_mode_mean_tokens": mean, "pooling_mode_cls_token": cls}))
        if mean:
            load_encoder(ModelConfig(init_from=str(student)))
    with pytest.raises(ValueError, match=r"model.init_from: .*pooling is \['cls_token'\]"):
        load_encoder(ModelConfig(init_from=str(student)))
    with pytest.raises(ValueError, match=r"align.teacher: .*pooling is \['cls_token'\]"):
        load_encoder(ModelConfig(init_from=str(student)), key="align.teacher")
