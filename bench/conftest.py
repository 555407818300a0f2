"""Shared benchmark conventions: CPU benchmarks use 2 threads (the project's CPU machine); each case
records `extra_info` = {op, case, impl, baseline, ...} so bench/report.py can compute same-run ratios."""

import gc
import os
import time

import pytest
import torch

# BEMBED_BENCH_SECONDS: benchmarks that would start after this many seconds of the session are skipped, so a
# run under a hard time limit (a lent GPU's 10-minute calls) ends by itself and writes its JSON; a kill or
# SIGINT loses what pytest-benchmark had not written yet.
_DEADLINE = float(os.environ.get("BEMBED_BENCH_SECONDS", "inf"))
_STARTED = time.monotonic()


def pytest_configure(config):
    torch.set_num_threads(2)


def pytest_runtest_setup(item):
    if time.monotonic() - _STARTED > _DEADLINE:
        pytest.skip(f"out of time: BEMBED_BENCH_SECONDS={_DEADLINE:g} passed before this benchmark started")


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_sessionfinish(session):
    # A benchmark interrupted in its first round (SIGINT from `timeout -s INT`) stays listed with no timings,
    # and pytest-benchmark's JSON writer then fails on it, losing every finished benchmark's figures.
    benchmark_session = getattr(session.config, "_benchmarksession", None)
    if benchmark_session is not None:
        benchmark_session.benchmarks[:] = [b for b in benchmark_session.benchmarks if b]
    yield


@pytest.fixture
def record():
    """record(benchmark, op=..., case=..., impl=..., baseline=bool, **metrics) tags a benchmark row."""

    def _record(benchmark, **info):
        benchmark.extra_info.update(info)

    return _record


def rate(benchmark, amount: float) -> float | None:
    """amount per second of the benchmark's median round; None under `--benchmark-disable`, where each benchmark
    runs once, untimed (a quick check that every case and baseline runs and is correct)."""
    return None if benchmark.stats is None else amount / benchmark.stats.stats.median


def sync(device):
    if device == "cuda" or (isinstance(device, torch.device) and device.type == "cuda"):
        torch.cuda.synchronize()


def run_or_skip_when_out_of_memory(run, reason: str) -> None:
    """run(), or pytest.skip(reason) when it runs out of GPU memory. The skip is raised after the except block:
    raised inside it, it would carry the out-of-memory error as its context, whose traceback keeps the failed
    step's tensors (tens of GB of logits) alive into the next benchmark."""
    try:
        run()
        return
    except torch.OutOfMemoryError:
        pass
    gc.collect()
    torch.cuda.empty_cache()
    pytest.skip(reason)
