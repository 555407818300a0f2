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


def assert_typically_within_torch_error(draws: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], *,
                                        factor: float = 2.0, what: str = "output") -> None:
    """The rule of `assert_within_torch_error` over several independent draws [(ours, reference,
    torch_same_precision), ...]: the root mean square over the draws of each one's max error, ours against
    PyTorch's, plus the float32 floor of the largest reference value. Where bembed is as accurate as PyTorch (float32
    sums in another order), one draw's ratio of two maxima is a noisy yardstick: it passes 2 in about one draw in
    twenty; the mean over five draws does not, while an error twice PyTorch's still fails."""
    ours = [max_error(o, r) for o, r, _ in draws]
    theirs = [max_error(t, r) for _, r, t in draws]
    for o, r, _ in draws:
        assert o.shape == r.shape and torch.isfinite(o).all(), f"{what}: shape {tuple(o.shape)} or non-finite values"
    floor = 1e-6 * max(1.0, max(r.abs().max().item() for _, r, _ in draws))
    ours_rms, theirs_rms = _root_mean_square(ours), _root_mean_square(theirs)
    assert ours_rms <= factor * theirs_rms + floor, (f"{what}: typical error {ours_rms:.3e} > {factor}× PyTorch's "
                                                     f"{theirs_rms:.3e} (+floor) over {len(draws)} draws")


def _root_mean_square(values: list[float]) -> float:
    return (sum(v * v for v in values) / len(values)) ** 0.5
