"""Argument checks that run both eagerly and under torch.compile."""

from __future__ import annotations

import torch


def check_value(condition, message: str) -> None:
    """Raise ValueError(message) unless `condition`, which may be symbolic (a SymBool from a dynamic shape or an
    `.item()`). While dynamo traces, it is `torch._check(condition)`: a runtime assert in the graph, which names
    the failed expression, not the message. torch 2.11's dynamo (the GPU image's) traces no message that is not a
    literal written in the compiled region itself, and a compiled graph raises RuntimeError either way."""
    if torch.compiler.is_compiling():
        torch._check(condition)
    else:
        torch._check_value(condition, lambda: message)
