import pytest
import torch


@pytest.fixture(autouse=True)
def _fresh_seed(request):
    """Every test draws fresh random inputs, reproducibly per test."""
    torch.manual_seed(abs(hash(request.node.nodeid)) % (2**31))


def pytest_collection_modifyitems(config, items):
    skip_cuda = pytest.mark.skip(reason="needs a CUDA device and bembed_ext built with CUDA kernels")
    import bembed_ext

    cuda_ready = torch.cuda.is_available() and bembed_ext.has_cuda_kernels()
    for item in items:
        if "cuda" in item.keywords and not cuda_ready:
            item.add_marker(skip_cuda)
