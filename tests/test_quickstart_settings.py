"""The quickstart's settings and --set overrides: every value that would fail only once steps have run is
refused before anything runs or is recorded, naming what to change; keys the quickstart sets itself are
refused with the option that sets them; data paths expand ~ and $VARS."""

from __future__ import annotations

import pytest

pytest.importorskip("datasets")
pytest.importorskip("mteb")

from bembed import quickstart as qs  # noqa: E402
from bembed.commands.quickstart import parse_overrides  # noqa: E402


def test_settings_and_overrides_reject_bad_input():
    with pytest.raises(ValueError, match="pair"):
        qs.Settings(pair="en-fr")
    with pytest.raises(ValueError, match="minutes"):
        qs.Settings(minutes=0)
    with pytest.raises(ValueError, match="positive finite"):  # inf ran data and tokenizer, then int(inf) failed
        qs.Settings(minutes=float("inf"))
    with pytest.raises(ValueError, match=r"baselines: given more than once: \['all-MiniLM-L6-v2'\]"):
        qs.Settings(baselines=["all-MiniLM-L6-v2", "all-MiniLM-L6-v2"])
    with pytest.raises(ValueError, match="steps"):
        qs.Settings(steps={"pairs": 0})
    with pytest.raises(ValueError, match="overrides"):
        qs.Settings(overrides={"finetune": ["train.lr=1"]})
    with pytest.raises(ValueError, match="vocab_size"):
        qs.Settings(vocab_size=100)
    with pytest.raises(ValueError, match="max_chars"):
        qs.Settings(eval_max_chars=0)
    with pytest.raises(ValueError, match=r"baselines: unknown \['e5'\]"):  # it was skipped as "not installed"
        qs.Settings(baselines=["all-MiniLM-L6-v2", "e5"])
    with pytest.raises(ValueError, match="unknown key"):  # a typo in --set, caught before any step runs
        qs.Settings(overrides={"multitask": ["train.lr=1e-4", "multitask.sts_los=mse"]})
    # keys the quickstart sets itself were accepted and then replaced: refused, naming what sets them
    for item, instead in (("pairs.train.seed=7", "--seed"), ("pairs.train.output_dir=/tmp/x", "--out"),
                          ("multitask.train.max_steps=123", "--steps"), ("pairs.model.init_from=/m", "previous stage"),
                          ("multitask.model.config.num_hidden_layers=6", "pretrain.model.config")):
        with pytest.raises(ValueError, match=instead):
            qs.Settings(overrides=parse_overrides([item]))
    qs.Settings(overrides=parse_overrides(["pretrain.model.config.num_hidden_layers=3"]))  # stage 1 builds from it
    # a whole section given as a mapping got past the refusals; an architecture error passed the up-front check
    # (it failed when the model was first built, after data, corpus and tokenizer had run)
    for item, message in (("pairs.train={lr: 1.0e-4, seed: 7}", "--seed"),
                          ("pretrain.model.init_from=/m", "fresh weights"),
                          ("pretrain.model.config.num_attention_heads=3", "multiple of num_attention_heads")):
        with pytest.raises(ValueError, match=message):
            qs.Settings(overrides=parse_overrides([item]))
    qs.Settings(overrides=parse_overrides(["pairs.train={lr: 1.0e-4}"]))
    assert parse_overrides(["pairs.train.lr=3e-4", "pairs.model.max_length=32"]) == {
        "pairs": ["train.lr=3e-4", "model.max_length=32"]}
    with pytest.raises(ValueError, match="STAGE"):
        parse_overrides(["train.lr=3e-4"])


def test_matryoshka_widths_wider_than_stage_1_are_refused_before_anything_runs():
    """The quickstart trains stage 3 with Matryoshka widths up to stage 1's 256: a --set of a narrower model
    alone would have failed only when stage 3 started, after stages 1 and 2 had trained."""
    from bembed.quickstart_eval import final_evaluations

    with pytest.raises(ValueError, match=r"multitask\.multitask\.matryoshka_dims.*exceeds the model's 128"):
        qs.Settings(overrides=parse_overrides(["pretrain.model.config.hidden_size=128"]))
    with pytest.raises(ValueError, match=r"pairs\.pairs\.matryoshka_dims.*exceeds the model's 256"):
        qs.Settings(overrides=parse_overrides(["pairs.pairs.matryoshka_dims=[512, 64]"]))
    narrow = qs.Settings(overrides=parse_overrides(["pretrain.model.config.hidden_size=128",
                                                    "multitask.multitask.matryoshka_dims=[128, 16]"]))
    assert final_evaluations(narrow) == 2  # the final evaluation is reserved twice: full width and 16
    full_only = qs.Settings(overrides=parse_overrides(["multitask.multitask.matryoshka_dims=[256]"]))
    assert final_evaluations(full_only) == final_evaluations(qs.Settings(overrides=parse_overrides(
        ["multitask.multitask.matryoshka_dims=[]"]))) == 1


def test_a_value_that_would_fail_late_is_refused_before_the_settings_are_recorded(tmp_path, monkeypatch, capsys):
    """--max-items 0 failed after data, corpus and tokenizer, and a batch that grad_accum does not divide failed
    when stage 2 started; both had recorded the settings, so the corrected command was refused."""
    from bembed.cli import main

    def stop(settings):
        raise KeyboardInterrupt

    monkeypatch.setattr(qs, "prepare_data", stop)
    command = ["quickstart", "--out", str(tmp_path / "qs"), "--no-progress"]
    assert main([*command, "--max-items", "0"]) == 2
    assert main([*command, "--set", "pairs.train.grad_accum=3"]) == 2
    printed = capsys.readouterr().out
    assert "max_items and max_chars must be positive" in printed and "pairs: train.batch_size=64" in printed
    assert not (tmp_path / "qs" / ".quickstart" / "settings.json").exists()
    assert main([*command, "--max-items", "20"]) == 130  # the corrected command starts, not refused


def test_a_set_data_source_that_does_not_exist_is_refused_before_anything_is_recorded(tmp_path):
    """A --set data source with a wrong path was accepted, recorded with the settings, and failed at its stage:
    the corrected command was then refused as "other settings"."""
    with pytest.raises(ValueError, match=r"pairs: pairs.data.train: no such file or folder: /nonexistent/x.jsonl"):
        qs.Settings(out=tmp_path / "qs", baselines=[],
                    overrides=parse_overrides(["pairs.data.train=[{path: /nonexistent/x.jsonl}]"]))
    existing = tmp_path / "pairs.jsonl"
    existing.write_text('{"query": "a b c", "document": "d e f"}\n')
    qs.Settings(out=tmp_path / "qs", baselines=[], overrides=parse_overrides([f"pairs.data.train=[{{path: {existing}}}]"]))


def test_a_set_data_source_may_use_home_and_variables(tmp_path, monkeypatch):
    """Training expands ~ and $VARS in data paths; the quickstart's existence check refused ~/… as missing and
    crashed on ${VAR} (its braces went through str.format: KeyError)."""
    (tmp_path / "pairs.jsonl").write_text('{"query": "a b c", "document": "d e f"}\n')
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("PAIRS_DIR", str(tmp_path))
    for path in ("~/pairs.jsonl", "${PAIRS_DIR}/pairs.jsonl", "$PAIRS_DIR/pairs.jsonl"):
        settings = qs.Settings(out=tmp_path / "qs", baselines=[],
                               overrides=parse_overrides([f"pairs.data.train=[{{path: '{path}'}}]"]))
        cfg = qs.stage_config(settings, "pairs", str(tmp_path / "data"), str(tmp_path / "model"))
        assert cfg.data.train[0].path == path  # expanded where it is read, as in every training run
    with pytest.raises(ValueError, match=r"no such file or folder: \$\{PAIRS_DIR\}/absent.jsonl"):
        qs.Settings(out=tmp_path / "qs", baselines=[],
                    overrides=parse_overrides(["pairs.data.train=[{path: '${PAIRS_DIR}/absent.jsonl'}]"]))


def test_a_set_section_that_is_not_yaml_is_a_value_error_naming_it(tmp_path):
    """A whole section given as broken YAML escaped the owned-keys check as yaml's ParserError (a traceback,
    exit 1) instead of the ValueError (exit 2) that names the override."""
    with pytest.raises(ValueError, match=r"train=\{lr: \[1e-3\}.*not valid YAML"):
        qs.Settings(out=tmp_path / "qs", baselines=[], overrides=parse_overrides(["pairs.train={lr: [1e-3}"]))
