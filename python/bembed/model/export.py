"""Export a JinaBERT model + tokenizer as a sentence-transformers folder.

The folder is a plain module stack — Transformer (this model, through the registered AutoModel),
Pooling (mean), Normalize — so `SentenceTransformer(path)` loads it without trust_remote_code once
`import bembed` has registered the model type. It gives the same embeddings as
`JinaBertModel.embed` (masked mean, L2-normalised).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .modeling import JinaBertModel


def _write_json(path: Path, value) -> None:
    path.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def document_alias(prompts: dict[str, str]) -> str | None:
    """The prompt whose prefix the exported "document" prompt copies: "passage", else "corpus", else none."""
    return next((name for name in ("passage", "corpus") if name in prompts), None)


def export_sentence_transformers(model: JinaBertModel, tokenizer, path: str | os.PathLike, *,
                                 max_seq_length: int | None = None, normalize: bool = True,
                                 prompts: dict[str, str] | None = None, default_prompt_name: str | None = None) -> Path:
    """Write model, tokenizer and the sentence-transformers module files to `path`; returns the path.

    max_seq_length: the truncation length sentence-transformers applies (default: the config's
    max_position_embeddings). normalize: append the Normalize module (cosine-ready embeddings).
    prompts: name -> prefix (E5's {"query": "query: ", "document": "passage: "}) and default_prompt_name,
    written to `config_sentence_transformers.json`, where sentence-transformers and `bembed.Embedder` read them.
    Prompts with a "passage" or "corpus" but no "document" prompt also get "document" with the same prefix.
    """
    from ..tokenizer import save_tokenizer

    if not isinstance(model, JinaBertModel):
        raise TypeError(f"export_sentence_transformers: argument 'model' must be a JinaBertModel, "
                        f"got {type(model).__name__} (for a JinaBertForMaskedLM pass its .bert)")
    prompts = dict(prompts or {})
    # sentence-transformers gives every model an empty "document" prompt, which encode_document takes before
    # "passage" or "corpus": without its own "document" the folder's documents would be embedded unprompted.
    alias = document_alias(prompts)
    if alias and "document" not in prompts:
        prompts["document"] = prompts[alias]
    if default_prompt_name is not None and default_prompt_name not in prompts:
        raise ValueError(f"export_sentence_transformers: default_prompt_name {default_prompt_name!r} is not one of "
                         f"the prompts {sorted(prompts)}")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    save_tokenizer(tokenizer, path)
    max_seq_length = max_seq_length or model.config.max_position_embeddings
    _write_json(path / "sentence_bert_config.json", {"max_seq_length": int(max_seq_length), "do_lower_case": False})
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    (path / "1_Pooling").mkdir(exist_ok=True)
    _write_json(path / "1_Pooling" / "config.json", {
        "word_embedding_dimension": model.config.hidden_size,
        "pooling_mode_cls_token": False,
        "pooling_mode_mean_tokens": True,
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
        "pooling_mode_weightedmean_tokens": False,
        "pooling_mode_lasttoken": False,
        "include_prompt": True,
    })
    if normalize:
        (path / "2_Normalize").mkdir(exist_ok=True)
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
    _write_json(path / "modules.json", modules)
    _write_json(path / "config_sentence_transformers.json", {
        "prompts": prompts, "default_prompt_name": default_prompt_name, "similarity_fn_name": "cosine"})
    return path
