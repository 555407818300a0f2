"""The sentence-transformers export: SentenceTransformer(path) loads it without remote code (after
`import bembed`) and gives bembed's embeddings."""

import json

import pytest
import torch

import bembed
from bembed.model.export import export_sentence_transformers
from bembed.tokenizer import model_config_kwargs, train_bilingual_tokenizer

sentence_transformers = pytest.importorskip("sentence_transformers")

TEXTS = ["Über den Wolken muss die Freiheit wohl grenzenlos sein.", "¿Dónde está la canción del niño?", "kurz",
         "Größe, Straße und Mädchen; el corazón pequeño de la montaña en España."]


@pytest.fixture(scope="module")
def tokenizer():
    german = [t for t in TEXTS * 20] + ["Die Bäume grünen und die Vögel singen fröhlich."] * 20
    spanish = ["El niño comió una manzana en la montaña.", "¡Qué día más bonito!"] * 20
    return train_bilingual_tokenizer(german, spanish, 300, min_frequency=1)


@pytest.mark.parametrize("qk_layer_norm", [False, True], ids=["de", "es"])
def test_sentence_transformers_loads_export_and_matches_bembed(tmp_path, tokenizer, qk_layer_norm):
    config = bembed.JinaBertConfig(hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                                   intermediate_size=80, qk_layer_norm=qk_layer_norm, **model_config_kwargs(tokenizer))
    model = bembed.JinaBertModel(config).eval()
    path = export_sentence_transformers(model, tokenizer, tmp_path / "export")

    modules = json.loads((path / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[-1] for m in modules] == ["Transformer", "Pooling", "Normalize"]
    assert json.loads((path / "config.json").read_text())["model_type"] == "bembed_jinabert"

    st = sentence_transformers.SentenceTransformer(str(path), device="cpu")
    assert isinstance(st[0].auto_model, bembed.JinaBertModel)
    got = st.encode(TEXTS, convert_to_tensor=True, batch_size=3)

    encoded = tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        want = model.embed(encoded.input_ids, encoded.attention_mask)
    torch.testing.assert_close(got.cpu(), want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got.norm(dim=-1), torch.ones(len(TEXTS)))


def test_export_takes_only_the_encoder(tmp_path, tokenizer):
    mlm = bembed.JinaBertForMaskedLM(bembed.JinaBertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                                           intermediate_size=32, **model_config_kwargs(tokenizer)))
    with pytest.raises(TypeError, match=r"\.bert"):
        export_sentence_transformers(mlm, tokenizer, tmp_path / "bad")
    path = export_sentence_transformers(mlm.bert, tokenizer, tmp_path / "good", normalize=False, max_seq_length=512)
    st = sentence_transformers.SentenceTransformer(str(path), device="cpu")
    assert st.max_seq_length == 512 and len(st) == 2
