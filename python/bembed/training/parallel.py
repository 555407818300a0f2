"""How a stage's model is spread over the ranks of a torchrun job (`train.parallel`).

- `ddp`: DistributedDataParallel. Every rank holds the whole model and its AdamW moments; gradients are
  averaged in buckets while backward runs.
- `fsdp`: torch's `fully_shard` (FSDP2). Every rank holds 1/world of each parameter, gradient and AdamW moment
  (as DTensors); each transformer layer (each member of the outermost `nn.ModuleList`s) gathers its weights
  for its forward and again for its backward, and its gradients are reduce-scattered (averaged) as they are
  made, on every accumulation micro-batch. The rest of the model (embeddings, pooler, MLM head) is one more
  group. For a model whose weights, gradients and optimizer state do not fit one device beside the
  activations; on a model that fits, DDP communicates less.

Both average gradients over the ranks, the loss convention the trainer relies on, and both start from rank 0's
weights. Checkpoints hold whole tensors either way (`full_tensors`, gathered one tensor at a time), so a
checkpoint written under one resumes under the other or in one process (`shard_like`).
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.distributed as dist

KINDS = ("ddp", "fsdp")


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def wrap(module: torch.nn.Module, device: torch.device, kind: str) -> torch.nn.Module:
    """`module` prepared for `kind` ("ddp" or "fsdp") when this is one of several ranks, else `module` itself.
    Under DDP every trainable parameter must get a gradient on every step: freeze the ones a loss does not use
    (as the encoder stages do with BERT's pooler). FSDP shards `module` in place (its parameters become
    DTensors): build the optimizer over its parameters afterwards."""
    if kind not in KINDS:
        raise ValueError(f"train.parallel must be one of {KINDS}, got {kind!r}")
    if _world_size() == 1:
        return module
    if kind == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        # the model's buffers are constants (no running statistics): no need to broadcast them every forward
        return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None,
                                       broadcast_buffers=False, gradient_as_bucket_view=True)
    from torch.distributed.fsdp import fully_shard

    for tensor in module.state_dict().values():  # each rank keeps its slice of its own copy: make them rank 0's
        dist.broadcast(tensor, src=0)
    for block in _layers(module):
        fully_shard(block)
    fully_shard(module)  # last: fully_shard takes a module's sub-groups before the module itself
    return module


def _layers(module: torch.nn.Module) -> list[torch.nn.Module]:
    """The members of each outermost `nn.ModuleList` (a transformer's layers; in a model whose layers hold lists
    of their own, such as T5's blocks, those stay inside their layer's group)."""
    lists: list[str] = []
    for name, child in module.named_modules():
        if isinstance(child, torch.nn.ModuleList) and not any(name.startswith(f"{outer}.") for outer in lists):
            lists.append(name)
    return [block for name in lists for block in module.get_submodule(name)]


def gradient_sync(module: torch.nn.Module, enabled: bool):
    """A context in which backward averages the gradients over the ranks (`enabled`) or, under DDP, only
    accumulates them on each rank (`no_sync`: every accumulation micro-batch but a step's last). FSDP reduces
    every micro-batch's gradients: skipping it (`set_requires_gradient_sync(False)`) would keep every layer's
    whole gradient on every rank until the step's last micro-batch, the memory FSDP is chosen to save."""
    if enabled or not hasattr(module, "no_sync"):
        return nullcontext()
    return module.no_sync()


def is_sharded(tensor) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


def full_tensor(tensor, keep: bool = True):
    """The whole of a sharded (DTensor) tensor; any other value as it is. A collective for a DTensor: every rank
    calls it, in the same order. keep=False: take part in the gather but keep nothing (an empty tensor), as the
    ranks that do not write a checkpoint do."""
    if not is_sharded(tensor):
        return tensor
    whole = tensor.full_tensor()
    return whole if keep else whole.new_empty(0)


def full_tensors(state: dict, keep: bool = True) -> dict:
    """A state dict with every sharded tensor made whole on the CPU (see `full_tensor`), gathered one at a time:
    a rank's device holds at most one whole tensor more, and with keep=False its CPU holds none."""
    return {name: full_tensor(value, keep).detach().cpu() if isinstance(value, torch.Tensor) else value
            for name, value in state.items()}


def shard_like(value: torch.Tensor, like) -> torch.Tensor:
    """`value` (a whole tensor, as a checkpoint holds it) placed as `like` is: sharded the same way when `like` is
    a DTensor (each rank takes its own slice, no communication), else as it is."""
    if not is_sharded(like) or value.shape != like.shape:
        return value
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(value.to(like.device_mesh.device_type), like.device_mesh, like.placements,
                             src_data_rank=None)
