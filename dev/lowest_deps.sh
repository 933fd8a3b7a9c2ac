#!/usr/bin/env bash
# Checks the lowest versions pyproject.toml allows: installs them into a fresh
# venv, then runs the README's two commands there with every package held at
# them (PIP_CONSTRAINT also reaches pip's isolated build environment, so the
# build uses the lowest scikit-build-core, pybind11 and scipy-openblas32 too).
#
# The floors, and where this Python forces a later one:
#   numpy 1.23.2 (1.23's first with wheels for Python 3.11), tqdm 4.60.0,
#   scipy-openblas32 0.3.28.0.1 (0.3.28's first on PyPI; its CMake package sets
#   no target and names /usr/local: cmake/openblas_target.cmake),
#   matplotlib 3.6.0 (3.5 has no wheels for Python 3.11) with the contourpy and
#   pyparsing of its time (pyparsing 3.1 warns on matplotlib < 3.7's import,
#   an error under the tests' filterwarnings), pytest 7.0.0, hypothesis 6.70.0,
#   pybind11 2.13.0, scikit-build-core 0.10.0.
# Usage: dev/lowest_deps.sh   (needs python3 >= 3.10, a C++ compiler and PyPI)
set -euo pipefail
cd "$(dirname "$0")/.."
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
lowest=(numpy==1.23.2 tqdm==4.60.0 scipy-openblas32==0.3.28.0.1 matplotlib==3.6.0
  "contourpy<1.1" "pyparsing<3.1" pytest==7.0.0 hypothesis==6.70.0 pybind11==2.13.0
  scikit-build-core==0.10.0)
printf '%s\n' "${lowest[@]}" >"$T/constraints.txt"
export PIP_CONSTRAINT="$T/constraints.txt"

"${PYTHON:-python3}" -m venv "$T/venv"
# shellcheck source=/dev/null  # made just above
. "$T/venv/bin/activate"
pip install -q --only-binary :all: "${lowest[@]}"
git clone -q . "$T/src"
cd "$T/src"
# --- the README's Install section ---
pip install ".[test]"
pip list 2>/dev/null | grep -iE '^(numpy|tqdm|scipy-openblas32|matplotlib|pytest|hypothesis|pybind11) '
python -m pytest
