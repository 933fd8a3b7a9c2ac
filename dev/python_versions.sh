#!/usr/bin/env bash
# The README's two commands under other Pythons than CI's: for each
# interpreter, a fresh clone of HEAD, a fresh venv made by that interpreter,
# `pip install ".[test]"` and `python -m pytest`. One line a Python: its
# version, the install's status, pytest's summary and the seconds taken; the
# logs stay in $LOGS (default /tmp/lstm_ext_python_versions).
#
# Usage: dev/python_versions.sh [PYTHON ...]
#   With no argument: each python3.X on PATH and under pyenv's versions
#   ($PYENV_ROOT, default ~/.pyenv) that pyproject.toml admits (3.10 on), one
#   per version string. Exit status 1 if any install or suite failed.
# A run takes about 8 minutes a Python on the 2-core development VM.
set -uo pipefail
cd "$(dirname "$0")/.."
LOGS=${LOGS:-/tmp/lstm_ext_python_versions}
mkdir -p "$LOGS"
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT

pythons=("$@")
if [ ${#pythons[@]} -eq 0 ]; then
  for p in $(compgen -c python3. | grep -E '^python3\.[0-9]+$' | sort -u) \
    "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.*/bin/python3; do
    command -v "$p" >/dev/null 2>&1 && pythons+=("$(command -v "$p")")
  done
fi

declare -A seen
failed=0
for py in "${pythons[@]}"; do
  version=$("$py" -c 'import sys; print(sys.version.split()[0])' 2>/dev/null) || {
    echo "$py: not a Python"
    failed=1
    continue
  }
  "$py" -c 'import sys; sys.exit(sys.version_info < (3, 10))' || continue
  [ -n "${seen[$version]:-}" ] && continue
  seen[$version]=1
  start=$(date +%s)
  src="$T/$version"
  git clone -q . "$src"
  (
    cd "$src" || exit 1
    "$py" -m venv .v && . .v/bin/activate || exit 1
    pip install -q ".[test]" >"$LOGS/$version-install.txt" 2>&1 || exit 2
    python -m pytest -q -p no:cacheprovider >"$LOGS/$version-pytest.txt" 2>&1 || exit 3
  )
  status=$?
  case $status in
    0) result="installed; $(tail -n 1 "$LOGS/$version-pytest.txt")" ;;
    2) result="install failed ($LOGS/$version-install.txt)" ;;
    3) result="tests failed: $(tail -n 1 "$LOGS/$version-pytest.txt")" ;;
    *) result="no venv" ;;
  esac
  [ "$status" -ne 0 ] && failed=1
  echo "Python $version ($py): $result; $(($(date +%s) - start)) s"
  rm -rf "$src"
done
exit "$failed"
