"""The accuracy rule for kernels: compare against the float64 reference; a low-precision result passes
when its error is at most `factor` × the error of PyTorch's own computation at that precision (the
flash-attention convention), plus a tiny floor for outputs where PyTorch happens to be exact."""

from __future__ import annotations

import torch


def max_error(result: torch.Tensor, reference: torch.Tensor) -> float:
    return (result.double() - reference.double()).abs().max().item() if result.numel() else 0.0


def assert_within_torch_error(ours: torch.Tensor, reference: torch.Tensor, torch_same_precision: torch.Tensor,
                              *, factor: float = 2.0, floor: float | None = None, what: str = "output") -> None:
    """ours, torch_same_precision: the same computation at low precision by bembed and by PyTorch;
    reference: the float64 specification. The floor (relative to the largest reference value) is 1e-6, or
    1e-13 for float64 results: 1e-6 would let a kernel that computes a float64 op in float32 pass."""
    if floor is None:
        floor = 1e-13 if ours.dtype == torch.float64 else 1e-6
    assert ours.shape == reference.shape, f"{what}: shape {tuple(ours.shape)} != {tuple(reference.shape)}"
    assert torch.isfinite(ours).all(), f"{what}: non-finite values"
    ours_error = max_error(ours, reference)
    torch_error = max_error(torch_same_precision, reference)
    bound = factor * torch_error + floor * max(1.0, reference.abs().max().item() if reference.numel() else 1.0)
    assert ours_error <= bound, f"{what}: error {ours_error:.3e} > {factor}× PyTorch's {torch_error:.3e} (+floor)"
