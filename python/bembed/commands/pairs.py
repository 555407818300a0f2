"""`bembed pairs`: stage 2, contrastive pair training (see bembed.training.pairs)."""

from bembed.training import run as _run


def add_arguments(parser) -> None:
    _run.add_arguments(parser, "pairs")


def run(args) -> int:
    from bembed.training.config import PairsRun
    from bembed.training.pairs import PairStage

    return _run.run_stage(args, PairsRun, PairStage)
