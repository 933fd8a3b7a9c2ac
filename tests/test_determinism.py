"""Bit-identical results from run to run and at any thread count.

Each setting runs in its own process (lstm_ext reads LSTM_EXT_NUM_THREADS
as it loads; its OpenBLAS, loaded first here as by a user's import of
scipy_openblas32, OPENBLAS_NUM_THREADS, which lstm_ext's own import would
set to 1 for that load), computes forward and
backward for several shapes, features and both dtypes, and prints a hash of
every byte of every result (and of a few streaming steps); the hashes must
agree. The shapes include the
ones where OpenBLAS's own threading changes the last bits (a skinny product
with a long inner dimension, (1,3,2800,175) and (40,3,300,700)): lstm_ext
runs the BLAS single-threaded and cuts the work by shape alone ((3,1,520,520):
dW and dR side by side, each in two blocks).
"""

import os
import subprocess
import sys

import pytest

SCRIPT = r"""
import hashlib
import numpy as np
import scipy_openblas32  # lstm_ext's OpenBLAS, on OPENBLAS_NUM_THREADS threads
import lstm_ext
from lstm_ext.nn import LSTM

h = hashlib.sha256()
rng = np.random.default_rng(0)
for dt in (np.float32, np.float64):
    for T, B, I, H in [(50, 1, 64, 64), (20, 16, 96, 128), (7, 33, 5, 200),
                       (1, 3, 2800, 175), (40, 3, 300, 700), (3, 1, 520, 520),
                       (6, 70, 8, 72)]:
        x = rng.standard_normal((T, B, I)).astype(dt)
        W = (0.1 * rng.standard_normal((4 * H, I))).astype(dt)
        R = (0.1 * rng.standard_normal((4 * H, H))).astype(dt)
        lengths = rng.integers(0, T + 1, B)
        for kw in ({}, {"lengths": lengths, "reverse": True}):
            out = lstm_ext.forward(x, W, R, **kw)
            g = lstm_ext.backward(out.cache, np.ones_like(out.y))
            for a in (*out[:3], *g):
                h.update(np.ascontiguousarray(a).tobytes())
    # step: split over two threads at B <= 8, H >= 64 (cpp/src/lstm.cpp), not below
    for B, I, H in [(1, 128, 128), (8, 40, 72), (9, 40, 72), (2, 16, 40)]:
        W = (0.1 * rng.standard_normal((4 * H, I))).astype(dt)
        R = (0.1 * rng.standard_normal((4 * H, H))).astype(dt)
        hs, cs = rng.standard_normal((2, B, H)).astype(dt)
        for t in range(3):
            hs, cs = lstm_ext.step(rng.standard_normal((B, I)).astype(dt), hs, cs, W, R)
            h.update(hs.tobytes())
            h.update(cs.tobytes())
    lstm = LSTM(32, 48, 2, bidirectional=True, proj_size=16, dtype=dt, seed=1)
    x = rng.standard_normal((30, 8, 32)).astype(dt)
    y, (hn, cn) = lstm(x)
    dx = lstm.backward(np.ones_like(y))
    for a in (y, hn, cn, dx, *lstm.grads.values()):
        h.update(np.ascontiguousarray(a).tobytes())
print(h.hexdigest())
"""


def digest(threads, blas_threads):
    env = dict(
        os.environ, LSTM_EXT_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(blas_threads)
    )
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_same_bits_at_any_thread_count():
    digests = {(n, b): digest(n, b) for n in (1, 2, 3) for b in (1, 2)}
    digests["again"] = digest(2, 2)
    assert len(set(digests.values())) == 1, digests


def test_set_num_threads():
    import lstm_ext

    before = lstm_ext.get_num_threads()
    try:
        lstm_ext.set_num_threads(3)
        assert lstm_ext.get_num_threads() == 3
        with pytest.raises(ValueError, match=r"must be in \[1, 1024\], got 0"):
            lstm_ext.set_num_threads(0)
    finally:
        lstm_ext.set_num_threads(before)
