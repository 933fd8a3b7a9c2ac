#!/usr/bin/env bash
# Everything a GPU machine checks, in one go: build and install lstm_ext with
# the CUDA path (required: LSTM_EXT_CUDA=ON), run the test files that use the
# GPU (tests/test_cuda.py and the GPU cases of four others), the GPU benchmark
# against torch.nn.LSTM (cuDNN), then the rest of the suite. Logs and JSON go
# to $OUT (default ./gpu-check-out).
#
#   bash benchmarks/gpu_check.sh
#
# Environment: PYTHON (default python3) must have numpy, scikit-build-core,
# pybind11, scipy-openblas32, tqdm, matplotlib, pytest, hypothesis and (for the
# comparison) torch with CUDA; LSTM_EXT_CUDA_ARCHITECTURES narrows the build
# (e.g. 90 on an H100); a folder of wheels in WHEELS is installed first
# (offline machines).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-$PWD/gpu-check-out}
mkdir -p "$OUT"
status=0
step() { echo; echo "=== $* ==="; }

step "machine"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv || true
nvcc --version | tail -1
if [ -n "${WHEELS:-}" ]; then
  $PY -m pip install -q --no-index --no-deps "$WHEELS"/*.whl || exit 1
fi

step "build (LSTM_EXT_CUDA=ON)"
arch=()
[ -n "${LSTM_EXT_CUDA_ARCHITECTURES:-}" ] &&
  arch=(-C "cmake.define.LSTM_EXT_CUDA_ARCHITECTURES=$LSTM_EXT_CUDA_ARCHITECTURES")
t0=$(date +%s)
$PY -m pip install -q --no-build-isolation --no-deps -C cmake.define.LSTM_EXT_CUDA=ON "${arch[@]}" \
  -C build-dir=/tmp/lstm_ext_gpu_build . >"$OUT/build.log" 2>&1 || { tail -50 "$OUT/build.log"; exit 1; }
echo "built in $(( $(date +%s) - t0 )) s"
$PY -m lstm_ext info

# The files that use the GPU first, then the benchmark, then the rest of the
# suite: on a machine lent for minutes, what only it can check comes first.
# The logs name each test as it ends (-v), so a run cut short still says
# which failed; the console shows their tails.
gpu_tests=(tests/test_cuda.py tests/test_cuda_build.py tests/test_bf16.py tests/test_buffers.py
  tests/test_readme.py)
step "tests that use the GPU"
$PY -m pytest -v -rs --tb=short -p no:cacheprovider "${gpu_tests[@]}" 2>&1 |
  tee "$OUT/tests_gpu.log" | tail -40
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

step "benchmark"
$PY benchmarks/bench_gpu.py --json "$OUT/bench_gpu.json" ${BENCH_ARGS:-} 2>&1 | tee "$OUT/bench.log" || status=1

step "the rest of the suite"
ignore=()
for f in "${gpu_tests[@]}"; do ignore+=(--ignore "$f"); done
$PY -m pytest -v -rs --tb=short -p no:cacheprovider --durations=20 "${ignore[@]}" 2>&1 |
  tee "$OUT/tests.log" | tail -60
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
exit $status
