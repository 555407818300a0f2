#!/usr/bin/env bash
# One call on a lent GPU machine does everything: build, CUDA tests (which must not skip), compute-sanitizer
# on small attention/contrastive cases, GPU benchmarks, and a markdown results section — all under $OUT.
#
#   bash bench/gpu_check.sh [all|build|test|sanitize|bench|plan] [bench files...]
#       (default: all; bench files split the benchmarks over several 10-minute calls)
#
# test, sanitize and bench build first unless this machine already built these sources (SKIP_BUILD=1 skips
# the build regardless): a lent machine keeps the build only while it stays warm (about 30 s after a call), so
# a later call usually gets a bare copy of the tree.
#
# `plan` needs no GPU (CI runs it): it collects what the test and bench stages would run and fails if either
# selects nothing, so that a mistake in the selection costs a CI run rather than a lent machine's minutes.
#
# GPU_CHECK_SECONDS=N: the call's whole time limit (a lent machine's command limit, less a margin): the bench
# stage then stops starting benchmarks in time to write its JSON and table (BEMBED_BENCH_SECONDS, see
# bench/conftest.py), whatever the build took. Use it with an outer `timeout` as the backstop.
#
# The files it writes under $OUT are few (a lent machine returns at most 8 per call): env.txt (machine,
# versions, kernels in the binary, `bembed info`), build.log, summary.txt, tests.log, sanitizer_*.log,
# bench.log, bench.json, RESULTS_gpu.md.
#
# The GPU image has torch + nvcc + pytest + pytest-benchmark but no network, datasets or mteb, so the build
# is offline and in place, and the package is used from the source tree via PYTHONPATH.
set -uo pipefail
cd "$(dirname "$0")/.."
STAGE=${1:-all}
shift $(( $# > 0 ? 1 : 0 ))
OUT=${OUT:-$PWD/out/gpu}
mkdir -p "$OUT"
PYTHON=${PYTHON:-python3}
export PYTHONPATH="$PWD/python:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0a}
export MAX_JOBS=${MAX_JOBS:-16}
status=0
BENCH_FILES=(bench/bench_*.py)  # named: pytest collects only test_*.py from a folder
[ $# -gt 0 ] && BENCH_FILES=("$@")
cuda_test_files() { grep -l "mark.cuda" tests/test_*.py; }

log() { echo "[gpu_check $(date -u +%H:%M:%S)] $*" | tee -a "$OUT/summary.txt"; }
# a CUDA tool: CUDA_HOME's, else the one on PATH (images differ in where they put the profilers)
cuda_tool() { if [ -x "$CUDA_HOME/bin/$1" ]; then echo "$CUDA_HOME/bin/$1"; else command -v "$1" || echo "$1"; fi; }

build() {
  { nvidia-smi; $PYTHON -c "import torch, sys; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'python', sys.version)"; } \
    > "$OUT/env.txt" 2>&1
  log "build (arch $TORCH_CUDA_ARCH_LIST)"
  if ! (time BEMBED_CUDA=1 $PYTHON setup.py build_ext --inplace) > "$OUT/build.log" 2>&1; then
    log "BUILD FAILED"; grep -E "error" "$OUT/build.log" | head -40 | tee -a "$OUT/summary.txt"; return 1
  fi
  mkdir -p build && sources_hash > build/gpu_build_sources  # ignored: kept while the machine stays warm
  local elf; elf=$("$(cuda_tool cuobjdump)" --list-elf bembed_ext/_C*.so 2>&1)
  echo "$elf" >> "$OUT/env.txt"
  grep -q sm_90a <<< "$elf" && log "cuobjdump: sm_90a present" || log "cuobjdump: sm_90a MISSING"
  $PYTHON -m bembed info 2>&1 | tee -a "$OUT/env.txt" >> "$OUT/summary.txt"
}

run_tests() {
  local files; files=$(cuda_test_files)
  log "CUDA tests in: $(echo $files)"
  # shellcheck disable=SC2086
  $PYTHON -m pytest $files -m cuda -q -rs -p no:cacheprovider --durations=15 > "$OUT/tests.log" 2>&1
  local rc=$?
  tail -n 30 "$OUT/tests.log" >> "$OUT/summary.txt"
  if grep -q "SKIPPED" "$OUT/tests.log"; then log "WARNING: CUDA tests skipped on a GPU machine"; rc=1; fi
  log "CUDA tests exit $rc"; return $rc
}

sanitize() {
  for tool in memcheck racecheck; do
    log "compute-sanitizer $tool (small cases)"
    # No caching allocator: each tensor is its own cudaMalloc, so memcheck sees an access past a tensor's end
    # (inside the allocator's cached 2 MiB blocks it would be a valid address and go unreported).
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$(cuda_tool compute-sanitizer)" --tool "$tool" --error-exitcode 9 \
      $PYTHON bench/sanitizer_cases.py > "$OUT/sanitizer_$tool.log" 2>&1
    local rc=$?
    tail -n 5 "$OUT/sanitizer_$tool.log" >> "$OUT/summary.txt"
    # gVisor machines refuse the tool itself (device notes, 2026-11-04): say so rather than blame a kernel
    grep -q "Device not supported" "$OUT/sanitizer_$tool.log" &&
      log "compute-sanitizer cannot run on this machine's runtime (\"Device not supported\"): not a kernel finding"
    log "compute-sanitizer $tool exit $rc"; [ $rc -eq 0 ] || status=1
  done
}

bench() {
  if [ -n "${GPU_CHECK_SECONDS:-}" ]; then  # what is left of the call, less the report's margin
    export BEMBED_BENCH_SECONDS=$(( GPU_CHECK_SECONDS - SECONDS - 45 ))
  fi
  log "GPU benchmarks${BEMBED_BENCH_SECONDS:+ (new ones start within ${BEMBED_BENCH_SECONDS} s)}"
  # -rs: the reason of each skip (a baseline this torch lacks, an out-of-memory size) lands in bench.log
  $PYTHON -m pytest "${BENCH_FILES[@]}" -m cuda -q -rs -p no:cacheprovider --benchmark-json="$OUT/bench.json" \
    --benchmark-columns=median,iqr,rounds --durations=15 > "$OUT/bench.log" 2>&1
  local rc=$?
  tail -n 15 "$OUT/bench.log" >> "$OUT/summary.txt"
  $PYTHON bench/report.py "$OUT/bench.json" --title "GPU benchmarks (bench/gpu_check.sh)" > "$OUT/RESULTS_gpu.md" \
    2>>"$OUT/summary.txt"
  log "benchmarks exit $rc; table in RESULTS_gpu.md"; return $rc
}

sources_hash() { cat setup.py $(find csrc -type f | sort) | sha256sum | cut -d' ' -f1; }
ensure_built() {
  [ "${SKIP_BUILD:-0}" = 1 ] && return 0
  if [ "$(cat build/gpu_build_sources 2>/dev/null)" = "$(sources_hash)" ]; then
    log "build: reusing this machine's build of the same sources"; return 0
  fi
  build
}

plan() {
  local tests benches
  # shellcheck disable=SC2046
  tests=$($PYTHON -m pytest $(cuda_test_files) -m cuda --collect-only -q -p no:cacheprovider | grep -c "::")
  benches=$($PYTHON -m pytest "${BENCH_FILES[@]}" -m cuda --collect-only -q -p no:cacheprovider | grep -c "::")
  log "plan: $tests CUDA tests, $benches CUDA benchmarks"
  [ "$tests" -gt 0 ] && [ "$benches" -gt 0 ]
}

case "$STAGE" in
  build) build || status=1 ;;
  test) ensure_built || exit 1; run_tests || status=1 ;;
  sanitize) ensure_built || exit 1; sanitize ;;
  bench) ensure_built || exit 1; bench || status=1 ;;
  plan) plan || status=1 ;;
  all) build || exit 1; run_tests || status=1; sanitize; bench || status=1 ;;
  *) echo "usage: $0 [all|build|test|sanitize|bench|plan] [bench files...]"; exit 2 ;;
esac
log "done (status $status)"
exit $status
