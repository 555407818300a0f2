"""Local safetensors loading and saving for JinaBERT models, by the published parameter names.

bembed never downloads at run time and never unpickles: a checkpoint is a local folder with
config.json and model.safetensors (or a sharded model.safetensors.index.json). The names are the
published ones; a `bert.` prefix is added or stripped to fit the model class; `pooler.*` and `cls.*`
are left out where the model has no such part (an info line says so); missing and unexpected keys are
warned of by name.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .config import ATTENTION_IMPLS, JinaBertConfig

logger = logging.getLogger(__name__)

WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
_TIED = "cls.predictions.decoder.weight"

# from_pretrained keywords of HF/sentence-transformers that concern the hub or device placement, which a
# local-folder loader has nothing to do with.
_IGNORED_KWARGS = {"cache_dir", "revision", "trust_remote_code", "local_files_only", "token", "use_auth_token",
                   "force_download", "proxies", "low_cpu_mem_usage",
                   "_from_auto", "_from_pipeline", "use_safetensors", "weights_only", "resume_download",
                   "adapter_kwargs", "_commit_hash", "code_revision", "mirror", "offload_folder",
                   "offload_state_dict", "max_memory", "key_mapping", "tp_plan", "distributed_config"}


def read_state_dict(folder: str | os.PathLike) -> dict[str, torch.Tensor]:
    """All tensors of a local checkpoint folder (single or sharded safetensors), on CPU, dtypes as stored."""
    folder = Path(folder)
    if (folder / WEIGHTS_NAME).is_file():
        return load_file(folder / WEIGHTS_NAME)
    if (folder / WEIGHTS_INDEX_NAME).is_file():
        weight_map = json.loads((folder / WEIGHTS_INDEX_NAME).read_text())["weight_map"]
        state = {}
        for shard in sorted(set(weight_map.values())):
            state.update(load_file(folder / shard))
        return state
    if any((folder / name).exists() for name in ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt")):
        raise ValueError(f"{folder}: only a pickle checkpoint (pytorch_model.bin) is there; bembed loads safetensors "
                         "only. Convert it once in a trusted environment: safetensors.torch.save_file(torch.load(...))")
    raise FileNotFoundError(f"{folder}: no {WEIGHTS_NAME} or {WEIGHTS_INDEX_NAME}")


def match_state_dict(state: dict[str, torch.Tensor], model: torch.nn.Module) -> tuple[dict, list[str], list[str]]:
    """Rename checkpoint keys to the model's names. Returns (renamed state, missing keys, unexpected keys);
    parts a model does not have and does not need (pooler.*, cls.* for a base model; the tied decoder
    weight; the pooler when absent from a checkpoint) are neither missing nor unexpected."""
    expected = set(model.state_dict().keys())
    wants_prefix = any(k.startswith("bert.") for k in expected)
    renamed = {}
    for key, value in state.items():
        bare = key[len("bert."):] if key.startswith("bert.") else key
        if bare.startswith("cls.") or key.startswith("cls."):
            name = key if key.startswith("cls.") else bare
        else:
            name = f"bert.{bare}" if wants_prefix else bare
        renamed[name] = value
    # position_ids: a buffer some BERT exports carry; ALiBi has no positions to look up.
    unexpected = sorted(k for k in renamed if k not in expected
                        and not k.startswith(("cls.", "pooler.", "bert.pooler.")) and not k.endswith("position_ids"))
    missing = sorted(k for k in expected - renamed.keys()
                     if k != _TIED and not k.startswith(("pooler.", "bert.pooler.")))
    return {k: v for k, v in renamed.items() if k in expected}, missing, unexpected


def _parts(keys) -> set[str]:
    """The top-level parts (embeddings, encoder, pooler, cls) the state-dict keys belong to, bert. prefix or not."""
    return {key.removeprefix("bert.").split(".", 1)[0] for key in keys}


def load_pretrained(cls, folder, *, config: JinaBertConfig | None = None, dtype=None, torch_dtype=None,
                    device=None, device_map=None, strict: bool = False, output_loading_info: bool = False,
                    **kwargs):
    """Build `cls` from a local checkpoint folder.

    config: use this config instead of folder/config.json. dtype (or torch_dtype): the model dtype
    (default float32 whatever the file stores; "auto": the config's `dtype`, else the stored one). device / device_map
    (a single device): where to put the model. strict: raise ValueError on missing or unexpected keys
    instead of logging them. Other keywords that are config fields override the config (e.g.
    attention_impl="reference"); hub-only keywords are ignored. The model is returned in eval mode.
    """
    # subfolder: where the model lies inside `folder` (sentence-transformers passes its module's path);
    # AutoModel reads the config from there, so the weights must come from there too.
    folder = Path(folder) / (kwargs.pop("subfolder", None) or "")
    if not folder.is_dir():
        raise ValueError(f"{folder}: not a local folder (bembed loads checkpoints from disk and never downloads)")
    for name in _IGNORED_KWARGS & kwargs.keys():
        kwargs.pop(name)
    # HF's switch name: honoured when it names one of bembed's paths, otherwise (e.g. "sdpa") not ours.
    if kwargs.get("attn_implementation") in ATTENTION_IMPLS:
        kwargs["attention_impl"] = kwargs.pop("attn_implementation")
    kwargs.pop("attn_implementation", None)
    if config is None:
        if not (folder / "config.json").is_file():  # HF would fall back to the default (base) architecture
            raise ValueError(f"{folder}: no config.json (the architecture of the weights in it)")
        config = JinaBertConfig.from_pretrained(folder)
    else:
        config = JinaBertConfig.from_dict(config.to_dict())  # never mutate the caller's config
    for name, value in kwargs.items():
        if not hasattr(config, name):
            raise TypeError(f"{cls.__name__}.from_pretrained: unexpected keyword argument {name!r}")
        setattr(config, name, value)
    config.validate()

    state = read_state_dict(folder)
    if not config.qk_layer_norm and any(".attention.self.layer_norm_q." in k for k in state):
        logger.info("%s: checkpoint has query/key LayerNorms; enabling qk_layer_norm", folder)
        config.qk_layer_norm = True

    model = cls(config)
    matched, missing, unexpected = match_state_dict(state, model)
    left_out = _parts(state) - _parts(matched) - _parts(unexpected)
    state = matched
    if left_out:  # a base model from an MLM checkpoint: expected, but said, as transformers says it
        logger.info("%s: the checkpoint's %s left out (%s has no such part)", folder,
                    ", ".join(f"{part}.*" for part in sorted(left_out)), cls.__name__)
    expected = model.state_dict()
    for key, value in state.items():
        if value.shape != expected[key].shape:
            raise ValueError(f"{folder}: parameter {key!r} has shape {tuple(value.shape)} in the checkpoint, "
                             f"the model expects {tuple(expected[key].shape)}")
    if missing or unexpected:
        message = f"{folder}: missing keys {missing}; unexpected keys {unexpected}"
        if strict:
            raise ValueError(message)
        logger.warning(message)
    model.load_state_dict(state, strict=False)
    if hasattr(model, "tie_decoder"):
        model.tie_decoder()

    dtype = dtype if dtype is not None else torch_dtype
    if dtype == "auto":  # as transformers: the config's dtype, else the first floating tensor's
        dtype = getattr(config, "dtype", None) or next(
            (tensor.dtype for tensor in state.values() if tensor.is_floating_point()), torch.float32)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    model.to(dtype=dtype or torch.float32)
    if device_map == "auto" and device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif isinstance(device_map, (str, torch.device)) and device is None:
        device = device_map
    if device is not None:
        model.to(device)
    model.eval()
    if output_loading_info:
        return model, {"missing_keys": missing, "unexpected_keys": unexpected}
    return model


def save_pretrained(model, folder, *, safe_serialization: bool = True, prefix: str = "", dtype=None,
                    is_main_process: bool = True, **kwargs) -> None:
    """Write folder/config.json and folder/model.safetensors. prefix: prepended to every name outside the
    MLM head (e.g. "bert." for the published MLM layout); dtype: cast floating tensors (e.g. float16);
    is_main_process=False (HF's switch for the other ranks of a distributed run): write nothing. The tied
    decoder weight is stored once, as the word embeddings. HF's variant, save_function and max_shard_size
    are refused: the files would not be what the caller asked for."""
    if not safe_serialization:
        raise ValueError("save_pretrained: bembed writes safetensors only (safe_serialization=False is refused)")
    unknown = kwargs.keys() - {"state_dict", "save_function", "push_to_hub", "max_shard_size", "variant", "token",
                               "save_peft_format"}
    if unknown:
        raise TypeError(f"save_pretrained: unexpected keyword arguments {sorted(unknown)}")
    if kwargs.get("push_to_hub"):
        raise ValueError("save_pretrained: push_to_hub is not supported (bembed never uploads)")
    refused = sorted(k for k in ("variant", "save_function", "max_shard_size") if kwargs.get(k) is not None)
    if refused:
        raise ValueError(f"save_pretrained: {refused} not supported (bembed writes one {WEIGHTS_NAME} itself)")
    if not is_main_process:
        return
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = kwargs.get("state_dict") or model.state_dict()
    tensors = {}
    for key, value in state.items():
        if key == _TIED:
            continue
        name = key if key.startswith(("cls.", "bert.")) or not prefix else prefix + key
        value = value.detach().to("cpu")
        if dtype is not None and value.is_floating_point():
            value = value.to(dtype)
        tensors[name] = value.contiguous()
    model.config.architectures = [type(model).__name__]
    model.config.save_pretrained(folder)
    save_file(tensors, folder / WEIGHTS_NAME, metadata={"format": "pt"})
