"""benchmarks/bench_lstm.py still runs and writes what its README says: its
smoke size, one round of one call a cell. No time is checked (speed lives in
benchmarks/, not in tests); only that every cell was measured, with the peers'
cells filled exactly where the peer is installed. In a process of its own, as
a user runs it."""

import importlib.util
import json
import subprocess
import sys
import types
from pathlib import Path

from lstm_ext import data

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_lstm.py"


def installed(name):
    return importlib.util.find_spec(name) is not None


def bench_module():
    spec = importlib.util.spec_from_file_location("bench_lstm", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_the_smoke_run_measures_every_cell(tmp_path):
    out = tmp_path / "run.json"
    done = subprocess.run(
        [sys.executable, str(BENCH), "--sizes", "small", "--repeat", "1", "--rounds", "1",
         "--json", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    head = next(line for line in done.stdout.splitlines() if line.startswith("case"))
    assert head.split()[5:9] == ["GEMM", "/GEMM", "np/GEMM", "torch"]
    result = json.loads(out.read_text())
    assert result["numpy_gemm_gflops"] > 0
    rows = result["rows"]
    assert [(r["case"], r["pass"]) for r in rows] == [
        ([100, 1, 128, 128], p) for p in ("fwd", "fwd+bwd")
    ]
    for r in rows:
        for key in (
            "ms",
            "gflops",
            "gemm_gflops",
            "gemm_ratio",
            "numpy_products_ms",
            "numpy_gemm_ratio",
        ):
            assert r[key] > 0, key
        assert (r["torch_ms"] is not None) == installed("torch")
        assert len(r["rounds"]) == 1
    has_ort = installed("onnxruntime") and installed("onnx")
    assert (rows[0]["ort_ms"] is not None) == has_ort and rows[1]["ort_ms"] is None
    # The smoke size measures the B=1 rows alone: of the targets, only those
    # against a peer that is installed.
    assert "targets (issue 5), at full precision" in done.stdout
    assert len(result["targets"]) == 11
    measured = [t["target"] for t in result["targets"] if t["met"] is not None]
    peers = [("fwd 100,1,128,128 / onnxruntime", has_ort),
             ("fwd+bwd 100,1,128,128 / torch", installed("torch"))]  # fmt: skip
    assert measured == [name for name, there in peers if there]


def test_the_targets_are_read_at_full_precision():
    # The table prints two decimals: 0.8496 shows as 0.85 but misses 0.85,
    # and 0.503 shows as 0.50 but misses 0.5.
    bench = bench_module()
    ratios = {(100, 64, 512, 512): (0.95, 0.92), (50, 128, 1024, 1024): (0.9492, 0.93),
              (100, 16, 256, 256): (0.85, 0.8496)}  # fmt: skip
    rows = [{"case": list(c), "pass": p, "gemm_ratio": r[k], "ort_ratio": None, "speedup": None}
            for c, r in ratios.items() for k, p in enumerate(("fwd", "fwd+bwd"))]  # fmt: skip
    rows += [{"case": [100, 1, 128, 128], "pass": "fwd", "ort_ratio": 0.503},
             {"case": [100, 1, 128, 128], "pass": "fwd+bwd", "speedup": 1 / 0.34}]  # fmt: skip
    stack = [{"speedup": 1.3}, {"speedup": 1 / 0.81}]
    got = bench.targets(rows, stack, {"ratio": 0.6}, {"step_us": 6.0, "lstmcell_us": None})
    assert [(t["target"], t["met"]) for t in got] == [
        ("fwd /GEMM 100,64,512,512", True),
        ("fwd /GEMM 50,128,1024,1024", False),
        ("fwd+bwd /GEMM 100,64,512,512", True),
        ("fwd+bwd /GEMM 50,128,1024,1024", True),
        ("fwd /GEMM 100,16,256,256", True),
        ("fwd+bwd /GEMM 100,16,256,256", False),
        ("fwd 100,1,128,128 / onnxruntime", False),
        ("fwd+bwd 100,1,128,128 / torch", True),
        ("step / LSTMCell", None),  # no torch, so no LSTMCell time
        ("stack fwd+bwd / torch", False),
        ("ragged / padded", True),
    ]


def test_the_products_alone_take_the_counted_flop():
    # time_numpy_products' calls run on arrays of exactly the case's shapes
    # (matmul's out= refuses any other), and as many as the FLOP count says:
    # forward 8*T*B*H*(I+H), backward twice that.
    bench = bench_module()
    import numpy as np

    T, B, I, H = 3, 2, 5, 4
    p = bench.problem(np.random.default_rng(0), T, B, I, H)
    flop = []
    real = np.matmul

    def counting(a, b, out):
        flop.append(2 * a.shape[0] * a.shape[1] * b.shape[1])
        return real(a, b, out=out)

    bench.np = types.SimpleNamespace(**{**vars(np), "matmul": counting})
    bench.median_ms = lambda fn, repeat: (flop.clear(), fn(), sum(flop))[2]
    fwd, fwd_bwd = bench.time_numpy_products(p, 1)
    assert (fwd, fwd_bwd) == (8 * T * B * H * (I + H), 3 * 8 * T * B * H * (I + H))


def test_the_training_step_is_the_command_line_s_and_the_same_in_torch():
    """time_train_step times lstm-ext train's text model (its TASKS defaults
    and the text's characters, 103 distinct on Python 3.11.7 and 104 on
    3.10.13, 3.12.1 and 3.13.0, whose pydoc topics differ): ours, and torch's where torch
    is installed, each timed call one whole step that runs."""
    bench = bench_module()
    calls = []
    bench.median_ms = lambda fn, repeat: (calls.append(fn), fn(), 1.0)[2]
    torch = bench.optional_import("torch")
    ours_ms, torch_ms, ratio, shape = bench.time_train_step(torch, 1, 2)
    assert shape == (64, 32, 48, 256, len(data.Vocab(data.pydoc_text())))
    assert ours_ms == 1.0 and (torch_ms, ratio) == ((1.0, 1.0) if torch else (None, None))
    assert len(calls) == (4 if torch else 1)  # rounds of ours and torch's in turns


def test_the_contention_run_measures_every_setting(tmp_path):
    """benchmarks/bench_contention.py: processes started together, each
    loop's calls counted and timed, the torch rows where torch is installed.
    No time is checked."""
    out = tmp_path / "contention.json"
    script = BENCH.parent / "bench_contention.py"
    done = subprocess.run(
        [sys.executable, str(script), "--case", "10,2,8,8", "--mode", "fwdbwd",
         "--seconds", "0.1", "--json", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = json.loads(out.read_text())["rows"]
    settings = [(r["library"], r["procs"], r["threads"]) for r in rows]
    want = [("lstm_ext", 1, "default"), ("lstm_ext", 2, "default"), ("lstm_ext", 2, 1)]
    if installed("torch"):
        want += [("torch", 1, "default"), ("torch", 2, "default")]
    assert settings == want
    for r in rows:
        assert len(r["results"]) == r["procs"] == len(r["over_alone"])
        for res in r["results"]:
            assert res["calls"] >= 1 and res["ms"] > 0 and res["mean_ms"] > 0
            assert res["backoffs"] >= 0
    assert rows[0]["over_alone"] == [1.0]


def test_the_sweep_compares_each_case_with_the_installed_peers(tmp_path):
    """benchmarks/bench_sweep.py: every case timed, each ratio present exactly
    where its peer is installed, and a case marked behind exactly where a
    ratio is above 1. Without either peer it stops with a message that says
    so. No time is checked."""
    out = tmp_path / "sweep.json"
    script = BENCH.parent / "bench_sweep.py"
    bad = subprocess.run([sys.executable, str(script), "--cases", "1,2,3"],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert bad.returncode == 2, bad.stderr
    assert "expected T,B,I,H, four positive integers, got '1,2,3'" in bad.stderr
    cases = ["2,1,3,4", "1,2,5,3"]
    done = subprocess.run(
        [sys.executable, str(script), "--cases", *cases, "--rounds", "1", "--json", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    has_torch = installed("torch")
    has_ort = installed("onnxruntime") and installed("onnx")
    if not (has_torch or has_ort):
        assert done.returncode != 0 and "nothing to compare with" in done.stderr
        return
    assert done.returncode == 0, done.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [",".join(map(str, r["case"])) for r in rows] == cases
    for r in rows:
        assert r["fwd_ms"] > 0 and r["fwd_bwd_ms"] > 0 and len(r["rounds"]) == 1
        assert (r["fwd_torch"] is not None) == (r["fwd_bwd_torch"] is not None) == has_torch
        assert (r["fwd_ort"] is not None) == has_ort
        ratios = [v for v in (r["fwd_torch"], r["fwd_ort"], r["fwd_bwd_torch"]) if v is not None]
        assert r["behind"] == (max(ratios) > 1)
