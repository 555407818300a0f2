"""Atomic training checkpoints without pickle.

A checkpoint is a folder `step-00000123/`:
  model.safetensors        the trained module's state dict (tied tensors stored once per name)
  optimizer.safetensors    every optimizer state tensor, flattened as `state.<param index>.<name>`
  rng-rank<r>.safetensors  torch CPU (and CUDA) generator states and numpy's key array, per rank
  rng-rank<r>.json         python's and numpy's remaining generator state, per rank
  state.json               step, data position, schedule, optimizer param groups and scalar state,
                           world size, the stage config
It is written into a temporary sibling folder, fsynced and renamed into place (os.replace), so a folder with
the final name is always complete, also after a power cut; afterwards, of the older steps, all but the newest
keep-last-k − 1 are removed (each renamed away first, so no half-deleted step-N is ever seen).
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from bembed.files import fsync_path

log = logging.getLogger(__name__)

_NAME = re.compile(r"^step-(\d{8})$")


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, incomplete or unreadable; the message names the path."""


def tensor_dict(state: dict) -> dict[str, torch.Tensor]:
    # safetensors refuses tensors that share memory (the tied MLM decoder): store a copy per name.
    return {k: v.detach().to("cpu").clone().contiguous() for k, v in state.items()}


def _as_is(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


def optimizer_state(optimizer: torch.optim.Optimizer, whole=_as_is) -> tuple[dict[str, torch.Tensor], dict]:
    """An optimizer state_dict split into tensors (for safetensors) and JSON-able rest. `whole` makes a sharded
    state tensor whole (parallel.full_tensor: under FSDP every rank calls this, the gathers in one order)."""
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, entries in sd["state"].items():
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{index}.{name}"] = whole(value).detach().to("cpu").contiguous()
            else:
                scalars[f"{index}.{name}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars,
                     "tensors": {name: str(value.dtype) for name, value in tensors.items()}}


def load_optimizer_state(optimizer: torch.optim.Optimizer, tensors: dict, meta: dict) -> None:
    """ValueError when the tensors are not those the checkpoint recorded writing (an edited or foreign file):
    a parameter without its moments would silently restart them."""
    recorded = meta.get("tensors")  # absent in checkpoints written before it was recorded
    if recorded is not None:
        missing = sorted(set(recorded) - set(tensors))
        retyped = sorted(name for name in recorded if name in tensors and str(tensors[name].dtype) != recorded[name])
        if missing or retyped:
            raise ValueError(f"optimizer.safetensors lacks {missing[:5]} or holds other dtypes for {retyped[:5]} "
                             "than were written")
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        _, index, name = key.split(".", 2)
        state.setdefault(int(index), {})[name] = value
    for key, value in meta["scalars"].items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    groups = [dict(g, betas=tuple(g["betas"])) if "betas" in g else g for g in meta["param_groups"]]
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = s
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["numpy"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    version, internal, gauss = random.getstate()
    return tensors, {"numpy": [kind, int(pos), int(has_gauss), float(cached)],
                     "python": [version, list(internal), gauss]}


def set_rng_state(tensors: dict, meta: dict) -> None:
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted((k for k in tensors if k.startswith("cuda.")), key=lambda k: int(k[5:]))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    kind, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((kind, tensors["numpy"].numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))


def write_json(path: Path, value) -> None:
    path.write_text(json.dumps(value, indent=1), encoding="utf-8")


def checkpoint_dir(root: Path, step: int) -> Path:
    return Path(root) / f"step-{step:08d}"


def temp_dir(root: Path, step: int) -> Path:
    return Path(root) / f".tmp-step-{step:08d}"


def list_checkpoints(root: Path) -> list[Path]:
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if p.is_dir() and _NAME.match(p.name)), key=lambda p: p.name)


def _remove(folder: Path) -> None:
    trash = folder.with_name(f".old-{folder.name}")
    os.replace(folder, trash)
    shutil.rmtree(trash, ignore_errors=True)


def _replaced_dir(final: Path) -> Path:
    return final.with_name(f".replaced-{final.name}")


def clean_stale(root: Path) -> None:
    """Remove the temporary and half-removed folders a killed run left behind, and put back a checkpoint that
    `finalize` had set aside to replace when the kill came before its replacement was in place."""
    if not Path(root).is_dir():
        return
    for p in Path(root).iterdir():
        if p.is_dir() and p.name.startswith(".replaced-step-"):
            final = p.with_name(p.name.removeprefix(".replaced-"))
            if not final.exists():
                os.replace(p, final)
                fsync_path(root)
            else:
                shutil.rmtree(p, ignore_errors=True)
        elif p.is_dir() and p.name.startswith((".tmp-step-", ".old-step-")):
            shutil.rmtree(p, ignore_errors=True)


def set_aside_later(root: Path, step: int) -> list[Path]:
    """Rename the checkpoints after `step` to abandoned-step-N (kept, but neither "latest" nor pruned any more):
    a run resumed from an older checkpoint starts another history, and `--resume latest` after its next stop
    must not continue the abandoned one. A name already taken (resumed from the same step before) gets a
    suffix: abandoned-step-N.2, .3, … (abandoned folders are the user's, never replaced). Returns the new names."""
    moved = []
    for path in list_checkpoints(root):
        if int(_NAME.match(path.name).group(1)) > step:
            target, n = path.with_name(f"abandoned-{path.name}"), 1
            while target.exists():
                n += 1
                target = path.with_name(f"abandoned-{path.name}.{n}")
            os.replace(path, target)
            moved.append(target)
    if moved:
        fsync_path(root)  # else a power cut could bring an abandoned step back as "latest"
    return moved


def finalize(root: Path, step: int, keep_last: int) -> Path:
    """Make the temporary folder durable, rename it into place and prune old checkpoints (rank 0 only)."""
    root = Path(root)
    final, tmp = checkpoint_dir(root, step), temp_dir(root, step)
    for file in tmp.iterdir():
        fsync_path(file)
    fsync_path(tmp)
    # A step-N already there (this step saved again by a Ctrl-C, or one the trainer skipped as unreadable) is
    # set aside, not removed, until the new one is in place: a kill in between must leave a checkpoint.
    replaced = _replaced_dir(final)
    if final.exists():
        os.replace(final, replaced)
    os.replace(tmp, final)
    fsync_path(root)  # the renames themselves
    fsync_path(root.parent)  # and the checkpoints folder, created by the first save
    shutil.rmtree(replaced, ignore_errors=True)
    if keep_last > 0:
        # Only steps below this one: a run resumed from an older checkpoint (or its Ctrl-C save) must not
        # delete what it has just written in favour of higher-numbered ones.
        older = [p for p in list_checkpoints(root) if p.name < final.name]
        for old in older[:max(0, len(older) - (keep_last - 1))]:
            _remove(old)
    return final


def load(resume: str, root: Path, rank: int, all_ranks_ok=lambda ok: ok) -> tuple[Path, dict]:
    """(folder, contents) of the checkpoint `resume` names: a folder, or "latest" — the newest readable one
    under `root`, skipping (with a warning) newer ones that fail to read. Under torchrun every rank reads its
    own files, and the ranks must resume from one checkpoint: `all_ranks_ok(ok)` is True only when this
    rank's read and every other rank's succeeded (a collective; each rank calls it once per candidate)."""
    def attempt(path: Path):
        try:
            data, error = read(path, rank), None
        except CheckpointError as exc:
            data, error = None, exc
        if all_ranks_ok(error is None):
            return data, None
        return None, error or CheckpointError(f"checkpoint {path}: unreadable on another rank")

    if resume != "latest":
        path = Path(resume)
        if not path.is_dir():
            raise CheckpointError(f"--resume {resume}: no such checkpoint folder")
        data, error = attempt(path)
        if error is not None:
            raise error
        return path, data
    found = list_checkpoints(root)
    if not found:
        raise CheckpointError(f"--resume latest: no checkpoint under {root}")
    errors = []
    for path in reversed(found):
        data, error = attempt(path)
        if error is None:
            return path, data
        log.warning("%s: trying the checkpoint before it", error)
        errors.append(str(error))
    raise CheckpointError(f"--resume latest: no readable checkpoint under {root} ({'; '.join(errors)})")


def read(path: Path, rank: int) -> dict:
    """Everything a checkpoint holds, checked for completeness; CheckpointError names what is wrong."""
    from safetensors.torch import load_file

    def load(name):
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"checkpoint {path}: {name} is missing (incomplete or not a bembed checkpoint)")
        try:
            return load_file(str(file)) if name.endswith(".safetensors") else json.loads(file.read_text("utf-8"))
        except Exception as exc:  # a truncated or garbled file: say which, whatever the parser raised
            raise CheckpointError(f"checkpoint {path}: {name} is corrupt ({type(exc).__name__}: {exc})") from None

    state = load("state.json")
    out = {"state": state, "model": load("model.safetensors"), "optimizer": load("optimizer.safetensors")}
    rng_file = f"rng-rank{rank}.safetensors"
    if (path / rng_file).is_file() or rank < state.get("world_size", 1):  # a rank that saved must have its file
        out["rng"] = load(rng_file)
        out["rng_meta"] = load(f"rng-rank{rank}.json")
    else:
        log.warning("checkpoint %s has no RNG state for rank %d (saved with world size %s): RNG not restored",
                    path, rank, state.get("world_size"))
    return out
