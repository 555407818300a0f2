"""Embedding quantization (`precision=` of encode, `bembed.quantize_embeddings`): sentence-transformers'
int8/uint8/binary/ubinary codes, calibration ranges, and the inputs that have no codes."""

import numpy as np
import pytest
import torch

import bembed
from encode_fixtures import TEXTS, embedder, folder, tokenizer  # noqa: F401


def test_precision_quantizes_the_normalised_rows(embedder):
    full = embedder.encode(TEXTS)
    ubinary = embedder.encode(TEXTS, precision="ubinary")
    assert ubinary.dtype == np.uint8 and ubinary.shape == (len(TEXTS), 48 // 8)
    np.testing.assert_array_equal(np.unpackbits(ubinary, axis=1), (full > 0).astype(np.uint8))
    binary = embedder.encode(TEXTS, precision="binary")
    np.testing.assert_array_equal(binary.astype(np.int16) + 128, ubinary)
    int8 = embedder.encode(TEXTS, precision="int8")
    assert int8.dtype == np.int8 and int8.shape == full.shape
    low, high = full.min(0), full.max(0)
    # each dimension's minimum gets the lowest level, its maximum the top one (or the one below, by rounding)
    assert (int8[full.argmin(0), range(48)] == -128).all() and (int8[full.argmax(0), range(48)] >= 126).all()
    decoded = low + (int8.astype(np.float32) + 128.5) * (high - low) / 255
    assert np.abs(decoded - full).max() <= (high - low).max() / 255  # half a level plus rounding
    tensor = embedder.encode(TEXTS, precision="uint8", convert_to_tensor=True)
    assert tensor.dtype == torch.uint8
    with pytest.raises(ValueError, match="precision"):
        embedder.encode(TEXTS, precision="float16")


@pytest.mark.parametrize("precision, width, dtype", [("int8", 48, np.int8), ("uint8", 48, np.uint8),
                                                     ("binary", 6, np.int8), ("ubinary", 6, np.uint8)])
def test_precision_of_no_texts_and_of_one(embedder, precision, width, dtype):
    """As sentence-transformers: no texts give (0, width) codes; int8/uint8 ranges cannot come from one row (its
    codes would all be the lowest level), so one text without ranges raises."""
    empty = embedder.encode([], precision=precision)
    assert empty.shape == (0, width) and empty.dtype == dtype
    if precision.endswith("int8"):
        with pytest.raises(ValueError, match="single embedding"):
            embedder.encode("hallo", precision=precision)
        with pytest.raises(ValueError, match="single embedding"):
            embedder.encode(["hallo"], precision=precision)
    else:
        assert embedder.encode("hallo", precision=precision).shape == (width,)


def test_quantize_embeddings_with_calibration_ranges():
    rng = np.random.default_rng(0)
    calibration = rng.normal(size=(100, 16)).astype(np.float32)
    ranges = np.stack([calibration.min(0), calibration.max(0)])
    codes = bembed.quantize_embeddings(calibration[:3], "uint8", ranges=ranges)
    want = np.floor((calibration[:3] - ranges[0]) / ((ranges[1] - ranges[0]) / 255)).clip(0, 255)
    np.testing.assert_array_equal(codes, want.astype(np.uint8))
    one = bembed.quantize_embeddings(calibration[0], "int8", ranges=ranges)  # a single (dim,) row stays 1-D
    np.testing.assert_array_equal(one, (codes[0].astype(np.int16) - 128).astype(np.int8))
    with pytest.raises(ValueError, match="ranges"):
        bembed.quantize_embeddings(calibration, "int8", ranges=ranges[:, :8])
    # tensors are checked as arrays are: a 3-D batch and NaN rows have no codes
    with pytest.raises(ValueError, match=r"\(n, dim\) or \(dim,\)"):
        bembed.quantize_embeddings(torch.from_numpy(calibration).reshape(10, 10, 16), "binary")
    broken = calibration.copy()
    broken[1, 3] = np.nan
    for data in (broken, torch.from_numpy(broken)):
        with pytest.raises(ValueError, match="NaN"):
            bembed.quantize_embeddings(data, "int8", ranges=ranges)


def test_bad_ranges_are_refused_naming_ranges():
    """Swapped [max; min] rows mapped every value to code 0 silently; NaN or a 3-D ranges array was reported
    as a fault of `embeddings`; calibration ranges of no rows failed inside numpy."""
    rng = np.random.default_rng(1)
    values = rng.normal(size=(20, 8)).astype(np.float32)
    ranges = bembed.quantize.calibration_ranges(values)
    with pytest.raises(ValueError, match=r"ranges must be \[min; max\] rows: dimension 0 has min"):
        bembed.quantize_embeddings(values, "uint8", ranges=ranges[::-1])
    broken = ranges.copy()
    broken[0, 2] = np.nan
    with pytest.raises(ValueError, match="^ranges hold NaN"):
        bembed.quantize_embeddings(values, "int8", ranges=broken)
    with pytest.raises(ValueError, match=r"^ranges must be \(n, dim\)"):
        bembed.quantize_embeddings(values, "int8", ranges=ranges[None])
    with pytest.raises(ValueError, match="at least one row"):
        bembed.quantize.calibration_ranges(np.zeros((0, 8), np.float32))
    flat = ranges.copy()
    flat[1, 0] = flat[0, 0]  # min == max: one value seen, a valid (if degenerate) range
    assert bembed.quantize_embeddings(values, "uint8", ranges=flat).shape == (20, 8)
