"""`bembed pretrain`: stage 1, MLM pretraining with whole-word masking (see bembed.training.mlm)."""

from bembed.training import run as _run


def add_arguments(parser) -> None:
    _run.add_arguments(parser, "pretrain")


def run(args) -> int:
    from bembed.training.config import PretrainRun
    from bembed.training.mlm import MLMStage

    return _run.run_stage(args, PretrainRun, MLMStage)
