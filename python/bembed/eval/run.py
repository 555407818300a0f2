"""Running encoders on tasks through ``mteb.evaluate`` and collecting one main score per (model, task)."""

from __future__ import annotations

import logging
import time
import warnings

from bembed.eval.mteb_wrapper import MtebEncoder

log = logging.getLogger(__name__)


def evaluate_encoder(encoder, tasks, name: str | None = None, batch_size: int = 32) -> dict:
    """{"model": name, "scores": {task: main score}, "main_score_name": {task: metric}, "seconds": s}."""
    import mteb

    model = MtebEncoder(encoder, name=name, batch_size=batch_size)
    start = time.perf_counter()
    with warnings.catch_warnings():
        # mteb's bitext-mining evaluator copies a tensor through torch.tensor(): torch's advice is for mteb, not
        # for whoever reads an evaluation's log
        warnings.filterwarnings("ignore", message="To copy construct from a tensor", category=UserWarning)
        result = mteb.evaluate(model, tasks, cache=None, show_progress_bar=False)
    scores = {tr.task_name: float(tr.get_score()) for tr in result.task_results}
    metrics = {t.metadata.name: t.metadata.main_score for t in tasks}
    seconds = time.perf_counter() - start
    log.info("%s: %d tasks in %.0f s", name, len(scores), seconds)
    return {"model": name or getattr(encoder, "name", type(encoder).__name__), "scores": scores,
            "main_score_name": metrics, "seconds": round(seconds, 1)}
