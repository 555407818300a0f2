"""The shared body of the training subcommands: arguments, config resolution, stage + trainer."""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


def add_arguments(parser, stage_name: str) -> None:
    parser.add_argument("--config", required=True, metavar="YAML",
                        help=f"a YAML config, or the name of a shipped one ({stage_name}_tiny, {stage_name}_base)")
    parser.add_argument("--resume", metavar="CHECKPOINT",
                        help="continue from a checkpoint folder, or 'latest' under <output_dir>/checkpoints, or "
                             "'auto': latest when there is one, else start (one command line for restarts)")
    parser.add_argument("overrides", nargs="*", metavar="section.field=value",
                        help="dotted overrides of the config, e.g. train.lr=3e-4 train.max_steps=100")


def config_path(name: str) -> Path:
    """A config argument as a file: a path, or a shipped config's name (with or without .yaml)."""
    path = Path(name)
    if path.is_file():
        return path
    shipped = CONFIG_DIR / (name if name.endswith(".yaml") else f"{name}.yaml")
    if shipped.is_file():
        return shipped
    available = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
    raise FileNotFoundError(f"--config {name}: no such file, and no shipped config of that name ({available})")


def run_stage(args, config_cls, stage_cls) -> int:
    from .trainer import release_distributed

    try:
        return _run_stage(args, config_cls, stage_cls)
    finally:
        release_distributed()


def _run_stage(args, config_cls, stage_cls) -> int:
    import torch

    from .checkpoint import CheckpointError
    from .config import load_config, to_dict
    from .trainer import NonFiniteLossError, Trainer, init_distributed

    try:
        cfg = load_config(config_cls, config_path(args.config), args.overrides)
        rank, _, _ = init_distributed()
        torch.manual_seed(cfg.train.seed)  # a fresh model's initial weights (ranks then take rank 0's)
        stage = stage_cls(cfg, rank=rank)  # reads the data: a missing file or bad rows are config errors too
        trainer = Trainer(stage, cfg.train, to_dict(cfg))
    except (FileNotFoundError, ValueError) as exc:
        log.error("%s", exc)
        return 2
    try:
        trainer.fit(resume=args.resume)
    except KeyboardInterrupt:
        if rank == 0:
            log.warning("stopped by Ctrl-C; continue with --resume latest")
        return 130
    except (CheckpointError, NonFiniteLossError) as exc:
        log.error("%s", exc)
        return 1
    except OSError as exc:  # a full disk while a checkpoint is written: the earlier checkpoints are intact
        log.error("stopped: %s; the checkpoints written before are intact (continue with --resume latest)", exc)
        return 1
    if rank == 0:
        print(f"final model: {Path(cfg.train.output_dir) / 'final'}")
    return 0
