"""Stage configs: one dataclass per stage, nested sections, loaded from YAML with dotted overrides.

`load_config(PretrainRun, "tiny.yaml", ["train.lr=3e-4", "mlm.mask_prob=0.15"])` reads the YAML,
applies each `section.field=value` override (the value parsed as YAML, so numbers, booleans, lists
work), and builds the dataclass tree; an unknown key anywhere raises ValueError naming it, so a typo in
a config never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import os
import typing
from pathlib import Path

from bembed.files import user_path


def _require(ok: bool, field: str, rule: str, value) -> None:
    """A range check: a bad value fails naming the field, not as a traceback mid-run."""
    if not ok:
        raise ValueError(f"config {field} must be {rule}, got {value!r}")


class Checked:
    """A config section whose `validate()` runs when it is built (load time) and again where it is used (the
    Trainer, the stages): the fields stay mutable, and code that edits them after loading (the quickstart
    does) must not get past the checks. The base `validate()` checks every section inside (a run config)."""

    # fields holding a path, where `~` and `$VARS` are expanded on load (data sources expand theirs on reading)
    _path_fields: tuple[str, ...] = ()

    def __post_init__(self):
        for name in self._path_fields:
            if isinstance(getattr(self, name), str):
                setattr(self, name, str(user_path(getattr(self, name))))
        self.validate()

    def validate(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            for item in value if isinstance(value, list) else (value,):
                if isinstance(item, Checked):
                    item.validate()


@dataclasses.dataclass
class TrainConfig(Checked):
    """The trainer core's settings, shared by every stage. `batch_size` is the global batch of one
    optimizer step (all ranks, all accumulation micro-batches together); it must divide evenly. The contrastive
    and Pearson losses are computed per global micro-batch (batch_size / grad_accum rows, gathered over the
    ranks): accumulation gives them fewer in-batch negatives, where MLM gets exactly one batch's gradient. To fit
    a large contrastive batch in memory, keep grad_accum at 1 and set the stage's `grad_cache_chunk`."""

    _path_fields = ("output_dir",)
    output_dir: str = "runs/out"
    max_steps: int = 100
    batch_size: int = 32
    grad_accum: int = 1
    lr: float = 1e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    warmup_steps: int = 10
    max_grad_norm: float | None = 1.0
    seed: int = 42
    bf16: bool = True  # autocast to bfloat16 on GPU; ignored on CPU
    device: str | None = None  # default: cuda:<local rank> when available, else cpu
    log_every: int = 10
    save_every: int = 0  # 0: only at the end (and on Ctrl-C)
    keep_last: int = 2
    gradient_checkpointing: bool = False
    progress: bool = True
    parallel: str = "ddp"  # under torchrun: "ddp" (whole model on every rank) or "fsdp" (sharded); parallel.py

    def validate(self) -> None:
        from .parallel import KINDS

        _require(self.parallel in KINDS, "train.parallel", " or ".join(KINDS), self.parallel)
        for name in ("max_steps", "batch_size", "grad_accum"):
            _require(getattr(self, name) >= 1, f"train.{name}", "≥ 1", getattr(self, name))
        if self.batch_size % self.grad_accum:
            raise ValueError(f"train.batch_size={self.batch_size} must split into train.grad_accum="
                             f"{self.grad_accum} micro-batches of equal size")
        for name in ("lr", "weight_decay", "warmup_steps", "save_every", "keep_last"):
            _require(getattr(self, name) >= 0, f"train.{name}", "≥ 0", getattr(self, name))
        _require(self.eps > 0, "train.eps", "> 0", self.eps)
        _require(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "train.betas",
                 "two values in [0, 1)", list(self.betas))
        # a negative norm made clipping reverse the gradient
        _require(self.max_grad_norm is None or self.max_grad_norm >= 0, "train.max_grad_norm",
                 "≥ 0 (0 or null: no clipping)", self.max_grad_norm)
        for name in ("lr", "weight_decay", "eps", "max_grad_norm"):
            value = getattr(self, name)
            _require(value is None or math.isfinite(value), f"train.{name}", "finite", value)
        _require(0 <= self.seed < 2**63, "train.seed", "in [0, 2**63)", self.seed)  # torch's generators' range
        if self.device is not None:
            import torch

            try:
                torch.device(self.device)
            except RuntimeError:
                _require(False, "train.device", "a torch device such as cpu, cuda or cuda:1 (or null)", self.device)


@dataclasses.dataclass
class ModelConfig(Checked):
    """Where the encoder comes from: `init_from` (a saved model folder) or a fresh JinaBERT built from
    `config` (JinaBertConfig fields) with the tokenizer at `tokenizer`."""

    _path_fields = ("init_from", "tokenizer")
    init_from: str | None = None
    tokenizer: str | None = None
    config: dict = dataclasses.field(default_factory=dict)
    max_length: int = 512

    def validate(self) -> None:
        from bembed.model import JinaBertConfig

        # JinaBertConfig takes any keyword (PretrainedConfig keeps unknown ones), so only the architecture's
        # own parameters pass: a typo would train the default, and generic keys (tie_word_embeddings,
        # model_type, ...) do nothing here (JinaBertForMaskedLM always ties its decoder). The tokenizer decides
        # the vocabulary size and the special token ids (model_config_kwargs overrides them).
        decided = sorted(k for k in self.config if k == "vocab_size" or k.endswith("_token_id"))
        if decided:
            raise ValueError(f"config model.config: {decided} are decided by the tokenizer (model.tokenizer); "
                             "remove them")
        known = set(inspect.signature(JinaBertConfig.__init__).parameters) - {"self", "kwargs", "vocab_size",
                                                                                "pad_token_id"}
        unknown = sorted(set(self.config) - known)
        if unknown:
            raise ValueError(f"config model.config: unknown key(s) {unknown}; known: {sorted(known)}")
        try:  # the architecture's own rules (heads dividing the width, ...), before any step runs
            JinaBertConfig(**self.config)
        except (TypeError, ValueError, ArithmeticError) as exc:
            raise ValueError(f"config model.config: {exc}") from None
        _require(self.max_length >= 3, "model.max_length", "≥ 3 (<s>, a token, </s>)", self.max_length)
        # a folder brings its own architecture: model.config would be ignored
        _require(not (self.init_from and self.config), "model.config",
                 "empty when model.init_from is set (add model.config={} to a config that sets it)", self.config)


@dataclasses.dataclass
class Source(Checked):
    """One data source: a jsonl/csv/parquet file, or a dataset folder written by `bembed data build`
    (read with `split`). `lang` tags text for language-alternating MLM batches; `weight` (multi-task only, on
    every source or none) overrides its size-proportional sampling; `max_rows` keeps the first rows only."""

    path: str = ""
    split: str = "train"
    lang: str | None = None
    weight: float | None = None
    max_rows: int | None = None

    def validate(self) -> None:
        _require(bool(self.path), "data source path", "a file or dataset folder", self.path)
        _require(self.weight is None or 0 < self.weight < math.inf, f"data source {self.path}: weight",
                 "> 0 and finite", self.weight)
        _require(self.max_rows is None or self.max_rows >= 1, f"data source {self.path}: max_rows", "≥ 1",
                 self.max_rows)


@dataclasses.dataclass
class DataConfig(Checked):
    train: list[Source] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class MLMConfig(Checked):
    mask_prob: float = 0.30
    language_batches: str = "alternate"  # alternate | mix
    tokenizer_vocab_size: int = 32000  # when model.tokenizer does not exist yet, one is trained from the data

    def validate(self) -> None:
        _require(0 < self.mask_prob < 1, "mlm.mask_prob", "in (0, 1)", self.mask_prob)
        _require(self.language_batches in ("alternate", "mix"), "mlm.language_batches", "'alternate' or 'mix'",
                 self.language_batches)
        from bembed.tokenizer import MIN_VOCAB_SIZE

        _require(self.tokenizer_vocab_size >= MIN_VOCAB_SIZE, "mlm.tokenizer_vocab_size",
                 f"≥ {MIN_VOCAB_SIZE} (every byte and the special tokens)", self.tokenizer_vocab_size)


GRAD_CACHE_HELP = "0 (off) or ≥ 1 rows per encoder pass"


def _check_matryoshka_dims(dims: list[int], key: str) -> None:
    _require(all(d >= 1 for d in dims) and len(set(dims)) == len(dims), key,
             "distinct dimensions ≥ 1 (e.g. [768, 512, 256, 128, 64]; [] for off)", list(dims))


@dataclasses.dataclass
class PairsConfig(Checked):
    """`grad_cache_chunk` > 0 encodes each micro-batch that many rows at a time through GradCache
    (training/grad_cache.py): every row of the micro-batch stays an in-batch negative, at the activation memory
    of one chunk, for one more forward pass (sentence-transformers' CachedMultipleNegativesRankingLoss
    `mini_batch_size`). `matryoshka_dims` (e.g. [768, 256, 64]): the loss is the mean of the losses of the
    embeddings cut to each of these widths (losses.matryoshka_mean), so that `truncate_dim` works at them."""

    temperature: float = 0.05
    bidirectional: bool = True
    query_prefix: str = ""
    passage_prefix: str = ""
    grad_cache_chunk: int = 0
    matryoshka_dims: list[int] = dataclasses.field(default_factory=list)

    def validate(self) -> None:
        _require(0 < self.temperature < math.inf, "pairs.temperature", "> 0 and finite", self.temperature)
        _require(self.grad_cache_chunk >= 0, "pairs.grad_cache_chunk", GRAD_CACHE_HELP, self.grad_cache_chunk)
        _check_matryoshka_dims(self.matryoshka_dims, "pairs.matryoshka_dims")


@dataclasses.dataclass
class MultitaskConfig(Checked):
    """`grad_cache_chunk`, `matryoshka_dims`: as in PairsConfig, for the retrieval and the STS micro-batches."""

    temperature: float = 0.05
    num_negatives: int = 3
    sts_loss: str = "pearson"  # pearson | mse | cosent | none
    score_max: float = 5.0  # gold scores are divided by this for the MSE loss
    cosent_scale: float = 20.0
    query_prefix: str = ""
    passage_prefix: str = ""
    grad_cache_chunk: int = 0
    matryoshka_dims: list[int] = dataclasses.field(default_factory=list)

    def validate(self) -> None:
        from .losses import STS_LOSSES

        _require(0 < self.temperature < math.inf, "multitask.temperature", "> 0 and finite", self.temperature)
        _require(self.num_negatives >= 0, "multitask.num_negatives", "≥ 0", self.num_negatives)
        _require(self.sts_loss in STS_LOSSES, "multitask.sts_loss", " | ".join(STS_LOSSES), self.sts_loss)
        _require(0 < self.score_max < math.inf, "multitask.score_max", "> 0 and finite", self.score_max)
        # a negative scale trains the reversed order
        _require(0 < self.cosent_scale < math.inf, "multitask.cosent_scale", "> 0 and finite", self.cosent_scale)
        _require(self.grad_cache_chunk >= 0, "multitask.grad_cache_chunk", GRAD_CACHE_HELP, self.grad_cache_chunk)
        _check_matryoshka_dims(self.matryoshka_dims, "multitask.matryoshka_dims")


@dataclasses.dataclass
class AlignConfig(Checked):
    """The first column of every source (query / anchor / src: English in built `parallel` sets) is the
    teacher's language, the second the language taught."""

    _path_fields = ("teacher",)
    teacher: str | None = None  # default: a frozen copy of the student as loaded
    beta: float = 0.4
    # Train under each of the student's prompts (an E5-style model's "query: " / "passage: ") as well as under
    # none, so that prompted text learns the language too: rows take turns, one prompt on both sides of a pair
    # and the teacher's prompt of the same name for its side (none where it has no such prompt).
    prompts: bool = True

    def validate(self) -> None:
        _require(0 <= self.beta < math.inf, "align.beta", "≥ 0 and finite", self.beta)


class _UnweightedSources(Checked):
    """A stage that reads its sources as one stream: a source `weight` would do nothing, so it is refused."""

    def validate(self) -> None:
        super().validate()
        for source in self.data.train:
            _require(source.weight is None, f"data source {source.path}: weight",
                     "unset (only multitask draws its sources by weight)", source.weight)


@dataclasses.dataclass
class PretrainRun(_UnweightedSources):
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    mlm: MLMConfig = dataclasses.field(default_factory=MLMConfig)


def _check_grad_cache_unsharded(train: TrainConfig, grad_cache_chunk: int, key: str) -> None:
    # GradCache differentiates with respect to the whole parameters; FSDP's live in the per-layer gathers
    _require(not (grad_cache_chunk and train.parallel == "fsdp"), key,
             "0 with train.parallel=fsdp (GradCache needs whole parameters: use train.parallel=ddp)", grad_cache_chunk)


@dataclasses.dataclass
class PairsRun(_UnweightedSources):
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    pairs: PairsConfig = dataclasses.field(default_factory=PairsConfig)

    def validate(self) -> None:
        super().validate()
        _check_grad_cache_unsharded(self.train, self.pairs.grad_cache_chunk, "pairs.grad_cache_chunk")


@dataclasses.dataclass
class MultitaskRun(Checked):
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    multitask: MultitaskConfig = dataclasses.field(default_factory=MultitaskConfig)

    def validate(self) -> None:
        super().validate()
        _check_grad_cache_unsharded(self.train, self.multitask.grad_cache_chunk, "multitask.grad_cache_chunk")
        # A source without a weight weighs its row count: a weight of 2 next to 50,000 rows would be drawn
        # almost never. Either all sources say how often they are drawn, or the sizes decide for all.
        weighted = [s.weight is not None for s in self.data.train]
        _require(all(weighted) or not any(weighted), "data.train weights",
                 "set on every source or on none (without one a source weighs its row count)",
                 [s.weight for s in self.data.train])


@dataclasses.dataclass
class AlignRun(_UnweightedSources):
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    align: AlignConfig = dataclasses.field(default_factory=AlignConfig)


def _build(cls, value, where: str):
    """value (dicts/lists from YAML) as an instance of the annotated type `cls`."""
    origin = typing.get_origin(cls)
    if dataclasses.is_dataclass(cls):
        if not isinstance(value, dict):
            raise ValueError(f"config {where or 'root'}: expected a mapping, got {value!r}")
        hints = typing.get_type_hints(cls)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(value) - names)
        if unknown:
            raise ValueError(f"config {where or 'root'}: unknown key(s) {unknown}; known: {sorted(names)}")
        return cls(**{k: _build(hints[k], v, f"{where}.{k}" if where else k) for k, v in value.items()})
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"config {where}: expected a list, got {value!r}")
        (item,) = typing.get_args(cls)[:1]
        items = [_build(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is typing.Union or type(cls).__name__ == "UnionType":
        args = [a for a in typing.get_args(cls) if a is not type(None)]
        return None if value is None else _build(args[0], value, where)
    if cls is float:
        # YAML 1.1 reads "3e-4" (no dot) as a string: accept any number spelled as one. A boolean (yes, on,
        # true) is not one: float(True) would train at lr 1.0.
        try:
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"config {where}: expected float, got {value!r}") from None
    if cls in (int, str, bool) and not isinstance(value, cls) or (cls is int and isinstance(value, bool)):
        raise ValueError(f"config {where}: expected {cls.__name__}, got {value!r}")
    if cls is dict and not isinstance(value, dict):
        raise ValueError(f"config {where}: expected a mapping, got {value!r}")
    return value


def _apply_override(tree: dict, override: str) -> None:
    import yaml

    key, sep, raw = override.partition("=")
    if not sep or not key:
        raise ValueError(f"override {override!r}: expected section.field=value")
    *parents, leaf = key.split(".")
    node = tree
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ValueError(f"override {override!r}: {part!r} is not a section")
    try:
        node[leaf] = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise ValueError(f"override {override!r}: the value is not valid YAML ({exc.problem or exc})") from None


def load_config(cls, path: str | os.PathLike | None = None, overrides: list[str] | tuple[str, ...] = ()):
    """The stage config `cls` from a YAML file (or defaults when path is None) plus dotted overrides."""
    import yaml

    tree: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config: no such file: {path}")
        try:
            tree = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise ValueError(f"config {path}: not valid YAML ({exc})") from None
        if not isinstance(tree, dict):
            raise ValueError(f"config {path}: the top level must be a mapping")
    for override in overrides:
        _apply_override(tree, override)
    return _build(cls, tree, "")


def to_dict(config) -> dict:
    """A config as plain JSON data: tuples become lists, as they will be once saved, so a config compares
    equal to the one a checkpoint recorded."""
    return json.loads(json.dumps(dataclasses.asdict(config)))
