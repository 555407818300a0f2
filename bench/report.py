"""Turns a pytest-benchmark JSON file into a markdown section for bench/RESULTS.md: per (op, case), the
median of each implementation and its speed-up over the baseline measured in the same run.

    python bench/report.py run.json --title "CPU benchmarks" [--append bench/RESULTS.md]
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
from collections import defaultdict

import torch

METRIC_KEYS = ("gbytes_per_s", "tflops", "peak_extra_mb", "tokens_per_s", "note")


def machine_line() -> str:
    if torch.cuda.is_available():
        device = f"{torch.cuda.get_device_name()} (CUDA {torch.version.cuda})"
    else:
        model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if "model name" in line),
                     platform.processor())
        device = f"CPU {model}, {torch.get_num_threads()} threads"
    return f"{device}; torch {torch.__version__}; Python {platform.python_version()}"


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def render(benchmarks: list[dict], title: str) -> str:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for bench in benchmarks:
        info = bench.get("extra_info", {})
        if "op" in info:
            groups[(info["op"], info["case"])].append(bench)
    lines = [f"## {title} — {datetime.date.today().isoformat()}", "", machine_line(), "",
             "| op | case | impl | median ms | speed-up vs baseline | metrics |", "|---|---|---|---|---|---|"]
    for (op, case), rows in groups.items():
        base = next((r for r in rows if r["extra_info"].get("baseline")), None)
        base_median = base["stats"]["median"] if base else None
        for row in sorted(rows, key=lambda r: r["stats"]["median"]):
            info, median = row["extra_info"], row["stats"]["median"]
            ratio = f"{base_median / median:.2f}×" if base_median else "n/a"
            if row is base:
                ratio = "1.00× (baseline)"
            metrics = ", ".join(f"{k}={_fmt(info[k])}" for k in METRIC_KEYS if k in info)
            lines.append(f"| {op} | {case} | {info['impl']} | {median * 1e3:.3f} | {ratio} | {metrics} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json_file")
    parser.add_argument("--title", default="Benchmarks")
    parser.add_argument("--append", help="markdown file to append the section to")
    args = parser.parse_args()
    with open(args.json_file) as f:
        section = render(json.load(f)["benchmarks"], args.title)
    print(section)
    if args.append:
        with open(args.append, "a") as f:
            f.write("\n" + section)


if __name__ == "__main__":
    main()
