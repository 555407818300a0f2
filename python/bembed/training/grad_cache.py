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
what DistributedDataParallel's hooks expect. Under torch.distributed a trainable parameter that gets no
gradient is an error, as DDP makes it without GradCache. A model sharded by FSDP is refused: its whole parameters
exist only inside each layer's gather, out of this node's reach.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.distributed as dist
from torch.autograd.function import once_differentiable
from torch.utils.checkpoint import get_device_states, set_device_states

from .parallel import is_sharded

Encode = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _chunk_gradient(ctx, index: int, grad_embeddings: torch.Tensor, params: list[torch.Tensor]):
    """The parameters' gradients from chunk `index`, encoded again with its forward's RNG and autocast."""
    input_ids, attention_mask = ctx.saved_tensors[:2]
    rows = slice(index * ctx.chunk, (index + 1) * ctx.chunk)
    cpu_state, device_ids, device_states = ctx.rng_states[index]
    enabled, dtype = ctx.autocast
    # fork_rng: the replay must not move the RNG that later steps draw their dropout from
    with torch.random.fork_rng(devices=device_ids, device_type=ctx.device_type):
        torch.set_rng_state(cpu_state)
        set_device_states(device_ids, device_states, device_type=ctx.device_type)
        with torch.enable_grad(), torch.autocast(ctx.device_type, dtype=dtype, enabled=enabled):
            embeddings = ctx.encode(input_ids[rows], attention_mask[rows])
    return torch.autograd.grad(embeddings, params, grad_embeddings[rows], allow_unused=True)


def _sum_into(grads: list, chunk_grads: tuple, owned: set) -> None:
    """Adds a chunk's parameter gradients into `grads`, in place where the sum owns its storage. `owned`: the
    storages of the sums so far and of the incoming gradient."""
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


class _CachedEncode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, encode: Encode, chunk: int, names: list[str], input_ids, attention_mask, *params):
        device = input_ids.device
        ctx.encode, ctx.chunk, ctx.names, ctx.device_type = encode, chunk, names, device.type
        ctx.autocast = (torch.is_autocast_enabled(device.type), torch.get_autocast_dtype(device.type))
        ctx.rng_states = []
        ctx.save_for_backward(input_ids, attention_mask, *params)
        pieces = []
        for start in range(0, input_ids.shape[0], chunk):  # grad mode is off in a Function's forward
            # CPU and accelerator (CUDA, XPU, ...) generators, as torch.utils.checkpoint keeps them
            ctx.rng_states.append((torch.get_rng_state(), *get_device_states(input_ids)))
            pieces.append(encode(input_ids[start:start + chunk], attention_mask[start:start + chunk]))
        return torch.cat(pieces)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_embeddings):
        params = list(ctx.saved_tensors[2:])
        grads = [None] * len(params)
        owned = {grad_embeddings.untyped_storage().data_ptr()}
        for index in range(len(ctx.rng_states)):
            # a helper's call, so that nothing of one chunk's gradients outlives the summing: kept into the next
            # recomputation they would double the parameter-sized memory GradCache needs
            _sum_into(grads, _chunk_gradient(ctx, index, grad_embeddings, params), owned)
        unused = [name for name, g in zip(ctx.names, grads) if g is None]
        if unused and _world_size() > 1:
            # DDP takes a None returned here as a zero gradient (AdamW would then decay the parameter on N ranks
            # but not on one); without GradCache the same model fails in DDP. Fail the same way, by name.
            shown = ", ".join(unused[:5]) + (f" and {len(unused) - 5} more" if len(unused) > 5 else "")
            raise RuntimeError(f"GradCache under torch.distributed: trainable parameter(s) {shown} got no "
                               "gradient; freeze them (requires_grad_(False)): every rank must reduce a gradient "
                               "for every trainable parameter")
        return (None, None, None, None, None, *grads)


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
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if any(is_sharded(p) for _, p in trainable):
        raise ValueError("cached_encode: the model's parameters are sharded (FSDP's fully_shard); GradCache takes "
                         "the gradient with respect to whole parameters: use DDP (train.parallel=ddp)")
    if chunk >= input_ids.shape[0] or not trainable or not torch.is_grad_enabled():
        return encode(input_ids, attention_mask)
    names, params = zip(*trainable)
    return _CachedEncode.apply(encode, chunk, list(names), input_ids, attention_mask, *params)
