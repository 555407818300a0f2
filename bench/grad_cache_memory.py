"""Peak extra memory and time of one stage-2 training step (queries and documents through JinaBERT, InfoNCE,
backward) with and without GradCache, measured in this (fresh) process.

    python bench/grad_cache_memory.py --chunk 0|N --batch 64 --length 128 --layers 2 [--device cpu|cuda]

Base width (768, 12 heads, GEGLU 3072), dropout 0.1, `--layers` layers. One step runs first, so the parameter
gradients already exist; the measured second step's extra memory is then the activations plus what the step
allocates for a moment (with GradCache: one summed copy of the gradients). Prints one JSON line: extra_mb (CPU:
peak resident MB minus resident MB before the step; CUDA: peak allocated minus allocated before it), seconds.
"""

from __future__ import annotations

import argparse
import json
import time

from peak_memory import peak_extra_mb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunk", type=int, default=0, help="GradCache rows per encoder pass (0: off)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch

    import bembed_ext
    from bembed import JinaBertConfig, JinaBertModel
    from bembed.training.encoder import embed

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    model = JinaBertModel(JinaBertConfig(num_hidden_layers=args.layers, hidden_dropout_prob=0.1)).to(device).train()
    model.pooler.requires_grad_(False)
    ids = torch.randint(5, model.config.vocab_size, (2, args.batch, args.length), device=device)
    mask = torch.ones_like(ids)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")

    def step():
        model.zero_grad(set_to_none=False)
        with autocast:
            q = embed(model, ids[0], mask[0], args.chunk)
            d = embed(model, ids[1], mask[1], args.chunk)
            loss = bembed_ext.contrastive_loss(q, d, temperature=0.05)
        loss.backward()
        return loss

    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        start = time.perf_counter()
        loss = step()
        torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        extra_mb = (torch.cuda.max_memory_allocated() - before) / 2**20
    else:
        with peak_extra_mb() as measured:
            start = time.perf_counter()
            loss = step()
            seconds = time.perf_counter() - start
        extra_mb = measured.mb
    print(json.dumps({"chunk": args.chunk, "batch": args.batch, "length": args.length, "layers": args.layers,
                      "device": device.type, "extra_mb": round(extra_mb, 1), "seconds": round(seconds, 3),
                      "loss": loss.item()}))


if __name__ == "__main__":
    main()
