"""The build itself: build info, `bembed info`, the friendly mismatch error, the CUDA sources compiling for
sm_80/sm_90a (CI has no GPU, so this is what keeps CUDA kernels from rotting), the CMake build, and one pattern
that the GPU machines' older torch cannot compile."""

import glob
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

import bembed_ext
from bembed_ext import _library

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_build_info_matches_running_torch():
    info = bembed_ext.build_info()
    assert info["torch_version"] == torch.__version__
    assert info["cpu_capability"] in ("AVX2", "DEFAULT")
    assert bembed_ext.has_cuda_kernels() == (info["cuda_version"] is not None)


def test_every_op_has_a_cpu_kernel():
    for op in bembed_ext.OPS:
        assert bembed_ext.has_kernel(op, "CPU"), op


def test_mismatched_torch_gives_rebuild_instructions(monkeypatch):
    monkeypatch.setattr(_library, "build_info", lambda: {"torch_version": "0.0.0-other"})
    with pytest.raises(ImportError, match="compiled for a different torch(.|\n)*pip install --no-build-isolation"):
        _library.load_library()


def test_bembed_info_lists_ops_and_kernels():
    result = subprocess.run([sys.executable, "-m", "bembed", "info"], capture_output=True, text=True, check=True)
    for op in bembed_ext.OPS:
        line = next(line for line in result.stdout.splitlines() if line.startswith(op + " "))
        assert line.split()[1] == "yes"
    assert torch.__version__ in result.stdout


@pytest.mark.skipif(not (shutil.which("nvcc") or os.path.exists("/usr/local/cuda/bin/nvcc")),
                    reason="nvcc not installed")
def test_cuda_sources_compile_for_sm80_and_sm90a():
    result = subprocess.run(["bash", os.path.join(ROOT, ".ci", "check_cuda")], capture_output=True, text=True,
                            env={**os.environ, "PYTHON": sys.executable})
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    cu_files = glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu"))
    assert result.stdout.count("ok      nvcc") == 2 * len(cu_files) > 0


@pytest.mark.slow
def test_gpu_check_plan_selects_cuda_tests_and_benchmarks(tmp_path):
    """A lent GPU is rare and short: the selection bench/gpu_check.sh will run there is collected here."""
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable}
    result = subprocess.run(["bash", "bench/gpu_check.sh", "plan"], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"plan: [1-9]\d* CUDA tests, [1-9]\d* CUDA benchmarks", result.stdout), result.stdout


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake not installed")
def test_cmake_build_registers_working_ops(tmp_path):
    """The developer build (CMakeLists.txt) compiles the same sources into a library whose ops work."""
    configure = ["cmake", "-S", ROOT, "-B", str(tmp_path), f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}",
                 f"-DPython3_EXECUTABLE={sys.executable}", "-DBEMBED_CUDA=OFF"]
    if shutil.which("ninja"):
        configure += ["-G", "Ninja"]
    configured = subprocess.run(configure, capture_output=True, text=True)
    log = configured.stdout + configured.stderr
    if configured.returncode and torch.version.cuda and re.search(r"cannot find the CUDA|CUDA_\w+_LIBRARY", log):
        pytest.skip("torch is a CUDA build, and its CMake package finds no complete CUDA toolkit here (README)")
    assert configured.returncode == 0, log
    subprocess.run(["cmake", "--build", str(tmp_path), "-j", "2"], check=True, capture_output=True)
    assert os.path.exists(tmp_path / "compile_commands.json")
    library = glob.glob(str(tmp_path / "_C*.so"))[0]
    probe = ("import torch, sys; torch.ops.load_library(sys.argv[1]); x = torch.randn(3, 8); a, b = x.chunk(2, -1); "
             "assert torch.allclose(torch.ops.bembed.geglu(x), torch.nn.functional.gelu(a) * b, atol=1e-6)")
    subprocess.run([sys.executable, "-c", probe, library], check=True, cwd=tmp_path)


def test_traced_checks_go_through_check_value():
    """CI's torch (2.13) traces `torch._check_value(cond, message)` under torch.compile; the lent GPU machines'
    torch 2.11 refuses it, and so compiling a model failed there. Checks that run where dynamo may trace them
    call `bembed_ext._checks.check_value`, which works on both."""
    offenders = []
    for folder in ("bembed_ext", os.path.join("python", "bembed")):
        for path in glob.glob(os.path.join(ROOT, folder, "**", "*.py"), recursive=True):
            if path.endswith(os.path.join("bembed_ext", "_checks.py")):
                continue
            with open(path, encoding="utf-8") as f:
                offenders += [f"{os.path.relpath(path, ROOT)}:{n}" for n, line in enumerate(f, 1)
                              if "torch._check_value(" in line]
    assert not offenders, f"use bembed_ext._checks.check_value instead: {offenders}"
