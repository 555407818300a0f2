"""The encoder the contrastive stages train: loading (a bembed JinaBERT folder, a fresh JinaBERT from a
config, or any HF `AutoModel` folder), tokenising, mean-pooled L2-normalised embeddings, and export."""

from __future__ import annotations

import functools
import json
import logging
import shutil
from pathlib import Path

import torch

from bembed.model import JinaBertConfig, JinaBertModel, mean_pool, normalize
from bembed.st_folder import (LOADABLE_TOKENIZER_FILES, MODULES_FILE, PROMPTS_FILE, ST_CONFIG_FILE, embedder_settings,
                              folder_usage, transformer_folder)

from .config import ModelConfig
from .grad_cache import cached_encode

log = logging.getLogger(__name__)


def _is_jinabert(folder: Path) -> bool:
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    return config.get("model_type") == JinaBertConfig.model_type or config.get("position_embedding_type") == "alibi"


def load_tokenizer(path: str | Path):
    from transformers import AutoTokenizer

    if not Path(path).is_dir():
        raise FileNotFoundError(f"model.tokenizer: no tokenizer folder at {path}")
    return AutoTokenizer.from_pretrained(str(path))


def init_tokenizer(spec: ModelConfig, key: str = "model.init_from"):
    """The tokenizer of a model loaded `init_from` a folder: the folder's own, whose ids its embeddings were
    trained on. `spec.tokenizer` serves a folder without one, and is refused when it splits text into other ids
    than the folder's (a shipped config's tokenizer kept beside an init_from override would otherwise retrain
    the weights under unrelated ids, silently)."""
    folder = transformer_folder(spec.init_from)
    own = any((folder / name).is_file() for name in LOADABLE_TOKENIZER_FILES)
    if not spec.tokenizer:
        if not own:
            raise ValueError(f"{key}: {folder} holds no tokenizer (none of {', '.join(LOADABLE_TOKENIZER_FILES)}); "
                             "give model.tokenizer")
        return load_tokenizer(folder)
    tokenizer = load_tokenizer(spec.tokenizer)
    if own and load_tokenizer(folder).get_vocab() != tokenizer.get_vocab():
        raise ValueError(f"model.tokenizer {spec.tokenizer} is not the tokenizer of {key} {folder} (other ids for "
                         "the same tokens): the folder's weights were trained on its own; leave model.tokenizer "
                         "out (model.tokenizer=null) to use it")
    return tokenizer


def check_vocabulary(model: torch.nn.Module, tokenizer, key: str) -> None:
    """An id past the embedding table would fail as an index error deep inside the first step."""
    size = getattr(model.config, "vocab_size", None)
    if size is not None and len(tokenizer) > size:
        raise ValueError(f"{key}: the tokenizer has {len(tokenizer)} ids, the model's embeddings {size}")


def load_encoder(spec: ModelConfig, key: str = "model.init_from") -> tuple[torch.nn.Module, object]:
    """(model, tokenizer). `init_from` a folder: JinaBERT (bembed or published layout) loads as
    JinaBertModel, anything else with transformers' AutoModel; the tokenizer is the folder's (init_tokenizer).
    A sentence-transformers folder of the older layout keeps its transformer in `0_Transformer/`
    (st_folder.transformer_folder), read from there as sentence-transformers does. Without init_from: a fresh
    JinaBertModel from `config` and the tokenizer's ids. Errors about the folder name it as the config `key` it
    came from."""
    from transformers import AutoModel

    from bembed.tokenizer import model_config_kwargs

    if spec.init_from:
        folder = Path(spec.init_from)
        weights = transformer_folder(folder)
        if not (weights / "config.json").is_file():
            raise FileNotFoundError(f"{key}: no model folder (config.json) at {weights}")
        try:  # what Embedder.from_pretrained refuses (CLS pooling, a Dense layer, ...) would be trained differently
            embedder_settings(folder, {})
        except ValueError as exc:
            raise ValueError(f"{key}: {exc}") from None
        tokenizer = init_tokenizer(spec, key)
        if _is_jinabert(weights):
            model = JinaBertModel.from_pretrained(str(weights))
        elif not any(weights.glob("*.safetensors")):  # transformers would unpickle a pytorch_model.bin
            raise ValueError(f"{key}: {weights} has no .safetensors weights (bembed never loads pickles)")
        else:
            model = AutoModel.from_pretrained(str(weights), use_safetensors=True)
        check_vocabulary(model, tokenizer, key)
        return _freeze_pooler(model), tokenizer
    if not spec.tokenizer:
        raise ValueError("model: give init_from (a model folder) or tokenizer + config for a fresh model")
    tokenizer = load_tokenizer(spec.tokenizer)
    config = JinaBertConfig(**{**spec.config, **model_config_kwargs(tokenizer)})
    return _freeze_pooler(JinaBertModel(config)), tokenizer


def position_limit(model: torch.nn.Module) -> int | None:
    """The most tokens a model takes at once: None for JinaBERT (ALiBi has no position table), else the rows of
    its position table, less those a RoBERTa-style table keeps below its first position (padding_idx + 1)."""
    rows = getattr(model.config, "max_position_embeddings", None)
    if isinstance(model, JinaBertModel) or rows is None:
        return None
    padding_idx = getattr(getattr(model, "embeddings", None), "padding_idx", None)
    return rows - (padding_idx + 1) if isinstance(padding_idx, int) else rows


def check_max_length(model: torch.nn.Module, max_length: int, key: str = "model.init_from") -> None:
    """A model.max_length past the model's position table would fail at the first long batch, mid-run."""
    limit = position_limit(model)
    if limit is not None and max_length > limit:
        raise ValueError(f"model.max_length={max_length}: the model of {key} takes at most {limit} tokens "
                         "(its position table)")


def _freeze_pooler(model: torch.nn.Module) -> torch.nn.Module:
    # The embeddings are mean-pooled: the [CLS] pooler gets no gradient, so keep it out of the optimizer
    # (and of weight decay) while still saving it with the model.
    pooler = getattr(model, "pooler", None)
    if pooler is not None:
        pooler.requires_grad_(False)
    return model


def tokenize(tokenizer, texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
    enc = tokenizer(list(texts), truncation=True, max_length=max_length, padding=True, return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def embed(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
          grad_cache_chunk: int = 0) -> torch.Tensor:
    """(B, hidden) float32 L2-normalised mean-pooled embeddings, with gradient. grad_cache_chunk > 0: through
    GradCache (grad_cache.py), that many rows per encoder pass, with the whole batch's gradient."""
    if grad_cache_chunk:
        return cached_encode(functools.partial(embed, model), model, input_ids, attention_mask, grad_cache_chunk)
    if isinstance(model, JinaBertModel):
        return model.embed(input_ids, attention_mask)
    out = model(input_ids=input_ids, attention_mask=attention_mask)
    hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    return normalize(mean_pool(hidden, attention_mask))


def stage_prompts(section) -> dict[str, str]:
    """The E5 prefixes a stage trained with (its config section's query_prefix / passage_prefix), as the prompts
    its export carries: without them `encode_query`/`encode_document` and `bembed eval` would embed without
    the prefixes the model learnt."""
    pairs = (("query", section.query_prefix), ("document", section.passage_prefix))
    return {name: prefix for name, prefix in pairs if prefix}


MATRYOSHKA_KEY = "matryoshka_dims"


def record_matryoshka_dims(config, dims=()) -> None:
    """Keep in a model config the widths a stage trained the embeddings to be cut to; empty removes what the
    starting model carried, since training without the cut losses does not keep them working."""
    if dims:
        setattr(config, MATRYOSHKA_KEY, sorted(set(dims), reverse=True))
    elif hasattr(config, MATRYOSHKA_KEY):
        delattr(config, MATRYOSHKA_KEY)


def export_encoder(model: torch.nn.Module, tokenizer, folder: Path, source: str | None = None,
                   prompts: dict[str, str] | None = None, matryoshka_dims=(), *,
                   default_prompt_name: str | None = None, max_seq_length: int | None = None) -> Path:
    """A folder that both `from_pretrained` and `SentenceTransformer(folder)` load: a JinaBertModel goes
    through the model's sentence-transformers export; another HF model is saved with save_pretrained and
    gets the module files of the sentence-transformers folder it came from (or mean pooling + Normalize).
    prompts (name -> prefix), when given, go to config_sentence_transformers.json in place of `source`'s.
    matryoshka_dims: the widths the stage just trained (record_matryoshka_dims), kept in config.json for
    `Embedder.matryoshka_dims`. default_prompt_name (one of prompts) and max_seq_length go to the
    sentence-transformers files (None: no default prompt; the max_seq_length `source` sets, as a
    sentence-transformers model keeps its own through training, else a JinaBertModel's position limit)."""
    from bembed.model.export import export_sentence_transformers
    from bembed.tokenizer import save_tokenizer

    folder = Path(folder)
    if max_seq_length is None and source:
        max_seq_length = folder_usage(source)[1]
    record_matryoshka_dims(model.config, matryoshka_dims)
    if isinstance(model, JinaBertModel):
        return export_sentence_transformers(model, tokenizer, folder, prompts=prompts,
                                            default_prompt_name=default_prompt_name, max_seq_length=max_seq_length)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder))
    save_tokenizer(tokenizer, folder)
    src = Path(source) if source else None
    if src is not None and (src / "modules.json").is_file():
        _copy_sentence_transformers_files(src, folder)
    else:
        hidden = model.config.hidden_size
        (folder / "1_Pooling").mkdir(exist_ok=True)
        (folder / "2_Normalize").mkdir(exist_ok=True)
        (folder / "1_Pooling" / "config.json").write_text(json.dumps(
            {"word_embedding_dimension": hidden, "pooling_mode_mean_tokens": True}, indent=1))
        (folder / "modules.json").write_text(json.dumps([
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}],
            indent=1))
    if prompts:
        settings_file = folder / "config_sentence_transformers.json"
        settings = json.loads(settings_file.read_text(encoding="utf-8")) if settings_file.is_file() else {}
        settings.update(prompts=prompts, default_prompt_name=default_prompt_name)
        settings_file.write_text(json.dumps(settings, indent=1, ensure_ascii=False), encoding="utf-8")
    if max_seq_length:
        st_config_file = folder / "sentence_bert_config.json"
        st_config = json.loads(st_config_file.read_text(encoding="utf-8")) if st_config_file.is_file() else {}
        st_config["max_seq_length"] = int(max_seq_length)
        st_config_file.write_text(json.dumps(st_config, indent=1), encoding="utf-8")
    return folder


def _copy_sentence_transformers_files(source: Path, folder: Path) -> None:
    """The source folder's sentence-transformers files (settings, prompts, the modules after the transformer)
    beside a transformer saved at `folder`'s root. The transformer's entry in modules.json is pointed at the root
    too: an older-layout source keeps it in 0_Transformer/, which the export does not have."""
    modules = json.loads((source / MODULES_FILE).read_text(encoding="utf-8"))
    for module in modules:
        if module.get("type", "").rsplit(".", 1)[-1] == "Transformer":
            module["path"] = ""
        elif module.get("path") and (source / module["path"]).is_dir():
            shutil.copytree(source / module["path"], folder / module["path"], dirs_exist_ok=True)
    (folder / MODULES_FILE).write_text(json.dumps(modules, indent=1), encoding="utf-8")
    for name, home in ((PROMPTS_FILE, source), (ST_CONFIG_FILE, transformer_folder(source))):
        if (home / name).is_file():
            shutil.copy2(home / name, folder / name)
