"""Shared benchmark conventions: CPU benchmarks use 2 threads (the project's CPU machine); each case
records `extra_info` = {op, case, impl, baseline, ...} so bench/report.py can compute same-run ratios."""

import pytest
import torch


def pytest_configure(config):
    torch.set_num_threads(2)


@pytest.fixture
def record():
    """record(benchmark, op=..., case=..., impl=..., baseline=bool, **metrics) tags a benchmark row."""

    def _record(benchmark, **info):
        benchmark.extra_info.update(info)

    return _record


def sync(device):
    if device == "cuda" or (isinstance(device, torch.device) and device.type == "cuda"):
        torch.cuda.synchronize()
