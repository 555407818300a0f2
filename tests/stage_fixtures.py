"""The training-stage tests' shared pieces: generated files, and a tiny MLM run on them (no downloads)."""

from __future__ import annotations

import json

import pytest
import torch

from bembed.training.config import PretrainRun, load_config, to_dict
from bembed.training.trainer import Trainer

import training_utils as U


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    en, de = U.text_files(root)
    return {"root": root, "tok": U.tokenizer_dir(root), "en": en, "de": de, "pairs": U.pair_file(root),
            "triples": U.triple_file(root), "sts": U.sts_file(root), "parallel": U.parallel_file(root)}


def model_overrides(files, **config):
    return [f"model.tokenizer={files['tok']}", "model.max_length=24",
            f"model.config={json.dumps({**U.TINY_MODEL, **config})}"]


def mlm_run(files, out, steps, *extra, **config):
    from bembed.training.mlm import MLMStage

    cfg = load_config(PretrainRun, None, [f"data.train=[{{path: {files['en']}, lang: en}}, {{path: {files['de']}, lang: de}}]",
                                          *model_overrides(files, **config), *U.train_overrides(out, steps), *extra])
    torch.manual_seed(cfg.train.seed)  # the fresh model's initial weights
    return MLMStage(cfg), cfg


def fit(stage, cfg, resume=None):
    return Trainer(stage, cfg.train, to_dict(cfg)).fit(resume=resume)
