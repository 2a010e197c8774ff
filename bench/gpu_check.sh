#!/usr/bin/env bash
# GPU check: verifies the CUDA side on a GPU in one go and writes its results
# into the folder given as argument.
#
#   bash bench/gpu_check.sh OUT_DIR [quick|full|lm]
#
# quick (default; about 150 s of command time on an H200 before the shards,
# JAX and fuzz steps were added; at most 16 minutes by its step limits, more
# than a device call may run, so the steps go in order of their worth):
#   build the extension for this card's arch only with all cores, and, at the
#   same time, the torch-free core with CUDA (CMake); the tests marked cuda
#   (the CPU bodies run in CI); the core's CTest suite; 300 random cases of
#   the core's CUDA-against-CPU checks (test_core_cuda --fuzz); compute-sanitizer
#   memcheck and racecheck on the core's CUDA test (small cases, both pk_topk
#   kernels, the embedding-bag backward, the row update); the bench suite's
#   paper preset without the scaling sweeps; per-kernel device times
#   (bench/profile_kernels.py) into profile.txt; P=8 column shards of the
#   paper's value table emulated on the card (python -m memkernels.bench.shards,
#   shards.json); the JAX path against the torch path (jax_path.log).
# full: also the whole test suite, the sweeps and pytest-benchmark's GPU cases.
# lm: only the build and the language-model example's gpu preset
#   (docs/lm_example.md), its lm.json and lm.png into OUT_DIR.
# Every step has a time limit, and steps.txt is written into OUT_DIR as each
# step ends, so a call cut short still says how far it got. A short table is
# printed last. Exit status is non-zero if any step failed.
#
# OUT_DIR receives few files (a lent GPU machine returns at most 8):
# steps.txt, summary.txt, bench.json, shards.json, pytest_bench.json (full)
# and logs.tgz (every log, the ptxas report, the plots).
set -uo pipefail

FINAL=${1:?usage: bash bench/gpu_check.sh OUT_DIR [quick|full|lm]}
MODE=${2:-quick}
mkdir -p "$FINAL"
OUT=$(mktemp -d)
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export PATH="$CUDA_HOME/bin:$PATH"
ARCH=${MK_ARCH:-$($PY -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())')}
NPROC=$(nproc)
export TORCH_CUDA_ARCH_LIST=$ARCH MEMKERNELS_CUDA=1 MEMKERNELS_PTXAS_VERBOSE=1 MAX_JOBS=$NPROC
export MEMKERNELS_EXPECT_CUDA=1 MEMKERNELS_EXPECT_ARCH=$ARCH PYTHONPATH=$PWD PYTHONUNBUFFERED=1
CORE_BUILD=${CORE_BUILD:-/tmp/memkernels-core-build}
: > "$FINAL/steps.txt"
status=0

# step NAME SECONDS COMMAND...: runs COMMAND with a time limit, logs to NAME.log.
step() {
  local name=$1 limit=$2
  shift 2
  local t0=$(date +%s)
  timeout -k 5 "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  printf '%-12s rc=%-3d %4ds%s\n' "$name" "$rc" "$(( $(date +%s) - t0 ))" \
    "$([ "$rc" -eq 124 ] && echo '  (time limit)')" | tee -a "$FINAL/steps.txt"
  [ "$rc" -eq 0 ] || status=1
  return "$rc"
}

finish() {
  wait 2>/dev/null
  {
    echo "== gpu"; cat "$OUT/gpu.txt"
    echo "== steps"; cat "$FINAL/steps.txt"
    echo "== failures"
    grep -hE "^FAILED|^ERROR |ERROR SUMMARY: [1-9]|error:|CHECK\(|Error|Timeout|crashed" "$OUT"/*.log 2>/dev/null | cut -c1-300 | head -n 40
    echo "== ptxas: kernels that spill"; grep -B2 "[1-9][0-9]* bytes spill stores" "$OUT/ptxas.txt" 2>/dev/null | grep -o "entry function .*" | cut -c1-150 | head -n 12
    echo "== JAX path vs torch path"; grep -A 8 "^JAX path" "$OUT/jax_path.log" 2>/dev/null || echo "(no JAX run)"
    echo "== column shards (one card)"; grep -A 8 "^column shards" "$OUT/shards.log" 2>/dev/null || echo "(no shards run)"
    echo "== bench (paper preset)"; grep -A 80 "^memkernels bench" "$OUT/bench.log" 2>/dev/null || echo "(no bench run)"
  } > "$OUT/summary.txt" 2>&1
  cp "$OUT/summary.txt" "$FINAL/"
  cp "$OUT/bench/bench.json" "$OUT/shards.json" "$OUT/pytest_bench.json" "$OUT/lm/lm.json" "$OUT/lm/lm.png" "$FINAL/" 2>/dev/null
  tar czf "$FINAL/logs.tgz" -C "$OUT" .
  cat "$OUT/summary.txt"
  exit "$status"
}

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv > "$OUT/gpu.txt" 2>&1
cat "$OUT/gpu.txt"
if [ "$MODE" = lm ]; then
  step build 240 "$PY" setup.py build_ext --inplace || finish
  step lm 420 "$PY" -m memkernels.examples.lm --preset gpu --out "$OUT/lm"
  tail -n 5 "$OUT/lm.log" >> "$OUT/gpu.txt"
  finish
fi
# The core library builds (and its CTest suite runs) beside the extension's build.
step core_build 300 bash -c "cmake -S . -B '$CORE_BUILD' -G Ninja -DMEMKERNELS_CUDA=ON -DMEMKERNELS_EMU_TESTS=OFF \
  -DCMAKE_CUDA_ARCHITECTURES=${ARCH/./} -DCMAKE_BUILD_TYPE=Release && \
  cmake --build '$CORE_BUILD' -j 4 && ctest --test-dir '$CORE_BUILD' --output-on-failure" &
core_pid=$!
step build 240 "$PY" setup.py build_ext --inplace || finish
grep -E "Compiling entry|registers|spill" "$OUT/build.log" > "$OUT/ptxas.txt" || true
PYTEST_ARGS=()
if "$PY" -c "import pytest_timeout" 2>/dev/null; then PYTEST_ARGS=(--timeout 60); fi
# pytest-xdist, where installed: parallel, and a test that crashes its worker
# is reported as failed instead of ending the run.
if "$PY" -c "import xdist" 2>/dev/null; then PYTEST_ARGS+=(-n 4); fi
if [ "$MODE" = full ]; then
  step tests 420 "$PY" -m pytest tests -q -rfEs --tb=short "${PYTEST_ARGS[@]}" --junitxml="$OUT/tests.xml"
else
  step tests 150 "$PY" -m pytest tests -q -rfEs --tb=short -m cuda "${PYTEST_ARGS[@]}" --junitxml="$OUT/tests.xml"
fi
wait "$core_pid" || status=1
if [ -x "$CORE_BUILD/test_core_cuda" ]; then
  step fuzz 60 "$CORE_BUILD/test_core_cuda" --fuzz 300 1
  step memcheck 90 compute-sanitizer --tool memcheck --error-exitcode 1 "$CORE_BUILD/test_core_cuda"
  step racecheck 90 compute-sanitizer --tool racecheck --error-exitcode 1 "$CORE_BUILD/test_core_cuda"
fi
if [ "$MODE" = full ]; then
  step bench 420 "$PY" -m memkernels.bench --preset paper --out "$OUT/bench"
  step pytest_bench 300 "$PY" -m pytest bench -q -k cuda --benchmark-json="$OUT/pytest_bench.json"
else
  step bench 170 "$PY" -m memkernels.bench --preset paper --no-sweeps --reps 10 --out "$OUT/bench"
fi
step shards 45 "$PY" -m memkernels.bench.shards --json "$OUT/shards.json"
step jax_path 45 "$PY" -m memkernels.bench.jax_path --json "$OUT/jax_path.json"
step profile 90 "$PY" bench/profile_kernels.py "$OUT"
finish
