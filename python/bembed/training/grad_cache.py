"""GradCache (Gao et al. 2021, "Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup"): a
contrastive loss over a whole micro-batch at the activation memory of a chunk of it.

Every in-batch negative must be in the loss's denominator, so splitting a batch into accumulation steps
(`train.grad_accum`) changes the loss; holding the whole batch's activations may not fit. The loss, though,
needs only the embeddings, and the encoder's gradient only the loss's gradient with respect to them. So the
batch is encoded in chunks without keeping activations; the loss runs on the stacked embeddings; in backward
each chunk is encoded again, with gradient, and its embeddings' gradient pushed through it. The gradient equals
the whole batch's, for one more forward pass. Each chunk's recomputation replays its forward's RNG state (the
same dropout) and autocast state.

The encoder's trainable parameters are inputs of the autograd node, and its backward returns their gradient
summed over the chunks: each parameter receives one gradient per backward, as from any other module, which is
what DistributedDataParallel's hooks expect.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch.autograd.function import once_differentiable

Encode = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _rng_state(device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


class _CachedEncode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, encode: Encode, chunk: int, input_ids, attention_mask, *params):
        device = input_ids.device
        ctx.encode, ctx.chunk, ctx.device = encode, chunk, device
        ctx.autocast = (torch.is_autocast_enabled(device.type), torch.get_autocast_dtype(device.type))
        ctx.rng_states = []
        ctx.save_for_backward(input_ids, attention_mask, *params)
        pieces = []
        for start in range(0, input_ids.shape[0], chunk):  # grad mode is off in a Function's forward
            ctx.rng_states.append(_rng_state(device))
            pieces.append(encode(input_ids[start:start + chunk], attention_mask[start:start + chunk]))
        return torch.cat(pieces)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_embeddings):
        input_ids, attention_mask, *params = ctx.saved_tensors
        enabled, dtype = ctx.autocast
        fork = [ctx.device] if ctx.device.type == "cuda" else []
        grads = [None] * len(params)
        owned = {grad_embeddings.untyped_storage().data_ptr()}  # storages no other sum may write into
        for i, (cpu_state, cuda_state) in enumerate(ctx.rng_states):
            rows = slice(i * ctx.chunk, (i + 1) * ctx.chunk)
            # fork_rng: the replay must not move the RNG that later steps draw their dropout from
            with torch.random.fork_rng(devices=fork):
                torch.set_rng_state(cpu_state)
                if cuda_state is not None:
                    torch.cuda.set_rng_state(cuda_state, ctx.device)
                with torch.enable_grad(), torch.autocast(ctx.device.type, dtype=dtype, enabled=enabled):
                    embeddings = ctx.encode(input_ids[rows], attention_mask[rows])
            chunk_grads = torch.autograd.grad(embeddings, params, grad_embeddings[rows], allow_unused=True)
            for j, g in enumerate(chunk_grads):
                if g is None:
                    continue
                if grads[j] is not None:
                    grads[j].add_(g)
                elif not g.is_contiguous() or g.untyped_storage().data_ptr() in owned:
                    # an expanded tensor (c.sum()), one gradient handed to two parameters (a + b), or the incoming
                    # gradient passed through: summing in place would write into something else
                    grads[j] = g.clone(memory_format=torch.contiguous_format)
                else:
                    grads[j] = g
                owned.add(grads[j].untyped_storage().data_ptr())
        return (None, None, None, None, *grads)


def cached_encode(encode: Encode, model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  chunk: int) -> torch.Tensor:
    """`encode(input_ids, attention_mask)` (the embeddings of `model`, one row per input row), computed `chunk`
    rows at a time without keeping activations, with the gradient of the whole batch (see the module's text).
    `chunk` ≥ the batch's rows, no gradient wanted, or no trainable parameter: `encode` of the whole batch as is."""
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"cached_encode: chunk must be an int ≥ 1, got {chunk!r}")
    if input_ids.dim() != 2 or attention_mask.shape != input_ids.shape:
        raise ValueError(f"cached_encode: input_ids and attention_mask must be (batch, length) of one shape, got "
                         f"{tuple(input_ids.shape)} and {tuple(attention_mask.shape)}")
    params = [p for p in model.parameters() if p.requires_grad]
    if chunk >= input_ids.shape[0] or not params or not torch.is_grad_enabled():
        return encode(input_ids, attention_mask)
    return _CachedEncode.apply(encode, chunk, input_ids, attention_mask, *params)
