#!/usr/bin/env bash
# GPU check: verifies the CUDA side on a GPU in one go (target: under 8 minutes
# on an H100) and writes logs and JSON into the folder given as argument.
#
#   bash bench/gpu_check.sh OUT_DIR
#
# Steps: build the extension for this card's arch only with all cores; run the
# test suite (CPU and CUDA variants); build the torch-free core with CUDA and
# run its CTest suite; compute-sanitizer memcheck and racecheck on the core's
# CUDA test (small cases); the bench suite's paper preset; pytest-benchmark's
# GPU cases. A short table is printed last. Exit status is non-zero if any
# step failed.
set -uo pipefail

OUT=${1:?usage: bash bench/gpu_check.sh OUT_DIR}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export PATH="$CUDA_HOME/bin:$PATH"
ARCH=$($PY -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())')
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
step build "$PY" setup.py build_ext --inplace || { cat "$OUT/steps.txt"; exit 1; }
grep -E "registers|spill|stack" "$OUT/build.log" > "$OUT/ptxas.txt" || true
step tests "$PY" -m pytest tests -q -rs --junitxml="$OUT/tests.xml"
step core_build bash -c "cmake -S . -B '$CORE_BUILD' -DMEMKERNELS_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=${ARCH/./} \
  -DCMAKE_BUILD_TYPE=Release && cmake --build '$CORE_BUILD' -j $(nproc) && ctest --test-dir '$CORE_BUILD' --output-on-failure"
step memcheck compute-sanitizer --tool memcheck --error-exitcode 1 "$CORE_BUILD/test_core_cuda"
step racecheck compute-sanitizer --tool racecheck --error-exitcode 1 "$CORE_BUILD/test_core_cuda"
step bench "$PY" -m memkernels.bench --preset paper --out "$OUT"
step pytest_bench "$PY" -m pytest bench -q -k cuda --benchmark-json="$OUT/pytest_bench.json"

echo
echo "== steps"
cat "$OUT/steps.txt"
echo "== bench (paper preset)"
grep -A 40 "^memkernels bench" "$OUT/bench.log" || tail -n 20 "$OUT/bench.log"
exit $status
