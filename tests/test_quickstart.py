"""`bembed quickstart` end to end on tiny generated data: a 1-layer model, a few steps per stage. It must
write the model folder (HF + sentence-transformers), the evaluation table, the loss PNG and the summary,
and a run interrupted in stage 2 must resume there, leaving the finished steps alone. Settings refused before
anything runs: test_quickstart_settings.py; settings changed on resume: test_quickstart_steps.py."""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import pytest
import torch

pytest.importorskip("datasets")
pytest.importorskip("mteb")
pytest.importorskip("matplotlib")

from bembed import quickstart as qs  # noqa: E402
from bembed.commands.quickstart import parse_overrides  # noqa: E402
from bembed.quickstart_eval import bitext_verdict  # noqa: E402

import training_utils as U  # noqa: E402

TINY = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
        "hidden_dropout_prob": 0.0, "max_position_embeddings": 512}


def _built_pair(root, n_docs: int = 60, seed: int = 0):
    """A stand-in for `bembed data build --pair en-de`: every set with its columns and three splits."""
    from datasets import Dataset, DatasetDict

    rng = random.Random(seed)
    folder = root / "en-de"
    sets: dict[str, dict[str, list]] = {}

    def add(name, split, row):
        sets.setdefault(name, {"train": [], "validation": [], "test": []})[split].append(row)

    for d in range(n_docs):
        split = "test" if d % 5 == 0 else "validation" if d % 5 == 1 else "train"
        doc = f"doc{d}"
        sentences = [U.sentence(U.EN, rng, 6) for _ in range(4)]
        german = [U.translate(s) for s in sentences]
        en_text, de_text = (" ".join(s) + "." for s in sentences), (" ".join(s) + "." for s in german)
        add("mono_en", split, {"doc_id": doc, "source": "gen", "title": doc, "text": "\n\n".join(en_text)})
        add("mono_de", split, {"doc_id": doc, "source": "gen", "title": doc, "text": "\n\n".join(de_text)})
        for s, g in zip(sentences, german):
            add("parallel", split, {"src": " ".join(s), "tgt": " ".join(g), "src_lang": "en", "tgt_lang": "de",
                                    "source": "gen", "doc_id": doc})
            add("pairs", split, {"anchor": " ".join(s[:3]), "positive": " ".join(s), "kind": "title_body",
                                 "lang": "en", "source": "gen", "doc_id": doc})
        for q, dl, body in (("en", "en", sentences), ("de", "de", german), ("en", "de", german)):
            query = " ".join(sentences[0][:2]) if q == "en" else " ".join(german[0][:2])
            add("retrieval", split, {"query": query, "positive": " ".join(body[0]),
                                     "negatives": [" ".join(body[1]), " ".join(body[2])], "query_lang": q,
                                     "doc_lang": dl, "source": "gen", "doc_id": doc})
        for level, (a, b) in ((5, (sentences[0], german[0])), (0, (sentences[1], german[3])),
                              (1, (sentences[2], german[0])), (3, (sentences[3], german[3][:4]))):
            add("sts_constructed", split, {"sentence1": " ".join(a), "sentence2": " ".join(b), "score": float(level),
                                           "level": level, "lang1": "en", "lang2": "de", "doc_id": doc,
                                           "origin": "generated"})
    counts = {}
    for name, splits in sets.items():
        DatasetDict({s: Dataset.from_list(rows) for s, rows in splits.items()}).save_to_disk(str(folder / name))
        counts[name] = {s: len(rows) for s, rows in splits.items()}
    (folder / "counts.json").write_text(json.dumps(counts))
    return root


def _settings(data, out, **changes):
    model = [f"model.config={json.dumps(TINY)}", "model.max_length=24", "train.batch_size=8",
             "train.save_every=2", "train.log_every=1"]
    settings = dict(pair="en-de", minutes=1.0, out=out, data_root=data, vocab_size=400, tokenizer_chars=None,
                    mlm_chars=20_000, steps={"pretrain": 4, "pairs": 6, "multitask": 4},
                    overrides={"pretrain": [*model, "train.warmup_steps=3"], "pairs": model[1:],
                               "multitask": ["model.max_length=20", "multitask.matryoshka_dims=[32, 8]", *model[2:]]},
                    baselines=[], eval_max_items=20, progress=False)
    settings.update(changes)
    return qs.Settings(**settings)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return _built_pair(tmp_path_factory.mktemp("datasets"))


def test_quickstart_writes_model_table_png_and_resumes_after_an_interruption(data, tmp_path, monkeypatch, caplog):
    from bembed.training.trainer import Trainer

    out = tmp_path / "qs"
    settings = _settings(data, out)
    real_step = Trainer.train_step

    def interrupted_step(self):
        if type(self.stage).__name__ == "PairStage" and self.step == 3:
            raise KeyboardInterrupt  # what Ctrl-C does in the middle of stage 2
        return real_step(self)

    monkeypatch.setattr(Trainer, "train_step", interrupted_step)
    with pytest.raises(KeyboardInterrupt):
        qs.run(settings)
    markers = qs.Markers(out)
    assert markers.get("pretrain") is not None and markers.get("pairs") is None
    assert (out / "pairs" / "checkpoints" / "step-00000003").is_dir()  # the trainer's Ctrl-C checkpoint
    finished = {name: (out / ".quickstart" / f"{name}.json").stat().st_mtime_ns
                for name in ("data", "corpus", "tokenizer", "references", "pretrain")}
    pretrain_weights = (out / "pretrain" / "final" / "model.safetensors").read_bytes()

    monkeypatch.setattr(Trainer, "train_step", real_step)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="bembed.quickstart"):
        summary = qs.run(settings)
    logged = caplog.text
    printed = qs.format_report(summary)

    # the finished steps were skipped, stage 2 went on from its checkpoint to its planned end
    for name, mtime in finished.items():
        assert (out / ".quickstart" / f"{name}.json").stat().st_mtime_ns == mtime, name
        assert f"quickstart {name}: done in an earlier run, skipped" in logged
    assert (out / "pretrain" / "final" / "model.safetensors").read_bytes() == pretrain_weights
    pairs = markers.get("pairs")
    assert pairs["resumed"] and pairs["steps"] == 6
    steps_logged = [json.loads(line)["step"] for line in (out / "pairs" / "metrics.jsonl").read_text().splitlines()]
    assert steps_logged == [1, 2, 3, 4, 5, 6]  # 1-3 before the interruption, 4-6 after
    assert summary["steps"] == {"pretrain": 4, "pairs": 6, "multitask": 4}
    # a warm-up given with --set is kept; the configured one (50) is cut to a tenth of the short run (at least 1)
    assert [json.loads((out / s / "config.json").read_text())["train"]["warmup_steps"] for s in qs.TRAINING_STAGES] \
        == [3, 1, 1]

    # the model folder loads as a bembed model and (when installed) with sentence-transformers, same vectors
    from bembed.encode import Embedder

    model_dir = out / "model"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "modules.json", "1_Pooling/config.json"):
        assert (model_dir / name).is_file(), name
    texts = ["the house by the river", "das haus am fluss"]
    embedder = Embedder.from_pretrained(model_dir, device="cpu")
    assert embedder.max_seq_length == 20  # the length stage 3 trained at, not the architecture's 8192
    ours = embedder.encode(texts)
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        pass
    else:
        theirs = SentenceTransformer(str(model_dir), device="cpu").encode(texts)
        assert torch.allclose(torch.from_numpy(theirs), torch.from_numpy(ours), atol=1e-4)

    # evaluation: the trained model first, then cut to the narrowest width stage 3 trained, then the untrained
    # one, on every local task of the pair
    assert embedder.matryoshka_dims == (32, 8)
    results = json.loads((out / "eval" / "results.json").read_text())["results"]
    assert [r["model"] for r in results] == ["bembed quickstart (en-de)", "bembed quickstart (en-de), first 8 dims",
                                             "untrained (same architecture)"]
    assert set(results[0]["scores"]) == set(results[1]["scores"]) == set(results[2]["scores"]) >= {
        "BembedBitextMining.en-de", "BembedSTSConstructed.en-de", "BembedRetrieval.en-de"}
    assert results[0]["scores"] != results[1]["scores"]
    assert "| BembedBitextMining.en-de | f1 |" in printed
    assert summary["verdict"]["task"] == "BembedBitextMining.en-de"
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "eval" / "results.png").is_file()
    assert "cross-lingual cosine similarity" in printed
    assert json.loads((out / "summary.json").read_text())["model"] == str(model_dir)

    # a third run has nothing left to do, and reports the same
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="bembed.quickstart"):
        again = qs.run(settings)
    assert "quickstart multitask: done in an earlier run, skipped" in caplog.text
    assert again["table"] == summary["table"]


def test_step_timing_leaves_no_trace(data, tmp_path, monkeypatch):
    out = tmp_path / "qs"
    settings = _settings(data, out)
    tokenizer = qs.train_tokenizer(settings, str(data))["tokenizer"]
    cfg = qs.stage_config(settings, "pairs", str(data), tokenizer)
    cfg.model.init_from, cfg.model.tokenizer, cfg.model.config = None, tokenizer, TINY
    stage = qs.make_stage("pairs", cfg)
    before = {k: v.clone() for k, v in stage.model.state_dict().items()}
    rng = torch.get_rng_state()
    seconds = qs.seconds_per_step(stage, cfg)
    assert seconds > 0
    assert all(torch.equal(before[k], v) for k, v in stage.model.state_dict().items())
    assert torch.equal(torch.get_rng_state(), rng)
    plan = qs.plan_steps(stage, cfg, budget_s=0.0, started=0.0)
    assert plan["max_steps"] == 10  # the floor, when nothing of the budget is left

    from bembed.training.trainer import Trainer

    def failing_step(trainer):  # draws as dropout would, then fails: the RNG was left advanced
        torch.rand(5)
        raise RuntimeError("out of memory")

    monkeypatch.setattr(Trainer, "train_step", failing_step)
    with pytest.raises(RuntimeError, match="out of memory"):
        qs.seconds_per_step(stage, cfg)
    assert torch.equal(torch.get_rng_state(), rng)


def test_bitext_verdict_needs_the_bar_and_both_comparisons():
    def result(model, f1):
        return {"model": model, "scores": {"BembedBitextMining.en-de": f1}}

    untrained, minilm = result("untrained (same architecture)", 0.3), result("all-MiniLM-L6-v2", 0.5)
    assert bitext_verdict([result("ours", 0.75), untrained, minilm], "en-de")["passed"]
    assert not bitext_verdict([result("ours", 0.65), untrained, minilm], "en-de")["passed"]
    assert not bitext_verdict([result("ours", 0.75), untrained, result("all-MiniLM-L6-v2", 0.8)],
                                 "en-de")["passed"]
    assert bitext_verdict([result("ours", 0.75), untrained], "en-de")["compared_with"] == {
        "untrained (same architecture)": 0.3}


def test_the_untrained_reference_embeds_as_the_trained_model_will(tmp_path):
    """The untrained column was scored at 8192 tokens with no prompts, the trained model at stage 3's length
    with query/passage prefixes: not like for like, and its evaluation time (which the training budget reserves
    for the final evaluation) ran ~4× too long on retrieval."""
    from bembed.quickstart_eval import untrained_embedder
    from bembed.tokenizer import save_tokenizer, train_bilingual_tokenizer

    tokenizer = train_bilingual_tokenizer(["Der Hund läuft schnell."] * 20, ["El perro corre rápido."] * 20, 280,
                                          min_frequency=1)
    save_tokenizer(tokenizer, tmp_path / "tokenizer")
    settings = qs.Settings(out=tmp_path / "qs", baselines=[], overrides=parse_overrides(
        ["multitask.model.max_length=40", "multitask.multitask.query_prefix='q: '"]))
    embedder = untrained_embedder(settings, str(tmp_path / "tokenizer"))
    assert embedder.max_seq_length == 40
    assert embedder.prompts == {"query": "q: ", "document": "passage: "}
    assert embedder.encode(["Der Hund"], prompt_name="query").shape == (1, embedder.dim)


def test_model_folder_keeps_the_final_stages_prompts_and_settings(tmp_path):
    """Stages trained with --set pairs.pairs.query_prefix='query: ' export prompts; <out>/model must keep
    them (and max_seq_length, normalize), or evaluation and the demo embed queries without their prefix."""
    from bembed.encode import Embedder
    from bembed.model import JinaBertConfig, JinaBertModel
    from bembed.model.export import export_sentence_transformers
    from bembed.tokenizer import model_config_kwargs
    from bembed.training.encoder import load_tokenizer

    tokenizer = load_tokenizer(U.tokenizer_dir(tmp_path))
    model = JinaBertModel(JinaBertConfig(**TINY, **model_config_kwargs(tokenizer)))
    final = export_sentence_transformers(model, tokenizer, tmp_path / "final", max_seq_length=24, normalize=False,
                                         prompts={"query": "query: ", "passage": "passage: "})
    settings = qs.Settings(out=tmp_path / "qs")
    qs.save_model(settings, str(final), None)  # a stage marker of an older quickstart: no trained length
    before, after = Embedder.from_pretrained(final, device="cpu"), Embedder.from_pretrained(tmp_path / "qs" / "model",
                                                                                              device="cpu")
    assert after.prompts == before.prompts == {"query": "query: ", "passage": "passage: ", "document": "passage: "}
    assert (after.max_seq_length, after.normalize_embeddings) == (24, False)
    texts = ["the house by the river"]
    assert (after.encode(texts, prompt_name="query") == before.encode(texts, prompt_name="query")).all()
    qs.save_model(settings, str(final), 16)
    assert Embedder.from_pretrained(tmp_path / "qs" / "model", device="cpu").max_seq_length == 16


def test_a_failed_fetch_stops_before_building(tmp_path, monkeypatch, capsys):
    """The quickstart built without the sources it could not fetch, and the build's counts.json then marked the
    data step done: the missing sets never came back. Now it stops (exit 1) and the same command retries."""
    from bembed.cli import main
    from bembed.data import build, sources

    monkeypatch.setattr(sources, "fetch_all", lambda cache, **kw: {"libreoffice-help-de": "failed: unreachable",
                                                                    "manpages-es": "failed: unreachable"})
    monkeypatch.setattr(build, "build", lambda *a, **kw: pytest.fail("built without the failed sources"))
    assert main(["quickstart", "--out", str(tmp_path / "qs"), "--cache", str(tmp_path / "cache"),
                 "--no-progress"]) == 1
    printed = capsys.readouterr().out
    assert "libreoffice-help-de: failed: unreachable" in printed and "manpages-es" not in printed  # not en-de's
    assert qs.Markers(tmp_path / "qs").get("data") is None


@pytest.mark.parametrize("manifest, rebuilt", [
    (None, None),  # datasets made some other way
    ({"pair": "en-de"}, (0.9, 0.05, 0.05)),  # built before versions were recorded
    ({"pair": "en-de", "build_version": 1}, (0.9, 0.05, 0.05)),
    ({"pair": "en-de", "build_version": 3, "fractions": [0.6, 0.2, 0.2]}, (0.6, 0.2, 0.2)),  # keeps its --split
    ("current", None),
])
def test_datasets_built_by_an_older_bembed_are_rebuilt(tmp_path, monkeypatch, manifest, rebuilt):
    """A cache built before a cleaning fix kept feeding the old data to every later quickstart. The rebuild
    keeps the build's --split: the default would move documents that runs on it trained on into the test split."""
    from bembed.data import build, sources

    root = tmp_path / "datasets"
    (root / "en-de").mkdir(parents=True)
    (root / "en-de" / "counts.json").write_text('{"parallel": {"train": 1}}')
    if manifest == "current":
        manifest = {"pair": "en-de", "build_version": build.BUILD_VERSION}
    if manifest is not None:
        (root / "en-de" / "manifest.json").write_text(json.dumps(manifest))
    calls = []
    monkeypatch.setattr(sources, "fetch_all", lambda cache, **kw: {})
    monkeypatch.setattr(build, "build", lambda cache, out, pair, fractions: calls.append((Path(out), pair, fractions)))
    assert qs.prepare_data(qs.Settings(out=tmp_path / "qs", data_root=root, progress=False))["counts"] == {
        "parallel": {"train": 1}}
    assert calls == ([(root, "en-de", rebuilt)] if rebuilt else [])


def test_time_spent_in_an_interrupted_step_counts_against_the_budget(tmp_path, monkeypatch):
    """The clock was recorded only after a step finished: a kill during fetch + build (or the references) and a
    resume overran --minutes by the time that step had taken."""
    from types import SimpleNamespace

    clock = [100.0]
    monkeypatch.setattr(qs, "time", SimpleNamespace(perf_counter=lambda: clock[0]))

    def a_minute_then_interrupted(settings):
        clock[0] += 60.0
        raise KeyboardInterrupt

    monkeypatch.setattr(qs, "prepare_data", a_minute_then_interrupted)
    out = tmp_path / "qs"
    with pytest.raises(KeyboardInterrupt):
        qs.run(qs.Settings(out=out, progress=False))
    assert qs.Markers(out).get("clock") == {"spent_s": 60.0}
    with pytest.raises(KeyboardInterrupt):
        qs.run(qs.Settings(out=out, progress=False))  # the resumed run starts from there
    assert qs.Markers(out).get("clock") == {"spent_s": 120.0}


def test_readme_states_the_budget_rules_the_code_follows():
    """The README gave a 20/65/15 split while the code used 15/70/15, and left out the fixed reserve."""
    readme = " ".join((Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8").split())
    shares = " / ".join(f"{100 * qs.BUDGET_SHARES[s]:.0f}%" for s in qs.TRAINING_STAGES)
    assert f"It is split {shares} over stages 1 / 2 / 3" in readme
    assert f"and {qs.RESERVE_S:.0f} s for the export, the loss PNG and the demo" in readme
    assert f"never less than {100 * qs.MIN_TRAINING_FRACTION:.0f}% of the budget" in readme


def test_sigterm_stops_the_job_like_ctrl_c(tmp_path, monkeypatch, capsys):
    """`kill` (SIGTERM) ended the process at once: the step's time was not counted against --minutes on resume
    and no checkpoint was written in a training stage. It is now taken as Ctrl-C."""
    import os
    import signal

    from bembed.cli import main

    def killed_during_the_data_step(settings):
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("SIGTERM did not stop the step")

    monkeypatch.setattr(qs, "prepare_data", killed_during_the_data_step)
    sigterm_before = signal.getsignal(signal.SIGTERM)
    assert main(["quickstart", "--out", str(tmp_path / "qs"), "--no-progress"]) == 130
    assert "interrupted: run the same command again" in capsys.readouterr().out
    assert "spent_s" in qs.Markers(tmp_path / "qs").get("clock")
    assert signal.getsignal(signal.SIGTERM) is sigterm_before


def test_time_is_recorded_while_a_step_runs(tmp_path, monkeypatch):
    """A quickstart killed outright (kill -9, out of memory, a reboot) runs no finally: the time of the step it
    died in was lost, and its resume overran --minutes by that much. The clock is now written while a step runs."""
    import threading
    import time

    monkeypatch.setattr(qs, "CLOCK_EVERY_S", 0.05)
    out = tmp_path / "qs"
    seen = []

    def a_long_data_step(settings):
        deadline = time.monotonic() + 10
        while not seen and time.monotonic() < deadline:
            time.sleep(0.02)
            clock = qs.Markers(out).get("clock")
            if clock is not None:
                seen.append(clock["spent_s"])
        raise KeyboardInterrupt

    monkeypatch.setattr(qs, "prepare_data", a_long_data_step)
    with pytest.raises(KeyboardInterrupt):
        qs.run(qs.Settings(out=out, progress=False))
    assert seen and seen[0] > 0  # written during the step, before its end
    assert not [t for t in threading.enumerate() if t.name == "quickstart-clock"]  # stopped with the step


def test_a_stage_that_cannot_start_keeps_the_steps_before_it_and_takes_the_corrected_command(data, tmp_path,
                                                                                              monkeypatch, capsys):
    """A --set value that breaks a stage only when it reads its data (a batch larger than the data) recorded the
    settings, and the corrected command was refused as "other settings" after stages 1 and 2 had to be
    thrown away."""
    from bembed.cli import main

    out = tmp_path / "qs"
    bad = _settings(data, out)
    bad.overrides["pairs"] = [*bad.overrides["pairs"], "train.batch_size=4096"]
    with pytest.raises(qs.StepCannotStart,
                       match=r"^pairs: data.train: the data has \d+ rows, fewer than one global micro-batch of 4096"):
        qs.run(bad)
    markers = qs.Markers(out)
    assert markers.get("pretrain") is not None and markers.get("pairs") is None
    pretrained = (out / "pretrain" / "final" / "model.safetensors").read_bytes()

    def reached(stage, cfg):
        raise KeyboardInterrupt(stage)

    monkeypatch.setattr(qs, "make_stage", reached)
    with pytest.raises(KeyboardInterrupt, match="pairs"):  # stage 1 is not run again
        qs.run(_settings(data, out))
    assert (out / "pretrain" / "final" / "model.safetensors").read_bytes() == pretrained
    assert markers.get("settings")["overrides"]["pairs"] == _settings(data, out).overrides["pairs"]

    # the CLI names the stage and says the finished steps are kept
    monkeypatch.setattr(qs, "run", lambda settings: (_ for _ in ()).throw(qs.StepCannotStart("pairs: too few rows")))
    assert main(["quickstart", "--out", str(out), "--no-progress", "--baselines"]) == 2
    assert "pairs: too few rows\nthe steps before it are kept" in capsys.readouterr().out


def test_a_kept_reference_result_is_used_only_if_made_with_these_evaluation_settings(data, tmp_path, monkeypatch):
    """An interrupted reference step keeps each finished model's result; the step may resume with another
    --max-items (it had not finished), and the kept result must not then stand for the new setting."""
    import bembed.eval.run
    import bembed.quickstart_eval as qe

    evaluated = []

    def evaluate(encoder, tasks, name=None, **kwargs):
        evaluated.append(name)
        return {"model": name, "scores": {}, "seconds": 1.0}

    monkeypatch.setattr(bembed.eval.run, "evaluate_encoder", evaluate)
    monkeypatch.setattr(qe, "untrained_embedder", lambda settings, tokenizer_dir: object())
    qe.evaluate_references(_settings(data, tmp_path / "qs"), str(data), "unused")
    qe.evaluate_references(_settings(data, tmp_path / "qs"), str(data), "unused")
    assert evaluated == ["untrained"]  # kept
    qe.evaluate_references(_settings(data, tmp_path / "qs", eval_max_items=10), str(data), "unused")
    assert evaluated == ["untrained", "untrained"]


def test_a_stage_that_would_train_on_its_builds_test_split_does_not_start(data, tmp_path, monkeypatch):
    """The final table scores the build's test split: a --set source reaching into it (another build, another
    --split, or its test split itself) would have been trained on and then scored. Refused before the stage
    reads its data or times steps on it."""
    import shutil

    root = tmp_path / "datasets"
    shutil.copytree(data, root)
    (root / "en-de" / "manifest.json").write_text(json.dumps({"pair": "en-de", "fractions": [0.6, 0.2, 0.2]}))
    text = [f"{{path: {root / 'en-de' / f'mono_{lang}'}, split: test, lang: {lang}}}" for lang in ("en", "de")]
    settings = _settings(root, tmp_path / "qs")
    settings.overrides["pretrain"].append(f"data.train=[{', '.join(text)}]")
    tokenizer = qs.train_tokenizer(settings, str(root))["tokenizer"]
    monkeypatch.setattr(qs, "make_stage", lambda stage, cfg: pytest.fail("the stage was built"))
    with pytest.raises(qs.StepCannotStart, match=r"^pretrain: the model would train on mono_en \(test split of the "
                                                 r"en-de build with --split 0.6,0.2,0.2\); mono_de .* no build holds"
                                                 r".*; or give this stage other data with --set$"):
        qs.run_stage(settings, "pretrain", str(root), tokenizer, budget_s=60)
    assert not (tmp_path / "qs" / "pretrain").exists()


def test_the_final_evaluation_refuses_a_model_trained_on_its_test_split(data, tmp_path):
    """The data rebuilt with another --split between an interrupted run and its resumption."""
    import shutil

    root = tmp_path / "datasets"
    shutil.copytree(data, root)
    (root / "en-de" / "manifest.json").write_text(json.dumps({"pair": "en-de", "fractions": [0.5, 0.1, 0.4]}))
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"trained_on": [
        {"pair": "en-de", "set": "parallel", "split": "train", "fractions": [0.9, 0.05, 0.05]}]}))
    with pytest.raises(qs.StepCannotStart, match=r"^evaluate: the model trained on parallel \(train split .* "
                                                 rf"--split 0.9,0.05,0.05 --out {root}`, then the same command$"):
        qs.evaluate_model(_settings(root, tmp_path / "qs"), str(root), str(model), [])


def test_no_progress_keeps_encode_datasets_and_mteb_bitext_mining_quiet(tmp_path, capfd):
    from bembed.encode import Embedder
    from bembed.model import JinaBertConfig, JinaBertModel
    from bembed.progress import progress_bars_off
    from bembed.training.encoder import load_tokenizer

    settings = _settings(None, tmp_path / "qs")
    tokenizer_dir = U.tokenizer_dir(tmp_path)
    tokenizer = load_tokenizer(str(tokenizer_dir))
    embedder = Embedder(JinaBertModel(JinaBertConfig(vocab_size=len(tokenizer), **TINY)), tokenizer)
    logging.getLogger("bembed.encode").setLevel(logging.INFO)
    try:
        embedder.encode(["a b c"] * 3)
        assert "encode:" in capfd.readouterr().err
        import datasets

        from bembed.eval.run import evaluate_encoder
        from bembed.eval.tasks import TaskSizes, bitext_task

        def bitext():
            rows = [{"src": f"word{i} more", "tgt": f"wort{i} mehr"} for i in range(4)]
            evaluate_encoder(embedder, [bitext_task(rows, "en-de", TaskSizes())])

        bitext()
        assert "Matching sentences" in capfd.readouterr().err  # mteb's own bar, which no switch of mteb's reaches
        datasets.enable_progress_bars()  # as in a fresh process
        with progress_bars_off():
            embedder.encode(["a b c"] * 3)
            bitext()
            assert not datasets.is_progress_bar_enabled()  # mteb's preparation of the data drew its bars
        err = capfd.readouterr().err
        assert "encode:" not in err and "Matching sentences" not in err and "it/s]" not in err
        bitext()
        assert "Matching sentences" in capfd.readouterr().err  # given back
        assert logging.getLogger("bembed.encode").level == logging.INFO  # given back
        assert datasets.is_progress_bar_enabled()
    finally:
        logging.getLogger("bembed.encode").setLevel(logging.NOTSET)
    assert not settings.progress
