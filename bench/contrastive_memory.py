"""Peak extra host memory of one contrastive-loss forward+backward, measured in this (fresh) process.

    python bench/contrastive_memory.py --impl kernel --batch 16384 --dim 768 [--negatives 0] [--threads 2]

Prints one JSON line: extra_mb is the peak resident memory during forward+backward minus the resident
memory just before it (inputs already allocated; the gradients are part of the extra), and logits_mb is
what a single B×N float32 logits matrix alone would take. The peak is reset through /proc/self/clear_refs,
so imports and input creation do not count (Linux only).
"""

from __future__ import annotations

import argparse
import json


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--impl", choices=("kernel", "reference"), default="kernel")
    parser.add_argument("--batch", type=int, default=16384)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--negatives", type=int, default=0, help="hard negatives per query (m)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch
    import torch.nn.functional as F

    import bembed_ext

    torch.set_num_threads(args.threads)
    B, D, N = args.batch, args.dim, args.batch * (1 + args.negatives)
    queries = F.normalize(torch.randn(B, D), dim=-1).requires_grad_()
    documents = F.normalize(torch.randn(N, D), dim=-1).requires_grad_()
    before = _status_mb("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets the peak (VmHWM) to the current resident size
    loss = bembed_ext.contrastive_loss(queries, documents, impl=args.impl)
    loss.backward()
    peak = _status_mb("VmHWM")
    print(json.dumps({"impl": args.impl, "batch": B, "dim": D, "documents": N, "extra_mb": round(peak - before, 1),
                      "logits_mb": round(B * N * 4 / 2**20, 1), "loss": loss.item()}))


if __name__ == "__main__":
    main()
