#!/usr/bin/env bash
# Coverage-guided fuzzing of the two loaders (issue 8), outside the CMake
# build, for a bounded time:
#
#   dev/fuzz.sh model [seconds]        libFuzzer + ASan + UBSan over the C++ reader,
#                                      lstm_ext::Model::from_bytes (tests/fuzz/fuzz_model.cpp)
#   dev/fuzz.sh checkpoint [seconds]   atheris over lstm_ext.checkpoint.load and
#                                      lstm_ext.export.load_model (tests/fuzz/fuzz_checkpoint.py)
#   dev/fuzz.sh merge model|checkpoint minimise what the runs found into the kept corpus,
#                                      tests/fuzz/corpus/<target> (adds only new coverage)
#   dev/fuzz.sh seeds                  (re)write the valid seeds, tests/fuzz/corpus/*/seed-*
#
# Default 60 s a run, one job, niced (FUZZ_NICE, 15). Runs start from the
# kept corpus (the seeds and what earlier runs found) and write what they
# find under FUZZ_WORK (/tmp/lstm_ext_fuzz/<target>: corpus/, crashes/,
# log); a crash stops the run with its input in crashes/. Copy a crash into
# tests/fuzz/corpus/<target>/ once fixed: tests/test_fuzz_corpus.py replays
# every kept file through all three readers.
#
# Needs: PYTHON (default python3) with numpy, scipy-openblas32 and lstm_ext
# installed, and atheris for the checkpoint target; CXX (default clang++)
# with libFuzzer (Debian: apt-get install clang libclang-rt-dev).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-python3}
CXX=${CXX:-clang++}
WORK=${FUZZ_WORK:-/tmp/lstm_ext_fuzz}
NICE=${FUZZ_NICE:-15}
CORPUS=$ROOT/tests/fuzz/corpus
export OPENBLAS_NUM_THREADS=1 LSTM_EXT_NUM_THREADS=${LSTM_EXT_NUM_THREADS:-1}

usage() { sed -n '2,22p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 2; }

seeds() { "$PYTHON" "$ROOT/tests/fuzz/make_seeds.py" "$CORPUS"; }

build_model() {  # the fuzz target, from the sources the C++ reader needs
  local inc lib
  inc=$("$PYTHON" -c 'import scipy_openblas32 as s; print(s.get_include_dir())')
  lib=$("$PYTHON" -c 'import scipy_openblas32 as s; print(s.get_lib_dir())')
  mkdir -p "$WORK/model"
  # -Wno-pass-failed: at -O1 Clang does not vectorize, and says so of every
  # loop that lstm.cpp asks it to (LSTM_EXT_IVDEP), 320 lines a build.
  "$CXX" -std=c++17 -O1 -g -fno-omit-frame-pointer -ffp-contract=off -Wno-pass-failed \
    -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
    -DLSTM_EXT_BLAS_PREFIX=scipy_ -I"$ROOT/cpp/include" -I"$ROOT/cpp/src" -I"$inc" \
    "$ROOT/tests/fuzz/fuzz_model.cpp" "$ROOT"/cpp/src/*.cpp \
    -L"$lib" -lscipy_openblas -Wl,-rpath,"$lib" -pthread -o "$WORK/model/fuzz_model"
}

run() {  # target seconds
  local target=$1 secs=${2:-60} dir=$WORK/$1
  mkdir -p "$dir/corpus" "$dir/crashes"
  local flags=(-max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
               -artifact_prefix="$dir/crashes/")
  # the kept corpus is read, never written: new inputs go to $dir/corpus
  if [[ $target == model ]]; then
    build_model
    set -- "$dir/fuzz_model" "${flags[@]}" -max_len=4096 "$dir/corpus" "$CORPUS/model"
  else
    set -- "$PYTHON" "$ROOT/tests/fuzz/fuzz_checkpoint.py" "${flags[@]}" -max_len=16384 \
      -dict="$ROOT/tests/fuzz/checkpoint.dict" \
      "$dir/corpus" "$CORPUS/checkpoint" "$CORPUS/model"
  fi
  # the Python harness rewrites one temporary file per input: keep it in memory
  TMPDIR=$(mktemp -d /dev/shm/lstm_ext_fuzz.XXXXXX 2>/dev/null || mktemp -d)
  export TMPDIR
  trap 'rm -rf "$TMPDIR"' EXIT
  echo "+ $*"
  local rc
  set +e
  nice -n "$NICE" "$@" 2>&1 | tee "$dir/log" | grep -v -e '^#[0-9]*.*\(NEW\|REDUCE\|pulse\)' -e '# Uses: [0-9]*$' -e '^INFO: Instrumenting'
  rc=${PIPESTATUS[0]}
  set -e
  echo "log: $dir/log; new inputs: $dir/corpus ($(ls "$dir/corpus" | wc -l)); crashes: $(ls "$dir/crashes" | wc -l) in $dir/crashes"
  return "$rc"
}

merge() {  # target: add what $WORK/target/corpus covers beyond the kept corpus
  # by edges only (-use_counters=0: not hit counts), which keeps it to tens of files
  local target=$1 dir=$WORK/$1
  if [[ $target == model ]]; then
    build_model
    nice -n "$NICE" "$dir/fuzz_model" -merge=1 -use_counters=0 "$CORPUS/model" "$dir/corpus"
  else
    export FUZZ_SELF=$dir/fuzz_checkpoint  # what libFuzzer reruns for the merge's steps
    printf '#!/bin/sh\nexec "%s" "%s" "$@"\n' "$PYTHON" "$ROOT/tests/fuzz/fuzz_checkpoint.py" >"$FUZZ_SELF"
    chmod +x "$FUZZ_SELF"
    nice -n "$NICE" "$FUZZ_SELF" -merge=1 -use_counters=0 "$CORPUS/checkpoint" "$dir/corpus"
    # kept as the readers saw them (CRCs recomputed): the replay reads them as they are
    "$PYTHON" "$ROOT/tests/fuzz/fuzz_checkpoint.py" --repair "$CORPUS"/checkpoint/*
  fi
}

case ${1:-} in
  model | checkpoint)
    [[ -n $(ls "$CORPUS/$1" 2>/dev/null) ]] || seeds
    run "$1" "${2:-60}" ;;
  merge) [[ ${2:-} == model || ${2:-} == checkpoint ]] || usage; merge "$2" ;;
  seeds) seeds ;;
  *) usage ;;
esac
