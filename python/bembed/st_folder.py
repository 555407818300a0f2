"""What a model folder's sentence-transformers files ask of an Embedder, read the way sentence-transformers
reads them, so that both libraries embed the folder alike: the prompts (`config_sentence_transformers.json`),
the maximum length and lowercasing (`sentence_bert_config.json`), and the modules (`modules.json`: pooling,
normalisation). A folder asking for what bembed does not compute is refused rather than embedded differently.
The writing side is bembed.model.export."""

from __future__ import annotations

import json
from pathlib import Path

from .model.export import document_alias

PROMPTS_FILE = "config_sentence_transformers.json"
ST_CONFIG_FILE = "sentence_bert_config.json"
MODULES_FILE = "modules.json"
# Any of these lets AutoTokenizer load a folder's tokenizer (bembed writes the first two).
LOADABLE_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "sentencepiece.bpe.model")


def check_tokenizer(folder: Path) -> None:
    """transformers' own error for a folder without a tokenizer suggests installing sentencepiece or tiktoken."""
    if not any((folder / name).is_file() for name in LOADABLE_TOKENIZER_FILES):
        raise ValueError(f"{folder}: no tokenizer in the folder (none of {', '.join(LOADABLE_TOKENIZER_FILES)})")


def transformer_folder(folder: str | Path) -> Path:
    """Where a folder keeps its transformer (config, weights, tokenizer, sentence_bert_config.json): the folder
    itself, or the Transformer module's own folder in the older sentence-transformers layout (`0_Transformer/`,
    named by modules.json), as sentence-transformers finds it."""
    folder = Path(folder)
    modules = _settings(folder, MODULES_FILE)  # a list of modules; {} when there is no modules.json
    for module in modules if isinstance(modules, list) else []:
        if module.get("type", "").rsplit(".", 1)[-1] == "Transformer" and module.get("path"):
            return folder / module["path"]
    return folder


def _settings(folder: str | Path, name: str) -> dict:
    path = Path(folder) / name
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def folder_prompts(folder: str | Path) -> dict[str, str]:
    """The prompts (name -> prefix) of a folder's config_sentence_transformers.json; {} when it has none."""
    return dict(_settings(folder, PROMPTS_FILE).get("prompts") or {})


def folder_usage(folder: str | Path) -> tuple[str | None, int | None]:
    """The default prompt name and max_seq_length a folder's sentence-transformers files set (None where they
    set none), read as they are: unlike embedder_settings, nothing about the folder is checked."""
    return (_settings(folder, PROMPTS_FILE).get("default_prompt_name"),
            _settings(transformer_folder(folder), ST_CONFIG_FILE).get("max_seq_length"))


def embedder_settings(folder: Path, given: dict) -> dict:
    """The Embedder keywords of `folder` with the caller's `given` ones over them: prompts merged name by name
    (the caller's win), default_prompt_name, max_seq_length and normalize_embeddings where the caller gave
    none (None counts as none, as everywhere in encode)."""
    settings = {key: value for key, value in given.items()
                if not (key in ("max_seq_length", "normalize_embeddings") and value is None)}
    if (folder / PROMPTS_FILE).is_file():
        saved = json.loads((folder / PROMPTS_FILE).read_text(encoding="utf-8"))
        saved_prompts, new = saved.get("prompts") or {}, settings.get("prompts") or {}
        settings["prompts"] = {**saved_prompts, **new}
        # save_pretrained writes "document" as a copy of "passage"/"corpus" (encode_document takes it first):
        # a new passage/corpus prompt replaces that copy too, or documents would keep the old prefix
        alias = document_alias(new)
        if alias and "document" not in new and saved_prompts.get("document") == saved_prompts.get(alias):
            settings["prompts"]["document"] = new[alias]
        if settings.get("default_prompt_name") is None:
            settings["default_prompt_name"] = saved.get("default_prompt_name")
    saved = _settings(transformer_folder(folder), ST_CONFIG_FILE)
    if saved.get("do_lower_case"):
        raise ValueError(f"{folder}: {ST_CONFIG_FILE} sets do_lower_case, which bembed does not do "
                         "(sentence-transformers would lowercase the texts and embed them differently)")
    if "max_seq_length" in saved:
        settings.setdefault("max_seq_length", saved["max_seq_length"])
    if (folder / MODULES_FILE).is_file():
        modules = json.loads((folder / MODULES_FILE).read_text(encoding="utf-8"))
        check_modules(folder, modules)
        settings.setdefault("normalize_embeddings", any(m.get("type", "").endswith(".Normalize") for m in modules))
    return settings


def check_modules(folder: Path, modules: list[dict]) -> None:
    """A sentence-transformers folder that asks for more than bembed computes (a Dense layer, CLS pooling, a
    prompt left out of the mean) would silently embed differently here: refuse it, naming what it asks for."""
    for module in modules:
        kind = module.get("type", "").rsplit(".", 1)[-1]
        if kind not in ("Transformer", "Pooling", "Normalize"):
            raise ValueError(f"{folder}: module {module.get('path')!r} is a {kind}; bembed embeds with the "
                             "transformer, mean pooling and optional normalisation only")
        if kind != "Pooling" or not (folder / module.get("path", "") / "config.json").is_file():
            continue
        config = json.loads((folder / module["path"] / "config.json").read_text(encoding="utf-8"))
        modes = config.get("pooling_mode")  # sentence-transformers >= 6; earlier: pooling_mode_<mode>_tokens flags
        modes = [modes] if isinstance(modes, str) else list(modes) if modes else [
            key.removeprefix("pooling_mode_").removesuffix("_tokens") for key, on in config.items()
            if key.startswith("pooling_mode_") and on]
        if modes not in ([], ["mean"]) or config.get("include_prompt") is False:
            raise ValueError(f"{folder}: its pooling is {modes or 'unset'} with include_prompt="
                             f"{config.get('include_prompt', True)}; bembed pools by the mean over all tokens, "
                             "prompt included")
