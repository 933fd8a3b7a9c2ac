"""batch_first, step, strides, byte order, defaults and the cache's promises.

Where two paths of the core compute the same numbers with the same GEMM
shapes, results are compared bit for bit; where the GEMM shapes differ
(stepping vs the whole sequence), to the float32/float64 tolerances of
test_core (OpenBLAS may block a [B,4H] product differently from a [T*B,4H]
one, so the last bits can differ).
"""

import numpy as np
import pytest

import lstm_ext
from helpers import assert_close, make_problem

RTOL = {np.float32: 1e-5, np.float64: 1e-12}
DTYPES = [np.float32, np.float64]


def fwd(p, **kw):
    return lstm_ext.forward(p["x"], p["W"], p["R"], p["b"], p["h0"], p["c0"], **kw)


@pytest.mark.parametrize("dtype", DTYPES)
def test_batch_first_is_the_transpose(rng, dtype):
    p = make_problem(rng, 6, 3, 4, 5, dtype)
    a = fwd(p)
    x_bt = np.ascontiguousarray(p["x"].swapaxes(0, 1))
    b = lstm_ext.forward(x_bt, p["W"], p["R"], p["b"], p["h0"], p["c0"], batch_first=True)
    assert b.y.shape == (3, 6, 5)
    np.testing.assert_array_equal(b.y, a.y.swapaxes(0, 1))
    np.testing.assert_array_equal(b.h, a.h)
    np.testing.assert_array_equal(b.c, a.c)
    ga = lstm_ext.backward(a.cache, p["dy"], p["dh"], p["dc"])
    gb = lstm_ext.backward(b.cache, p["dy"].swapaxes(0, 1), p["dh"], p["dc"])
    assert gb.dx.shape == (3, 6, 4)
    np.testing.assert_array_equal(gb.dx, ga.dx.swapaxes(0, 1))
    for name in ["dh0", "dc0", "dW", "dR", "db"]:
        np.testing.assert_array_equal(getattr(gb, name), getattr(ga, name), err_msg=name)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B", [1, 4])
def test_step_by_step_matches_forward(rng, dtype, B):
    p = make_problem(rng, 9, B, 3, 6, dtype)
    whole = fwd(p, training=False)
    h, c = p["h0"], p["c0"]
    for t in range(9):
        h, c = lstm_ext.step(p["x"][t], h, c, p["W"], p["R"], p["b"])
        assert h.dtype == dtype and h.shape == (B, 6)
        assert_close(f"h[{t}]", h, whole.y[t].astype(np.float64), RTOL[dtype])
    assert_close("c", c, whole.c.astype(np.float64), RTOL[dtype])


def test_step_without_bias_equals_zero_bias(rng):
    p = make_problem(rng, 1, 2, 3, 4)
    a = lstm_ext.step(p["x"][0], p["h0"], p["c0"], p["W"], p["R"])
    b = lstm_ext.step(p["x"][0], p["h0"], p["c0"], p["W"], p["R"], np.zeros(16))
    np.testing.assert_array_equal(a.h, b.h)
    np.testing.assert_array_equal(a.c, b.c)


def test_step_from_no_state_equals_zero_state(rng):
    p = make_problem(rng, 1, 2, 3, 4)
    z = np.zeros((2, 4))
    a = lstm_ext.step(p["x"][0], None, None, p["W"], p["R"], p["b"])
    b = lstm_ext.step(p["x"][0], z, z, p["W"], p["R"], p["b"])
    np.testing.assert_array_equal(a.h, b.h)
    np.testing.assert_array_equal(a.c, b.c)


def test_none_means_zeros(rng):
    p = make_problem(rng, 5, 2, 3, 4)
    z = np.zeros((2, 4))
    a = lstm_ext.forward(p["x"], p["W"], p["R"])
    b = lstm_ext.forward(p["x"], p["W"], p["R"], np.zeros(16), z, z)
    for u, v in zip(a[:3], b[:3], strict=True):
        np.testing.assert_array_equal(u, v)
    ga = lstm_ext.backward(a.cache, p["dy"])
    gb = lstm_ext.backward(b.cache, p["dy"], z, z)
    for u, v in zip(ga, gb, strict=True):
        np.testing.assert_array_equal(u, v)
    # dy=None: only the final state carries a gradient.
    gn = lstm_ext.backward(a.cache, None, p["dh"])
    g0 = lstm_ext.backward(a.cache, np.zeros_like(p["dy"]), p["dh"])
    for u, v in zip(gn, g0, strict=True):
        np.testing.assert_array_equal(u, v)


def strided_variants(a):
    """The same values in other memory layouts."""
    yield "fortran", np.asfortranarray(a)
    big = np.zeros(tuple(2 * s for s in a.shape), a.dtype)
    view = big[tuple(slice(None, None, 2) for _ in a.shape)]
    view[...] = a
    yield "every-other", view
    rev = np.ascontiguousarray(a[::-1])[::-1]
    yield "negative-stride", rev
    yield "byteswapped", a.astype(a.dtype.newbyteorder(">"))


@pytest.mark.parametrize("dtype", DTYPES)
def test_any_memory_layout_gives_the_same_answer(rng, dtype):
    p = make_problem(rng, 4, 3, 5, 2, dtype)
    want = fwd(p)
    want_g = lstm_ext.backward(want.cache, p["dy"], p["dh"], p["dc"])
    for name in ["x", "W", "R", "b", "h0", "c0", "dy", "dh", "dc"]:
        for kind, v in strided_variants(p[name]):
            q = dict(p, **{name: v})
            got = fwd(q)
            got_g = lstm_ext.backward(got.cache, q["dy"], q["dh"], q["dc"])
            for u, w in zip(
                list(got[:3]) + list(got_g), list(want[:3]) + list(want_g), strict=True
            ):
                np.testing.assert_array_equal(u, w, err_msg=f"{name} {kind}")


def test_lists_are_accepted_as_float64(rng):
    p = make_problem(rng, 2, 1, 2, 1)
    a = fwd(p)
    b = lstm_ext.forward(p["x"].tolist(), p["W"].tolist(), p["R"].tolist(), p["b"].tolist())
    c = lstm_ext.forward(p["x"], p["W"], p["R"], p["b"])
    assert b.y.dtype == np.float64
    np.testing.assert_array_equal(b.y, c.y)
    assert a.y.shape == b.y.shape


@pytest.mark.parametrize("dtype", DTYPES)
def test_cache_is_private_and_reusable(rng, dtype):
    p = make_problem(rng, 6, 2, 3, 4, dtype)
    out = fwd(p)
    g1 = lstm_ext.backward(out.cache, p["dy"], p["dh"], p["dc"])
    # Changing the caller's arrays after forward must not change backward...
    for name in ["x", "W", "R", "b", "h0", "c0"]:
        p[name][...] = 7
    out.y[...] = 7
    g2 = lstm_ext.backward(out.cache, p["dy"], p["dh"], p["dc"])
    # ...and one cache serves several backward calls with the same answer.
    for name, u, v in zip(lstm_ext.GradResult._fields, g1, g2, strict=True):
        np.testing.assert_array_equal(u, v, err_msg=name)
    c = out.cache
    assert (c.T, c.B, c.I, c.H, c.dtype, c.batch_first) == (6, 2, 3, 4, np.dtype(dtype), False)
    assert c.nbytes > 0 and "Cache" in repr(c)


@pytest.mark.parametrize("dtype", DTYPES)
def test_results_are_deterministic(rng, dtype):
    p = make_problem(rng, 30, 8, 16, 32, dtype)
    runs = []
    for _ in range(3):
        out = fwd(p)
        runs.append(list(out[:3]) + list(lstm_ext.backward(out.cache, p["dy"], p["dh"], p["dc"])))
    for run in runs[1:]:
        for u, v in zip(runs[0], run, strict=True):
            np.testing.assert_array_equal(u, v)


def test_inference_memory_does_not_grow_with_T():
    """training=False keeps O(B*H) beyond y: the chunked input projection."""
    from lstm_ext import _core

    assert _core.inference_chunk(2) >= 1
    rng = np.random.default_rng(0)
    # A sequence much longer than the chunk, checked against training mode.
    p = make_problem(rng, 5 * _core.inference_chunk(2) + 3, 2, 3, 4)
    a = fwd(p, training=False)
    b = fwd(p)
    assert_close("y", a.y, b.y, 1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
def test_nan_and_inf_propagate(rng, dtype):
    p = make_problem(rng, 4, 2, 3, 2, dtype)
    p["x"][1, 0, 0] = np.nan
    out = fwd(p)
    assert np.all(np.isfinite(out.y[0])) and np.all(np.isfinite(out.y[:, 1]))
    assert np.all(np.isnan(out.y[1:, 0]))  # batch row 0 from step 1 on
    p["x"][1, 0, 0] = np.inf  # saturates gates rather than producing NaN where W's sign allows
    out = fwd(p)
    assert np.all(np.isfinite(out.y[:, 1]))


def test_saturated_gates_stay_finite():
    """Pre-activations of ±1e4: the sigmoid's exp overflows to inf, 1/(1+inf) = 0."""
    x = np.array([[[1e4]], [[-1e4]]], np.float32)  # [T=2,B=1,I=1]
    W = np.ones((4, 1), np.float32)
    R = np.zeros((4, 1), np.float32)
    out = lstm_ext.forward(x, W, R)
    assert np.all(np.isfinite(out.y)) and np.all(np.isfinite(out.c))
    g = lstm_ext.backward(out.cache, np.ones_like(out.y))
    for u in g:
        assert np.all(np.isfinite(u))
