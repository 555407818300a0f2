"""All-gather along the first dimension with the gradient that data parallelism needs.

Forward concatenates every rank's rows in rank order. Backward reduce-scatters with SUM: each rank
receives, for its own rows, the sum over all ranks of d(rank loss)/d(rows). Under DDP (which averages
parameter gradients over the W ranks) that is exactly the single-process gradient of the mean loss —
averaging instead of summing here, or keeping only the local slice, gives gradients off by a factor of W.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

# torch ≥ 2.13 renamed the tensor collectives; the older names keep working on older torch (the GPU image).
_all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


def require_process_group(op: str) -> tuple[int, int]:
    """(world_size, rank) of the default process group; ValueError when there is none."""
    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError(f"{op}: gather_across_ranks=True needs an initialised torch.distributed process group "
                         "(call torch.distributed.init_process_group first, e.g. under torchrun)")
    return dist.get_world_size(), dist.get_rank()


_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)  # what the gathers carry, by a code


def _dtype_name(code: int) -> str:
    return str(_DTYPES[code]) if code < len(_DTYPES) else f"a dtype of {code - len(_DTYPES)} bytes"


def check_same_layout_on_every_rank(op: str, **matrices: torch.Tensor) -> None:
    """ValueError on every rank, naming the argument, unless all ranks pass these 2-D tensors with the same
    shapes and dtypes: an all-gather of mismatched sizes aborts the process under gloo and hangs or reads
    garbage under NCCL. One small collective (and, on GPU, one host sync)."""
    first = next(iter(matrices.values()))
    codes = [_DTYPES.index(m.dtype) if m.dtype in _DTYPES else len(_DTYPES) + m.element_size()
             for m in matrices.values()]
    mine = torch.tensor([[*m.shape, code] for m, code in zip(matrices.values(), codes)], dtype=torch.int64,
                        device=first.device)
    world_size = dist.get_world_size()
    every = mine.new_empty((world_size * mine.shape[0], 3))
    _all_gather(every, mine)
    if torch.compiler.is_compiling():  # the values are data-dependent there: asserts that run with the graph
        _check_layouts_in_graph(every.view(world_size, len(matrices), 3))
        return
    described = every.view(world_size, len(matrices), 3).tolist()
    for rank, rank_matrices in enumerate(described):
        for name, (*shape, code), (*expected, expected_code) in zip(matrices, rank_matrices, described[0]):
            if shape != expected:
                raise ValueError(f"{op}: argument '{name}' must have the same shape on every rank "
                                 f"(gather_across_ranks=True): rank {rank} has {tuple(shape)}, rank 0 "
                                 f"{tuple(expected)}")
            if code != expected_code:
                raise ValueError(f"{op}: argument '{name}' must have the same dtype on every rank "
                                 f"(gather_across_ranks=True): rank {rank} has {_dtype_name(code)}, rank 0 "
                                 f"{_dtype_name(expected_code)}")


def _check_layouts_in_graph(every: torch.Tensor) -> None:
    """check_same_layout_on_every_rank's test as torch.compile can trace it: every rank's (rows, dim, dtype)
    against rank 0's, each a runtime assert of the graph: a RuntimeError naming the comparison that failed, where
    eager raises the ValueError naming the argument (dynamo keeps no message, see `_checks.check_value`)."""
    for rank in range(1, every.shape[0]):
        for index in range(every.shape[1]):
            for column in range(every.shape[2]):
                torch._check(every[rank, index, column].item() == every[0, index, column].item())


def all_gather_rows(x: torch.Tensor) -> torch.Tensor:
    """x (n, ...) on every rank → (W·n, ...), rank r's rows at [r·n, (r+1)·n). Every rank must pass the same
    shape. Differentiable (see the module docstring for the gradient convention): torch's own gather, whose
    backward is that reduce-scatter, eager and compiled alike. (A hand-written autograd.Function around the
    in-place collectives, bembed's before, compiled to zero gradients on torch 2.11, the GPU machines'.)"""
    from torch.distributed import _functional_collectives as functional

    # torch 2.13 renamed it and warns (FutureWarning) on the old name, the only one torch 2.11 has
    gather = getattr(functional, "all_gather_single_autograd", None) or functional.all_gather_tensor_autograd
    gathered = gather(x.contiguous(), 0, dist.group.WORLD)
    if gathered.requires_grad:
        # torch 2.11's backward of the gather (a reduce-scatter) refuses a strided gradient, such as the expanded
        # ones `gathered.sum()` sends back. A hook, not an identity autograd.Function: that one's output is a view,
        # which may not be modified in place. (2.11 still fails to compile an in-place edit of the hooked tensor.)
        gathered.register_hook(torch.Tensor.contiguous)
    return gathered
