import os
import zlib

import pytest
import torch


@pytest.fixture(autouse=True)
def _fresh_seed(request):
    """Each test gets its own random inputs, reproducible from its id; BEMBED_TEST_SEED varies all of them."""
    salt = os.environ.get("BEMBED_TEST_SEED", "0")
    torch.manual_seed(zlib.crc32(f"{salt}:{request.node.nodeid}".encode()))
