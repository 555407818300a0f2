"""`bembed info`: versions, the device, and for each op whether CPU and CUDA kernels are registered."""

from __future__ import annotations

import platform

import torch

import bembed
import bembed_ext


def add_arguments(parser) -> None:
    del parser  # no options


def run(args) -> int:
    del args
    print(f"bembed        {bembed.__version__}")
    print(f"python        {platform.python_version()}")
    print(f"torch         {torch.__version__} (CUDA {torch.version.cuda or 'none'})")
    built = bembed_ext.build_info()
    print("built against " + (", ".join(f"{k}={v}" for k, v in built.items()) or "unknown"))
    if torch.cuda.is_available():
        print(f"device        cuda: {torch.cuda.get_device_name()} ({torch.cuda.device_count()} visible)")
    else:
        print(f"device        cpu ({torch.get_num_threads()} threads; no CUDA device visible)")
    print(f"{'op':<28}{'CPU':<6}CUDA")
    for op in bembed_ext.OPS:
        cpu = "yes" if bembed_ext.has_kernel(op, "CPU") else "no"
        cuda = "yes" if bembed_ext.has_kernel(op, "CUDA") else "no"
        print(f"{op:<28}{cpu:<6}{cuda}")
    return 0
