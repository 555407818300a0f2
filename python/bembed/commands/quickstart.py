"""`bembed quickstart`: the main job on a fresh machine — data, tokenizer, stages 1 → 2 → 3, evaluation against
the untrained model and the installed reference models, the saved model, a loss-curve PNG and a
cross-lingual example (see bembed.quickstart). Run it again after an interruption: it resumes."""

from __future__ import annotations

from pathlib import Path

from bembed.eval.tasks import TASK_KINDS

STAGES = ("pretrain", "pairs", "multitask")


def add_arguments(parser) -> None:
    parser.add_argument("--pair", default="en-de", choices=["en-de", "en-es"])
    parser.add_argument("--minutes", type=float, default=20.0,
                        help="wall-clock target for the whole job; training gets what data, tokenizer and "
                             "evaluation leave (default 20)")
    parser.add_argument("--out", default="quickstart", help="output folder; re-run with the same one to resume")
    parser.add_argument("--cache", help="data cache (default: $BEMBED_CACHE or ~/.cache/bembed)")
    parser.add_argument("--data", help="built datasets root (default: <cache>/datasets)")
    parser.add_argument("--vocab-size", type=int, default=16000, help="tokenizer entries (default 16000)")
    parser.add_argument("--baselines", nargs="*", metavar="NAME",
                        help="reference models to compare with (default: every installed one; none with no NAME)")
    parser.add_argument("--max-items", type=int, default=1000, help="rows (or queries) per evaluation task")
    parser.add_argument("--reference-tasks", nargs="+", default=["bitext"],
                        choices=TASK_KINDS,
                        help="the tasks the reference models are evaluated on (default: bitext mining only; "
                             "each reference model costs minutes per task on a small CPU)")
    parser.add_argument("--steps", nargs=3, type=int, metavar=("PRETRAIN", "PAIRS", "MULTITASK"),
                        help="fixed step counts per stage instead of the time budget")
    parser.add_argument("--seed", type=int, default=42,
                        help="seed of the stage-1 corpus sample, the untrained model and every stage (default 42)")
    parser.add_argument("--set", action="append", default=[], metavar="STAGE.section.field=value",
                        help="override a stage's config, e.g. --set pairs.train.lr=3e-4 (repeatable)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def parse_overrides(items: list[str]) -> dict[str, list[str]]:
    """`pairs.train.lr=3e-4` -> {"pairs": ["train.lr=3e-4"]}."""
    overrides: dict[str, list[str]] = {}
    for item in items:
        stage, _, rest = item.partition(".")
        if stage not in STAGES or not rest:
            raise ValueError(f"--set {item!r}: expected STAGE.section.field=value with STAGE one of {STAGES}")
        overrides.setdefault(stage, []).append(rest)
    return overrides


def run(args) -> int:
    from bembed.quickstart import FetchFailed, Settings, SettingsMismatch, StepCannotStart, format_report
    from bembed.quickstart import run as run_quickstart

    try:
        settings = Settings(
            pair=args.pair, minutes=args.minutes, out=Path(args.out), cache=args.cache,
            data_root=Path(args.data) if args.data else None, vocab_size=args.vocab_size,
            steps=dict(zip(STAGES, args.steps)) if args.steps else None, overrides=parse_overrides(args.set),
            baselines=args.baselines, eval_max_items=args.max_items, reference_tasks=tuple(args.reference_tasks),
            seed=args.seed, progress=not args.no_progress)
    except ValueError as exc:
        print(exc)
        return 2
    from bembed.training.stop_signals import sigterm_as_sigint

    try:
        with sigterm_as_sigint():  # `kill` or a scheduler ends the job like Ctrl-C: its time counts, it resumes
            summary = run_quickstart(settings)
    except SettingsMismatch as exc:
        print(exc)
        return 2
    except StepCannotStart as exc:
        print(f"{exc}\nthe steps before it are kept: correct the setting and run the command again to go on "
              f"from {args.out}")
        return 2
    except FetchFailed as exc:
        print(exc)
        return 1
    except KeyboardInterrupt:
        print(f"\ninterrupted: run the same command again to continue from {args.out}")
        return 130
    print(format_report(summary))  # a missed quality bar is reported here, not as a failed job
    return 0
