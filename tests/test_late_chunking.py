"""Late chunking's character ↔ token mapping where it can slip: trailing whitespace, whose trimmed tokens have
empty offsets at the end of the text, and characters that byte-level BPE splits into several tokens."""

import numpy as np
import pytest
import torch

import bembed
from bembed import late_chunking
from bembed.encode import Embedder
from bembed.tokenizer import model_config_kwargs, train_bilingual_tokenizer


@pytest.fixture(scope="module")
def embedder():
    tokenizer = train_bilingual_tokenizer(["the house is red and blue"] * 20, ["das Haus ist rot und blau"] * 20, 300)
    torch.manual_seed(0)
    config = bembed.JinaBertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                   hidden_dropout_prob=0.0, **model_config_kwargs(tokenizer))
    return Embedder(bembed.JinaBertModel(config), tokenizer)


@pytest.mark.parametrize("document", ["Haus ist rot ", "Haus ist rot  ", " Haus ist rot und blau\n "])
def test_whole_document_chunk_with_trailing_whitespace_is_encode(embedder, document):
    """A trailing space's token has the empty offsets (len, len): it must still fall inside (0, len), or the
    last chunk loses it and the trailing special token."""
    whole = embedder.encode_chunks(document, chunk_spans=[(0, len(document))])[0]
    np.testing.assert_allclose(whole, embedder.encode(document), rtol=1e-5, atol=1e-6)
    vectors, spans = embedder.encode_chunks(document, chunk_size=1, return_spans=True)
    assert spans[-1][1] == len(document)  # the returned spans are valid chunk_spans of the document
    np.testing.assert_allclose(embedder.encode_chunks(document, chunk_spans=spans), vectors, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("document", ["Haus 🙂 ist rot", "Haus  ist  🙂🙂 rot ő", "¡Qué día! Haus ist rot und blau  "])
@pytest.mark.parametrize("chunk_size", [1, 2, 3])
def test_size_spans_map_back_to_disjoint_ranges_covering_every_token(embedder, document, chunk_size):
    """An emoji is four byte tokens with the same offsets: a chunk must not end among them, or the chunks
    around it overlap and repeat (chunk_size=2 gave the spans (5, 6), (5, 6), (5, 10) for the first text)."""
    offsets = embedder.tokenizer(document, return_offsets_mapping=True)["offset_mapping"]
    n = len(offsets)
    spans = late_chunking.size_spans(offsets, 1, n - 1, 0, chunk_size)
    late_chunking.check_spans(spans, len(document))
    ranges = late_chunking.token_ranges(offsets, 1, n - 1, 0, spans)
    assert ranges[0][0] == 0 and ranges[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:])), ranges
    assert all(hi - lo >= min(chunk_size, n - 2) for lo, hi in ranges[:-1])


@pytest.mark.parametrize("prompt", ["", "query: "])
def test_chunks_under_a_prompt_and_a_cut_are_the_documents_own(embedder, prompt):
    """With a prompt the document's tokens are shifted by the prompt's: the returned spans must still be
    character spans of the document (disjoint, within it, covering it) and give back the same vectors; a chunk
    spanning the whole document is encode(document) under that prompt, also when max_length cuts it. An empty
    span is refused. (Mutation review: the prompt shift and the cut were not tested.)"""
    document = "Haus ist rot und blau. " * 6
    vectors, spans = embedder.encode_chunks(document, chunk_size=3, prompt=prompt, return_spans=True)
    assert spans[0][0] == 0 and spans[-1][1] <= len(document)
    assert all(a[1] <= b[0] and a[0] < a[1] for a, b in zip(spans, spans[1:])), spans
    np.testing.assert_allclose(embedder.encode_chunks(document, chunk_spans=spans, prompt=prompt), vectors,
                               rtol=1e-5, atol=1e-6)
    whole = embedder.encode_chunks(document, chunk_spans=[(0, len(document))], prompt=prompt)[0]
    np.testing.assert_allclose(whole, embedder.encode(document, prompt=prompt), rtol=1e-5, atol=1e-6)
    cut = embedder.encode_chunks(document, chunk_spans=[(0, len(document))], prompt=prompt, max_length=16)[0]
    np.testing.assert_allclose(cut, embedder.encode(document, prompt=prompt, max_length=16), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError):
        embedder.encode_chunks(document, chunk_spans=[(5, 5)])
