"""The compiled core against lstm_ext.reference: every output, every gradient.

The reference runs in float64 on the same inputs (float32 inputs are exactly
representable in float64), so the comparison measures the core's own rounding.

Tolerances (see assert_close for the form of the bound):
- float64, RTOL64 = 1e-12. Worst seen over the shapes below, T = 1000
  included: 5e-15 (dW at T = 1000, a sum of 2000 rank-1 terms). The core and
  the reference differ in summation order and in e^x and tanh (the core's
  own, within 2 DBL_EPSILON relative: dev/perf-notes.md, 49), so 1e-12
  leaves a factor of about 200 and still fails on any wrong term, which is
  off by O(1).
- float32, RTOL32 = 1e-5. The unit roundoff is 6e-8; a K-term dot product
  typically errs by √K·u and the recurrence is contractive (f < 1). Worst
  seen: 9e-7 (db, a sum over T·B = 400 rows of [50,16,64,64]); 1e-5 leaves a
  factor of 10.
"""

import numpy as np
import pytest

import lstm_ext
from helpers import assert_close, make_problem
from lstm_ext import reference as ref

RTOL = {np.float32: 1e-5, np.float64: 1e-12}
OUT = ["y", "h", "c"]
GRAD = ["dx", "dh0", "dc0", "dW", "dR", "db"]
SHAPES = [  # (T, B, I, H)
    (1, 1, 1, 1),
    (1, 3, 4, 5),
    (7, 1, 3, 2),
    (5, 4, 8, 8),
    (13, 3, 5, 17),  # odd sizes, I != H
    (3, 2, 1, 33),
    (17, 2, 9, 4),  # T not a multiple of the inference chunk
    (40, 5, 6, 7),
    (1000, 2, 3, 4),  # long sequence
    (50, 16, 64, 64),
]
EMPTY = [(0, 3, 4, 5), (4, 0, 3, 5), (4, 2, 0, 3), (4, 2, 3, 0)]  # T, B, I or H = 0


def run_reference(p):
    q = {k: v.astype(np.float64) for k, v in p.items()}
    y, h, c, cache = ref.forward(q["x"], q["W"], q["R"], q["b"], q["h0"], q["c0"])
    return (y, h, c), ref.backward(cache, q["dy"], q["dh"], q["dc"])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES + EMPTY, ids=str)
def test_forward_and_backward_match_reference(rng, shape, dtype):
    p = make_problem(rng, *shape, dtype=dtype)
    outs, grads = run_reference(p)
    fwd = lstm_ext.forward(p["x"], p["W"], p["R"], p["b"], p["h0"], p["c0"])
    for name, ours, want in zip(OUT, fwd[:3], outs, strict=True):
        assert ours.dtype == dtype
        assert_close(name, ours, want, RTOL[dtype])
    bwd = lstm_ext.backward(fwd.cache, p["dy"], p["dh"], p["dc"])
    for name, ours, want in zip(GRAD, bwd, grads, strict=True):
        assert ours.dtype == dtype
        assert_close(name, ours, want, RTOL[dtype])

    inf = lstm_ext.forward(p["x"], p["W"], p["R"], p["b"], p["h0"], p["c0"], training=False)
    assert inf.cache is None
    for name, ours, want in zip(OUT, inf[:3], outs, strict=True):
        assert_close("inference " + name, ours, want, RTOL[dtype])
