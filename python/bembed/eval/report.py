"""The evaluation report: one text table (models × tasks), the same as json, and a grouped bar chart PNG."""

from __future__ import annotations

from pathlib import Path

from bembed.files import save_figure_atomic, write_json_atomic


def _tasks(results: list[dict]) -> list[str]:
    names: list[str] = []
    for r in results:
        names.extend(t for t in r["scores"] if t not in names)
    return names


def format_table(results: list[dict]) -> str:
    """Markdown table: a row per task (with its metric), a column per model, scores ×100."""
    if not results:
        raise ValueError("results must not be empty")
    tasks = _tasks(results)
    metrics = {t: m for r in results for t, m in r.get("main_score_name", {}).items()}
    header = "| task | metric | " + " | ".join(r["model"] for r in results) + " |"
    lines = [header, "|" + "---|" * (2 + len(results))]
    for task in tasks:
        cells = [f"{100 * r['scores'][task]:.1f}" if task in r["scores"] else "–" for r in results]
        lines.append(f"| {task} | {metrics.get(task, '')} | " + " | ".join(cells) + " |")
    # A mean over different tasks per column compares nothing, so it is taken over the tasks all models have.
    common = [t for t in tasks if all(t in r["scores"] for r in results)]
    label = "mean" if len(common) == len(tasks) else f"mean ({len(common)} of {len(tasks)} tasks: all models have them)"
    means = [f"{100 * sum(r['scores'][t] for t in common) / len(common):.1f}" if common else "–" for r in results]
    lines.append(f"| {label} | | " + " | ".join(means) + " |")
    return "\n".join(lines)


def write_json(results: list[dict], path: Path, extra: dict | None = None) -> None:
    write_json_atomic(path, {"results": results, **(extra or {})})


def write_bar_chart(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt
    import numpy as np

    tasks = _tasks(results)
    width = 0.8 / len(results)
    fig, ax = plt.subplots(figsize=(max(8, 1.1 * len(tasks)), 4.5))
    x = np.arange(len(tasks))
    for i, r in enumerate(results):
        ax.bar(x + i * width, [100 * r["scores"].get(t, np.nan) for t in tasks], width, label=r["model"])
    ax.set_xticks(x + width * (len(results) - 1) / 2)
    ax.set_xticklabels([t.replace("Bembed", "") for t in tasks], rotation=35, ha="right", fontsize=8)
    ax.set_ylabel("main score × 100")
    ax.set_ylim(0, 100)
    ax.set_title("bembed local tasks (STS and pair classification are constructed)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))  # outside: bars reach the top
    fig.tight_layout()
    save_figure_atomic(fig, path, dpi=120)
    plt.close(fig)
