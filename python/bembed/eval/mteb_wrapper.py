"""Any bembed encoder (see encoder.py) as an mteb 2.x model: ``mteb.evaluate(MtebEncoder(enc), tasks)``.

mteb hands ``encode`` a DataLoader of ``{"text": [...]}`` batches and a prompt type; the wrapper passes the
prompt type through as ``prompt_name`` ("query"/"document") and declares cosine similarity, which retrieval and
bitext mining score with (pair classification's max AP is mteb's best over several similarities). It works on
mteb's own tasks too, for users who have their datasets.
"""

from __future__ import annotations

import numpy as np

from bembed.eval.encoder import check_encoder


def _abs_encoder():
    from mteb.models.abs_encoder import AbsEncoder

    return AbsEncoder


def make_model_meta(name: str, embed_dim: int | None = None, languages: list[str] | None = None):
    from mteb.models.model_meta import ModelMeta, ScoringFunction

    if "/" not in name:
        name = f"bembed/{name}"  # mteb expects organization/model
    return ModelMeta.create_empty(overwrites={
        "name": name, "revision": "local", "embed_dim": embed_dim, "languages": languages,
        "similarity_fn_name": ScoringFunction.COSINE, "framework": ["PyTorch"],
    })


def MtebEncoder(encoder, name: str | None = None, batch_size: int = 32):  # noqa: N802 (a class factory)
    """Wrap ``encoder`` as an instance of an ``AbsEncoder`` subclass (created on first use, so importing
    bembed.eval does not import mteb)."""
    check_encoder(encoder)
    cls = _wrapper_class()
    return cls(encoder, name or getattr(encoder, "name", type(encoder).__name__), batch_size)


_CLASS = None


def _wrapper_class():
    global _CLASS
    if _CLASS is not None:
        return _CLASS

    class _MtebEncoder(_abs_encoder()):
        def __init__(self, encoder, name: str, batch_size: int):
            self.model = encoder
            self.batch_size = batch_size
            self.mteb_model_meta = make_model_meta(name)

        def encode(self, inputs, *, task_metadata, hf_split, hf_subset, prompt_type=None, **kwargs):
            del task_metadata, hf_split, hf_subset, kwargs
            texts = [t for batch in inputs for t in batch["text"]]
            prompt_name = prompt_type.value if prompt_type is not None else None
            emb = self.model.encode(texts, prompt_name=prompt_name, batch_size=self.batch_size)
            emb = np.asarray(emb, dtype=np.float32)
            if emb.ndim != 2 or emb.shape[0] != len(texts):
                raise ValueError(f"encoder returned shape {emb.shape} for {len(texts)} texts; expected (n, dim)")
            return emb

    _CLASS = _MtebEncoder
    return _CLASS
