"""JinaBERT's published layout and names, and loading and saving checkpoints (released folders, safetensors only,
the transformers keywords)."""

import json
import logging

import pytest
import torch
from safetensors.torch import save_file

from bembed import JinaBertConfig, JinaBertForMaskedLM, JinaBertModel
from test_model import ragged_batch, tiny_config


# ------------------------------------------------------------------------------------------------
# The published base layout
# ------------------------------------------------------------------------------------------------

def published_layout(vocab=61056, hidden=768, layers=12, intermediate=3072, qk_layer_norm=False):
    """The parameter names and shapes of jina-embeddings-v2-base-de/-es (JinaBertModel), per DESIGN.md."""
    shapes = {
        "embeddings.word_embeddings.weight": (vocab, hidden),
        "embeddings.token_type_embeddings.weight": (2, hidden),
        "embeddings.LayerNorm.weight": (hidden,),
        "embeddings.LayerNorm.bias": (hidden,),
        "pooler.dense.weight": (hidden, hidden),
        "pooler.dense.bias": (hidden,),
    }
    for n in range(layers):
        p = f"encoder.layer.{n}."
        for name in ("query", "key", "value"):
            shapes[p + f"attention.self.{name}.weight"] = (hidden, hidden)
            shapes[p + f"attention.self.{name}.bias"] = (hidden,)
        if qk_layer_norm:
            for name in ("layer_norm_q", "layer_norm_k"):
                shapes[p + f"attention.self.{name}.weight"] = (hidden,)
                shapes[p + f"attention.self.{name}.bias"] = (hidden,)
        shapes[p + "attention.output.dense.weight"] = (hidden, hidden)
        shapes[p + "attention.output.dense.bias"] = (hidden,)
        shapes[p + "attention.output.LayerNorm.weight"] = (hidden,)
        shapes[p + "attention.output.LayerNorm.bias"] = (hidden,)
        shapes[p + "mlp.gated_layers.weight"] = (2 * intermediate, hidden)
        shapes[p + "mlp.wo.weight"] = (hidden, intermediate)
        shapes[p + "mlp.wo.bias"] = (hidden,)
        shapes[p + "mlp.layernorm.weight"] = (hidden,)
        shapes[p + "mlp.layernorm.bias"] = (hidden,)
    return shapes


@pytest.mark.parametrize("qk_layer_norm", [False, True], ids=["de", "es"])
def test_base_config_parameter_names_shapes_and_count(qk_layer_norm):
    with torch.device("meta"):  # the layout only: no memory, no init
        model = JinaBertModel(JinaBertConfig(vocab_size=61056, qk_layer_norm=qk_layer_norm))
    got = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    assert got == published_layout(qk_layer_norm=qk_layer_norm)
    count = sum(p.numel() for p in model.parameters())
    assert 160.5e6 < count < 161.5e6  # DESIGN.md: ≈161M (46.9M embeddings + 12 × 9.44M + LNs + pooler)


def test_mlm_head_names_and_tied_decoder():
    model = JinaBertForMaskedLM(tiny_config())
    names = set(model.state_dict())
    for name in ("cls.predictions.transform.dense.weight", "cls.predictions.transform.dense.bias",
                 "cls.predictions.transform.LayerNorm.weight", "cls.predictions.transform.LayerNorm.bias",
                 "cls.predictions.bias", "bert.embeddings.word_embeddings.weight",
                 "bert.encoder.layer.1.mlp.gated_layers.weight"):
        assert name in names
    assert not any(n.startswith("bert.pooler.") for n in names)
    assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight


@pytest.fixture
def published_config_dir(tmp_path):
    def write(config: JinaBertConfig, folder):
        fields = {k: v for k, v in config.to_dict().items() if k not in ("model_type", "attention_impl",
                                                                          "qk_layer_norm", "transformers_version")}
        fields.update(model_type="bert", architectures=["JinaBertForMaskedLM"], attn_implementation="torch",
                      auto_map={"AutoConfig": "jinaai/jina-bert-implementation--configuration_bert.JinaBertConfig"})
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(json.dumps(fields))
        return folder
    return write


def test_published_config_loads(tmp_path, published_config_dir):
    folder = published_config_dir(tiny_config(max_position_embeddings=8192), tmp_path / "pub")
    config = JinaBertConfig.from_pretrained(folder)
    assert config.model_type == "bembed_jinabert"
    assert (config.vocab_size, config.hidden_size, config.num_attention_heads) == (97, 48, 4)
    assert config.position_embedding_type == "alibi" and config.feed_forward_type == "geglu"
    assert not hasattr(config, "auto_map") or not config.auto_map
    plain_bert = json.loads((folder / "config.json").read_text())
    plain_bert["position_embedding_type"] = "absolute"
    (folder / "config.json").write_text(json.dumps(plain_bert))
    with pytest.raises(ValueError, match="plain BERT"):
        JinaBertConfig.from_pretrained(folder)


# ------------------------------------------------------------------------------------------------
# Loading and saving
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("prefix", ["", "bert."])
@pytest.mark.parametrize("qk_layer_norm", [False, True], ids=["de", "es"])
def test_published_fp16_checkpoint_roundtrip(tmp_path, published_config_dir, prefix, qk_layer_norm):
    model = JinaBertModel(tiny_config(qk_layer_norm=qk_layer_norm)).eval()
    folder = published_config_dir(model.config, tmp_path / "ckpt")
    tensors = {prefix + k: v.half() for k, v in model.state_dict().items()}
    tensors["cls.predictions.bias"] = torch.zeros(97, dtype=torch.float16)  # an MLM checkpoint's head
    tensors[prefix + "embeddings.position_ids"] = torch.arange(8192)[None]  # a buffer some exports carry
    save_file(tensors, folder / "model.safetensors")

    loaded, info = JinaBertModel.from_pretrained(folder, output_loading_info=True)
    assert info == {"missing_keys": [], "unexpected_keys": []}
    assert loaded.config.qk_layer_norm == qk_layer_norm  # detected from the weights when the config lacks it
    assert not loaded.training and loaded.dtype == torch.float32

    model.half().float()  # the same rounding the fp16 file applied
    ids, mask = ragged_batch([9, 4, 13])
    with torch.no_grad():
        assert torch.equal(loaded(ids, mask).last_hidden_state, model(ids, mask).last_hidden_state)


def test_save_pretrained_and_auto_classes_roundtrip(tmp_path):
    from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM

    mlm = JinaBertForMaskedLM(tiny_config()).eval()
    mlm.save_pretrained(tmp_path / "mlm")
    assert (tmp_path / "mlm" / "model.safetensors").is_file()
    assert not any(p.suffix in (".bin", ".pt", ".pkl") for p in (tmp_path / "mlm").iterdir())
    assert isinstance(AutoConfig.from_pretrained(tmp_path / "mlm"), JinaBertConfig)

    again = AutoModelForMaskedLM.from_pretrained(tmp_path / "mlm")
    assert isinstance(again, JinaBertForMaskedLM)
    assert again.cls.predictions.decoder.weight is again.bert.embeddings.word_embeddings.weight
    ids, mask = ragged_batch([7, 3])
    with torch.no_grad():
        assert torch.equal(again(ids, mask).logits, mlm(ids, mask).logits)

    base = AutoModel.from_pretrained(tmp_path / "mlm")  # the encoder of an MLM checkpoint (bert. prefix)
    assert isinstance(base, JinaBertModel)
    with torch.no_grad():
        assert torch.equal(base(ids, mask).last_hidden_state, mlm.bert(ids, mask).last_hidden_state)


def test_parts_a_model_has_no_use_for_are_left_out_with_a_log_line(tmp_path, caplog):
    """The encoder of an MLM checkpoint leaves its head (cls.*) out: expected, so no warning, but said (it was
    dropped without a word); nothing is said when nothing is left out, and an unknown part is a warning."""
    JinaBertForMaskedLM(tiny_config()).save_pretrained(tmp_path / "mlm")
    with caplog.at_level(logging.INFO, logger="bembed.model.loading"):
        JinaBertModel.from_pretrained(tmp_path / "mlm")
    assert [r.levelname for r in caplog.records] == ["INFO"]
    assert "cls.* left out (JinaBertModel has no such part)" in caplog.text
    caplog.clear()
    JinaBertModel.from_pretrained(tmp_path / "mlm").save_pretrained(tmp_path / "base")
    with caplog.at_level(logging.INFO, logger="bembed.model.loading"):
        JinaBertModel.from_pretrained(tmp_path / "base")
        JinaBertForMaskedLM.from_pretrained(tmp_path / "mlm")
    assert "left out" not in caplog.text


def test_missing_and_unexpected_keys_are_named(tmp_path, caplog):
    model = JinaBertModel(tiny_config())
    model.save_pretrained(tmp_path)
    from safetensors.torch import load_file

    tensors = load_file(tmp_path / "model.safetensors")
    del tensors["encoder.layer.1.mlp.wo.bias"]
    tensors["encoder.layer.1.mlp.extra.weight"] = torch.zeros(3)
    save_file(tensors, tmp_path / "model.safetensors")
    with caplog.at_level(logging.WARNING):
        JinaBertModel.from_pretrained(tmp_path)
    assert "encoder.layer.1.mlp.wo.bias" in caplog.text and "encoder.layer.1.mlp.extra.weight" in caplog.text
    with pytest.raises(ValueError, match=r"encoder\.layer\.1\.mlp\.wo\.bias"):
        JinaBertModel.from_pretrained(tmp_path, strict=True)


def test_loading_refuses_pickles_and_non_folders(tmp_path):
    JinaBertModel(tiny_config()).config.save_pretrained(tmp_path)
    (tmp_path / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ValueError, match="safetensors"):
        JinaBertModel.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="local folder"):
        JinaBertModel.from_pretrained(tmp_path / "absent")
    (tmp_path / "pytorch_model.bin").rename(tmp_path / "pytorch_model-00001-of-00002.bin")
    (tmp_path / "pytorch_model.bin.index.json").write_text("{}")  # sharded pickles: the same answer
    with pytest.raises(ValueError, match="only a pickle checkpoint"):
        JinaBertModel.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="safetensors only"):
        JinaBertModel(tiny_config()).save_pretrained(tmp_path / "out", safe_serialization=False)
    # weights without config.json: transformers would fall back to the default (base) architecture
    JinaBertModel(tiny_config()).save_pretrained(tmp_path / "no_config")
    (tmp_path / "no_config" / "config.json").unlink()
    with pytest.raises(ValueError, match="no config.json"):
        JinaBertModel.from_pretrained(tmp_path / "no_config")


def test_dtype_auto_reads_the_config_first_as_transformers_does(tmp_path):
    """dtype="auto" took the first stored tensor's dtype even where config.json names one (a released folder
    stores float32 weights under "torch_dtype": "bfloat16" or the reverse)."""
    import json

    JinaBertModel(tiny_config()).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    for key, value, want in (("torch_dtype", "bfloat16", torch.bfloat16), ("dtype", "float16", torch.float16),
                             (None, None, torch.float32)):
        config.pop("dtype", None), config.pop("torch_dtype", None)
        (tmp_path / "config.json").write_text(json.dumps({**config, **({key: value} if key else {})}))
        model = JinaBertModel.from_pretrained(tmp_path, dtype="auto")
        assert {p.dtype for p in model.parameters()} == {want}, key
    assert {p.dtype for p in JinaBertModel.from_pretrained(tmp_path).parameters()} == {torch.float32}


def test_save_pretrained_honours_or_refuses_the_hf_keywords(tmp_path):
    """The other ranks of a distributed run (is_main_process=False) write nothing; the keywords that would change
    which files are written are refused, not ignored."""
    model = JinaBertModel(tiny_config())
    model.save_pretrained(tmp_path / "rank1", is_main_process=False)
    assert not (tmp_path / "rank1").exists()
    for keyword, value in [("variant", "fp16"), ("save_function", torch.save), ("max_shard_size", "1GB")]:
        with pytest.raises(ValueError, match=keyword):
            model.save_pretrained(tmp_path / keyword, **{keyword: value})
        assert not (tmp_path / keyword).exists()
    model.save_pretrained(tmp_path / "main", is_main_process=True, variant=None, token=None)
    assert (tmp_path / "main" / "model.safetensors").is_file()


def test_subfolder_loads_the_weights_of_the_subfolder(tmp_path):
    """subfolder= was ignored: AutoModel read the config from the subfolder and bembed the weights from the
    root, so another model's weights loaded without a word."""
    from transformers import AutoModel

    torch.manual_seed(0)
    JinaBertModel(tiny_config()).save_pretrained(tmp_path)
    torch.manual_seed(1)
    inner = JinaBertModel(tiny_config())
    inner.save_pretrained(tmp_path / "encoder")
    want = inner.embeddings.word_embeddings.weight
    for loaded in (JinaBertModel.from_pretrained(tmp_path, subfolder="encoder"),
                   AutoModel.from_pretrained(tmp_path, subfolder="encoder")):
        assert torch.equal(loaded.embeddings.word_embeddings.weight, want)
