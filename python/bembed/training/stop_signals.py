"""Stopping a training run cleanly: Ctrl-C and SIGTERM (a scheduler's preemption notice) let the step in
progress finish and a checkpoint be written, in one process and across the ranks of a torchrun job."""

from __future__ import annotations

import logging
import signal
import threading
import time
from contextlib import contextmanager

log = logging.getLogger(__name__)


class StepInterrupted(KeyboardInterrupt):
    """Ctrl-C during an optimizer update (or, under torchrun, reported by any rank during the step), raised
    once the step is complete, with that step's metrics: `fit` logs the step (and writes a checkpoint due at
    it) before it stops, so metrics.jsonl has every step."""

    def __init__(self, metrics: dict):
        super().__init__()
        self.metrics = metrics


@contextmanager
def deferred_sigint():
    """Hold Ctrl-C (SIGINT) while the block runs; yields a list that is non-empty once one came. An interrupted
    optimizer update would leave half-updated weights for the Ctrl-C checkpoint to save under the old step."""
    caught = []
    if threading.current_thread() is not threading.main_thread():  # signals only reach the main thread
        yield caught
        return
    previous = signal.signal(signal.SIGINT, lambda *_: caught.append(True))
    try:
        yield caught
    finally:
        signal.signal(signal.SIGINT, previous)


@contextmanager
def sigterm_as_sigint():
    """SIGTERM (a scheduler's preemption notice, `kill`, torchrun passing its own on) is taken as Ctrl-C while
    the block runs: it goes to whichever SIGINT handler is in place, so the step finishes and a checkpoint is
    written, instead of the process dying with everything since the last periodic checkpoint."""
    if threading.current_thread() is not threading.main_thread():  # signals only reach the main thread
        yield
        return

    def as_sigint(signum, frame):
        handler = signal.getsignal(signal.SIGINT)
        if callable(handler):
            handler(signum, frame)  # SIGTERM, so that held_stop_signals can tell a repeat from a Ctrl-C
        elif handler != signal.SIG_IGN:
            raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, as_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# A stop signal within this long of the first is the same request: one preemption often arrives twice (the
# scheduler signals every process of the job, and torchrun forwards its own copy milliseconds later).
REPEAT_GRACE_S = 2.0


@contextmanager
def held_stop_signals(message: str):
    """Inside the block the first SIGINT (or SIGTERM, under sigterm_as_sigint) is recorded in the yielded list
    and `message` logged; a later SIGINT, more than REPEAT_GRACE_S after it, raises KeyboardInterrupt (the
    user insists); a repeated SIGTERM never does (a scheduler repeating its notice wants the checkpoint)."""
    requests = []
    if threading.current_thread() is not threading.main_thread():  # signals only reach the main thread
        yield requests
        return

    def request(signum, _frame):
        now = time.monotonic()
        if not requests:
            requests.append(now)
            log.warning("%s", message)
        elif signum == signal.SIGINT and now - requests[0] > REPEAT_GRACE_S:
            raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, request)
    try:
        yield requests
    finally:
        signal.signal(signal.SIGINT, previous)


def agreed_sigint():
    """Ctrl-C under torchrun (which passes one SIGINT to every worker): a rank that stopped where the signal
    found it would leave the others waiting in a collective, and no checkpoint would be written. Inside this
    block a stop signal is only recorded; the ranks add their records up in each step's all-reduce and all stop
    after the same step, then save. A second Ctrl-C (not a repeated notice) raises KeyboardInterrupt at once."""
    return held_stop_signals("Ctrl-C: every rank stops after this step and writes a checkpoint (Ctrl-C again: "
                             "stop now)")
