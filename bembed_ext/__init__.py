"""bembed_ext: bembed's compiled kernels as torch ops (torch.ops.bembed.*), with fake and autograd
registrations, argument checks, and a pure-PyTorch reference for each op (`bembed_ext.reference`)."""

from ._library import build_info, has_cuda_kernels, has_kernel, load_library

load_library()

from . import reference  # noqa: E402
from .ops.alibi_attention import alibi_attention, alibi_attention_varlen, alibi_slopes  # noqa: E402
from .ops.contrastive_loss import contrastive_loss  # noqa: E402
from .ops.geglu import geglu  # noqa: E402

# Each public op and the torch.ops.bembed operators that implement it (what `bembed info` reports on).
OPS = {
    "geglu": ("geglu", "geglu_backward"),
    "alibi_attention": ("alibi_attention_fwd", "alibi_attention_bwd"),
    "alibi_attention_varlen": ("alibi_attention_varlen_fwd", "alibi_attention_varlen_bwd"),
    "contrastive_loss": ("contrastive_loss_fwd", "contrastive_loss_bwd"),
}

__all__ = [
    "OPS", "alibi_attention", "alibi_attention_varlen", "alibi_slopes", "build_info", "contrastive_loss", "geglu",
    "has_cuda_kernels", "has_kernel", "reference",
]
