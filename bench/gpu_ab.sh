#!/usr/bin/env bash
# A/B check of a core-kernel change on a GPU, in one short call:
#
#   bash bench/gpu_ab.sh OLD_SRC OUT_DIR [BENCH_CASES]
#
# OLD_SRC: a copy of the baseline's csrc/, tests/core/ and CMakeLists.txt
# (e.g. `git archive BASE csrc tests/core CMakeLists.txt | tar -x -C OLD_SRC`).
# Builds the core library from OLD_SRC and from this tree (CMake) beside the
# extension, runs the embedding-bag, pk_topk, layer and optimizer CUDA tests,
# compute-sanitizer memcheck and racecheck on the core's CUDA test, times
# mk_pk_select and the fused top-k (bench/ab_pk_select.py) and the embedding bag's forward, dense
# backward and backward fused with an AdamW update (bench/ab_embedding_bag.py,
# the paper's shape) of both builds
# side by side, and runs the bench cases named (default pk_ref). Logs and
# bench.json go to OUT_DIR; a short table last.
set -uo pipefail
OLD=${1:?usage: bash bench/gpu_ab.sh OLD_SRC OUT_DIR [BENCH_CASES]}
OUT=${2:?usage}
CASES=${3:-pk_ref}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda} PATH="${CUDA_HOME:-/usr/local/cuda}/bin:$PATH"
ARCH=$($PY -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())')
export TORCH_CUDA_ARCH_LIST=$ARCH MEMKERNELS_CUDA=1 MAX_JOBS=8 PYTHONPATH=$PWD PYTHONUNBUFFERED=1
status=0
core() {  # core SRC BUILD_DIR TARGETS...
  local src=$1 dir=$2; shift 2
  cmake -S "$src" -B "$dir" -G Ninja -DMEMKERNELS_CUDA=ON -DMEMKERNELS_EMU_TESTS=OFF -DCMAKE_CUDA_ARCHITECTURES=${ARCH/./} \
    -DCMAKE_BUILD_TYPE=Release > "$dir.log" 2>&1 && cmake --build "$dir" -j 4 --target "$@" >> "$dir.log" 2>&1
}
t0=$(date +%s)
core "$OLD" /tmp/ab_old memkernels_core & p1=$!
core . /tmp/ab_new memkernels_core test_core_cuda & p2=$!
$PY setup.py build_ext --inplace > "$OUT/build.log" 2>&1 || { echo "extension build failed"; tail -20 "$OUT/build.log"; exit 1; }
wait $p1 || { echo "old core build failed"; tail -20 /tmp/ab_old.log; exit 1; }
wait $p2 || { echo "new core build failed"; tail -20 /tmp/ab_new.log; exit 1; }
echo "builds: $(( $(date +%s) - t0 )) s"
ARGS=(); $PY -c "import xdist" 2>/dev/null && ARGS=(-n 4)
timeout 150 $PY -m pytest tests/test_embedding_bag.py tests/test_pk_topk.py tests/test_nn.py tests/test_optim.py -q -m cuda --tb=short \
  "${ARGS[@]}" > "$OUT/tests.log" 2>&1 || status=1
echo "tests: $(tail -1 "$OUT/tests.log")"
for tool in memcheck racecheck; do
  timeout 90 compute-sanitizer --tool $tool --error-exitcode 1 /tmp/ab_new/test_core_cuda > "$OUT/$tool.log" 2>&1 || status=1
  echo "$tool: $(grep -E "SUMMARY" "$OUT/$tool.log" | tail -1)"
done
timeout 60 $PY bench/ab_pk_select.py /tmp/ab_old/libmemkernels_core.so /tmp/ab_new/libmemkernels_core.so \
  > "$OUT/ab.txt" 2>&1 || status=1
timeout 120 $PY bench/ab_embedding_bag.py /tmp/ab_old/libmemkernels_core.so /tmp/ab_new/libmemkernels_core.so \
  > "$OUT/ab_bag.txt" 2>&1 || status=1
timeout 90 $PY -m memkernels.bench --preset paper --no-sweeps --reps 10 --cases "$CASES" --out "$OUT/bench" \
  > "$OUT/bench.log" 2>&1 || status=1
grep -E "^FAILED" "$OUT/tests.log" | head -10
grep -A 30 "^memkernels bench" "$OUT/bench.log"
echo "== mk_pk_select, build 0 = $OLD, build 1 = this tree"; cat "$OUT/ab.txt"
echo "== embedding bag (N=1M, D=4096, T=4096, bf16), build 0 = $OLD, build 1 = this tree"; cat "$OUT/ab_bag.txt"
exit $status
