"""Root pytest configuration shared by tests/ and bench/: items marked `cuda` are skipped unless a CUDA
device is visible and bembed_ext was built with CUDA kernels."""

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    import bembed_ext

    if torch.cuda.is_available() and bembed_ext.has_cuda_kernels():
        return
    skip_cuda = pytest.mark.skip(reason="needs a CUDA device and bembed_ext built with CUDA kernels")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip_cuda)
