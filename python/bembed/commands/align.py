"""`bembed align`: cross-lingual alignment of an existing model with a frozen teacher (see bembed.training.align)."""

from bembed.training import run as _run


def add_arguments(parser) -> None:
    _run.add_arguments(parser, "align")


def run(args) -> int:
    from bembed.training.config import AlignRun
    from bembed.training.align import AlignStage

    return _run.run_stage(args, AlignRun, AlignStage)
