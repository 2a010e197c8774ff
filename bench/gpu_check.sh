#!/usr/bin/env bash
# GPU check: verifies the CUDA side on a GPU in one go (target: under 8 minutes
# on an H100) and writes its results into the folder given as argument.
#
#   bash bench/gpu_check.sh OUT_DIR
#
# Steps: build the extension for this card's arch only with all cores; run the
# test suite (CPU and CUDA variants); build the torch-free core with CUDA and
# run its CTest suite; compute-sanitizer memcheck and racecheck on the core's
# CUDA test (small cases); the bench suite's paper preset (JSON and plots);
# pytest-benchmark's GPU cases. A short table is printed last. Exit status is
# non-zero if any step failed.
#
# OUT_DIR receives few files (a lent GPU machine returns at most 8):
# steps.txt, bench.json, pytest_bench.json, summary.txt and logs.tgz (every
# log, the ptxas report, the plots).
set -uo pipefail

FINAL=${1:?usage: bash bench/gpu_check.sh OUT_DIR}
mkdir -p "$FINAL"
OUT=$(mktemp -d)
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export PATH="$CUDA_HOME/bin:$PATH"
ARCH=${MK_ARCH:-$($PY -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())')}
export TORCH_CUDA_ARCH_LIST=$ARCH MEMKERNELS_CUDA=1 MEMKERNELS_PTXAS_VERBOSE=1 MAX_JOBS=$(nproc)
export MEMKERNELS_EXPECT_CUDA=1 MEMKERNELS_EXPECT_ARCH=$ARCH PYTHONPATH=$PWD
CORE_BUILD=${CORE_BUILD:-/tmp/memkernels-core-build}
: > "$OUT/steps.txt"
status=0

step() {
  local name=$1
  shift
  local t0=$(date +%s)
  "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  printf '%-12s rc=%d  %4ds\n' "$name" "$rc" "$(( $(date +%s) - t0 ))" | tee -a "$OUT/steps.txt"
  [ "$rc" -eq 0 ] || status=1
  return "$rc"
}

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv > "$OUT/gpu.txt" 2>&1
finish() {
  {
    echo "== gpu"; cat "$OUT/gpu.txt"
    echo "== steps"; cat "$OUT/steps.txt"
    echo "== failures"; grep -hE "FAILED|ERROR SUMMARY|error:|rc=[1-9]" "$OUT"/*.log "$OUT/steps.txt" | head -n 40
    echo "== bench (paper preset)"; grep -A 60 "^memkernels bench" "$OUT/bench.log" 2>/dev/null || echo "(no bench run)"
  } > "$OUT/summary.txt" 2>&1
  cp "$OUT/steps.txt" "$OUT/summary.txt" "$FINAL/"
  cp "$OUT/bench/bench.json" "$OUT/pytest_bench.json" "$FINAL/" 2>/dev/null
  tar czf "$FINAL/logs.tgz" -C "$OUT" .
  cat "$OUT/summary.txt"
  exit "$status"
}

step build "$PY" setup.py build_ext --inplace || finish
grep -E "registers|spill|stack" "$OUT/build.log" > "$OUT/ptxas.txt" || true
step tests "$PY" -m pytest tests -q -rs --junitxml="$OUT/tests.xml"
step core_build bash -c "cmake -S . -B '$CORE_BUILD' -DMEMKERNELS_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=${ARCH/./} \
  -DCMAKE_BUILD_TYPE=Release && cmake --build '$CORE_BUILD' -j $(nproc) && ctest --test-dir '$CORE_BUILD' --output-on-failure"
step memcheck compute-sanitizer --tool memcheck --error-exitcode 1 "$CORE_BUILD/test_core_cuda"
step racecheck compute-sanitizer --tool racecheck --error-exitcode 1 "$CORE_BUILD/test_core_cuda"
step bench "$PY" -m memkernels.bench --preset paper --out "$OUT/bench"
step pytest_bench "$PY" -m pytest bench -q -k cuda --benchmark-json="$OUT/pytest_bench.json"

finish
