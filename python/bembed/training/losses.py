"""STS losses for multi-task training: cosine similarities of sentence pairs against gold scores.

Each takes `cos` (B,) — cosine similarities of the pairs' normalised embeddings — and `gold` (B,) scores.
"""

from __future__ import annotations

import torch


def _check(cos: torch.Tensor, gold: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and gold in a common dtype of at least float32 (float64 stays float64, for gradcheck)."""
    if not isinstance(cos, torch.Tensor) or not isinstance(gold, torch.Tensor):
        raise TypeError(f"{name}: cos and gold must be tensors")
    if cos.dim() != 1 or gold.shape != cos.shape:
        raise ValueError(f"{name}: cos and gold must be (B,) of one shape, got {tuple(cos.shape)} and "
                         f"{tuple(gold.shape)}")
    dtype = torch.promote_types(cos.dtype, torch.float32)
    return cos.to(dtype), gold.to(cos.device, dtype)


class PearsonLoss:
    """L = −pearson(cos, gold) = −Σ(c−c̄)(g−ḡ) / (‖c−c̄‖·‖g−ḡ‖): the paper's STS loss, invariant to the scale
    and offset of the gold scores. Undefined for constant gold scores or fewer than 3 rows (ValueError)."""

    def __call__(self, cos: torch.Tensor, gold: torch.Tensor) -> torch.Tensor:
        cos, gold = _check(cos, gold, "PearsonLoss")
        if cos.shape[0] < 3:
            raise ValueError(f"PearsonLoss: needs at least 3 rows, got {cos.shape[0]}")
        g = gold - gold.mean()
        if float(g.abs().max()) == 0.0:
            raise ValueError("PearsonLoss: the gold scores of the batch are constant; the correlation is undefined")
        c = cos - cos.mean()
        return -(c * g).sum() / (c.norm() * g.norm()).clamp(min=1e-12)


class MSELoss:
    """L = mean((cos − gold/score_max)²): gold scores mapped to [0, 1] by `score_max`."""

    def __init__(self, score_max: float = 5.0):
        if score_max <= 0:
            raise ValueError(f"MSELoss: score_max must be > 0, got {score_max}")
        self.score_max = score_max

    def __call__(self, cos: torch.Tensor, gold: torch.Tensor) -> torch.Tensor:
        cos, gold = _check(cos, gold, "MSELoss")
        return ((cos - gold / self.score_max) ** 2).mean()


class CoSENTLoss:
    """L = log(1 + Σ_{(i,j): gold_i > gold_j} exp(λ·(cos_j − cos_i))) (CoSENT, λ = `scale`): penalises every
    pair of rows whose cosines are ordered against their gold scores."""

    def __init__(self, scale: float = 20.0):
        self.scale = scale

    def __call__(self, cos: torch.Tensor, gold: torch.Tensor) -> torch.Tensor:
        cos, gold = _check(cos, gold, "CoSENTLoss")
        cos = cos * self.scale
        diff = cos[None, :] - cos[:, None]  # diff[i, j] = λ(cos_j − cos_i)
        wrong = gold[:, None] > gold[None, :]
        diff = diff.masked_fill(~wrong, float("-inf"))
        return torch.logsumexp(torch.cat([cos.new_zeros(1), diff.reshape(-1)]), dim=0)


STS_LOSSES = ("pearson", "mse", "cosent", "none")


def sts_loss(name: str, *, score_max: float = 5.0, cosent_scale: float = 20.0):
    """The configured STS loss (`pearson`, `mse`, `cosent`), or None for `none` (STS batches skipped)."""
    if name == "pearson":
        return PearsonLoss()
    if name == "mse":
        return MSELoss(score_max)
    if name == "cosent":
        return CoSENTLoss(cosent_scale)
    if name == "none":
        return None
    raise ValueError(f"sts_loss must be pearson, mse, cosent or none, got {name!r}")


def matryoshka_mean(loss_of, embeddings: tuple[torch.Tensor, ...], dims: list[int] | tuple[int, ...]) -> torch.Tensor:
    """Matryoshka representation learning (Kusupati et al. 2022): the mean of `loss_of(*embeddings)` over the
    embeddings cut to their first d dimensions and L2-normalised again, for each d in `dims`, so that
    `encode(..., truncate_dim=d)` keeps working. Empty `dims`: `loss_of(*embeddings)` as they are.
    (sentence-transformers' MatryoshkaLoss sums instead: the mean keeps the logged loss on the scale of an
    uncut run, and with AdamW only gradient clipping sees the difference.)"""
    if not dims:
        return loss_of(*embeddings)
    width = embeddings[0].shape[-1]
    check_matryoshka_width(dims, width, "matryoshka_dims")
    cut = lambda e, d: e if d == width else torch.nn.functional.normalize(e[:, :d], dim=-1)  # noqa: E731
    return sum(loss_of(*(cut(e, d) for e in embeddings)) for d in dims) / len(dims)


def check_matryoshka_width(dims, width: int | None, key: str) -> None:
    """ValueError naming `key` if a dimension in `dims` exceeds the embeddings' `width` (None: not known
    before the first batch, where matryoshka_mean checks again)."""
    if width is not None and any(d > width for d in dims):
        raise ValueError(f"{key}: {list(dims)} exceeds the model's {width} embedding dimensions")
