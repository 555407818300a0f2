"""What the ops' autograd registrations share: refusing the derivatives the kernels cannot give (a double
backward, forward mode) instead of returning wrong ones."""

from __future__ import annotations

import functools

import torch
import torch.autograd.forward_ad as forward_ad


class _RaiseWhenDifferentiated(torch.autograd.Function):
    @staticmethod
    def forward(ctx, message, *grads):
        ctx.message = message
        return tuple(g.view_as(g) for g in grads)

    @staticmethod
    def backward(ctx, *_):
        raise RuntimeError(ctx.message)


def first_order_only(op: str):
    """Decorates the backward of a register_autograd registration whose backward kernel has no derivative.
    Under create_graph=True its gradients then carry a node that raises when they are differentiated (a
    gradient penalty, a Hessian-vector product) instead of silently contributing nothing. torch's
    once_differentiable is not enough: it looks only at the incoming gradients, while the second derivative
    also flows through the saved inputs (q, x, …), which require grad when the incoming gradients do not."""
    message = (f"bembed.{op}: the kernel has no double backward (its gradients, taken with create_graph=True, "
               "are being differentiated); use impl='reference'")

    def decorate(backward):
        @functools.wraps(backward)
        def wrapper(ctx, *grads):
            with torch.no_grad():
                results = backward(ctx, *grads)
            if not torch.is_grad_enabled():  # an ordinary backward (create_graph=False)
                return results
            results = list(results) if isinstance(results, tuple) else [results]
            slots = [i for i, r in enumerate(results) if r is not None]
            # Leaves that require grad, so that the node is recorded even when nothing else requires grad.
            guarded = _RaiseWhenDifferentiated.apply(message, *(results[i].detach().requires_grad_() for i in slots))
            for i, g in zip(slots, guarded):
                results[i] = g
            return tuple(results) if len(results) > 1 else results[0]

        return wrapper

    return decorate


def refuse_forward_ad(op: str, *tensors: torch.Tensor | None) -> None:
    """Raises when an input carries a forward-mode tangent (torch.func.jvp / jacfwd, torch.autograd.forward_ad):
    torch has no forward-mode rule for a custom op with register_autograd and silently gives zero tangents."""
    if torch.compiler.is_compiling():
        return
    for t in tensors:
        if t is not None and forward_ad.unpack_dual(t).tangent is not None:
            raise NotImplementedError(f"bembed.{op}: the kernel has no forward-mode derivative (torch.func.jvp, "
                                      "jacfwd, forward_ad); use impl='reference'")
