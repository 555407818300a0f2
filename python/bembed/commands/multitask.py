"""`bembed multitask`: stage 3, multi-task fine-tuning (see bembed.training.multitask)."""

from bembed.training import run as _run


def add_arguments(parser) -> None:
    _run.add_arguments(parser, "multitask")


def run(args) -> int:
    from bembed.training.config import MultitaskRun
    from bembed.training.multitask import MultitaskStage

    return _run.run_stage(args, MultitaskRun, MultitaskStage)
