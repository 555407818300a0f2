"""The tiny model folder the encode tests share: a JinaBERT 48 wide with a 320-token tokenizer trained here on
the German and Spanish sentences below, saved with prompts (sentence-transformers layout); and that layout's
older form, which loaders must read too."""

import json
import shutil
from pathlib import Path

import pytest
import torch

import bembed
from bembed.encode import Embedder
from bembed.tokenizer import model_config_kwargs, train_bilingual_tokenizer

GERMAN = ["Die Bäume grünen und die Vögel singen fröhlich im Wald.",
          "Über den Wolken ist die Freiheit grenzenlos.",
          "Der kleine Hund läuft schnell über die Straße.", "Morgen regnet es in Berlin."]
SPANISH = ["El niño comió una manzana en la montaña.", "¡Qué día más bonito hace hoy en España!",
           "La canción del corazón pequeño suena bien.", "Mañana llueve en Madrid."]
TEXTS = GERMAN + SPANISH + ["kurz", "Привет, мир", "你好世界", "a", "Größe " * 40]
PROMPTS = {"query": "query: ", "passage": "passage: "}


@pytest.fixture(scope="module")
def tokenizer():
    return train_bilingual_tokenizer(GERMAN * 10, SPANISH * 10, 320, min_frequency=1)


@pytest.fixture(scope="module")
def folder(tmp_path_factory, tokenizer):
    torch.manual_seed(0)
    config = bembed.JinaBertConfig(hidden_size=48, num_hidden_layers=2, num_attention_heads=4, intermediate_size=80,
                                   hidden_dropout_prob=0.0, **model_config_kwargs(tokenizer))
    path = tmp_path_factory.mktemp("model")
    Embedder(bembed.JinaBertModel(config), tokenizer, prompts=PROMPTS).save_pretrained(path)
    return path


@pytest.fixture
def embedder(folder):
    return Embedder.from_pretrained(folder, device="cpu")


DOCUMENT = " ".join(GERMAN + SPANISH)


def older_layout(folder: Path, dest: Path) -> Path:
    """A copy of a sentence-transformers folder in the older layout: the transformer (config, weights, tokenizer,
    sentence_bert_config.json) in the Transformer module's own folder, `0_Transformer/`, named by modules.json."""
    shutil.copytree(folder, dest)
    (dest / "0_Transformer").mkdir()
    for item in list(dest.iterdir()):
        if item.is_file() and item.name not in ("modules.json", "config_sentence_transformers.json"):
            item.rename(dest / "0_Transformer" / item.name)
    modules = json.loads((dest / "modules.json").read_text())
    next(m for m in modules if m["type"].endswith(".Transformer"))["path"] = "0_Transformer"
    (dest / "modules.json").write_text(json.dumps(modules))
    return dest
