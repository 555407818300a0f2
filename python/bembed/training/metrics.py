"""A run's metrics.jsonl (one record per logged step) read back, and its loss columns drawn as a PNG."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from bembed.files import save_figure_atomic

log = logging.getLogger(__name__)


def read_metrics(path: Path) -> dict[int, dict]:
    """The records of a metrics.jsonl by step (a resumed run rewrites steps: the last record wins); a line
    torn by a kill mid-write is skipped with a warning."""
    records: dict[int, dict] = {}
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                log.warning("%s:%d: not a complete record (a write cut short by a kill?); skipped", path, number)
                continue
            records[record["step"]] = record
    return records


def plot_losses(metrics_path: Path, png_path: Path) -> Path | None:
    """Plot every loss-like column of metrics.jsonl against the step (the last record of a step wins, so
    a resumed run draws one curve). Skips with a log line when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.info("matplotlib is not installed: no loss plot (metrics are in %s)", metrics_path)
        return None
    if not Path(metrics_path).is_file():
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    plot_loss_columns(ax, read_metrics(metrics_path))
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure_atomic(fig, png_path, dpi=100)
    plt.close(fig)
    return Path(png_path)


def plot_loss_columns(ax, records: dict[int, dict]) -> None:
    """Each column of `records` (read_metrics) whose name holds "loss", against the step, labelled by name."""
    steps = sorted(records)
    for key in sorted({k for r in records.values() for k in r if "loss" in k}):
        points = [(s, records[s][key]) for s in steps if key in records[s]]
        ax.plot([p[0] for p in points], [p[1] for p in points], label=key)
