#!/usr/bin/env bash
# Everything the CUDA backend issue checks on a GPU machine, as one command (no Node
# needed there; CMake, nvcc, compute-sanitizer, torch and transformers are):
#
#   bash bench/cuda/gpu-session.sh [HF_INPUTS]    (e.g. gpu-in, made here and carried)
#
# 1. builds the core, C++ tests and benchmarks with -DSPECULA_CUDA=ON (sm_90 + PTX);
# 2. runs CTest: every C++ test, test_cuda (CUDA vs CPU, losslessness) included;
# 3. runs test_cuda under compute-sanitizer memcheck, where the tool works;
# 4. runs bench_cuda and bench/cuda/torch_compare.py (bandwidth against a device-to-device
#    copy, and the speedup over a PyTorch speculative sampling), with and without filters;
# 5. given HF_INPUTS, a folder of model directories written by initModel
#    (node test/fixtures/make-hf-inputs.mjs HF_INPUTS, on a machine with Node), makes a
#    transformers fixture of each (test/fixtures/make_hf_fixture.py) under $OUT/fixtures.
#
# session.log, torch_compare.json and fixtures.tar.gz go to $OUT (the device tool's output
# folder) or ./gpu-out. Every step
# runs even when an earlier one fails; the exit status is the first failure's.
set -uo pipefail
cd "$(dirname "$0")/../.."
out=${OUT:-gpu-out}
mkdir -p "$out"
status=0
log="$out/session.log"  # one log: the device tool brings back at most 8 files
: >"$log"
step() {  # step NAME COMMAND...: runs it, appends to the log, remembers a failure
  local name=$1
  shift
  echo "== $name: $*" | tee -a "$log"
  "$@" 2>&1 | tee -a "$log"
  local rc=${PIPESTATUS[0]}
  echo "== $name: exit $rc" | tee -a "$log"
  if [ "$rc" != 0 ] && [ "$status" = 0 ]; then status=$rc; fi
  return 0
}

if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv | tee -a "$log"
fi
step build bash -c 'cmake -S . -B build-cuda -G Ninja -DSPECULA_CUDA=ON -DCMAKE_BUILD_TYPE=Release >/dev/null &&
  cmake --build build-cuda -j "$(nproc)"'
step ctest bash -c 'cd build-cuda && ctest --output-on-failure --timeout 900'
if command -v compute-sanitizer >/dev/null 2>&1; then
  step memcheck compute-sanitizer --tool memcheck --leak-check full --error-exitcode 3 build-cuda/test_cuda
else
  echo "compute-sanitizer not found: memcheck skipped" | tee -a "$log"
fi
step bench build-cuda/bench_cuda
step bench-filters build-cuda/bench_cuda --filters
step torch python3 bench/cuda/torch_compare.py --bench build-cuda/bench_cuda --json "$out/torch_compare.json"

if [ $# -ge 1 ]; then
  mkdir -p "$out/fixtures"
  for dir in "$1"/*/; do
    name=$(basename "$dir")
    step "fixture-$name" python3 test/fixtures/make_hf_fixture.py "$dir" "$out/fixtures/$name-hf"
  done
  # One archive of them all (the device tool brings back few files, two folders down at most).
  tar -C "$out" -czf "$out/fixtures.tar.gz" fixtures && rm -rf "$out/fixtures"
fi
echo "== gpu-session: exit $status" | tee -a "$log"
exit "$status"
