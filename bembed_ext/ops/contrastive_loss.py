"""Fused contrastive (InfoNCE) loss over L2-normalised embeddings, optionally gathered across ranks.

Layout. queries (B, D); documents (N, D) with N = B·(1+m): rows 0..B-1 are the positives of the queries in
order, the remaining B·m rows are hard negatives, which join every query's denominator.

Loss (s_ik = q_i·d_k / τ): L_q = 1/B Σ_i −log softmax_k(s_i·)[i] over all N documents; with
bidirectional=True the document→query direction over the B positives against all B queries,
L_d = 1/B Σ_k −log softmax_i(s_·k)[k], is **added** (L = L_q + L_d, the paper's L_NCE(B) + L_NCE(B†)).

Across ranks (gather_across_ranks=True, W ranks, rank r, each holding B queries and N = B·(1+m)
documents). Queries are gathered in rank order, Q = [Q_0; …; Q_{W-1}] (W·B rows); documents are gathered
and re-laid out as one process holding the whole batch would see them: Dg = [P_0; …; P_{W-1}; H_0; …;
H_{W-1}] (positives P_r = rank r's rows 0..B-1, hard negatives H_r its rows B..N-1), so the global query
j = r·B + i has its positive at Dg row j. Rank r's loss is the mean over its own anchors, o = r·B:
queries o..o+B-1 against all W·N documents, and (bidirectional) positives o..o+B-1 against all W·B
queries. The mean of the W rank losses is the single-process loss of the global batch; the gather's
backward sums every rank's gradient into the owner's rows (bembed_ext/distributed.py), so each rank's
embeddings receive W × the single-process gradient — what DDP's averaging of parameter gradients needs
for a W-rank step to equal the one-process step.

Kernel. The op `bembed::contrastive_loss_fwd(Q, Dg, τ, bidirectional, W, r)` never builds the B×N scores:
it walks column strips of documents (one GEMM each), keeping an online (max, sum of exps) per anchor query
and an exact one per anchor document; it saves only those statistics and the positives' gradient (O(B)).
Backward recomputes each strip, turns it into dL/dS in place (softmax rebuilt from the saved statistics)
and applies dQ += dS·D_strip, dD_strip = dSᵀ·Q. Extra memory beyond inputs and gradients: one strip of at most
max(2²², 64·M) float scores on CPU (max(2²⁸, 64·M) on CUDA, plus dS in the input dtype and an M×D float32
product), M = the queries a strip scores (B, or W·B for anchor strips); the O(B) statistics; float32
gradient accumulators for fp16/bf16; and the gathered copies when gathering — O(B·D), never B×N.
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F

from ..distributed import all_gather_rows, check_same_layout_on_every_rank, require_process_group
from ._autograd import first_order_only, refuse_forward_ad
from ._dispatch import use_reference
from ._fake import check_devices

_OPS = torch.ops.bembed
_NAME = "contrastive_loss"


@torch.library.register_fake("bembed::contrastive_loss_fwd")
def _fwd_fake(queries, documents, temperature, bidirectional, world_size, rank):
    check_devices(_NAME, "queries", dict(queries=queries, documents=documents))
    B = queries.shape[0] // world_size
    stats = torch.float64  # on every device and for every input dtype (csrc/contrastive_loss.h: precision)
    return (queries.new_empty(()), queries.new_empty((2, B), dtype=stats),
            queries.new_empty((2, B if bidirectional else 0), dtype=stats), queries.new_empty((B,), dtype=stats))


@torch.library.register_fake("bembed::contrastive_loss_bwd")
def _bwd_fake(grad_loss, queries, documents, row_stats, col_stats, positive_grad, temperature, bidirectional,
              world_size, rank):
    check_devices(f"{_NAME} backward", "queries", dict(queries=queries, grad_loss=grad_loss, documents=documents,
                                                       row_stats=row_stats, col_stats=col_stats,
                                                       positive_grad=positive_grad))
    return (torch.empty_like(queries, memory_format=torch.contiguous_format),
            torch.empty_like(documents, memory_format=torch.contiguous_format))


def _setup_context(ctx, inputs, output):
    queries, documents, temperature, bidirectional, world_size, rank = inputs
    _, row_stats, col_stats, positive_grad = output
    ctx.save_for_backward(queries, documents, row_stats, col_stats, positive_grad)
    ctx.args = (temperature, bidirectional, world_size, rank)
    ctx.mark_non_differentiable(row_stats, col_stats, positive_grad)


@first_order_only(_NAME)
def _backward(ctx, grad_loss, _grad_row_stats, _grad_col_stats, _grad_positive_grad):
    queries, documents, row_stats, col_stats, positive_grad = ctx.saved_tensors
    grad_q, grad_d = _OPS.contrastive_loss_bwd(grad_loss, queries, documents, row_stats, col_stats, positive_grad,
                                               *ctx.args)
    return grad_q, grad_d, None, None, None, None


torch.library.register_autograd("bembed::contrastive_loss_fwd", _backward, setup_context=_setup_context)


# ----------------------------------------------------------------------------------------------------
# The specification (materialised logits + cross entropy; any float dtype, float64 included)
# ----------------------------------------------------------------------------------------------------

def _rank_loss_reference(queries, documents, temperature, bidirectional, world_size, rank):
    """Rank `rank`'s share of the loss over the global batch (queries (W·B, D), documents in the layout of
    the module docstring), with the B×N logits materialised. world_size=1 is the plain loss."""
    B = queries.shape[0] // world_size
    own = slice(rank * B, (rank + 1) * B)
    targets = torch.arange(rank * B, (rank + 1) * B, device=queries.device)
    loss = F.cross_entropy(queries[own] @ documents.T / temperature, targets)
    if bidirectional:
        loss = loss + F.cross_entropy(documents[own] @ queries.T / temperature, targets)
    return loss


def contrastive_loss_reference(queries: torch.Tensor, documents: torch.Tensor, *, temperature: float = 0.05,
                               bidirectional: bool = True, gather_across_ranks: bool = False) -> torch.Tensor:
    """The plain specification of `contrastive_loss` (same arguments and semantics), materialising logits."""
    return contrastive_loss(queries, documents, temperature=temperature, bidirectional=bidirectional,
                            gather_across_ranks=gather_across_ranks, impl="reference")


# ----------------------------------------------------------------------------------------------------
# The public function
# ----------------------------------------------------------------------------------------------------

_FLOAT32_MAX = torch.finfo(torch.float32).max


def _check_arguments(queries, documents, temperature, bidirectional, gather_across_ranks) -> None:
    for name, value in (("queries", queries), ("documents", documents)):
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{_NAME}: argument '{name}' must be a torch.Tensor, got {type(value).__name__}")
        if not value.is_floating_point():
            raise TypeError(f"{_NAME}: argument '{name}' must be a floating-point tensor, got {value.dtype}")
        if value.dim() != 2:
            raise ValueError(f"{_NAME}: argument '{name}' must be 2-D (rows, dim), got shape {tuple(value.shape)}")
    if documents.dtype != queries.dtype:
        raise TypeError(f"{_NAME}: 'documents' has dtype {documents.dtype} but 'queries' has {queries.dtype}")
    if documents.device != queries.device:
        raise ValueError(f"{_NAME}: 'documents' is on {documents.device} but 'queries' is on {queries.device}")
    B, N = queries.shape[0], documents.shape[0]
    if documents.shape[1] != queries.shape[1]:
        raise ValueError(f"{_NAME}: 'queries' {tuple(queries.shape)} and 'documents' {tuple(documents.shape)} "
                         "must have the same embedding dimension")
    if B < 1:
        raise ValueError(f"{_NAME}: argument 'queries' must hold at least one row")
    if N < B or N % B:
        raise ValueError(f"{_NAME}: 'documents' must have B·(1+m) rows (B = {B} positives, then B·m hard "
                         f"negatives), got {N}")
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real):
        raise TypeError(f"{_NAME}: argument 'temperature' must be a float, got {type(temperature).__name__}")
    if not 0 < temperature < math.inf:  # comparisons, not math.isfinite: torch.compile traces them
        raise ValueError(f"{_NAME}: argument 'temperature' must be a finite number > 0, got {temperature}")
    if queries.dtype != torch.float64 and temperature * _FLOAT32_MAX < 1:  # the kernels scale by 1/τ in float32
        raise ValueError(f"{_NAME}: argument 'temperature' must be ≥ {1 / _FLOAT32_MAX:.3g} for {queries.dtype} "
                         f"embeddings (1/temperature must fit a float32), got {temperature}")
    for name, value in (("bidirectional", bidirectional), ("gather_across_ranks", gather_across_ranks)):
        if not isinstance(value, bool):
            raise TypeError(f"{_NAME}: argument '{name}' must be a bool, got {type(value).__name__}")


def _gather_global_batch(queries: torch.Tensor, documents: torch.Tensor, world_size: int):
    """Every rank's queries in rank order, and documents re-laid out as positives of all ranks then hard
    negatives of all ranks (the single-process layout of the concatenated batch)."""
    B, N, D = queries.shape[0], documents.shape[0], documents.shape[1]
    all_queries = all_gather_rows(queries)
    per_rank = all_gather_rows(documents).view(world_size, N, D)
    positives = per_rank[:, :B].reshape(world_size * B, D)
    negatives = per_rank[:, B:].reshape(world_size * (N - B), D)
    return all_queries, torch.cat([positives, negatives])


def contrastive_loss(queries: torch.Tensor, documents: torch.Tensor, *, temperature: float = 0.05,
                     bidirectional: bool = True, gather_across_ranks: bool = False,
                     impl: str | None = None) -> torch.Tensor:
    """InfoNCE over in-batch (and hard) negatives, fused: the B×N logits are never materialised.

    queries (B, D) and documents (N = B·(1+m), D): **L2-normalised by the caller** (not normalised here);
    documents 0..B-1 are the queries' positives in order, the rest hard negatives shared by every query.
    Returns the scalar mean over queries of −log softmax(q·dᵀ/τ)[positive], plus (bidirectional=True) the
    document→query term over the B positives against all B queries: the two directions are summed.
    gather_across_ranks=True all-gathers queries and documents over the default process group (every rank
    passes the same shapes: a first all-gather of four integers checks that, since mismatched sizes abort or
    hang the collective); the result is this rank's loss, the mean over its own queries, with the
    gradient convention described in the module docstring (a DDP step equals the one-process step).
    Kernels: CPU float32/float64, CUDA float32/float16/bfloat16 (fp32 accumulation), differentiable once
    (differentiating the gradient raises); `impl="reference"` (or BEMBED_REFERENCE_OPS=1) runs the
    materialised specification instead.
    """
    _check_arguments(queries, documents, temperature, bidirectional, gather_across_ranks)
    temperature = float(temperature)
    world_size, rank = 1, 0
    if gather_across_ranks:
        world_size, rank = require_process_group(_NAME)
        check_same_layout_on_every_rank(_NAME, queries=queries, documents=documents)
        queries, documents = _gather_global_batch(queries, documents, world_size)
    if use_reference(impl):
        return _rank_loss_reference(queries, documents, temperature, bidirectional, world_size, rank)
    refuse_forward_ad(_NAME, queries, documents)
    return _OPS.contrastive_loss_fwd(queries, documents, temperature, bidirectional, world_size, rank)[0]
