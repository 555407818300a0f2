"""Peak extra host memory of one contrastive-loss forward+backward, measured in this (fresh) process.

    python bench/contrastive_memory.py --impl kernel|reference|naive --batch 16384 --dim 768 [--negatives 0]

"naive" is the usual implementation (one logits matrix, cross entropy both ways). Prints one JSON line: extra_mb is the peak resident memory during forward+backward minus the resident
memory just before it (inputs already allocated; the gradients are part of the extra), and logits_mb is
what a single B×N float32 logits matrix alone would take. The peak is reset through /proc/self/clear_refs,
so imports and input creation do not count (Linux only).
"""

from __future__ import annotations

import argparse
import json

from peak_memory import peak_extra_mb


def naive_loss(queries, documents, temperature: float = 0.05, bidirectional: bool = True):
    """The usual InfoNCE: materialised B×N logits, cross entropy per row and (over the positives) per column."""
    import torch
    import torch.nn.functional as F

    B = queries.shape[0]
    logits = queries @ documents.T / temperature
    targets = torch.arange(B, device=queries.device)
    loss = F.cross_entropy(logits, targets)
    if bidirectional:
        loss = loss + F.cross_entropy(logits[:, :B].T, targets)
    return loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--impl", choices=("kernel", "reference", "naive"), default="kernel")
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
    with peak_extra_mb() as measured:
        if args.impl == "naive":
            loss = naive_loss(queries, documents)
        else:
            loss = bembed_ext.contrastive_loss(queries, documents, impl=args.impl)
        loss.backward()
    print(json.dumps({"impl": args.impl, "batch": B, "dim": D, "documents": N, "extra_mb": round(measured.mb, 1),
                      "logits_mb": round(B * N * 4 / 2**20, 1), "loss": loss.item()}))


if __name__ == "__main__":
    main()
