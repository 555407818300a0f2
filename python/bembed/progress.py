"""Progress bars off for a while and given back after: bembed's encode bar, the datasets library's and mteb's
bitext-mining evaluator's (the quickstart's --no-progress)."""

from __future__ import annotations

import contextlib
import functools
import logging


@contextlib.contextmanager
def datasets_bars_off():
    """The datasets library's progress bars off for a while, then as they were (a global switch)."""
    import datasets

    were_on = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if were_on:
            datasets.enable_progress_bars()


@contextlib.contextmanager
def mteb_bitext_bars_off():
    """mteb's bitext-mining evaluator draws two tqdm bars that no switch of mteb's reaches: the name `tqdm` in its
    module is a silenced tqdm for a while, then the original again. An mteb without that module or name (it is
    private) keeps whatever bars it draws."""
    try:
        from mteb._evaluators.text import bitext_mining_evaluator as evaluator
    except ImportError:
        evaluator = None
    original = getattr(evaluator, "tqdm", None)
    if original is None:
        yield
        return
    evaluator.tqdm = functools.partial(original, disable=True)
    try:
        yield
    finally:
        evaluator.tqdm = original


@contextlib.contextmanager
def progress_bars_off():
    """--no-progress while the job runs: Embedder.encode's bar (shown while its logger lets INFO through, as
    sentence-transformers does), the datasets library's (mteb's preparation of the evaluation data) and mteb's
    bitext-mining evaluator's. All are given back after."""
    encode_log = logging.getLogger("bembed.encode")
    level = encode_log.level
    encode_log.setLevel(logging.WARNING)
    try:
        with datasets_bars_off(), mteb_bitext_bars_off():
            yield
    finally:
        encode_log.setLevel(level)
