"""GEGLU: `x (..., 2I) -> gelu_erf(x[..., :I]) * x[..., I:]` (JinaBERT's `mlp.gated_layers` layout: the
first half goes through the exact erf GELU). Autograd saves only x; backward is one fused kernel, itself not
differentiable (differentiating the gradient raises; the reference differentiates twice)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._autograd import first_order_only, refuse_forward_ad
from ._dispatch import use_reference
from ._fake import check_devices


def geglu_reference(x: torch.Tensor) -> torch.Tensor:
    """The specification, in plain PyTorch (any dtype, float64 included)."""
    gate, up = x.chunk(2, dim=-1)
    return F.gelu(gate, approximate="none") * up


@torch.library.register_fake("bembed::geglu")
def _geglu_fake(x):
    torch._check(x.shape[-1] % 2 == 0, lambda: "bembed.geglu: argument 'x' must have an even last dimension")
    return x.new_empty((*x.shape[:-1], x.shape[-1] // 2))


@torch.library.register_fake("bembed::geglu_backward")
def _geglu_backward_fake(grad_out, x):
    check_devices("bembed.geglu_backward", "x", dict(x=x, grad_out=grad_out))
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output):
    (x,) = inputs
    ctx.save_for_backward(x)


@first_order_only("geglu")
def _backward(ctx, grad_out):
    (x,) = ctx.saved_tensors
    return torch.ops.bembed.geglu_backward(grad_out, x)


torch.library.register_autograd("bembed::geglu", _backward, setup_context=_setup_context)


def geglu(x: torch.Tensor, *, impl: str | None = None) -> torch.Tensor:
    """Fused GEGLU with exact-erf GELU on the first half of the last dimension.

    x: (..., 2I) float tensor — CPU: float32/float64/bfloat16/float16; CUDA: float32/float16/bfloat16.
    Returns (..., I). Non-contiguous inputs are made contiguous. `impl="reference"` (or
    BEMBED_REFERENCE_OPS=1) runs the pure-PyTorch specification instead of the kernel.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"geglu: argument 'x' must be a torch.Tensor, got {type(x).__name__}")
    # Checked here too, not only in the op: the reference has no C++ side, and under torch.compile the op's
    # check runs on fake tensors, which turns its ValueError into a RuntimeError.
    if x.dim() == 0:
        raise ValueError("geglu: argument 'x' must have at least 1 dimension, got a 0-d tensor")
    if x.shape[-1] % 2:
        raise ValueError(f"geglu: argument 'x' must have an even last dimension (..., 2I), got shape {list(x.shape)}")
    if use_reference(impl):
        return geglu_reference(x)
    refuse_forward_ad("geglu", x)
    return torch.ops.bembed.geglu(x)
