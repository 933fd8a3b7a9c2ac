#!/usr/bin/env bash
# valgrind memcheck of the C++ side (issue 8): the embedding example
# (examples/cpp, lstm_stream) on models exported from Python, and the C++
# unit tests (tests/cpp).
#
#   dev/valgrind.sh
#
# 1. builds the core and its unit tests plainly at -O1 -g (no sanitizers),
#    installs the CMake package to a prefix and builds examples/cpp against
#    it, as the README does (VG_WORK, default /tmp/lstm_ext_valgrind);
# 2. exports small models with PYTHON (default python3, with lstm_ext
#    installed): one layer in float32, two layers with a projection in
#    float64, a bidirectional one; and 40 steps of input;
# 3. runs under memcheck, with --leak-check=full and errors for definite and
#    indirect leaks only:
#      lstm_stream on the two streaming models    (--error-exitcode=1)
#      lstm_stream refusing: the bidirectional model, a truncated file, an
#      input ending inside a step                 (exit 1 expected, so
#                                                  --error-exitcode=99 there)
#      lstm_ext_tests, every test                 (--error-exitcode=1)
#    and prints each run's ERROR SUMMARY and leak summary.
#
# "Possibly lost" and "still reachable" blocks would be shown but not
# counted as errors: worker threads alive at exit (OpenBLAS's pool, made when
# it loads) hold their stacks and thread-local blocks, which memcheck calls
# possibly lost, through no fault of the program. None appear today: OpenBLAS
# joins its threads and frees its buffers at exit, and lstm_ext's pool
# (parallel.cpp, a static) joins its threads when destroyed, so every run
# ends with "All heap blocks were freed". valgrind.supp suppresses nothing.
#
# valgrind (3.19) has no AVX-512: under it the CPU reports none, so the
# packed AVX-512 recurrent kernel (recurrent.cpp) and the AVX-512 clones of
# the fused passes are not run here; the AVX2 clones and the BLAS path are.
# ASan runs the AVX-512 code (dev/sanitize.sh, and ctest in CI), checking
# its plain vector loads and stores; GCC does not instrument masked ones.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-python3}
WORK=${VG_WORK:-/tmp/lstm_ext_valgrind}
NICE=${VG_NICE:-10}
start=$SECONDS
say() { printf '\n=== %s\n' "$*"; }
mkdir -p "$WORK"

say "1. build at -O1 -g"
openblas_dir=$("$PYTHON" -c 'import scipy_openblas32 as s, os
print(os.path.join(s.get_lib_dir(), "cmake", "openblas"))')
flags=(-DCMAKE_BUILD_TYPE=Debug "-DCMAKE_CXX_FLAGS_DEBUG=-O1 -g" -DOpenBLAS_DIR="$openblas_dir")
nice -n "$NICE" cmake -S "$ROOT" -B "$WORK/build" -DLSTM_EXT_PYTHON=OFF -DLSTM_EXT_CUDA=OFF \
  -DLSTM_EXT_TESTS=ON -DLSTM_EXT_SANITIZE= "${flags[@]}" >/dev/null
nice -n "$NICE" cmake --build "$WORK/build" -j2 >/dev/null
cmake --install "$WORK/build" --prefix "$WORK/prefix" >/dev/null
nice -n "$NICE" cmake -S "$ROOT/examples/cpp" -B "$WORK/example" \
  -DCMAKE_PREFIX_PATH="$WORK/prefix" "${flags[@]}" >/dev/null
nice -n "$NICE" cmake --build "$WORK/example" >/dev/null
stream=$WORK/example/lstm_stream
echo "built $stream and $WORK/build/lstm_ext_tests"

say "2. models from Python"
"$PYTHON" - "$WORK" <<'EOF'
import sys
from pathlib import Path

import numpy as np

from lstm_ext import export, nn

out = Path(sys.argv[1])
models = {
    "one-layer": dict(input_size=3, hidden_size=8),
    "two-layers-proj-f64": dict(input_size=3, hidden_size=6, num_layers=2, proj_size=4,
                                dtype=np.float64),
    "bidirectional": dict(input_size=3, hidden_size=4, bidirectional=True),
}
for name, cfg in models.items():
    export.save_model(nn.LSTM(**cfg, seed=1), out / f"{name}.lstmx")
data = (out / "one-layer.lstmx").read_bytes()
(out / "truncated.lstmx").write_bytes(data[: len(data) // 2])
x = np.random.default_rng(2).standard_normal((40, 3))
(out / "input.txt").write_text("\n".join(" ".join(f"{v:.6g}" for v in r) for r in x) + "\n")
(out / "partial.txt").write_text("1 2 3\n4 5\n")
print("models:", ", ".join(models), "+ truncated; input: 40 steps of 3")
EOF

say "3. memcheck"
vg=(valgrind --tool=memcheck --leak-check=full "--errors-for-leak-kinds=definite,indirect"
    "--show-leak-kinds=definite,indirect,possible" --suppressions="$ROOT/dev/valgrind.supp"
    --num-callers=30)
failed=0
# run NAME EXPECTED_EXIT ERROR_EXIT INPUT COMMAND...: its summary lines; a
# memcheck error, or an exit status other than EXPECTED_EXIT, fails it.
run() {
  local name=$1 want=$2 error_exit=$3 input=$4 rc=0
  shift 4
  nice -n "$NICE" "${vg[@]}" --error-exitcode="$error_exit" --log-file="$WORK/$name.vg" "$@" \
    <"$input" >"$WORK/$name.out" 2>"$WORK/$name.err" || rc=$?
  local verdict=ok
  [[ $rc -eq $want ]] || { verdict="FAILED (exit $rc, expected $want)"; failed=1; }
  printf '%-28s %s\n' "$name" "$verdict"
  grep -E 'ERROR SUMMARY|All heap blocks|definitely lost|indirectly lost|possibly lost|still reachable' \
    "$WORK/$name.vg" | sed 's/^==[0-9]*== */    /'
}
run stream-one-layer 0 1 "$WORK/input.txt" "$stream" "$WORK/one-layer.lstmx"
run stream-two-layers-proj-f64 0 1 "$WORK/input.txt" "$stream" "$WORK/two-layers-proj-f64.lstmx"
[[ $(wc -l <"$WORK/stream-one-layer.out") -eq 40 ]] || { echo "expected 40 lines"; failed=1; }
run refuse-bidirectional 1 99 "$WORK/input.txt" "$stream" "$WORK/bidirectional.lstmx"
run refuse-truncated 1 99 "$WORK/input.txt" "$stream" "$WORK/truncated.lstmx"
run refuse-partial-step 1 99 "$WORK/partial.txt" "$stream" "$WORK/one-layer.lstmx"
run lstm_ext_tests 0 1 /dev/null "$WORK/build/lstm_ext_tests"
grep -E '^\[  (PASSED|FAILED) ' "$WORK/lstm_ext_tests.out" | sed 's/^/    /'

say "4. summary"
echo "logs: $WORK/*.vg; time: $((SECONDS - start)) s"
if [[ $failed -ne 0 ]]; then
  echo "memcheck: FAILED"
  exit 1
fi
echo "memcheck: no invalid reads or writes, no uses of uninitialised values, no definite or indirect leaks"
