"""The bilingual byte-level BPE tokenizer: round trips, vocabulary size, specials, word starts, balance."""

import random
import unicodedata
from pathlib import Path

import pytest
import torch

from bembed.tokenizer import (SPECIAL_TOKENS, balanced_stream, model_config_kwargs, read_corpus,
                              train_bilingual_tokenizer, word_ids, word_start_table)

GERMAN = ("Über Bäume Vögel Größe Straße Mädchen Käse Brücke Äpfel Öffnung übermorgen schön fröhlich müde "
          "Fußball Grüße heißt weiß Tür Mühle und der die das ist nicht mit auf für wir sie Haus Wasser "
          "Sonne Abend Freiheit grenzenlos singen lesen schreiben").split()
SPANISH = ("niño mañana canción corazón árbol pequeño España señor años está también después estación "
           "jardín montaña corazón pingüino aquí allá comió bebió el la los las una y de que en por para "
           "día más bonito feliz ciudad río camino cielo").split()

ROUND_TRIP = [
    "Über den Wolken muss die Freiheit wohl grenzenlos sein.",
    "ÄÖÜ äöü ß — Größe, Straße, Maße: „Anführungszeichen“ und Grüße!",
    "¿Dónde está el pingüino? ¡Qué día más bonito en la montaña, señor Núñez!",
    "ÁÉÍÓÚ áéíóú Ññ Üü «comillas»",
    "Unseen bytes still round-trip: Œuvre, Ελληνικά, 漢字, 🙂, tabs\tand\nnew lines.",
]


def sentences(words, n, seed):
    rng = random.Random(seed)
    return [" ".join(rng.choice(words) for _ in range(rng.randint(4, 12))) + rng.choice(".!?,") for _ in range(n)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tokenizer")
    tokenizer = train_bilingual_tokenizer(sentences(GERMAN, 600, 1), sentences(SPANISH, 300, 2), 400,
                                          output_dir=folder)
    return tokenizer, folder


def test_vocab_size_is_honoured_and_specials_are_robertas(trained):
    tokenizer, _ = trained
    assert len(tokenizer) == 400
    assert [tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    assert (tokenizer.bos_token_id, tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.mask_token_id) == \
        (0, 1, 2, 4)
    assert model_config_kwargs(tokenizer) == {"vocab_size": 400, "pad_token_id": 1, "bos_token_id": 0,
                                              "eos_token_id": 2}


def test_saved_folder_loads_with_autotokenizer_and_round_trips(trained):
    from transformers import AutoTokenizer

    tokenizer, folder = trained
    loaded = AutoTokenizer.from_pretrained(folder)
    for text in ROUND_TRIP:
        ids = loaded(text).input_ids
        assert ids[0] == loaded.bos_token_id and ids[-1] == loaded.eos_token_id
        assert loaded.unk_token_id not in ids  # byte-level: nothing is unknown
        assert ids == tokenizer(text).input_ids
        assert loaded.decode(ids, skip_special_tokens=True) == text


def fertility(tokenizer, words):
    return sum(len(tokenizer.tokenize(" " + w)) for w in words) / len(words)


def test_smaller_language_is_not_starved_of_merges(trained):
    # Spanish has half the sentences of German here; without balancing its words split into ~1.8× as many
    # tokens as German ones (measured: 3.7 vs 2.05), with balancing into fewer (2.45 vs 3.2).
    tokenizer, _ = trained
    assert fertility(tokenizer, SPANISH) <= 1.2 * fertility(tokenizer, GERMAN)


def test_decomposed_accents_are_normalised(trained):
    tokenizer, _ = trained
    decomposed = unicodedata.normalize("NFD", "Mädchen und niño")
    assert decomposed != "Mädchen und niño"
    assert tokenizer(decomposed).input_ids == tokenizer("Mädchen und niño").input_ids


def test_word_ids_group_the_tokens_of_each_word(trained):
    tokenizer, _ = trained
    text = "Fußballstadion übermorgen\nPingüinocanción\tStraße\n\nEnde"  # whitespace runs separate words too
    encoding = tokenizer(text)
    ids = torch.tensor(encoding.input_ids)
    got = word_ids(ids, word_start_table(tokenizer), tokenizer.all_special_ids)
    assert got[0] == -1 and got[-1] == -1
    words = got[1:-1]
    assert len(set(words.tolist())) >= len(text.split())  # the newline and tab runs are words of their own
    # The pre-tokenizer's own word index (from the fast tokenizer) gives the same grouping.
    reference = torch.tensor(encoding.word_ids()[1:-1])
    assert torch.equal(words - words[0], reference - reference[0])
    batch = word_ids(ids.repeat(3, 1), word_start_table(tokenizer), tokenizer.all_special_ids)
    assert torch.equal(batch, got.repeat(3, 1))


def test_balanced_stream_gives_both_languages_the_same_characters():
    large, small = ["a" * 50] * 100, ["b" * 7] * 9
    stream = list(balanced_stream(large, small))
    chars_a = sum(len(t) for t in stream if t.startswith("a"))
    chars_b = sum(len(t) for t in stream if t.startswith("b"))
    assert chars_a == 5000 and abs(chars_b - chars_a) <= 7


def test_files_and_folders_are_read(tmp_path):
    (tmp_path / "de").mkdir()
    (tmp_path / "de" / "a.txt").write_text("\n".join(sentences(GERMAN, 200, 3)), encoding="utf-8")
    es_file = tmp_path / "es.txt"
    es_file.write_text("\n".join(sentences(SPANISH, 200, 4)), encoding="utf-8")
    tokenizer = train_bilingual_tokenizer(tmp_path / "de", str(es_file), 300)
    assert len(tokenizer) == 300
    assert tokenizer.decode(tokenizer("Größe y canción").input_ids, skip_special_tokens=True) == "Größe y canción"


def test_a_byte_order_mark_is_not_read_as_text(tmp_path):
    path = tmp_path / "de.txt"
    path.write_text("Hallo Welt\nzweite Zeile\n", encoding="utf-8-sig")  # what Windows editors write
    assert read_corpus(path, "corpus") == ["Hallo Welt", "zweite Zeile"]


def test_files_corpora_are_sampled_to_max_chars(tmp_path, monkeypatch):
    import bembed.tokenizer
    from bembed.commands.tokenizer import seeded_sample, train_for_pair

    files = []
    for name, words in (("en.txt", GERMAN), ("de.txt", SPANISH)):  # two vocabularies, one a file
        files.append(tmp_path / name)
        files[-1].write_text("\n".join(sentences(words, 2000, 5)), encoding="utf-8")
    whole = read_corpus(files[0], "corpus")
    trained_on = []

    def recording(corpus_a, corpus_b, *args, **kwargs):
        trained_on.append((list(corpus_a), list(corpus_b)))
        return train_bilingual_tokenizer(corpus_a, corpus_b, *args, **kwargs)

    monkeypatch.setattr(bembed.tokenizer, "train_bilingual_tokenizer", recording)
    sampled = train_for_pair(tmp_path / "tok", files=tuple(map(str, files)), max_chars=2000, vocab_size=300)
    assert len(sampled) == 300
    assert trained_on == [(seeded_sample(whole, 2000), seeded_sample(read_corpus(files[1], "corpus"), 2000))]

    sample = seeded_sample(whole, 2000)
    assert 2000 <= sum(map(len, sample)) < 2000 + max(map(len, whole))
    assert sample != whole[: len(sample)]  # a seeded sample, not the file's first lines
    assert sample == seeded_sample(whole, 2000)
    with pytest.raises(ValueError, match="--files: '/no/such.txt' is not an existing file"):
        train_for_pair(tmp_path / "tok", files=("/no/such.txt", str(files[1])))


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="vocab_size"):
        train_bilingual_tokenizer(["Haus"], ["casa"], 100)
    with pytest.raises(TypeError, match="vocab_size"):
        train_bilingual_tokenizer(["Haus"], ["casa"], 400.0)
    with pytest.raises(ValueError, match="texts_or_files_lang_a"):
        train_bilingual_tokenizer("/no/such/file.txt", ["casa"], 400)
    with pytest.raises(ValueError, match="texts_or_files_lang_b: '/no/such/file.txt' is not an existing file"):
        train_bilingual_tokenizer(["Haus"], Path("/no/such/file.txt"), 400)
    with pytest.raises(TypeError, match="texts_or_files_lang_b"):
        train_bilingual_tokenizer(["Haus"], [1, 2], 400)


def test_a_file_that_is_not_utf8_is_named(tmp_path, capsys):
    from bembed.cli import main

    latin1 = tmp_path / "de.txt"
    latin1.write_bytes("Größe und Maß\n".encode("latin-1"))
    (tmp_path / "en.txt").write_text("size and measure\n", encoding="utf-8")
    with pytest.raises(ValueError, match="de.txt:1: not UTF-8 text"):
        train_bilingual_tokenizer(tmp_path / "en.txt", latin1, 400)
    assert main(["tokenizer", "--files", str(tmp_path / "en.txt"), str(latin1), "--out", str(tmp_path / "tok"),
                 "--vocab-size", "400"]) == 2
    assert "de.txt:1: not UTF-8 text" in capsys.readouterr().out


def test_corpus_mistakes_name_the_argument_or_file(tmp_path, capsys):
    """A long text passed where a path goes raised OSError (file name too long); an empty --files file was
    "both languages need at least one non-empty text", naming neither."""
    from bembed.cli import main

    with pytest.raises(ValueError, match=r"texts_or_files_lang_a: 'Das ist .{60,}\.\.\.' is not .* \(pass texts as a list\)"):
        train_bilingual_tokenizer("Das ist ein langer deutscher Text. " * 20, ["casa"], 400)
    with pytest.raises(ValueError, match="texts_or_files_lang_b: no non-empty text"):
        train_bilingual_tokenizer(["Haus"], ["  ", ""], 400)
    (tmp_path / "en.txt").write_text("size and measure\n", encoding="utf-8")
    (tmp_path / "empty.txt").write_text("\n \n", encoding="utf-8")
    assert main(["tokenizer", "--files", str(tmp_path / "en.txt"), str(tmp_path / "empty.txt"), "--out",
                 str(tmp_path / "tok"), "--vocab-size", "400"]) == 2
    assert f"--files {tmp_path / 'empty.txt'}: no non-empty text" in capsys.readouterr().out


def test_the_tokenizer_folder_is_written_whole_and_never_over_other_files(tmp_path, monkeypatch):
    """save_pretrained wrote into the folder and then rewrote tokenizer_config.json in place: a kill there left
    a new tokenizer.json beside a torn config that AutoTokenizer cannot read, in a folder that looked done."""
    import bembed.tokenizer as tok

    texts_a, texts_b = sentences(GERMAN, 50, 1), sentences(SPANISH, 50, 2)
    out = tmp_path / "tok"
    train_bilingual_tokenizer(texts_a, texts_b, 400, output_dir=out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def killed(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(tok, "write_json_atomic", killed)
    with pytest.raises(KeyboardInterrupt):
        train_bilingual_tokenizer(texts_b, texts_a, 400, output_dir=out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tok"]
    monkeypatch.undo()
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "model.safetensors").write_bytes(b"weights")
    with pytest.raises(ValueError, match="output_dir: .*model exists and is not a tokenizer folder"):
        train_bilingual_tokenizer(texts_a, texts_b, 400, output_dir=tmp_path / "model")
    assert (tmp_path / "model" / "model.safetensors").read_bytes() == b"weights"
