"""The quickstart's steps on disk: their order, the marker each finished step leaves, and which settings each
step depends on. This is what lets a run resume where it stopped, and what refuses a resumed run whose settings
would change a step that has already run (bembed.quickstart runs the steps)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from bembed.files import write_json_atomic
from bembed.quickstart_eval import untrained_setup

if TYPE_CHECKING:
    from bembed.quickstart import Settings

log = logging.getLogger("bembed.quickstart")  # the job's own log, where its steps are reported

TRAINING_STAGES = ("pretrain", "pairs", "multitask")


class SettingsMismatch(ValueError):
    """The output folder holds a run made with other settings: resuming it would mix the two."""


# Everything that decides what a step produces; `out` and `progress` do not.
RECORDED_SETTINGS = ("pair", "minutes", "cache", "data_root", "vocab_size", "tokenizer_chars", "mlm_chars", "steps",
                     "overrides", "baselines", "eval_tasks", "reference_tasks", "eval_max_items", "eval_max_chars",
                     "seed")
# The steps in the order run() takes them ("budget" is the training budget's marker); each consumes what the ones
# before it made, so a setting changes its first step's output and everything after it.
STEP_ORDER = ("data", "corpus", "tokenizer", "references", "budget", *TRAINING_STAGES, "model", "loss_png", "evaluate",
              "demo")
# Settings no command-line option sets: they differ from a folder's record only when the bembed that started it
# had other defaults, and the command that started it cannot bring them back.
NOT_OPTIONS = ("tokenizer_chars", "mlm_chars", "eval_tasks", "eval_max_chars")
# The first step each setting feeds ("steps" and "overrides" feed the stage they name).
FIRST_STEP = {"pair": "data", "cache": "data", "data_root": "data", "seed": "corpus", "mlm_chars": "corpus",
              "vocab_size": "tokenizer", "tokenizer_chars": "tokenizer", "baselines": "references",
              "eval_tasks": "references", "reference_tasks": "references", "eval_max_items": "references",
              "eval_max_chars": "references", "minutes": "budget"}


def _changed_settings(earlier: dict, current: dict) -> list[tuple[str, str]]:
    """(first step it feeds, description) of each setting that differs; a per-stage setting by stage."""
    changes = []
    for key in RECORDED_SETTINGS:
        old, new = earlier.get(key), current[key]
        if old == new:
            continue
        if key in ("steps", "overrides"):
            old, new = old or {}, new or {}
            for stage in TRAINING_STAGES:
                if old.get(stage) != new.get(stage):
                    changes.append((stage, f"{key} of {stage}: {old.get(stage)!r} then, {new.get(stage)!r} now"))
        else:
            changes.append((FIRST_STEP[key], f"{key}: {old!r} then, {new!r} now"))
    return changes


def check_settings(settings: Settings, markers: Markers) -> None:
    """Record the run's settings; on a later start with other settings raise SettingsMismatch if a step they
    feed has finished, or is a training stage that has started (its plan or checkpoints are on disk). Finished
    steps are skipped by their markers alone, so `--pair en-es` on an en-de folder would otherwise report the
    en-de model, tokenizer and scores under the en-es name. A change that only reaches steps not yet begun is
    taken: the command that failed at a stage can be corrected and run again."""
    current = json.loads(json.dumps({k: getattr(settings, k) for k in RECORDED_SETTINGS}, default=str))
    earlier = markers.get("settings")
    changes = [] if earlier is None else _changed_settings(earlier, current)
    # The untrained reference is made from stage 1's model config and stage 3's length and prompts: an override
    # of those stages also reaches the finished reference step (its marker records what it used).
    references = markers.get("references")
    if references is not None and any(text.startswith(("overrides of pretrain", "overrides of multitask"))
                                      for _, text in changes) \
            and references.get("untrained_setup") != untrained_setup(settings):  # absent: an older marker
        changes.append(("references", "the untrained reference's architecture, length or prompts (from the "
                                      "pretrain and multitask overrides)"))
    if changes:
        first = min(STEP_ORDER.index(step) for step, _ in changes)
        done = [step for step in STEP_ORDER[first:] if markers.get(step) is not None]
        described = "; ".join(text for _, text in changes)
        if done:
            later = f" (and {len(done) - 1} later step{'s' if len(done) > 2 else ''})" if len(done) > 1 else ""
            fix = "run the same command to resume it, or give another --out"
            if all(text.startswith(NOT_OPTIONS) for _, text in changes):
                fix = ("these are not command-line options: it was started by a bembed with other defaults, so "
                       "give another --out (or remove the folder to start again)")
            raise SettingsMismatch(f"{settings.out} holds a quickstart run with other settings ({described}), and "
                                   f"its finished step {done[0]}{later} used them: {fix}")
        stage = STEP_ORDER[first]
        if stage in TRAINING_STAGES and stage_started(settings.out, stage):
            raise SettingsMismatch(f"{settings.out} holds a quickstart run with other settings ({described}), and "
                                   f"its stage {stage} has started with them: remove {settings.out / stage} to "
                                   "train that stage again with the new settings, or run the same command to "
                                   "resume it")
        log.info("quickstart: settings changed for steps not yet run (%s)", described)
    if changes or earlier is None:
        markers.put("settings", current)


class Markers:
    """Stage markers: `<out>/.quickstart/<name>.json` holds what a finished step produced."""

    def __init__(self, out: Path):
        self.root = Path(out) / ".quickstart"

    def get(self, name: str) -> dict | None:
        path = self.root / f"{name}.json"
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None

    def put(self, name: str, info: dict) -> dict:
        self.root.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.root / f"{name}.json", info)
        return info


def plan_file(out: Path, stage: str) -> Path:
    """Where a training stage keeps the step count it chose (a resumed stage runs the same schedule)."""
    return Path(out) / stage / "quickstart_plan.json"


def stage_started(out: Path, stage: str) -> bool:
    """Whether a training stage has fixed its step count or written a checkpoint (a resume would continue them)."""
    from bembed.training.checkpoint import list_checkpoints

    return plan_file(out, stage).is_file() or bool(list_checkpoints(Path(out) / stage / "checkpoints"))
