"""Embedder.from_pretrained and save_pretrained: prompts saved and applied, the sentence-transformers settings
a folder sets (length, normalisation, layout) read as sentence-transformers reads them, and folders that
would embed otherwise refused — on the tiny JinaBERT folder of encode_fixtures."""

import json

import numpy as np
import pytest
import torch

from bembed.encode import Embedder, load_encoder
from bembed.eval.encoder import check_encoder
from encode_fixtures import DOCUMENT, PROMPTS, TEXTS, embedder, folder, older_layout, tokenizer  # noqa: F401


def test_prompts_are_saved_and_applied(embedder, folder):
    saved = {**PROMPTS, "document": PROMPTS["passage"]}  # see the sentence-transformers test below
    assert json.loads((folder / "config_sentence_transformers.json").read_text())["prompts"] == saved
    assert embedder.prompts == saved
    text = TEXTS[0]
    query, document = embedder.encode_query([text]), embedder.encode_document([text])
    np.testing.assert_allclose(query, embedder.encode(["query: " + text]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(document, embedder.encode(["passage: " + text]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(embedder.encode([text], prompt_name="document"), document, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(embedder.encode([text], prompt_name="corpus"), document, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(embedder.encode([text], prompt="query: "), query, rtol=1e-5, atol=1e-6)
    assert not np.allclose(query, embedder.encode([text]), atol=1e-3)


def test_sentence_transformers_loads_the_saved_folder_with_its_prompts(embedder, folder):
    """README: the prompts are stored "so both libraries read the same prompts" — sentence-transformers reads
    them only from a folder with its modules.json, so save_pretrained writes a sentence-transformers folder.
    A "passage" prompt is saved as "document" too: sentence-transformers has an empty "document" prompt of its
    own that encode_document would take before "passage"."""
    st = pytest.importorskip("sentence_transformers").SentenceTransformer(str(folder), device="cpu")
    for name in [*PROMPTS, "document"]:
        np.testing.assert_allclose(st.encode(TEXTS[:4], prompt_name=name), embedder.encode(TEXTS[:4], prompt_name=name),
                                   rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(st.encode(TEXTS[:4]), embedder.encode(TEXTS[:4]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(st.encode_query(TEXTS[:4]), embedder.encode_query(TEXTS[:4]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(st.encode_document(TEXTS[:4]), embedder.encode_document(TEXTS[:4]),
                               rtol=1e-5, atol=1e-6)


def test_encode_query_and_document_take_an_explicit_prompt(embedder):
    """As in sentence-transformers, the query/document prompt is the default of encode_query/encode_document:
    a prompt or prompt_name given to them wins."""
    text = TEXTS[:2]
    custom = embedder.encode(text, prompt="Represent this: ")
    np.testing.assert_allclose(embedder.encode_query(text, prompt="Represent this: "), custom, rtol=0, atol=0)
    np.testing.assert_allclose(embedder.encode_document(text, prompt_name="query"), embedder.encode_query(text),
                               rtol=0, atol=0)


def test_without_prompts_the_standard_names_are_ignored(embedder):
    plain = Embedder(embedder.model, embedder.tokenizer)
    np.testing.assert_allclose(plain.encode_query(TEXTS[:2]), plain.encode(TEXTS[:2]), rtol=0, atol=0)
    np.testing.assert_allclose(plain.encode(TEXTS[:2], prompt_name="document"), plain.encode(TEXTS[:2]), rtol=0, atol=0)
    default = Embedder(embedder.model, embedder.tokenizer, prompts=PROMPTS, default_prompt_name="query")
    np.testing.assert_allclose(default.encode(TEXTS[:2]), plain.encode_query(TEXTS[:2], prompt="query: "),
                               rtol=1e-5, atol=1e-6)


def test_an_empty_document_prompt_gives_way_to_the_passage_prompt(embedder):
    """sentence-transformers 6 saves an E5-style folder's prompts as {"query": ..., "passage": ..., "document": ""}:
    documents went unprefixed where the model was trained with "passage: "."""
    e5 = Embedder(embedder.model, embedder.tokenizer,
                  prompts={"query": "query: ", "passage": "passage: ", "document": ""})
    want = embedder.encode(TEXTS[:2], prompt="passage: ")
    for got in (e5.encode_document(TEXTS[:2]), e5.encode(TEXTS[:2], prompt_name="document")):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(e5.encode_query(TEXTS[:2]), embedder.encode(TEXTS[:2], prompt="query: "),
                               rtol=1e-5, atol=1e-6)


def test_prompts_given_to_from_pretrained_are_merged_over_the_saved_ones(tmp_path, embedder):
    Embedder(embedder.model, embedder.tokenizer, prompts={"document": "passage: "},
             default_prompt_name="document").save_pretrained(tmp_path / "m")
    loaded = Embedder.from_pretrained(tmp_path / "m", device="cpu", prompts={"query": "q: "})
    assert loaded.prompts == {"document": "passage: ", "query": "q: "} and loaded.default_prompt_name == "document"
    replaced = Embedder.from_pretrained(tmp_path / "m", device="cpu", prompts={"document": "d: "},
                                        default_prompt_name=None)
    assert replaced.prompts == {"document": "d: "} and replaced.default_prompt_name == "document"


def test_a_new_passage_prompt_replaces_the_saved_document_copy(folder, embedder):
    """save_pretrained writes "document" as a copy of "passage" (encode_document takes "document" first): a
    passage prompt given to from_pretrained left that copy in place, so documents kept the old prefix."""
    loaded = Embedder.from_pretrained(folder, device="cpu", prompts={"passage": "Represent the document: "})
    assert loaded.prompts["document"] == loaded.prompts["passage"] == "Represent the document: "
    np.testing.assert_allclose(loaded.encode_document(TEXTS[:2]),
                               embedder.encode(TEXTS[:2], prompt="Represent the document: "), rtol=1e-5, atol=1e-6)
    both = Embedder.from_pretrained(folder, device="cpu", prompts={"passage": "p: ", "document": "d: "})
    assert (both.prompts["passage"], both.prompts["document"]) == ("p: ", "d: ")  # both given: as given


def test_none_for_a_folder_setting_keeps_the_folders_value(tmp_path, embedder):
    """None means "the default" everywhere in encode; from_pretrained took an explicit None as a value (8192
    tokens, and bool(None): unnormalised vectors)."""
    from bembed.model.export import export_sentence_transformers

    path = export_sentence_transformers(embedder.model, embedder.tokenizer, tmp_path / "st", max_seq_length=16)
    loaded = Embedder.from_pretrained(path, device="cpu", max_seq_length=None, normalize_embeddings=None)
    assert loaded.max_seq_length == 16 and loaded.normalize_embeddings is True
    with pytest.raises(TypeError, match="normalize_embeddings must be a bool, got None"):
        Embedder(embedder.model, embedder.tokenizer, normalize_embeddings=None)
    (path / "modules.json").unlink()  # a plain Hugging Face folder: None is Embedder's default there
    assert Embedder.from_pretrained(path, device="cpu", normalize_embeddings=None).normalize_embeddings is True


def test_folder_errors_name_what_is_wrong(tmp_path, embedder):
    from bembed.model.export import export_sentence_transformers

    path = export_sentence_transformers(embedder.model, embedder.tokenizer, tmp_path / "st")
    with pytest.raises(ValueError, match="device 'bogus' is not a torch device"):
        Embedder.from_pretrained(path, device="bogus")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device 'cuda': this torch has no usable CUDA device"):
            Embedder.from_pretrained(path, device="cuda")
    config = path / "sentence_bert_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "do_lower_case": True}))
    with pytest.raises(ValueError, match="sets do_lower_case, which bembed does not do"):  # ignored: other vectors
        Embedder.from_pretrained(path, device="cpu")


def test_encode_query_and_document_never_fall_back_to_the_default_prompt(embedder):
    """As sentence-transformers: a model whose only prompt is its default document prompt embeds queries with no
    prompt, not with the document prompt."""
    documents_only = Embedder(embedder.model, embedder.tokenizer, prompts={"document": "passage: "},
                              default_prompt_name="document")
    np.testing.assert_allclose(documents_only.encode_query(TEXTS[:2]), embedder.encode(TEXTS[:2], prompt=""),
                               rtol=1e-5, atol=1e-6)
    queries_only = Embedder(embedder.model, embedder.tokenizer, prompts={"query": "query: "},
                            default_prompt_name="query")
    np.testing.assert_allclose(queries_only.encode_document(TEXTS[:2]), embedder.encode(TEXTS[:2], prompt=""),
                               rtol=1e-5, atol=1e-6)


def test_satisfies_the_eval_encoder_interface(folder):
    encoder = load_encoder(folder, device="cpu")
    check_encoder(encoder)
    rows = encoder.encode(TEXTS[:3], prompt_name="query", batch_size=2)
    assert isinstance(rows, np.ndarray) and rows.shape == (3, 48)


def test_reference_path_gives_the_same_vectors(folder, embedder):
    reference = Embedder.from_pretrained(folder, device="cpu", attention_impl="reference")
    assert reference.model.config.attention_impl == "reference" and embedder.model.config.attention_impl == "bembed"
    np.testing.assert_allclose(reference.encode(TEXTS, batch_size=4), embedder.encode(TEXTS), rtol=1e-4, atol=1e-5)


def test_loads_a_sentence_transformers_export(tmp_path, folder, embedder):
    """The training stages hand over sentence-transformers folders; Embedder reads them as they are."""
    from bembed.model.export import export_sentence_transformers

    path = export_sentence_transformers(embedder.model, embedder.tokenizer, tmp_path / "st")
    loaded = Embedder.from_pretrained(path, device="cpu")
    assert loaded.prompts == {}
    np.testing.assert_allclose(loaded.encode(TEXTS[:4]), embedder.encode(TEXTS[:4]), rtol=1e-5, atol=1e-6)


def test_loads_the_older_sentence_transformers_layout(tmp_path, folder, embedder):
    """sentence-transformers folders of the older layout keep the transformer (config, weights, tokenizer and
    sentence_bert_config.json) in the Transformer module's folder, `0_Transformer/`, named by modules.json:
    sentence-transformers loads them, bembed said "no config.json"."""
    import json

    old = older_layout(folder, tmp_path / "old")
    settings = json.loads((old / "0_Transformer" / "sentence_bert_config.json").read_text())
    (old / "0_Transformer" / "sentence_bert_config.json").write_text(json.dumps({**settings, "max_seq_length": 12}))
    loaded = Embedder.from_pretrained(old, device="cpu")
    assert loaded.max_seq_length == 12 and loaded.prompts == embedder.prompts
    want = embedder.encode(TEXTS[:4], max_length=12, prompt_name="query")
    np.testing.assert_allclose(loaded.encode(TEXTS[:4], prompt_name="query"), want, rtol=1e-5, atol=1e-6)
    st = pytest.importorskip("sentence_transformers").SentenceTransformer(str(old), device="cpu")
    np.testing.assert_allclose(st.encode(TEXTS[:4], prompt_name="query"), want, rtol=1e-5, atol=1e-6)


def test_the_sentence_transformers_settings_of_a_folder_are_read_and_saved(tmp_path, embedder):
    """A folder's max_seq_length (sentence_bert_config.json) and Normalize module (modules.json) are what
    sentence-transformers applies; Embedder applies them too, and writes them back when saving."""
    from bembed.model.export import export_sentence_transformers

    path = export_sentence_transformers(embedder.model, embedder.tokenizer, tmp_path / "st", max_seq_length=16,
                                        normalize=False)
    loaded = Embedder.from_pretrained(path, device="cpu")
    assert loaded.max_seq_length == 16 and not loaded.normalize_embeddings
    want = embedder.encode(TEXTS, max_length=16, normalize_embeddings=False)
    np.testing.assert_allclose(loaded.encode(TEXTS), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(loaded.encode_chunks(DOCUMENT, chunk_spans=[(0, 30)]),
                               embedder.encode_chunks(DOCUMENT, chunk_spans=[(0, 30)], max_length=16,
                                                      normalize_embeddings=False), rtol=1e-5, atol=1e-6)
    resaved = Embedder.from_pretrained(loaded.save_pretrained(tmp_path / "again"), device="cpu")
    assert resaved.max_seq_length == 16 and not resaved.normalize_embeddings
    st = pytest.importorskip("sentence_transformers").SentenceTransformer(str(path), device="cpu")
    np.testing.assert_allclose(st.encode(TEXTS), loaded.encode(TEXTS), rtol=1e-5, atol=1e-5)


def test_a_folder_without_max_seq_length_takes_the_tokenizers_limit(tmp_path, embedder):
    """sentence-transformers 6 saves the length limit as the tokenizer's model_max_length, not in
    sentence_bert_config.json, and caps max_position_embeddings by it; so does Embedder."""
    from bembed.model.export import export_sentence_transformers

    path = export_sentence_transformers(embedder.model, embedder.tokenizer, tmp_path / "st", max_seq_length=20)
    (path / "sentence_bert_config.json").write_text('{"do_lower_case": false}')
    settings = json.loads((path / "tokenizer_config.json").read_text())
    (path / "tokenizer_config.json").write_text(json.dumps({**settings, "model_max_length": 20}))
    loaded = Embedder.from_pretrained(path, device="cpu")
    assert loaded.max_seq_length == 20
    np.testing.assert_allclose(loaded.encode(TEXTS), embedder.encode(TEXTS, max_length=20), rtol=1e-5, atol=1e-6)
    st = pytest.importorskip("sentence_transformers").SentenceTransformer(str(path), device="cpu")
    assert st.max_seq_length == 20
    np.testing.assert_allclose(st.encode(TEXTS), loaded.encode(TEXTS), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("pooling, accepted", [
    ({"pooling_mode": "mean", "include_prompt": True}, True),  # sentence-transformers >= 6
    ({"pooling_mode": ["mean"]}, True),
    ({"pooling_mode_mean_tokens": True, "pooling_mode_cls_token": False}, True),  # earlier releases
    ({"pooling_mode": "cls"}, False),
    ({"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}, False),
    ({"pooling_mode": ["mean", "max"]}, False),
    ({"pooling_mode": "mean", "include_prompt": False}, False),
])
def test_a_folder_asking_for_other_pooling_is_refused(tmp_path, embedder, pooling, accepted):
    path = embedder.save_pretrained(tmp_path / "st")
    (path / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 48, **pooling}))
    if accepted:
        assert Embedder.from_pretrained(path, device="cpu").dim == 48
    else:
        with pytest.raises(ValueError, match="bembed pools by the mean over all tokens"):
            Embedder.from_pretrained(path, device="cpu")


def test_a_folder_with_a_dense_module_is_refused(tmp_path, embedder):
    path = embedder.save_pretrained(tmp_path / "st")
    modules = json.loads((path / "modules.json").read_text())
    modules.append({"idx": 3, "name": "3", "path": "3_Dense", "type": "sentence_transformers.models.Dense"})
    (path / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(ValueError, match="'3_Dense' is a Dense"):
        Embedder.from_pretrained(path, device="cpu")


def test_a_folder_without_a_tokenizer_says_so(tmp_path, folder):
    """transformers' own error for it suggested installing sentencepiece or tiktoken."""
    import shutil

    bare = tmp_path / "bare"
    shutil.copytree(folder, bare)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (bare / name).unlink(missing_ok=True)
    with pytest.raises(ValueError, match="no tokenizer in the folder"):
        Embedder.from_pretrained(bare, device="cpu")
