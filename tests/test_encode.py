"""bembed.Embedder.encode: order, batching and padding invariance, long texts, bad inputs, outputs, late
chunking — on a tiny random JinaBERT with a tiny tokenizer trained here. Loading and saving folders (prompts,
sentence-transformers settings): test_encode_folders.py."""

import logging

import numpy as np
import pytest
import torch

import bembed
from bembed.encode import Embedder
from bembed.tokenizer import model_config_kwargs
from encode_fixtures import DOCUMENT, GERMAN, PROMPTS, SPANISH, TEXTS, embedder, folder, tokenizer  # noqa: F401


def _reference_embeddings(embedder, texts):
    """The texts in input order, one padded batch through the model's reference path (materialised bias)."""
    encoded = embedder.tokenizer(texts, padding=True, return_tensors="pt")
    embedder.model.config.attention_impl = "reference"
    try:
        with torch.no_grad():
            return embedder.model.embed(encoded.input_ids, encoded.attention_mask).numpy()
    finally:
        embedder.model.config.attention_impl = "bembed"


def test_rows_match_the_padded_reference_in_input_order(embedder):
    got = embedder.encode(TEXTS, batch_size=4)
    assert got.shape == (len(TEXTS), 48) and got.dtype == np.float32
    np.testing.assert_allclose(got, _reference_embeddings(embedder, TEXTS), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-5)


def test_order_is_restored_for_any_permutation(embedder):
    base = embedder.encode(TEXTS)
    perm = np.random.default_rng(0).permutation(len(TEXTS))
    np.testing.assert_allclose(embedder.encode([TEXTS[i] for i in perm]), base[perm], rtol=1e-5, atol=1e-6)


def test_batch_size_does_not_change_the_vectors(embedder):
    texts = TEXTS
    one, many = embedder.encode(texts, batch_size=1), embedder.encode(texts, batch_size=64)
    np.testing.assert_allclose(one, many, rtol=0, atol=1e-5)
    assert len(embedder._batches([len(t) for t in texts], 1)) > len(embedder._batches([len(t) for t in texts], 64))


def test_padding_does_not_change_a_row(embedder):
    """A short text batched with long ones (the padded reference path pads it) equals the text alone."""
    short = "kurz"
    alone = embedder.encode([short])
    with_long = embedder.encode([short, "Größe " * 200, TEXTS[0]])
    np.testing.assert_allclose(with_long[0], alone[0], rtol=1e-5, atol=1e-6)
    embedder.model.config.attention_impl = "reference"
    try:
        padded = embedder.encode([short, "Größe " * 200, TEXTS[0]])
    finally:
        embedder.model.config.attention_impl = "bembed"
    np.testing.assert_allclose(padded, with_long, rtol=1e-4, atol=1e-5)


def test_batches_follow_a_token_budget(embedder):
    lengths = [4000, 3000, 10, 10, 10, 10, 10, 10, 10, 10]
    batches = embedder._batches(lengths, batch_size=4)  # budget 4 × median 10 = 40 tokens
    assert batches[0] == [0] and batches[1] == [1]
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert all(len(b) == 4 for b in batches[2:4])


def test_empty_whitespace_single_token_and_scripts(embedder):
    texts = ["", "   ", "a", "Привет", "你好"]
    got = embedder.encode(texts, normalize_embeddings=False)
    assert np.isfinite(got).all() and (np.linalg.norm(got, axis=1) > 0).all()
    specials = embedder.tokenizer("")["input_ids"]
    assert specials == [embedder.tokenizer.bos_token_id, embedder.tokenizer.eos_token_id]
    with torch.no_grad():
        want = embedder.model.embed(torch.tensor([specials]), normalize_embeddings=False)[0].numpy()
    np.testing.assert_allclose(got[0], want, rtol=1e-5, atol=1e-6)  # "" = the embedding of <s></s>
    assert not np.allclose(got[1], got[0])  # whitespace is tokens, not nothing


def test_long_texts_warn_once_naming_the_count(embedder, caplog):
    long = ["Größe Straße " * 100, "El corazón " * 150, TEXTS[0]]
    n_tokens = [len(embedder.tokenizer(t)["input_ids"]) for t in long]
    assert n_tokens[0] > 64 and n_tokens[1] > 64 and n_tokens[2] < 64
    with caplog.at_level(logging.WARNING, logger="bembed.encode"):
        got = embedder.encode(long, max_length=64)
    warnings = [r for r in caplog.records if r.name == "bembed.encode"]
    assert len(warnings) == 1 and "2 of 3 texts" in warnings[0].getMessage() and "64" in warnings[0].getMessage()
    ids = embedder.tokenizer(long[0])["input_ids"]
    cut = ids[:63] + ids[-1:]  # the first 62 text tokens between <s> and </s>
    with torch.no_grad():
        want = embedder.model.embed(torch.tensor([cut]))[0].numpy()
    np.testing.assert_allclose(got[0], want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got[2], embedder.encode([TEXTS[0]])[0], rtol=1e-5, atol=1e-6)
    # a text of exactly max_length tokens (specials included) is whole: no warning, nothing cut
    exact = len(embedder.tokenizer(TEXTS[0])["input_ids"])
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="bembed.encode"):
        whole = embedder.encode([TEXTS[0]], max_length=exact, truncate=False)
    assert not [r for r in caplog.records if r.name == "bembed.encode"]
    np.testing.assert_allclose(whole[0], embedder.encode([TEXTS[0]])[0], rtol=1e-5, atol=1e-6)


def test_truncate_false_averages_windows_over_all_tokens(embedder):
    text = "Größe Straße " * 20
    ids = embedder.tokenizer(text)["input_ids"]
    head, body, tail = ids[:1], ids[1:-1], ids[-1:]
    windows = [head + body[i:i + 30] + tail for i in range(0, len(body), 30)]
    assert len(windows) > 3 and len(windows[-1]) < 32
    padded = torch.tensor([w + [embedder.tokenizer.pad_token_id] * (32 - len(w)) for w in windows])
    mask = torch.tensor([[1] * len(w) + [0] * (32 - len(w)) for w in windows])
    with torch.no_grad():
        states = embedder.model(padded, mask).last_hidden_state[mask.bool()]
    want = torch.nn.functional.normalize(states.mean(0), dim=0).numpy()
    got = embedder.encode([text, "kurz"], max_length=32, truncate=False)
    np.testing.assert_allclose(got[0], want, rtol=1e-5, atol=1e-6)
    # unnormalised, a mean over windows instead of over tokens shows (normalising hides a scale)
    raw = embedder.encode(text, max_length=32, truncate=False, normalize_embeddings=False)
    np.testing.assert_allclose(raw, states.mean(0).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got[1], embedder.encode("kurz"), rtol=1e-5, atol=1e-6)


def test_truncate_false_puts_the_prompt_in_every_window(embedder):
    text, prefix = "Größe Straße " * 20, PROMPTS["query"]
    encoded = embedder.tokenizer(prefix + text, return_offsets_mapping=True)
    ids = encoded["input_ids"]
    n_prompt = sum(1 for s, e in encoded["offset_mapping"][1:-1] if e <= len(prefix))
    head, body, tail = ids[:1 + n_prompt], ids[1 + n_prompt:-1], ids[-1:]
    width = 32 - len(head) - len(tail)
    windows = [head + body[i:i + width] + tail for i in range(0, len(body), width)]
    assert len(windows) > 3
    padded = torch.tensor([w + [embedder.tokenizer.pad_token_id] * (32 - len(w)) for w in windows])
    mask = torch.tensor([[1] * len(w) + [0] * (32 - len(w)) for w in windows])
    with torch.no_grad():
        states = embedder.model(padded, mask).last_hidden_state[mask.bool()]
    want = torch.nn.functional.normalize(states.mean(0), dim=0).numpy()
    np.testing.assert_allclose(embedder.encode(text, prompt_name="query", max_length=32, truncate=False), want,
                               rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="no room for text"):
        embedder.encode(text, prompt="a prompt longer than the window " * 2, max_length=32, truncate=False)


@pytest.mark.parametrize("bad, index", [(["ok", None], 1), (["ok", "fine", 3], 2), ([b"bytes"], 0)])
def test_non_string_items_raise_naming_the_index(embedder, bad, index):
    with pytest.raises(TypeError, match=rf"texts\[{index}\]"):
        embedder.encode(bad)


def test_a_lone_surrogate_is_named_by_its_index(embedder):
    """The tokenizer's TypeError ("TextEncodeInput must be Union[...]") named neither the text nor the problem;
    encode_chunks passed it on as it was."""
    with pytest.raises(ValueError, match=r"texts\[1\] is not valid Unicode \(surrogates not allowed at character 3"):
        embedder.encode(["fine", "bad\ud800", "fine too"])
    with pytest.raises(ValueError, match=r"^document is not valid Unicode \(surrogates not allowed at character 3"):
        embedder.encode_chunks("bad\ud800 text", chunk_size=2)


def test_bad_arguments_are_named(embedder):
    with pytest.raises(TypeError, match="texts"):
        embedder.encode(42)
    with pytest.raises(ValueError, match="batch_size"):
        embedder.encode(["a"], batch_size=0)
    with pytest.raises(TypeError, match="batch_size"):
        embedder.encode(["a"], batch_size=2.0)
    with pytest.raises(ValueError, match="max_length"):
        embedder.encode(["a"], max_length=2)  # the two specials leave no room for text
    with pytest.raises(ValueError, match="prompt_name 'nope'"):
        embedder.encode(["a"], prompt_name="nope")
    with pytest.raises(TypeError, match=r"\.bert"):
        Embedder(bembed.JinaBertForMaskedLM(embedder.model.config), embedder.tokenizer)
    with pytest.raises(ValueError, match="not a local folder"):
        Embedder.from_pretrained("/no/such/folder")


def test_sentence_transformers_keywords_and_methods(embedder, caplog):
    """What code written for sentence-transformers passes: inputs=/sentences=, truncate_dim (sliced before
    normalising), similarity (cosine), max_seq_length, and prompt with prompt_name (prompt wins, with a warning)."""
    want = embedder.encode(TEXTS[:2])
    np.testing.assert_allclose(embedder.encode(sentences=TEXTS[:2]), want, rtol=0, atol=0)
    np.testing.assert_allclose(embedder.encode(inputs=TEXTS[:2], batch_size=1), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(embedder.encode_query(sentences=TEXTS[:2]), embedder.encode_query(TEXTS[:2]),
                               rtol=0, atol=0)
    with pytest.raises(TypeError, match="once"):
        embedder.encode(TEXTS[:2], sentences=TEXTS[:2])

    raw = embedder.encode(TEXTS[:3], normalize_embeddings=False)[:, :16]
    short = embedder.encode(TEXTS[:3], truncate_dim=16)
    np.testing.assert_allclose(short, raw / np.linalg.norm(raw, axis=1, keepdims=True), rtol=1e-5, atol=1e-6)
    assert embedder.encode(TEXTS[0], truncate_dim=16, precision="ubinary").shape == (2,)

    cosine = embedder.similarity(short, torch.from_numpy(raw[:2]))
    assert isinstance(cosine, torch.Tensor) and cosine.shape == (3, 2)
    torch.testing.assert_close(cosine, torch.from_numpy(short @ short[:2].T), rtol=1e-5, atol=1e-6)
    assert embedder.similarity(short[0], short[1]).shape == (1, 1)
    rows = embedder.encode(TEXTS[:3], truncate_dim=16, convert_to_numpy=False)  # a list of row tensors
    torch.testing.assert_close(embedder.similarity(rows, rows[:2]), cosine, rtol=1e-5, atol=1e-6)
    with pytest.raises(TypeError, match="normalize_embeddings must be a bool or None, got 'false'"):
        embedder.encode(TEXTS[:2], normalize_embeddings="false")  # a non-empty string was a silent True

    assert embedder.max_seq_length == embedder.model.config.max_position_embeddings
    embedder.max_seq_length = 8
    np.testing.assert_allclose(embedder.encode(TEXTS[0]), embedder.encode(TEXTS[0], max_length=8), rtol=0, atol=0)
    with pytest.raises(ValueError, match="max_seq_length must be >= 3, got 1"):  # where it is set, by its name
        embedder.max_seq_length = 1
    assert embedder.max_seq_length == 8

    with caplog.at_level(logging.WARNING, logger="bembed.encode"):
        both = embedder.encode(TEXTS[:2], prompt="", prompt_name="query")
    np.testing.assert_allclose(both, embedder.encode(TEXTS[:2], max_length=8), rtol=0, atol=0)
    assert "prompt_name 'query' is ignored" in caplog.text


def test_output_types(embedder):
    as_numpy = embedder.encode(TEXTS[:3])
    as_tensor = embedder.encode(TEXTS[:3], convert_to_tensor=True)
    as_list = embedder.encode(TEXTS[:3], convert_to_numpy=False)
    single = embedder.encode(TEXTS[0])
    assert isinstance(as_tensor, torch.Tensor) and as_tensor.dtype == torch.float32 and as_tensor.shape == (3, 48)
    assert isinstance(as_list, list) and len(as_list) == 3 and as_list[0].shape == (48,)
    np.testing.assert_allclose(as_tensor.numpy(), as_numpy, rtol=0, atol=0)
    np.testing.assert_allclose(torch.stack(as_list).numpy(), as_numpy, rtol=0, atol=0)
    assert single.shape == (48,)
    np.testing.assert_allclose(single, as_numpy[0], rtol=1e-5, atol=1e-6)
    assert embedder.encode([]).shape == (0, 48)
    raw = embedder.encode(TEXTS[:3], normalize_embeddings=False)
    np.testing.assert_allclose(raw / np.linalg.norm(raw, axis=1, keepdims=True), as_numpy, rtol=1e-5, atol=1e-6)


def test_device_moves_the_model_before_encoding_and_it_stays_there(embedder):
    """encode(device=...) as sentence-transformers: the model moves first, and the rows come from there. Seen
    on a CPU machine through the meta device, which every op of the encode path supports."""
    rows = embedder.encode(TEXTS[:3], device="meta", convert_to_tensor=True)
    assert rows.device.type == "meta" and rows.shape == (3, 48)
    assert embedder.device.type == "meta"


def test_encoding_runs_without_dropout_and_keeps_the_model_mode(embedder):
    """A training loop that evaluates through an Embedder keeps its model in train(): making the Embedder
    leaves it so, and encode and encode_chunks must still be deterministic (sentence-transformers' encode runs in
    eval mode too) and hand the model back in train mode."""
    config = bembed.JinaBertConfig.from_dict({**embedder.model.config.to_dict(), "hidden_dropout_prob": 0.5})
    model = bembed.JinaBertModel(config)
    model.load_state_dict(embedder.model.state_dict())
    model.train()
    training = Embedder(model, embedder.tokenizer)
    assert model.training
    np.testing.assert_allclose(training.encode(TEXTS[:3]), embedder.encode(TEXTS[:3]), rtol=1e-5, atol=1e-6)
    chunks = training.encode_chunks(TEXTS[0], chunk_size=4)
    np.testing.assert_allclose(chunks, embedder.encode_chunks(TEXTS[0], chunk_size=4), rtol=1e-5, atol=1e-6)
    assert model.training
    model.eval()  # and a model in eval mode stays there (dropout would turn on for the caller's next forward)
    training.encode(TEXTS[:3])
    training.encode_chunks(TEXTS[0], chunk_size=4)
    assert not model.training and not any(m.training for m in model.modules())


def test_concurrent_encodes_keep_dropout_off_until_the_last_ends(embedder, monkeypatch):
    """Two threads encoding with one model in train(): the first to finish gave the model its train mode back
    while the other was still running (with dropout on), and the other then left the model in eval()."""
    import threading

    model = bembed.JinaBertModel(embedder.model.config)
    model.train()
    shared = Embedder(model, embedder.tokenizer)
    first_inside, second_inside, first_done, modes = (threading.Event(), threading.Event(), threading.Event(), [])
    forward_packed = model.forward_packed

    def observed(*args, **kwargs):
        if threading.current_thread().name == "first":
            first_inside.set()
            second_inside.wait(timeout=30)
        else:
            second_inside.set()
            first_done.wait(timeout=30)  # the first encode has ended: its model mode handling ran
        modes.append((threading.current_thread().name, model.training))
        return forward_packed(*args, **kwargs)

    monkeypatch.setattr(model, "forward_packed", observed)
    first = threading.Thread(target=shared.encode, args=(["one text"],), name="first")
    second = threading.Thread(target=shared.encode, args=(["another text"],), name="second")
    first.start()
    first_inside.wait(timeout=30)
    second.start()
    first.join()
    first_done.set()
    second.join()
    assert sorted(modes) == [("first", False), ("second", False)]
    assert model.training  # back in train() once both ended


def test_a_chunk_spanning_the_document_is_the_document_embedding(embedder):
    whole = embedder.encode_chunks(DOCUMENT, chunk_spans=[(0, len(DOCUMENT))])
    assert whole.shape == (1, 48)
    np.testing.assert_allclose(whole[0], embedder.encode(DOCUMENT), rtol=1e-5, atol=1e-6)


def test_late_chunks_pool_their_spans_of_the_whole_document(embedder):
    spans, start = [], 0
    for sentence in GERMAN + SPANISH:
        spans.append((start, start + len(sentence)))
        start += len(sentence) + 1
    chunks = embedder.encode_chunks(DOCUMENT, chunk_spans=spans, normalize_embeddings=False)
    assert chunks.shape == (len(spans), 48)
    encoded = embedder.tokenizer(DOCUMENT, return_offsets_mapping=True)
    with torch.no_grad():
        states = embedder.model(torch.tensor([encoded.input_ids])).last_hidden_state[0]
    offsets = encoded.offset_mapping
    n = len(offsets)
    for i, (s, e) in enumerate(spans):
        tokens = [t for t in range(1, n - 1) if offsets[t][0] < e and max(offsets[t][1], offsets[t][0] + 1) > s]
        tokens = ([0] if tokens[0] == 1 else []) + tokens + ([n - 1] if tokens[-1] == n - 2 else [])
        np.testing.assert_allclose(chunks[i], states[tokens].mean(0).numpy(), rtol=1e-5, atol=1e-5)
    alone = embedder.encode(GERMAN + SPANISH, normalize_embeddings=False)
    assert not np.allclose(chunks, alone, atol=1e-3)  # context from the rest of the document changes each chunk


def test_chunk_size_and_returned_spans(embedder):
    vectors, spans = embedder.encode_chunks(DOCUMENT, chunk_size=16, return_spans=True)
    n_text = len(embedder.tokenizer(DOCUMENT)["input_ids"]) - 2
    assert len(spans) == vectors.shape[0] <= -(-n_text // 16)  # fewer when a chunk would end inside a character
    assert spans[0][0] == 0 and spans[-1][1] == len(DOCUMENT)
    np.testing.assert_allclose(embedder.encode_chunks(DOCUMENT, chunk_spans=spans), vectors, rtol=1e-5, atol=1e-6)


def test_numpy_integers_are_ints(embedder):
    """Spans from np.cumsum of sentence lengths and sizes from a numpy grid are ordinary integer arguments."""
    lengths = np.array([len(s) + 1 for s in GERMAN + SPANISH])
    ends = np.minimum(np.cumsum(lengths), len(DOCUMENT))
    spans = list(zip(ends - lengths, ends))
    want = embedder.encode_chunks(DOCUMENT, chunk_spans=[(int(a), int(b)) for a, b in spans])
    np.testing.assert_allclose(embedder.encode_chunks(DOCUMENT, chunk_spans=spans), want, rtol=0, atol=0)
    np.testing.assert_allclose(embedder.encode_chunks(DOCUMENT, chunk_spans=np.stack([ends - lengths, ends], axis=1)),
                               want, rtol=0, atol=0)
    np.testing.assert_allclose(embedder.encode_chunks(DOCUMENT, chunk_size=np.int64(16)),
                               embedder.encode_chunks(DOCUMENT, chunk_size=16), rtol=0, atol=0)
    np.testing.assert_allclose(embedder.encode(TEXTS, batch_size=np.int64(4), max_length=np.int32(64)),
                               embedder.encode(TEXTS, batch_size=4, max_length=64), rtol=0, atol=0)


def test_late_chunking_with_a_prompt_and_a_cut(embedder, caplog):
    with_prompt = embedder.encode_chunks(DOCUMENT, chunk_spans=[(0, len(DOCUMENT))], prompt_name="passage")
    np.testing.assert_allclose(with_prompt[0], embedder.encode_document(DOCUMENT), rtol=1e-5, atol=1e-6)
    with caplog.at_level(logging.WARNING, logger="bembed.encode"):
        first = embedder.encode_chunks(DOCUMENT, chunk_spans=[(0, 20)], max_length=32)
        with pytest.raises(ValueError, match=r"chunk_spans\[1\]"):
            embedder.encode_chunks(DOCUMENT, chunk_spans=[(0, 20), (len(DOCUMENT) - 10, len(DOCUMENT))], max_length=32)
    assert first.shape == (1, 48) and "max_length=32" in caplog.records[0].getMessage()


def test_late_chunking_bad_input(embedder):
    with pytest.raises(TypeError, match="document"):
        embedder.encode_chunks(["not", "a", "str"], chunk_size=4)
    with pytest.raises(ValueError, match="exactly one"):
        embedder.encode_chunks(DOCUMENT)
    with pytest.raises(ValueError, match="exactly one"):
        embedder.encode_chunks(DOCUMENT, chunk_spans=[(0, 3)], chunk_size=4)
    with pytest.raises(ValueError, match="empty"):
        embedder.encode_chunks("   ", chunk_size=4)
    with pytest.raises(ValueError, match=r"chunk_spans\[1\]"):
        embedder.encode_chunks(DOCUMENT, chunk_spans=[(0, 3), (5, len(DOCUMENT) + 1)])
    with pytest.raises(ValueError, match=r"chunk_spans\[0\]"):
        embedder.encode_chunks(DOCUMENT, chunk_spans=[(4, 4)])
    with pytest.raises(TypeError, match=r"chunk_spans\[0\]"):
        embedder.encode_chunks(DOCUMENT, chunk_spans=[(0.0, 3)])
    with pytest.raises(ValueError, match="chunk_size"):
        embedder.encode_chunks(DOCUMENT, chunk_size=0)
    with pytest.raises(ValueError, match="covers no token"):
        embedder.encode_chunks("Hallo  Welt", chunk_spans=[(5, 6)])  # the first of two spaces
    with pytest.raises(ValueError, match="max_length=8 leaves no token of the document"):
        embedder.encode_chunks(DOCUMENT, chunk_spans=[(0, 5)], max_length=8, prompt="a prompt of many tokens: ")


@pytest.mark.cuda
def test_cuda_autocast_matches_cpu_float32(tokenizer):
    """On GPU encode runs the kernels under bf16 autocast (head_dim 32, which the CUDA kernels take) and still
    pools in float32; the rows agree with the CPU float32 ones to bf16 accuracy."""
    config = bembed.JinaBertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=96,
                                   hidden_dropout_prob=0.0, **model_config_kwargs(tokenizer))
    model = bembed.JinaBertModel(config)
    cpu = Embedder(model, tokenizer).encode(TEXTS, convert_to_tensor=True)
    cpu_chunks = Embedder(model, tokenizer).encode_chunks(DOCUMENT, chunk_size=16, convert_to_tensor=True)
    gpu = Embedder(model.to("cuda"), tokenizer)
    got = gpu.encode(TEXTS, batch_size=4, convert_to_tensor=True)
    assert got.device.type == "cuda" and got.dtype == torch.float32
    assert torch.nn.functional.cosine_similarity(got.cpu(), cpu, dim=-1).min() > 0.99
    chunks = gpu.encode_chunks(DOCUMENT, chunk_size=16, convert_to_tensor=True)
    assert torch.nn.functional.cosine_similarity(chunks.cpu(), cpu_chunks, dim=-1).min() > 0.99


def test_token_embeddings_are_the_last_layer_of_each_text(embedder):
    texts = ["a short one", TEXTS[1], ""]
    states = embedder.encode(texts, output_value="token_embeddings", batch_size=2)
    assert [s.shape[0] for s in states] == [len(embedder.tokenizer(t)["input_ids"]) for t in texts]
    for text, got in zip(texts, states):
        ids = embedder.tokenizer(text, return_tensors="pt").input_ids
        with torch.no_grad():
            want = embedder.model(ids).last_hidden_state[0]
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    # their mean is the sentence embedding before normalisation
    pooled = embedder.encode(texts, normalize_embeddings=False)
    np.testing.assert_allclose(torch.stack([s.mean(0) for s in states]).numpy(), pooled, rtol=1e-4, atol=1e-5)
    assert embedder.encode("one text", output_value="token_embeddings").dim() == 2
    # ordinary tensors, as sentence-transformers returns: autograd and in-place ops work on them
    assert not any(s.is_inference() for s in states)
    torch.nn.Linear(48, 2)(states[0]).sum().backward()
    states[1].mul_(2)
    with pytest.raises(ValueError, match="truncate=True"):
        embedder.encode(texts, output_value="token_embeddings", truncate=False)
    with pytest.raises(ValueError, match="output_value"):
        embedder.encode(texts, output_value="cls")
    with pytest.raises(ValueError, match="precision='int8' quantizes sentence embeddings"):  # it was ignored
        embedder.encode(texts, output_value="token_embeddings", precision="int8")
