"""The quickstart: the whole system, end to end, on a CPU in about 20 minutes.

    data (fetch + build)  →  stage-1 corpus sample  →  tokenizer  →  evaluate the untrained model and the installed references
    →  stage 1 MLM  →  stage 2 parallel pairs  →  stage 3 multi-task  →  model folder  →  evaluate
    →  loss-curve PNG  →  two example sentences per language, cross-lingual similarities

Every step is a call into the module that owns it (bembed.data, bembed.tokenizer, bembed.training,
bembed.encode, bembed.eval; the evaluation steps are in bembed.quickstart_eval); this file only decides the
order, the budget and the file layout.

Budget: `minutes` is the wall-clock target of the whole job. Whatever data preparation, the tokenizer and
the reference evaluation leave over (minus the time the untrained model's evaluation took, reserved for
the trained model's) goes to training, split by BUDGET_SHARES; each stage times a few optimizer steps
of its own model and data and gets as many steps as fit. Step counts, once chosen, are written to the
stage folder, so a resumed stage runs exactly the same schedule.

Resume: each finished step writes `<out>/.quickstart/<step>.json`; a second run skips those and picks an
unfinished training stage up from its last checkpoint (bembed.quickstart_steps: the steps' order, markers, and
which settings may change on resume).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import threading
import time
from pathlib import Path

import torch

from bembed.eval.tasks import TASK_KINDS
from bembed.files import replacing_folder, save_figure_atomic, user_path, write_json_atomic
from bembed.progress import datasets_bars_off, progress_bars_off
from bembed.quickstart_eval import (MUST_F1, cross_lingual_demo, evaluate_model, evaluate_references,
                                   final_evaluations)
from bembed.quickstart_steps import (TRAINING_STAGES, Markers, SettingsMismatch, check_settings, plan_file,  # noqa: F401
                                     stage_started)

log = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
# Stage 2's parallel pairs teach bitext mining (what the quickstart is judged on) and level off: on this
# machine 2,109 steps reached F1 95.4 against 96.2 for 2,684. Retrieval is learnt in stage 3 alone (nDCG@10
# 28 → 53 in a 15% share); a 30% share with the recipe as shipped lifts it to 63 for about two bitext
# points (measured 2026-11-22; the README has the runs). Stage 1 only gives the embeddings a start.
BUDGET_SHARES = {"pretrain": 0.15, "pairs": 0.55, "multitask": 0.30}
MIN_TRAINING_FRACTION = 0.4  # of the budget, even when data preparation overran: below it, quality collapses
RESERVE_S = 30.0  # kept back from training, besides the final evaluation: export, loss PNG, demo
CLOCK_EVERY_S = 15.0  # while a step runs, the time spent is recorded this often (for a kill -9 or a reboot)
CALIBRATION_STEPS, CALIBRATION_STRIDE = 16, 37  # steps timed per stage (at lr 0), this far apart
# Stage config keys the quickstart sets itself, and what sets them instead: a --set of one would be replaced.
OWNED_KEYS = {"train.output_dir": "--out", "train.seed": "--seed", "train.max_steps": "--steps or --minutes",
              "train.progress": "--no-progress", "model.tokenizer": "the quickstart's tokenizer step",
              "model.init_from": "the previous stage's model"}


@dataclasses.dataclass
class Settings:
    """What `bembed quickstart` runs. `steps` fixes the step count of each training stage instead of the
    time budget; `overrides` maps a stage to dotted config overrides (e.g. {"pairs": ["train.lr=3e-4"]});
    `baselines` None means every installed reference model."""

    pair: str = "en-de"
    minutes: float = 20.0
    out: Path = Path("quickstart")
    cache: Path | None = None
    data_root: Path | None = None
    vocab_size: int = 16000
    tokenizer_chars: int | None = 6_000_000  # per language; None: the whole corpus
    mlm_chars: int = 3_000_000  # per language, for stage 1
    steps: dict[str, int] | None = None
    overrides: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    baselines: list[str] | None = None
    eval_tasks: tuple[str, ...] = TASK_KINDS
    # Reference models are scored on bitext mining (the quickstart's bar) by default: measured on 2 shared
    # cores, multilingual-e5-small alone took 3 minutes for the 2,000 bitext sentences, so every task
    # for every installed reference would take most of a 20-minute budget.
    reference_tasks: tuple[str, ...] = ("bitext",)
    eval_max_items: int = 1000
    eval_max_chars: int = 2000
    seed: int = 42
    progress: bool = True

    def __post_init__(self):
        if self.pair not in ("en-de", "en-es"):
            raise ValueError(f"pair must be 'en-de' or 'en-es', got {self.pair!r}")
        if not (math.isfinite(self.minutes) and self.minutes > 0):  # inf would pass until plan_steps' int()
            raise ValueError(f"minutes must be a positive finite number, got {self.minutes}")
        self.out = Path(self.out)
        if self.steps is not None:
            unknown = sorted(set(self.steps) - set(TRAINING_STAGES))
            if unknown or any(not isinstance(n, int) or n < 1 for n in self.steps.values()):
                raise ValueError(f"steps must map {TRAINING_STAGES} to positive ints, got {self.steps}")
        unknown = sorted(set(self.overrides) - set(TRAINING_STAGES))
        if unknown:
            raise ValueError(f"overrides: unknown stage(s) {unknown}; stages are {TRAINING_STAGES}")
        # Everything that would fail only once steps have run is checked now: found late, a bad value costs the
        # steps before the one it breaks (the corrected command then resumes after them).
        from bembed.eval.baselines import check_names
        from bembed.eval.tasks import TaskSizes
        from bembed.tokenizer import MIN_VOCAB_SIZE

        if self.vocab_size < MIN_VOCAB_SIZE:
            raise ValueError(f"vocab_size must be at least {MIN_VOCAB_SIZE} (256 bytes + specials), "
                             f"got {self.vocab_size}")
        if (self.tokenizer_chars is not None and self.tokenizer_chars < 1) or self.mlm_chars < 1:
            raise ValueError(f"tokenizer_chars and mlm_chars must be positive, got {self.tokenizer_chars}, "
                             f"{self.mlm_chars}")
        TaskSizes(max_items=self.eval_max_items, max_chars=self.eval_max_chars)
        check_names(self.baselines)
        for stage, items in self.overrides.items():
            refuse_owned_keys(stage, items)
        for stage in TRAINING_STAGES:
            try:
                check_stage_config(self, stage)
            except ValueError as exc:
                raise ValueError(f"{stage}: {exc}") from None
        check_matryoshka_widths(self)


class StepCannotStart(ValueError):
    """A step cannot start: a training stage with its config (its data, a --set value), or the final evaluation
    on a test split the model trained on. The steps before it are kept; the corrected command resumes there."""


class FetchFailed(RuntimeError):
    """Sources of the pair could not be fetched (a registry or client was unreachable); nothing was built."""


def _step(markers: Markers, name: str, fn, *args) -> dict:
    """Run fn unless its marker exists; returns the marker's content."""
    done = markers.get(name)
    if done is not None:
        log.info("quickstart %s: done in an earlier run, skipped", name)
        return done
    log.info("quickstart %s ...", name)
    start = time.perf_counter()
    info = fn(*args)
    info["seconds"] = round(time.perf_counter() - start, 1)
    log.info("quickstart %s: %.0f s", name, info["seconds"])
    return markers.put(name, info)


# ---------------------------------------------------------------------------------------------- data
def prepare_data(settings: Settings) -> dict:
    """Fetch the pinned sources and build the pair's datasets, unless they are built already."""
    from bembed.data.build import BUILD_VERSION, stale_build
    from bembed.data.provenance import read_manifest
    from bembed.data.sources import cache_dir
    from bembed.data.split import DEFAULT_FRACTIONS

    cache = cache_dir(settings.cache)
    root = Path(settings.data_root) if settings.data_root else cache / "datasets"
    built = (root / settings.pair / "counts.json").is_file()
    older = stale_build(root / settings.pair) if built else None
    if older is not None:
        log.warning("the datasets under %s were built by an older bembed (build version %s, now %s): rebuilding",
                    root / settings.pair, older, BUILD_VERSION)
        built = False
    if built:
        log.info("using the datasets built under %s", root / settings.pair)
    else:
        from bembed.data.build import build
        from bembed.data.sources import SOURCES, fetch_all

        fetched = fetch_all(cache, progress=settings.progress)
        # A missing source would drop sets or test splits from the build, and the build's counts.json would
        # then mark the step done for good: stop before building, so the same command retries the fetch.
        langs = set(settings.pair.split("-"))
        failed = {s.package: fetched[s.package] for s in SOURCES
                  if fetched.get(s.package, "").startswith("failed") and langs & set(s.langs)}
        if failed:
            raise FetchFailed("sources for " + settings.pair + " could not be fetched (run the same command again "
                              "to retry): " + "; ".join(f"{k}: {v}" for k, v in failed.items()))
        # a build that is only stale keeps its --split: another one would move documents the runs on it trained on
        # into its test split
        earlier = read_manifest(root / settings.pair) if older is not None else None
        with datasets_bars_off():  # one bar per saved shard
            build(cache, root, settings.pair, fractions=tuple(earlier["fractions"]) if earlier else DEFAULT_FRACTIONS)
    counts = json.loads((root / settings.pair / "counts.json").read_text(encoding="utf-8"))
    return {"data_root": str(root), "counts": {k: v for k, v in counts.items() if k != "dropped"}}


def sample_mlm_corpus(settings: Settings, data_root: str) -> dict:
    """A random sample of each language's training documents for stage 1, as <out>/corpus/mono_<lang>.jsonl:
    the few thousand steps the budget allows see a fraction of the corpus, and tokenising all of it
    would cost a minute of that budget."""
    from bembed.commands.tokenizer import sample_documents
    from bembed.data.provenance import MANIFEST, read_manifest

    folder = settings.out / "corpus"
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for lang in settings.pair.split("-"):
        texts = sample_documents(data_root, settings.pair, lang, settings.mlm_chars, seed=settings.seed)
        path = folder / f"mono_{lang}.jsonl"
        path.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts), encoding="utf-8")
        files[lang] = str(path)
    manifest = read_manifest(Path(data_root) / settings.pair)
    if manifest is not None:  # the stage-1 model then records the build's train split as its data (provenance.py)
        write_json_atomic(folder / MANIFEST, {"pair": manifest["pair"], "fractions": manifest["fractions"],
                                              "split": "train",
                                              "note": "documents sampled from the build's mono_<lang> train split"})
    return {"files": files}


def train_tokenizer(settings: Settings, data_root: str) -> dict:
    from bembed.commands.tokenizer import train_for_pair

    folder = settings.out / "tokenizer"
    tokenizer = train_for_pair(folder, settings.pair, settings.vocab_size, data_root,
                               max_chars=settings.tokenizer_chars)
    return {"tokenizer": str(folder), "vocab_size": len(tokenizer)}


# ---------------------------------------------------------------------------------------------- stages
def _load_stage_config(stage: str, overrides):
    from bembed.training.config import MultitaskRun, PairsRun, PretrainRun, load_config

    cls = {"pretrain": PretrainRun, "pairs": PairsRun, "multitask": MultitaskRun}[stage]
    return load_config(cls, CONFIG_DIR / f"quickstart_{stage}.yaml", overrides)


def stage_config(settings: Settings, stage: str, data_root: str, model_from: str):
    """The stage's run config: configs/quickstart_<stage>.yaml + the user's overrides, with the data paths'
    placeholders filled in ({data}: the built pair's folder, {out}: the quickstart folder, {other}: de or
    es), the model taken from `model_from` (the tokenizer folder for stage 1, the previous stage's export
    after that) and the output under <out>/<stage>. A source the user named (a path without placeholders)
    must exist: ValueError otherwise."""
    cfg = _load_stage_config(stage, settings.overrides.get(stage, ()))
    fills = {"{data}": str(Path(data_root) / settings.pair), "{out}": str(settings.out),
             "{other}": settings.pair.split("-")[1]}
    for source in cfg.data.train:
        # str.replace, not str.format: a user's path may hold braces of its own (${HOME})
        if not any(name in source.path for name in fills) and not user_path(source.path).exists():
            raise ValueError(f"{stage}.data.train: no such file or folder: {source.path}")
        source.path, source.lang = (_fill(text, fills) for text in (source.path, source.lang))
    if stage == "pretrain":
        cfg.model.tokenizer = model_from
    else:
        cfg.model.init_from = model_from
    cfg.train.output_dir = str(settings.out / stage)
    cfg.train.seed = settings.seed
    cfg.train.progress = settings.progress
    return cfg


def _fill(text: str | None, fills: dict[str, str]) -> str | None:
    if text:
        for name, value in fills.items():
            text = text.replace(name, value)
    return text


def _overrides_key(items, key: str) -> str | None:
    """The first override (section.field=value) that sets `key`: the key itself, a field inside it, or a
    whole enclosing section given as a mapping that holds it (train={seed: 7})."""
    import yaml

    for item in items:
        name, _, value = item.partition("=")
        if (name + ".").startswith(key + "."):
            return item
        if key.startswith(name + "."):
            try:
                inner = yaml.safe_load(value)
            except yaml.YAMLError:
                continue  # not this check's to report: load_config names the override and its YAML error
            for part in key[len(name) + 1:].split("."):
                if not isinstance(inner, dict) or part not in inner:
                    break
                inner = inner[part]
            else:
                return item
    return None


def refuse_owned_keys(stage: str, items) -> None:
    """Raise ValueError for an override the quickstart would replace, naming what to use instead."""
    owned = dict(OWNED_KEYS)
    if stage == "pretrain":
        owned["model.init_from"] = "nothing: stage 1 starts from fresh weights (set pretrain.model.config)"
    else:  # stages 2 and 3 load the previous stage's model: their model.config does nothing
        # (the training config refuses it too, but without saying what to use in the quickstart)
        owned["model.config"] = "pretrain.model.config (stages 2 and 3 continue stage 1's model)"
    for key, instead in owned.items():
        item = _overrides_key(items, key)
        if item is not None:
            raise ValueError(f"--set {stage}.{item}: the quickstart sets {key} itself; use {instead}")


def check_stage_config(settings: Settings, stage: str) -> None:
    """Raise ValueError for a stage config that would fail only when the stage starts: the config as
    stage_config builds it (with placeholder paths) must pass its validate() (the quickstart runs one process,
    so the Trainer's world-size split cannot fail), and a data source the user named must exist."""
    stage_config(settings, stage, "", str(settings.out / "tokenizer")).validate()


def model_width(settings: Settings) -> int:
    """The embedding width of the model the quickstart trains: stage 1's hidden_size (stages 2 and 3 continue it)."""
    from bembed.model import JinaBertConfig

    return stage_config(settings, "pretrain", "", "").model.config.get("hidden_size", JinaBertConfig().hidden_size)


def check_matryoshka_widths(settings: Settings) -> None:
    """Stages 2 and 3 train stage 1's model, so Matryoshka widths wider than its hidden_size (a --set of one
    without the other) would fail only when their stage starts: ValueError now, naming the stage's key."""
    from bembed.training.losses import check_matryoshka_width

    width = model_width(settings)
    for stage in ("pairs", "multitask"):
        dims = getattr(stage_config(settings, stage, "", ""), stage).matryoshka_dims
        check_matryoshka_width(dims, width, f"{stage}.{stage}.matryoshka_dims (stage 1's hidden_size)")


def make_stage(stage: str, cfg):
    from bembed.training.mlm import MLMStage
    from bembed.training.multitask import MultitaskStage
    from bembed.training.pairs import PairStage

    torch.manual_seed(cfg.train.seed)  # a fresh model's initialisation is part of the run
    return {"pretrain": MLMStage, "pairs": PairStage, "multitask": MultitaskStage}[stage](cfg)


def seconds_per_step(stage_obj, cfg) -> float:
    """Seconds per optimizer step of this stage: CALIBRATION_STEPS real steps (after one warm-up step) drawn
    from across the run, so that a stage whose steps differ (multi-task: short STS verse pairs, long retrieval
    bodies with hard negatives) is timed on its own mix; timing the first steps alone made stage 3 run twice
    its share. They run at lr 0 (AdamW then leaves every weight as it was) and the torch RNGs (CPU and every
    CUDA device: dropout) are restored, even when a step fails, so they leave no trace in the run."""
    from bembed.training.trainer import Trainer

    # lr 0: the probe does all the work of a step (AdamW included) without moving the weights
    probe_cfg = dataclasses.replace(cfg.train, max_steps=CALIBRATION_STRIDE * CALIBRATION_STEPS + 1, lr=0.0)
    cuda_devices = range(torch.cuda.device_count()) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=cuda_devices):
        trainer = Trainer(stage_obj, probe_cfg)
        trainer.train_step()
        start = time.perf_counter()
        for i in range(CALIBRATION_STEPS):
            trainer.step = 1 + i * CALIBRATION_STRIDE  # the step picks the batch (a pure function of seed and index)
            trainer.train_step()
        elapsed = (time.perf_counter() - start) / CALIBRATION_STEPS
        del trainer
    return elapsed


def plan_steps(stage_obj, cfg, budget_s: float, started: float) -> dict:
    """Steps that fit into what is left of budget_s (the stage's setup and calibration already count)."""
    per_step = seconds_per_step(stage_obj, cfg)
    left = budget_s - (time.perf_counter() - started)
    steps = max(10, int(0.95 * left / per_step))  # 5% for checkpoints, export and the slower tail
    return {"max_steps": steps, "seconds_per_step": round(per_step, 3), "budget_s": round(budget_s, 1)}


def run_stage(settings: Settings, stage: str, data_root: str, model_from: str, budget_s: float) -> dict:
    """Build the stage, fix its step count (stored in <out>/<stage>/quickstart_plan.json), train it —
    from its latest checkpoint when an earlier run was interrupted — and export <out>/<stage>/final."""
    from bembed.data.provenance import held_out_conflict, records_of, trained_on
    from bembed.training.checkpoint import list_checkpoints
    from bembed.training.config import to_dict
    from bembed.training.trainer import Trainer

    started = time.perf_counter()
    plan_path = plan_file(settings.out, stage)
    # Everything that reads the config and the data comes before anything is written: a value that fails here
    # (too few rows for a batch, missing columns) leaves the stage unstarted, so the corrected command takes it.
    try:
        cfg = stage_config(settings, stage, data_root, model_from)
        # the model the final evaluation scores would train on test text of its build: say so before any step
        conflict = held_out_conflict([*trained_on(model_from), *records_of(to_dict(cfg)["data"]["train"])],
                                     Path(data_root) / settings.pair, rebuild_in_place=True)
        if conflict:
            raise ValueError(f"the model would train on {conflict}; or give this stage other data with --set")
        stage_obj = make_stage(stage, cfg)
        if plan_path.is_file():
            plan = json.loads(plan_path.read_text(encoding="utf-8"))
        elif settings.steps and stage in settings.steps:
            plan = {"max_steps": settings.steps[stage]}
        else:
            plan = plan_steps(stage_obj, cfg, budget_s, started)
        cfg.train.max_steps = plan["max_steps"]
        # The configured warm-up is meant for a full run; a short one warms up over at most a tenth of it,
        # unless the warm-up was given with --set.
        if _overrides_key(settings.overrides.get(stage, ()), "train.warmup_steps") is None:
            cfg.train.warmup_steps = min(cfg.train.warmup_steps, max(1, cfg.train.max_steps // 10))
        elif cfg.train.warmup_steps > cfg.train.max_steps:  # equal: the last step reaches train.lr
            log.warning("%s: train.warmup_steps=%d exceeds the %d planned steps: the learning rate never "
                        "reaches train.lr", stage, cfg.train.warmup_steps, cfg.train.max_steps)
        trainer = Trainer(stage_obj, cfg.train, to_dict(cfg))
    except (FileNotFoundError, ValueError) as exc:
        raise StepCannotStart(f"{stage}: {exc}") from exc
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(plan_path, plan)
    log.info("%s: %d steps%s", stage, cfg.train.max_steps,
             f" (≈{plan['seconds_per_step']:.2f} s each, budget {plan['budget_s']:.0f} s)" if "budget_s" in plan else "")
    resume = "latest" if list_checkpoints(Path(cfg.train.output_dir) / "checkpoints") else None
    history = trainer.fit(resume=resume)
    final = Path(cfg.train.output_dir) / "final"
    last = history[-1] if history else {}
    return {"final": str(final), "steps": cfg.train.max_steps, "max_length": cfg.model.max_length,
            "resumed": resume is not None,
            "last_loss": last.get("loss"), "metrics": str(Path(cfg.train.output_dir) / "metrics.jsonl")}


# ---------------------------------------------------------------------------------------------- model
def save_model(settings: Settings, final: str, trained_length: int | None) -> dict:
    """<out>/model: the HF folder (config.json, model.safetensors, tokenizer) that is also a
    sentence-transformers folder (modules.json, pooling, normalize). It is the last stage's export re-saved
    through the Embedder, so the prompts (query/passage prefixes) and normalize it was trained with come along:
    without the prompts, evaluation and demo would embed queries unprefixed. Its max_seq_length is the length
    the last stage trained at (`multitask.model.max_length`), as sentence-transformers models do: this small
    model, trained at 128 tokens, ranks help pages better from their first 128 tokens than from 2,000
    characters (validation nDCG@10 +2.7 en-de, +0.3 en-es; see the README). A longer one can be set on load."""
    from bembed.encode import Embedder

    folder = settings.out / "model"
    with replacing_folder(folder) as tmp:
        length = {} if trained_length is None else {"max_seq_length": trained_length}
        Embedder.from_pretrained(final, device="cpu", **length).save_pretrained(tmp)
    return {"model": str(folder)}


def plot_losses(settings: Settings, png: Path) -> dict:
    """One PNG, a panel per training stage: each loss column of its metrics.jsonl against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bembed.training.metrics import plot_loss_columns, read_metrics

    fig, axes = plt.subplots(1, len(TRAINING_STAGES), figsize=(5 * len(TRAINING_STAGES), 3.6))
    for ax, stage in zip(axes, TRAINING_STAGES):
        path = settings.out / stage / "metrics.jsonl"
        records = read_metrics(path) if path.is_file() else {}
        plot_loss_columns(ax, records)
        ax.set_title({"pretrain": "stage 1: MLM", "pairs": "stage 2: pairs (InfoNCE)",
                      "multitask": "stage 3: multi-task"}[stage])
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if records:
            ax.legend(fontsize=8)
    axes[0].set_ylabel("loss")
    fig.tight_layout()
    save_figure_atomic(fig, png, dpi=100)
    plt.close(fig)
    return {"png": str(png)}


# ---------------------------------------------------------------------------------------------- the job
@contextlib.contextmanager
def recording(seconds: float, action):
    """Calls action() every `seconds` on a background thread while the block runs, and once more when the block
    ends (by an exception too), after the thread has stopped: the last call always comes last."""
    stop = threading.Event()

    def loop():
        while not stop.wait(seconds):
            try:
                action()
            except OSError as error:  # a full disk must not end the job from here; the final call reports it
                log.warning("quickstart: could not record the time spent: %s", error)

    thread = threading.Thread(target=loop, name="quickstart-clock", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        action()


def run(settings: Settings) -> dict:
    """The whole quickstart; returns a summary (also written to <out>/summary.json)."""
    with contextlib.nullcontext() if settings.progress else progress_bars_off():
        return _run(settings)


def _run(settings: Settings) -> dict:
    t0 = time.perf_counter()
    out, markers = settings.out, Markers(settings.out)
    out.mkdir(parents=True, exist_ok=True)
    check_settings(settings, markers)
    earlier = markers.get("clock") or {}
    spent_before = earlier.get("spent_s", 0.0)  # time spent by interrupted earlier runs counts too

    def elapsed() -> float:
        return spent_before + time.perf_counter() - t0

    def record_clock() -> None:
        markers.put("clock", {"spent_s": round(elapsed(), 1)})

    def step(name: str, fn, *args) -> dict:
        # The time a step takes counts against --minutes on resume: also when it fails or is interrupted, and
        # when the process is killed outright (kill -9, out of memory, a reboot) midway, up to the last
        # CLOCK_EVERY_S.
        with recording(CLOCK_EVERY_S, record_clock):
            return _step(markers, name, fn, *args)

    data = step("data", prepare_data, settings)
    step("corpus", sample_mlm_corpus, settings, data["data_root"])
    tok = step("tokenizer", train_tokenizer, settings, data["data_root"])
    refs = step("references", evaluate_references, settings, data["data_root"], tok["tokenizer"])

    plan = markers.get("budget")
    if plan is None:
        # Each final evaluation of the trained model costs what the untrained one's did.
        reserve = (refs["untrained_eval_s"] or 0.0) * final_evaluations(settings) + RESERVE_S
        training_s = max(settings.minutes * 60 - elapsed() - reserve, MIN_TRAINING_FRACTION * settings.minutes * 60)
        plan = markers.put("budget", {"training_s": round(training_s, 1),
                                      **{s: round(training_s * BUDGET_SHARES[s], 1) for s in TRAINING_STAGES}})
        log.info("training budget: %.1f min (%s)", training_s / 60,
                 ", ".join(f"{s} {plan[s]:.0f} s" for s in TRAINING_STAGES))

    model_from, trained_length = tok["tokenizer"], None
    for stage in TRAINING_STAGES:
        result = step(stage, run_stage, settings, stage, data["data_root"], model_from, plan[stage])
        model_from, trained_length = result["final"], result.get("max_length")  # absent in older markers

    model = step("model", save_model, settings, model_from, trained_length)
    step("loss_png", plot_losses, settings, out / "loss.png")
    evaluation = step("evaluate", evaluate_model, settings, data["data_root"], model["model"], refs["results"])
    demo = step("demo", cross_lingual_demo, settings, model["model"])

    summary = {"pair": settings.pair, "minutes_budget": settings.minutes, "wall_s": round(elapsed(), 1),
               "model": model["model"], "loss_png": str(out / "loss.png"),
               "eval": str(out / "eval" / "results.json"), "verdict": evaluation["verdict"],
               "table": evaluation["table"], "demo": demo,
               "steps": {s: (markers.get(s) or {}).get("steps") for s in TRAINING_STAGES},
               "machine": _machine(), "date": time.strftime("%Y-%m-%d", time.gmtime())}
    write_json_atomic(out / "summary.json", summary)
    return summary


def _machine() -> str:
    import platform

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {torch.get_num_threads()} threads"
    return f"{platform.machine()} {platform.processor() or platform.system()}, {device}, torch {torch.__version__}"


def format_report(summary: dict) -> str:
    """What the command prints at the end: the table, the verdict, the cross-lingual example, the files."""
    lines = ["", summary["table"]]
    v = summary["verdict"]
    if v["f1"] is not None:
        compared = ", ".join(f"{k} {100 * x:.1f}" for k, x in v["compared_with"].items() if x is not None)
        lines += ["", f"{v['task']} F1 {100 * v['f1']:.1f} (bar: ≥ {100 * MUST_F1:.0f}, above "
                      f"{compared or 'nothing'}): {'PASS' if v['passed'] else 'FAIL'}"]
    demo = summary["demo"]
    (a_lang, a), (b_lang, b) = demo["sentences"].items()
    lines += ["", f"cross-lingual cosine similarity (rows: {a_lang}, columns: {b_lang})"]
    lines += [f"  {text[:45]:<45} " + "  ".join(f"{x:+.3f}" for x in row) for text, row in zip(a, demo["cosine"])]
    lines += [f"  column {i + 1}: {text}" for i, text in enumerate(b)]
    lines += ["", f"model: {summary['model']} (HF folder and sentence-transformers export)",
              f"loss curves: {summary['loss_png']}; evaluation: {summary['eval']}",
              f"wall time: {summary['wall_s'] / 60:.1f} min (budget {summary['minutes_budget']:g} min)"]
    return "\n".join(lines)
