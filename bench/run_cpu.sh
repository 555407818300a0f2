#!/usr/bin/env bash
# Runs every CPU benchmark (2 threads, correctness checked first) and appends the same-run ratio table to
# bench/RESULTS.md. Run on a quiet machine: `bash bench/run_cpu.sh [bench files...]`.
set -euo pipefail
cd "$(dirname "$0")/.."
files=("$@")
[ ${#files[@]} -gt 0 ] || files=(bench/bench_*.py)
json=$(mktemp --suffix=.json)
OMP_NUM_THREADS=2 python -m pytest "${files[@]}" -m "not cuda" -q -p no:cacheprovider --benchmark-json="$json" \
  --benchmark-columns=median,iqr,rounds
python bench/report.py "$json" --title "CPU benchmarks (bench/run_cpu.sh)" --append bench/RESULTS.md
