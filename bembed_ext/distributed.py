"""All-gather along the first dimension with the gradient that data parallelism needs.

Forward concatenates every rank's rows in rank order. Backward reduce-scatters with SUM: each rank
receives, for its own rows, the sum over all ranks of d(rank loss)/d(rows). Under DDP (which averages
parameter gradients over the W ranks) that is exactly the single-process gradient of the mean loss —
averaging instead of summing here, or keeping only the local slice, gives gradients off by a factor of W.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from ._checks import check_value

# torch ≥ 2.13 renamed the tensor collectives; the older names keep working on older torch (the GPU image).
_all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
_reduce_scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor


def require_process_group(op: str) -> tuple[int, int]:
    """(world_size, rank) of the default process group; ValueError when there is none."""
    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError(f"{op}: gather_across_ranks=True needs an initialised torch.distributed process group "
                         "(call torch.distributed.init_process_group first, e.g. under torchrun)")
    return dist.get_world_size(), dist.get_rank()


class _AllGatherRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        world_size = dist.get_world_size()
        x = x.contiguous()
        out = x.new_empty((world_size * x.shape[0], *x.shape[1:]))
        _all_gather(out, x)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        world_size = dist.get_world_size()
        grad = grad_out.new_empty((grad_out.shape[0] // world_size, *grad_out.shape[1:]))
        _reduce_scatter(grad, grad_out.contiguous(), op=dist.ReduceOp.SUM)
        return grad


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
        _check_layouts_in_graph(op, list(matrices), every.view(world_size, len(matrices), 3))
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


def _check_layouts_in_graph(op: str, names: list[str], every: torch.Tensor) -> None:
    """check_same_layout_on_every_rank's test as torch.compile can trace it: every rank's (rows, dim, dtype)
    against rank 0's, each a runtime assert of the graph (`check_value`): a RuntimeError naming the comparison
    that failed, where eager raises the ValueError naming the argument."""
    first = every[0]
    for rank in range(1, every.shape[0]):
        for index, name in enumerate(names):
            for column, what in ((0, "shape"), (1, "shape"), (2, "dtype")):
                check_value(every[rank, index, column].item() == first[index, column].item(),
                            f"{op}: argument '{name}' must have the same {what} on every rank "
                            "(gather_across_ranks=True)")


def all_gather_rows(x: torch.Tensor) -> torch.Tensor:
    """x (n, ...) on every rank → (W·n, ...), rank r's rows at [r·n, (r+1)·n). Every rank must pass the same
    shape. Differentiable (see the module docstring for the gradient convention)."""
    if torch.compiler.is_compiling():
        # torch's own differentiable gather, with the same reduce-scatter (SUM) backward: traced from
        # _AllGatherRows, torch 2.11 (the GPU image's) lost the in-place reduce-scatter and gave zero gradients.
        from torch.distributed import _functional_collectives as functional

        return functional.all_gather_tensor_autograd(x.contiguous(), 0, dist.group.WORLD)
    return _AllGatherRows.apply(x)
