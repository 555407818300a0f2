"""Builds csrc/cuda/alibi_attention_{fwd,bwd}.cu, contrastive_loss.cu and geglu.cu for the host emulation (see
include/cuda_runtime.h): copies the CUDA sources, rewrites the pieces of CUDA-only syntax they use into emu::
calls, compiles them with their harnesses into one shared library, and caches it by the hash of every input."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
CUDA_DIR = os.path.join(HERE, "..", "..", "csrc", "cuda")
CUDA_SOURCES = ["alibi_attention_fwd.cu", "alibi_attention_bwd.cu", "alibi_attention_tiles.cuh",
                "alibi_attention_skip.cuh", "alibi_attention.cuh", "mma_fragments.cuh", "async_copy.cuh", "dtype.cuh",
                "contrastive_loss.cu", "contrastive_loss.cuh", "geglu.cu", "geglu.cuh"]
# Kernel launches and extern __shared__ declarations each source with kernels or launches holds: a rewrite that
# misses one fails loudly.
CUDA_SHAPES = {"alibi_attention_fwd.cu": (1, 1), "alibi_attention_bwd.cu": (3, 2), "alibi_attention_skip.cuh": (1, 0),
               "contrastive_loss.cu": (6, 0), "geglu.cu": (4, 0)}
HARNESSES = ["alibi_attention_harness.cpp", "contrastive_loss_harness.cpp", "geglu_harness.cpp"]
EMU_SOURCES = [*HARNESSES, "emu_mma.h", "include/cuda_runtime.h", "include/cuda_fp16.h", "include/cuda_bf16.h",
               "build.py"]

_LAUNCH = re.compile(r"([A-Za-z_][\w:]*(?:<[^<>;()]*>)?)<<<(.*?)>>>\(", re.S)
_SHARED = re.compile(r"extern __shared__ __align__\(16\) unsigned char (\w+)\[\];")
_MMA_ASM = re.compile(r'asm\("mma\.sync\.aligned\.m16n8k16\.row\.col\.f32\.(f16|bf16)\.\1\.f32.*?\);', re.S)
_CP_ASYNC_ASM = {
    re.compile(r'asm volatile\("cp\.async\.cg\.shared\.global.*?\);', re.S): "::emu::cp_async_16(dst, src, valid);",
    re.compile(r'asm volatile\("cp\.async\.commit_group.*?\);', re.S): "::emu::cp_async_commit();",
    re.compile(r'asm volatile\("cp\.async\.wait_group.*?\);', re.S): "::emu::cp_async_wait(kInFlight);",
}
_LDMATRIX_ASM = re.compile(r'asm volatile\("ldmatrix\.sync\.aligned\.m8n8\.x4(\.trans)?\.shared\.b16.*?\);', re.S)


def rewrite(name: str, text: str) -> str:
    if name in CUDA_SHAPES:
        text, launches = _LAUNCH.subn(r"::emu::launch(\1, \2, ", text)
        text, shared = _SHARED.subn(r"unsigned char* \1 = ::emu::shared_memory();", text)
        assert (launches, shared) == CUDA_SHAPES[name], \
            f"{name}: unexpected source shape ({launches} launches, {shared} smem)"
    if name == "mma_fragments.cuh":
        types = {"f16": "__half", "bf16": "__nv_bfloat16"}
        text, n = _MMA_ASM.subn(lambda m: f"::emu::mma_sync<{types[m.group(1)]}>(d, a, b);", text)
        assert n == 2, f"{name}: expected 2 mma asm blocks, found {n}"
        text, n = _LDMATRIX_ASM.subn(
            lambda m: f"::emu::ldmatrix_x4(r, row_address, {'true' if m.group(1) else 'false'});", text)
        assert n == 2, f"{name}: expected 2 ldmatrix asm blocks, found {n}"
    if name == "async_copy.cuh":
        for pattern, call in _CP_ASYNC_ASM.items():
            text, n = pattern.subn(call, text)
            assert n == 1, f"{name}: expected one match of {pattern.pattern}, found {n}"
    return text


def build() -> str:
    """Path of the emulated library (built on first use; ~30 s)."""
    digest = hashlib.sha256()
    for directory, names in ((CUDA_DIR, CUDA_SOURCES), (HERE, EMU_SOURCES)):
        for name in names:
            with open(os.path.join(directory, name), "rb") as f:
                digest.update(name.encode() + f.read())
    out_dir = os.path.join(tempfile.gettempdir(), f"bembed_cuda_emulator_{os.getuid()}", digest.hexdigest()[:16])
    library = os.path.join(out_dir, "cuda_emulated.so")
    if os.path.exists(library):
        return library
    src_dir = os.path.join(out_dir, "src")
    os.makedirs(src_dir, exist_ok=True)
    for name in CUDA_SOURCES:
        with open(os.path.join(CUDA_DIR, name)) as f:
            text = rewrite(name, f.read())
        with open(os.path.join(src_dir, name), "w") as f:
            f.write(text)
    partial = library + f".{os.getpid()}.tmp"
    # -fsanitize=alignment: a vector load or store the kernels make off its alignment (a 16-byte pack at an odd
    # address) aborts at once, as on the GPU, instead of depending on the host compiler's choice of moves.
    subprocess.run(["g++", "-std=c++20", "-O1", "-g0", "-shared", "-fPIC", "-pthread", "-w", "-fsanitize=alignment",
                    "-fno-sanitize-recover=alignment",
                    "-I", src_dir, "-I", os.path.join(HERE, "include"), "-I", HERE,
                    *(os.path.join(HERE, h) for h in HARNESSES), "-o", partial], check=True)
    os.replace(partial, library)
    return library


if __name__ == "__main__":
    print(build())
