"""Every layer feature of the core against lstm_ext.reference, forward and
every gradient, float32 and float64, alone and combined.

Tolerances as in test_core (RTOL 1e-12 for float64, 1e-5 for float32, form
in helpers.assert_close): the features add O(1) terms per step (peepholes),
one more GEMM per step (projection) or only select and reorder rows
(lengths, reverse), so the rounding is of the same order as the plain layer's.
"""

import numpy as np
import pytest

import lstm_ext
from helpers import assert_close, make_problem
from lstm_ext import reference as ref

RTOL = {np.float32: 1e-5, np.float64: 1e-12}
DTYPES = [np.float32, np.float64]


def features_problem(rng, T, B, I, H, dtype, *, P=0, peephole=False, lengths=None, **options):
    """make_problem's arrays, reshaped for projection P, plus the options."""
    p = make_problem(rng, T, B, I, H, dtype)
    kw = dict(options)
    if P:
        O = P
        kw["W_hr"] = (rng.standard_normal((P, H)) / np.sqrt(H)).astype(dtype)
        p["R"] = (rng.standard_normal((4 * H, P)) / np.sqrt(P)).astype(dtype)
        p["h0"] = (0.5 * rng.standard_normal((B, P))).astype(dtype)
        p["dy"] = rng.standard_normal((T, B, O)).astype(dtype)
        p["dh"] = rng.standard_normal((B, O)).astype(dtype)
    if peephole:
        kw["peephole"] = (0.5 * rng.standard_normal(3 * H)).astype(dtype)
    if lengths is not None:
        kw["lengths"] = np.asarray(lengths)
    return p, kw


def run_both(p, kw, dtype, batch_first=False):
    """(ours, reference) as lists of named arrays: outputs then gradients."""
    args = [p[k] for k in ("x", "W", "R", "b", "h0", "c0")]
    grads_in = (p["dy"], p["dh"], p["dc"])
    ours_f = lstm_ext.forward(*args, batch_first=batch_first, return_cell_states=True, **kw)
    ours_b = lstm_ext.backward(ours_f.cache, *grads_in)
    q = [np.asarray(a, np.float64) for a in args]
    kw64 = {k: np.asarray(v, np.float64) if k in ("W_hr", "peephole") else v for k, v in kw.items()}
    ref_f = ref.forward(*q, batch_first=batch_first, return_cell_states=True, **kw64)
    ref_b = ref.backward(ref_f[3], *(np.asarray(a, np.float64) for a in grads_in))
    names = ["y", "h", "c", "cell_states", "dx", "dh0", "dc0", "dW", "dR", "db"]
    ours = [ours_f.y, ours_f.h, ours_f.c, ours_f.cell_states, *ours_b[:6]]
    want = [ref_f[0], ref_f[1], ref_f[2], ref_f[4], *ref_b[:6]]
    if "W_hr" in kw or "peephole" in kw:
        names += ["dW_hr", "dpeephole"]
        ours += [ours_b.dW_hr, ours_b.dpeephole]
        want += list(ref_b[6:8])
    return names, ours, want


def check(names, ours, want, dtype):
    for name, a, b in zip(names, ours, want, strict=True):
        if b is None:
            assert a is None, name
            continue
        assert a.dtype == dtype, name
        assert_close(name, a, b, RTOL[dtype])


CASES = {
    "reverse": dict(reverse=True),
    "lengths": dict(lengths=[5, 0, 7, 3, 7, 1]),
    "lengths-reverse": dict(lengths=[5, 0, 7, 3, 7, 1], reverse=True),
    "lengths-all-full": dict(lengths=[7] * 6),
    "lengths-all-zero": dict(lengths=[0] * 6),
    "projection": dict(P=3),
    "peephole": dict(peephole=True),
    "clip": dict(clip=0.7),
    "input_forget": dict(input_forget=True),
    "peephole-input_forget": dict(peephole=True, input_forget=True),
    "everything": dict(
        P=4, peephole=True, clip=1.2, input_forget=True, lengths=[2, 7, 0, 5, 6, 7], reverse=True
    ),
    "projection-lengths": dict(P=2, lengths=[3, 7, 7, 1, 0, 4]),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_feature_matches_reference(rng, case, dtype):
    p, kw = features_problem(rng, 7, 6, 5, 8, dtype, **CASES[case])
    check(*run_both(p, kw, dtype), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_features_with_batch_first(rng, dtype):
    p, kw = features_problem(rng, 6, 4, 3, 5, dtype, P=2, lengths=[6, 2, 0, 4], reverse=True)
    for k in ("x", "dy"):
        p[k] = np.ascontiguousarray(p[k].swapaxes(0, 1))
    check(*run_both(p, kw, dtype, batch_first=True), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_long_ragged_sequences(rng, dtype):
    lengths = rng.integers(0, 301, size=9)
    p, kw = features_problem(rng, 300, 9, 4, 6, dtype, lengths=lengths, reverse=True, P=3)
    check(*run_both(p, kw, dtype), dtype)


@pytest.mark.parametrize("case", ["projection", "peephole", "clip", "input_forget", "everything"])
def test_step_with_features_matches_forward(rng, case):
    opts = {k: v for k, v in CASES[case].items() if k not in ("lengths", "reverse")}
    p, kw = features_problem(rng, 6, 3, 4, 5, np.float64, **opts)
    whole = lstm_ext.forward(p["x"], p["W"], p["R"], p["b"], p["h0"], p["c0"], **kw)
    h, c = p["h0"], p["c0"]
    for t in range(6):
        h, c = lstm_ext.step(p["x"][t], h, c, p["W"], p["R"], p["b"], **kw)
        assert_close(f"h[{t}]", h, whole.y[t], RTOL[np.float64])
    assert_close("c", c, whole.c, RTOL[np.float64])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", ["plain", "peephole", "everything"])
@pytest.mark.parametrize("shape", [(1, 128, 128), (8, 9, 72), (3, 5, 67)], ids=str)
def test_step_split_over_threads_matches_forward(rng, case, shape, dtype):
    # B <= 8 and H >= 64 without projection: step computes two halves of the
    # units on two threads (cpp/src/lstm.cpp); H = 67 and 72 cut off the
    # vector width. "everything" has a projection, so it takes the other path.
    B, I, H = shape
    opts = {} if case == "plain" else CASES[case]
    opts = {k: v for k, v in opts.items() if k not in ("lengths", "reverse")}
    p, kw = features_problem(rng, 4, B, I, H, dtype, **opts)
    whole = lstm_ext.forward(p["x"], p["W"], p["R"], p["b"], p["h0"], p["c0"], **kw)
    h, c = p["h0"], p["c0"]
    for t in range(4):
        h, c = lstm_ext.step(p["x"][t], h, c, p["W"], p["R"], p["b"], **kw)
        assert_close(f"h[{t}]", h, whole.y[t], RTOL[dtype])
    assert_close("c", c, whole.c, RTOL[dtype])


def _at_offset(a, floats):
    """A copy of a whose data starts `floats` elements past a 64-byte line."""
    buf = np.empty(a.size + 32, a.dtype)
    start = (-buf.ctypes.data // a.itemsize) % (64 // a.itemsize) + floats
    out = buf[start : start + a.size].reshape(a.shape)
    out[...] = a
    assert out.ctypes.data % 64 == floats * a.itemsize
    return out


@pytest.mark.skipif(
    lstm_ext._core.packed_recurrent_kernel() != "avx512f",
    reason="step reads the weights in whole lines on the AVX-512F kernel only: "
    f"this CPU's is {lstm_ext._core.packed_recurrent_kernel()!r}",
)
@pytest.mark.parametrize("shape", [(128, 128), (33, 67), (16, 80)], ids=str)
def test_step_gives_the_same_bits_wherever_its_arrays_lie(rng, shape):
    # At one row step's products read W and R in whole 64-byte lines
    # (cpp/src/recurrent.cpp, row_product_unpacked): the bits must not depend
    # on where the arrays start.
    I, H = shape
    p = make_problem(rng, 1, 1, I, H, np.float32)
    args = [p["x"][0], p["h0"], p["c0"], p["W"], p["R"], p["b"]]
    want = lstm_ext.step(*[_at_offset(a, 0) for a in args])
    for off in range(1, 16):
        got = lstm_ext.step(*[_at_offset(a, off * (2 * k + 1) % 16) for k, a in enumerate(args)])
        for name, w, g in zip(("h", "c"), want, got, strict=True):
            assert w.tobytes() == g.tobytes(), f"{name} at offset {off}"


def test_inference_with_features_matches_training(rng):
    """training=False runs the same schedule in chunks; same answer."""
    p, kw = features_problem(
        rng, 40, 5, 3, 4, np.float64, P=2, peephole=True, lengths=[40, 17, 0, 33, 39], reverse=True
    )
    args = [p[k] for k in ("x", "W", "R", "b", "h0", "c0")]
    a = lstm_ext.forward(*args, return_cell_states=True, **kw)
    b = lstm_ext.forward(*args, return_cell_states=True, training=False, **kw)
    for name in ("y", "h", "c", "cell_states"):
        assert_close(name, getattr(b, name), getattr(a, name), RTOL[np.float64])


def test_padded_steps_are_exactly_zero_and_state_passes_through(rng):
    p, kw = features_problem(rng, 5, 3, 2, 4, np.float64, lengths=[5, 0, 2])
    out = lstm_ext.forward(*(p[k] for k in ("x", "W", "R", "b", "h0", "c0")), **kw)
    assert np.all(out.y[2:, 2] == 0) and np.all(out.y[:, 1] == 0)
    np.testing.assert_array_equal(out.h[1], p["h0"][1])
    np.testing.assert_array_equal(out.c[1], p["c0"][1])
    np.testing.assert_array_equal(out.h[2], out.y[1, 2])
    g = lstm_ext.backward(out.cache, p["dy"], p["dh"], p["dc"])
    np.testing.assert_array_equal(g.dh0[1], p["dh"][1])  # a length-0 row passes dh, dc
    np.testing.assert_array_equal(g.dc0[1], p["dc"][1])
    assert np.all(g.dx[2:, 2] == 0) and np.all(g.dx[:, 1] == 0)


def test_padding_values_do_not_matter(rng):
    p, kw = features_problem(rng, 6, 3, 2, 4, np.float64, lengths=[6, 3, 1])
    args = lambda q: [q[k] for k in ("x", "W", "R", "b", "h0", "c0")]  # noqa: E731
    a = lstm_ext.forward(*args(p), **kw)
    ga = lstm_ext.backward(a.cache, p["dy"], p["dh"], p["dc"])
    q = {k: v.copy() for k, v in p.items()}
    q["x"][3:, 1] = np.nan  # past the end of sequence 1
    q["dy"][1:, 2] = 1e30
    b = lstm_ext.forward(*args(q), **kw)
    gb = lstm_ext.backward(b.cache, q["dy"], q["dh"], q["dc"])
    for u, v in zip([*a[:3], *ga], [*b[:3], *gb], strict=True):
        np.testing.assert_array_equal(u, v)


@pytest.mark.parametrize(
    "kw, error, words",
    [
        (dict(lengths=[3, 9]), ValueError, ["lengths[1] = 9", "[0, 4]"]),
        (dict(lengths=[-1, 2]), ValueError, ["lengths[0] = -1"]),
        (dict(lengths=[1, 2, 3]), ValueError, ["lengths", "[B]", "(2,)", "(3,)"]),
        (dict(lengths=[[1, 2]]), ValueError, ["lengths", "(2,)", "(1, 2)"]),
        (dict(lengths=np.array([1.0, 2.0])), TypeError, ["lengths", "integer", "float64"]),
        (dict(lengths=np.array([True, False])), TypeError, ["lengths", "bool"]),
        (dict(clip=0.0), ValueError, ["clip", "> 0"]),
        (dict(clip=-1.0), ValueError, ["clip", "-1"]),
        (dict(clip=float("nan")), ValueError, ["clip", "nan"]),
        (dict(peephole=np.zeros(4)), ValueError, ["peephole", "[3H]", "(9,)", "(4,)"]),
        (dict(peephole=np.zeros(9, np.float32)), TypeError, ["peephole", "float64", "float32"]),
        (dict(W_hr=np.zeros((2, 3))), ValueError, ["R", "[4H,P]", "(12, 2)", "(12, 3)"]),
        (dict(W_hr=np.zeros((0, 3))), ValueError, ["W_hr", "P >= 1"]),
        (dict(W_hr=np.zeros(3)), ValueError, ["W_hr", "2 dimensions", "[P,H]"]),
    ],
    ids=lambda v: "-".join(v) if isinstance(v, dict) else None,
)
def test_bad_options(kw, error, words):
    T, B, I, H = 4, 2, 3, 3
    x = np.zeros((T, B, I))
    W, R = np.zeros((4 * H, I)), np.zeros((4 * H, H))
    with pytest.raises(error) as e:
        lstm_ext.forward(x, W, R, **kw)
    for w in words:
        assert w in str(e.value), f"{w!r} not in {str(e.value)!r}"


def test_projection_shapes_of_state_arguments():
    T, B, I, H, P = 3, 2, 4, 5, 2
    x, W, R = np.zeros((T, B, I)), np.zeros((4 * H, I)), np.zeros((4 * H, P))
    W_hr = np.zeros((P, H))
    with pytest.raises(ValueError, match=r"h0: expected shape \[B,P\] = \(2, 2\), got \(2, 5\)"):
        lstm_ext.forward(x, W, R, None, np.zeros((B, H)), W_hr=W_hr)
    out = lstm_ext.forward(x, W, R, None, np.zeros((B, P)), np.zeros((B, H)), W_hr=W_hr)
    assert out.y.shape == (T, B, P) and out.h.shape == (B, P) and out.c.shape == (B, H)
    with pytest.raises(ValueError, match=r"dy: expected shape \[T,B,P\]"):
        lstm_ext.backward(out.cache, np.zeros((T, B, H)))
    g = lstm_ext.backward(out.cache, np.zeros((T, B, P)))
    assert g.dW_hr.shape == (P, H) and g.dpeephole is None and g.dR.shape == (4 * H, P)
