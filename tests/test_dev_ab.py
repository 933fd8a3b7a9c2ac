"""dev/ab.py, the in-process A/B timer of two builds, still runs: here the
installed build against itself, every mode, a tiny case. In a process of its
own: this one has loaded _core as lstm_ext._core already, and pybind11
refuses a second registration of its types under another module name."""

import subprocess
import sys
from pathlib import Path

import lstm_ext

AB = Path(__file__).resolve().parents[1] / "dev" / "ab.py"


def run_ab(*args):
    site = str(Path(lstm_ext._core.__file__).resolve().parents[1])  # also in an editable install
    return subprocess.run(
        [sys.executable, str(AB), site, site, *args], capture_output=True, text=True, timeout=300
    )


def test_ab_compares_a_build_with_itself():
    done = run_ab("--case", "3,2,5,4", "--mode", "inf,train,fwdbwd,step", "--blocks", "4",
                  "--block-ms", "1")  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = [line.split() for line in done.stdout.splitlines() if "B/A" in line]
    assert [r[0] for r in rows] == ["inf:", "train:", "fwdbwd:", "step:"]
    for r in rows:
        # Each build's median time and the median of the blocks' ratios, within
        # its quartiles. Not a bound on the ratio: 4 blocks of 1 ms on a shared
        # machine gave an A/A ratio of 11.9 once (a block hit a stall).
        a_us, b_us = float(r[r.index("A") + 1]), float(r[r.index("B") + 1])
        ratio = float(r[r.index("B/A") + 1])
        q1, q3 = (float(q) for q in r[r.index("B/A") + 3].rstrip(")").split("-"))
        assert a_us > 0 and b_us > 0 and ratio > 0
        assert q1 <= ratio <= q3


def test_ab_spaces_calls_out():
    done = run_ab("--case", "1,1,5,4", "--mode", "step", "--blocks", "4", "--block-ms", "1",
                  "--gap-us", "200")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "200 us between calls" in done.stdout and "step:" in done.stdout


def test_ab_refuses_an_unknown_mode():
    done = run_ab("--mode", "backward")
    assert done.returncode == 2 and "--mode" in done.stderr
