"""Embedding quantization with sentence-transformers' `precision` semantics, for smaller and faster indexes.

- "binary" / "ubinary": one bit per dimension (value > 0), packed 8 per byte (numpy's packbits order, zero
  padded to a whole byte); "binary" stores each byte minus 128 as int8, "ubinary" as uint8. Compare with
  Hamming distance.
- "int8" / "uint8": each dimension mapped linearly from its [min, max] onto 256 levels. `ranges` (2, dim) gives
  the [min; max] rows; without it they come from the embeddings being quantized (as in sentence-transformers),
  so quantize a whole corpus at once, or pass the ranges of a calibration set to keep codes comparable; a
  single embedding without ranges raises ValueError. No rows give no rows: (0, dim) or (0, dim / 8) codes.
"""

from __future__ import annotations

import numpy as np
import torch

PRECISIONS = ("float32", "int8", "uint8", "binary", "ubinary")


def calibration_ranges(embeddings) -> np.ndarray:
    """(2, dim) float32: the per-dimension minimum and maximum of `embeddings` (n, dim)."""
    values = _as_numpy(embeddings)
    if values.ndim != 2 or len(values) == 0:
        raise ValueError(f"embeddings must be (n, dim) with at least one row to take ranges from, got shape "
                         f"{values.shape}")
    return np.stack([values.min(axis=0), values.max(axis=0)]).astype(np.float32)


def quantize_embeddings(embeddings, precision: str, ranges=None):
    """(n, dim) or (dim,) float embeddings -> the same rows in `precision` (see the module docstring), as a
    numpy array, or a tensor on the input's device when given a tensor."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "float32":
        return embeddings
    is_tensor = isinstance(embeddings, torch.Tensor)
    values = _as_numpy(embeddings)
    rows = values.reshape(1, -1) if values.ndim == 1 else values
    if precision in ("binary", "ubinary"):
        packed = np.packbits(rows > 0, axis=-1)
        codes = (packed.astype(np.int16) - 128).astype(np.int8) if precision == "binary" else packed
    else:
        if ranges is None:
            # One row has no spread to take ranges from: every code would be the lowest (as sentence-transformers).
            if len(rows) == 1:
                raise ValueError(f"{precision} ranges cannot come from a single embedding: pass ranges (for example "
                                 "bembed.quantize.calibration_ranges of a representative set of embeddings)")
            ranges = calibration_ranges(rows) if len(rows) else np.zeros((2, rows.shape[1]), np.float32)
        low, high = _checked_ranges(ranges, rows.shape[1])
        # A dimension with one value in the calibration set has no spread: every value maps to the lowest code.
        steps = np.where(high > low, (high - low) / 255, 1.0).astype(np.float32)
        levels = np.clip(np.floor((rows - low) / steps), 0, 255)
        codes = (levels - 128).astype(np.int8) if precision == "int8" else levels.astype(np.uint8)
    codes = codes.reshape(-1) if values.ndim == 1 else codes
    return torch.from_numpy(codes).to(embeddings.device) if is_tensor else codes


def _as_numpy(values, name: str = "embeddings") -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().float().cpu().numpy()
    else:
        values = np.asarray(values, dtype=np.float32)
    if values.ndim not in (1, 2):
        raise ValueError(f"{name} must be (n, dim) or (dim,), got shape {values.shape}")
    if not np.isfinite(values).all():  # a NaN would get an arbitrary code, and poison every range it enters
        raise ValueError(f"{name} hold NaN or inf values: there is no code for them")
    return values


def _checked_ranges(ranges, dim: int) -> tuple[np.ndarray, np.ndarray]:
    values = _as_numpy(ranges, "ranges")
    if values.shape != (2, dim):
        raise ValueError(f"ranges must be (2, {dim}) rows of per-dimension [min; max], got shape {values.shape}")
    low, high = values
    if (low > high).any():  # [max; min] would map every value to the lowest code
        bad = int(np.argmax(low > high))
        raise ValueError(f"ranges must be [min; max] rows: dimension {bad} has min {low[bad]} > max {high[bad]}")
    return low, high
