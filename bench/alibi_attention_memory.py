"""Peak extra host memory of one ALiBi attention call (bembed kernel or SDPA with a precomputed float ALiBi
mask), measured in this (fresh) process.

    python bench/alibi_attention_memory.py --impl bembed --seqlen 8192 [--heads 12 --head-dim 64]
                                           [--direction fwd|fwd+bwd] [--threads 2]

Prints one JSON line. extra_mb is the peak resident memory during the call minus the resident memory just
before it (inputs — and for SDPA its B×H×L×L mask — already allocated), minus the outputs the call returns
(out, and the three gradients for fwd+bwd): what the computation needs beyond its inputs and results.
The peak is reset through /proc/self/clear_refs (Linux only).
"""

from __future__ import annotations

import argparse
import json

from peak_memory import peak_extra_mb


def alibi_mask(slopes, seqlen: int):
    """SDPA's additive float mask (1, H, L, L): −slope_h·|i−j|."""
    import torch

    pos = torch.arange(seqlen, dtype=torch.float32)
    return (-(slopes[:, None, None] * (pos[:, None] - pos[None, :]).abs()))[None]


def sdpa_alibi(q, k, v, mask):
    """(B, L, H, D) in and out, like bembed's op."""
    import torch.nn.functional as F

    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask)
    return out.transpose(1, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--impl", choices=("bembed", "sdpa"), default="bembed")
    parser.add_argument("--seqlen", type=int, default=8192)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--direction", choices=("fwd", "fwd+bwd"), default="fwd")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch

    import bembed_ext

    torch.set_num_threads(args.threads)
    shape = (1, args.seqlen, args.heads, args.head_dim)
    backward = args.direction == "fwd+bwd"
    q, k, v = (torch.randn(shape, requires_grad=backward) for _ in range(3))
    grad = torch.randn(shape)
    slopes = bembed_ext.alibi_slopes(args.heads)
    mask = alibi_mask(slopes, args.seqlen) if args.impl == "sdpa" else None

    def call(q, k, v, mask, grad):
        with torch.set_grad_enabled(backward):
            out = bembed_ext.alibi_attention(q, k, v, slopes) if args.impl == "bembed" else sdpa_alibi(q, k, v, mask)
            if backward:
                out.backward(grad)
        return out

    # A tiny call first, so that code paged in on first use (autograd engine, kernels) is not counted.
    tiny = [t[:, :8].detach().requires_grad_(backward) for t in (q, k, v)]
    call(*tiny, mask[..., :8, :8] if mask is not None else None, torch.ones_like(tiny[0]))

    def mb(*tensors):
        return sum(t.numel() * t.element_size() for t in tensors) / 2**20

    with peak_extra_mb() as measured:
        out = call(q, k, v, mask, grad)
    results = [out] + ([q.grad, k.grad, v.grad] if backward else [])
    print(json.dumps({"impl": args.impl, "seqlen": args.seqlen, "direction": args.direction,
                      "extra_mb": round(measured.mb - mb(*results), 1),
                      "mask_mb": round(mb(mask), 1) if mask is not None else 0.0}))


if __name__ == "__main__":
    main()
