"""The built splits a model trained on travel in its config.json, and `bembed eval` refuses a test split that
holds documents of them (a build with another --split)."""

from __future__ import annotations

import json
import random

import pytest

from bembed.data.provenance import (held_out_conflict, record_training_data, seen_test_documents,
                                    trained_on_test_split)
from bembed.data.split import split_of

import training_utils as U


def _record(fractions, split="train", pair="en-de", name="pairs"):
    return {"pair": pair, "set": name, "split": split, "fractions": list(fractions)}


@pytest.mark.parametrize("trained, split, evaluated", [
    ((0.9, 0.05, 0.05), "train", (0.9, 0.05, 0.05)),
    ((0.98, 0.01, 0.01), "train", (0.9, 0.05, 0.05)),
    ((0.8, 0.1, 0.1), "train", (0.5, 0.2, 0.3)),
    ((0.8, 0.1, 0.1), "train", (0.8, 0.15, 0.05)),
    ((0.8, 0.1, 0.1), "validation", (0.8, 0.05, 0.15)),
    ((0.8, 0.1, 0.1), "validation", (0.8, 0.1, 0.1)),
    ((0.8, 0.1, 0.1), "test", (0.8, 0.1, 0.1)),
    ((0.8, 0.1, 0.1), "test", (0.95, 0.0, 0.05)),
    ((0.9, 0.1, 0.0), "test", (0.5, 0.2, 0.3)),  # an empty split holds nothing
])
def test_seen_test_documents_agrees_with_the_split_of_documents(trained, split, evaluated):
    """The interval arithmetic against split_of itself on 20,000 document ids: some id is in the trained split
    of one build and the test split of the other exactly when the record is reported."""
    rng = random.Random(0)
    ids = [f"doc:{rng.getrandbits(64)}" for _ in range(20_000)]
    both = any(split_of(i, trained) == split and split_of(i, evaluated) == "test" for i in ids)
    seen = seen_test_documents([_record(trained, split)], {"pair": "en-de", "fractions": list(evaluated)})
    assert bool(seen) == both


def test_records_accumulate_over_stages_and_skip_the_users_own_files(tmp_path):
    from transformers import PretrainedConfig

    build = tmp_path / "datasets" / "en-de"
    (build / "pairs").mkdir(parents=True)
    (build / "manifest.json").write_text(json.dumps({"pair": "en-de", "fractions": [0.8, 0.1, 0.1]}))
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "manifest.json").write_text(json.dumps({"pair": "en-de", "fractions": [0.8, 0.1, 0.1],
                                                      "split": "train"}))
    own = U.pair_file(tmp_path)
    config = PretrainedConfig()
    record_training_data(config, [{"path": str(corpus / "mono_en.jsonl")}, {"path": str(own)}])
    assert config.trained_on == [_record((0.8, 0.1, 0.1), name="mono_en.jsonl")]
    record_training_data(config, [{"path": str(build / "pairs"), "split": "validation"},
                                  {"path": str(corpus / "mono_en.jsonl")}])
    assert config.trained_on == [_record((0.8, 0.1, 0.1), name="mono_en.jsonl"),
                                 _record((0.8, 0.1, 0.1), "validation")]
    untouched = PretrainedConfig()
    record_training_data(untouched, [{"path": str(own)}])
    assert not hasattr(untouched, "trained_on")


def test_bembed_eval_refuses_a_build_whose_test_split_the_model_trained_on(tmp_path, capsys):
    pytest.importorskip("mteb")
    from data_fixtures import fake_cache

    from bembed.cli import main
    from bembed.data.build import build

    cache = fake_cache(tmp_path / "cache")
    build(cache, tmp_path / "data", "en-de", fractions=(0.4, 0.2, 0.4))
    out = tmp_path / "pairs"
    assert main(["pairs", "--config", "pairs_tiny", f"model.tokenizer={U.tokenizer_dir(tmp_path)}",
                 f"model.config={json.dumps(U.TINY_MODEL)}", "model.init_from=null",
                 f"data.train=[{{path: {tmp_path / 'data' / 'en-de' / 'pairs'}}}]",
                 *U.train_overrides(out, 1, batch=8)]) == 0
    config = json.loads((out / "final" / "config.json").read_text())
    assert config["trained_on"] == [_record((0.4, 0.2, 0.4))]

    build(cache, tmp_path / "other", "en-de", fractions=(0.2, 0.1, 0.7))  # test is now [0.3, 1): train was [0, 0.4)
    assert trained_on_test_split(out / "final", tmp_path / "data" / "en-de") is None
    capsys.readouterr()
    args = ["eval", "--model", str(out / "final"), "--pairs", "en-de", "--max-items", "20", "--out",
            str(tmp_path / "res")]
    assert main([*args, "--data", str(tmp_path / "other")]) == 2
    printed = capsys.readouterr().out
    assert (f"--model {out / 'final'}: pairs (train split of the en-de build with --split 0.4,0.2,0.4) holds "
            "documents of the test split under") in printed and "(built with --split 0.2,0.1,0.7)" in printed
    assert "`bembed data build --pair en-de --split 0.4,0.2,0.4 --out DIR`, then `--data DIR`" in printed
    assert not (tmp_path / "res" / "results.json").exists()
    # the same model in the older sentence-transformers layout (config.json in 0_Transformer/): eval said "not
    # a model folder", and the record was not read at all
    from encode_fixtures import older_layout

    old = older_layout(out / "final", tmp_path / "old")
    assert trained_on_test_split(old, tmp_path / "other" / "en-de") is not None
    old_args = ["eval", "--model", str(old), "--pairs", "en-de", "--max-items", "20", "--out", str(tmp_path / "res")]
    assert main([*old_args, "--data", str(tmp_path / "other")]) == 2
    assert f"--model {old}: pairs (train split" in capsys.readouterr().out
    assert main([*args, "--data", str(tmp_path / "data")]) == 0  # the build it trained on: evaluated


def test_the_suggested_build_holds_out_every_record_and_is_a_valid_split(tmp_path):
    """The suggestion came from the first record only: following it could be refused again, and fractions
    printed with 6 digits no longer summed to 1."""
    from bembed.data.split import split_of

    build = tmp_path / "en-de"
    build.mkdir()
    (build / "manifest.json").write_text(json.dumps({"pair": "en-de", "fractions": [0.2, 0.1, 0.7]}))
    third = 1 / 3
    records = [_record((0.5, 0.25, 0.25)), _record((0.9, 0.05, 0.05), name="parallel"),
               _record((third, third, third), "validation", name="retrieval")]
    message = held_out_conflict(records, build)
    assert message.startswith("pairs (train split of the en-de build with --split 0.5,0.25,0.25); parallel")
    suggested = message.split("`bembed data build --pair en-de --split ")[1].split(" ")[0]
    assert suggested == "0.9,0.05,0.05"
    fractions = tuple(float(f) for f in suggested.split(","))
    split_of("probe", fractions)  # a valid --split
    (build / "manifest.json").write_text(json.dumps({"pair": "en-de", "fractions": list(fractions)}))
    assert held_out_conflict(records, build) is None
    assert "--split 0.3333333333333333,0.3333333333333333,0.3333333333333333" in held_out_conflict(
        [_record((third, third, third), "test")], build)
    assert "no build holds out the test split it trained on" in held_out_conflict([_record((0.9, 0.05, 0.05), "test")],
                                                                                  build)
