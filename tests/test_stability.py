"""Numerical stability: saturated gates, long sequences, NaN and Inf.

What the README and lstm_ext's docstring promise, checked in the compiled
core and in lstm_ext.reference, forward and backward, float32 and float64:

- pre-activations of ±1e4 stay finite and raise no floating-point warning
  (pytest's filterwarnings=error turns a RuntimeWarning into a failure; the
  reference also runs under np.errstate(over, divide, invalid="raise"));
- float32 sequences of 10,000 steps stay finite, also while the cell state
  climbs to about 10,000;
- NaN and Inf propagate as IEEE arithmetic does, unchecked and without an
  exception or a warning: a NaN in x[t] of sequence b reaches every later
  step of b and nothing else, and on every entry the core has NaN, +Inf or
  -Inf exactly where the reference has it (and agrees on the finite rest).

Tolerances: test_core's (RTOL 1e-5 float32, 1e-12 float64, the form of
helpers.assert_close) where the gates saturate exactly at 0 or 1 or the
values are O(1); where they are not compared (big random weights, the
integrating cell) the test checks bounds that follow from the math instead:
|h| <= 1 since h = o·tanh(c), and |c_t| <= |c_0| + t since |f|, |i·g| <= 1.
"""

import numpy as np
import pytest

import lstm_ext
from helpers import assert_close
from lstm_ext import reference as ref

RTOL = {np.float32: 1e-5, np.float64: 1e-12}
DTYPES = [np.float32, np.float64]
OUT = ["y", "h", "c", "cell_states"]
GRAD = ["dx", "dh0", "dc0", "dW", "dR", "db"]


def both(args, grads, **opts):
    """(ours, reference) as dicts of outputs and gradients. The reference runs
    in float64 on the same values, raising on any overflow, division by zero
    or invalid operation (an underflow to 0 is fine: that is saturation)."""
    out = lstm_ext.forward(*args, return_cell_states=True, **opts)
    g = lstm_ext.backward(out.cache, *grads)
    ours = dict(zip(OUT, (out.y, out.h, out.c, out.cell_states), strict=True))
    ours.update(zip(GRAD, g[:6], strict=True))
    as64 = [None if a is None else np.asarray(a, np.float64) for a in (*args, *grads)]
    with np.errstate(over="raise", divide="raise", invalid="raise"):
        r = ref.forward(*as64[:6], return_cell_states=True, **opts)
        rg = ref.backward(r[3], *as64[6:])
    want = dict(zip(OUT, (r[0], r[1], r[2], r[4]), strict=True))
    want.update(zip(GRAD, rg[:6], strict=True))
    return ours, want


# ---- saturation: pre-activations of ±1e4 ---------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("features", ["plain", "peephole-projection-reverse"])
def test_saturated_gates_match_the_reference(rng, dtype, features):
    """One input feature of ±1 times weights of ±1e4: every gate pre-activation
    is ±1e4 plus an O(1) recurrent part, so every gate is 0 or 1 to the last
    bit (σ(1e4) rounds to 1; σ(-1e4) to 0, or to 6e-39 where the float32
    core clamps the exponent) and the two sides agree to rounding."""
    T, B, I, H, P = 20, 3, 1, 4, 2
    sign = lambda *shape: rng.choice([-1.0, 1.0], shape)  # noqa: E731
    opts = {}
    if features != "plain":
        opts = dict(
            W_hr=(0.5 * rng.standard_normal((P, H))).astype(dtype),
            peephole=(0.5 * rng.standard_normal(3 * H)).astype(dtype),
            reverse=True,
        )
    O = P if "W_hr" in opts else H
    args = [
        a.astype(dtype)
        for a in (
            sign(T, B, I),
            1e4 * sign(4 * H, I),
            0.3 * rng.standard_normal((4 * H, O)),
            rng.standard_normal(4 * H),
            rng.standard_normal((B, O)),
            rng.standard_normal((B, H)),
        )
    ]
    grads = [rng.standard_normal(s).astype(dtype) for s in ((T, B, O), (B, O), (B, H))]
    ours, want = both(args, grads, **opts)
    for name in ours:
        assert ours[name].dtype == dtype, name
        assert np.all(np.isfinite(ours[name])), name
        assert np.all(np.isfinite(want[name])), name
        assert_close(name, ours[name], want[name], RTOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("big", ["weights", "inputs", "state"])
def test_huge_pre_activations_stay_finite(rng, dtype, big):
    """Random pre-activations of order 1e4 (weights or inputs scaled up), some
    saturated, some not, or a cell state of order 1e4: no warning, no NaN, no
    Inf, and the bounds of the math hold, in the core and in the reference."""
    T, B, I, H = 12, 4, 5, 6
    s = dict(weights=1.0, inputs=1.0, state=1.0)
    s[big] = 1e4
    x = s["inputs"] * rng.standard_normal((T, B, I))
    W = s["weights"] * rng.standard_normal((4 * H, I))
    R = s["weights"] * rng.standard_normal((4 * H, H))
    b = s["weights"] * rng.standard_normal(4 * H)
    h0 = np.tanh(rng.standard_normal((B, H)))  # an h is within [-1, 1]
    c0 = s["state"] * rng.standard_normal((B, H))
    args = [a.astype(dtype) for a in (x, W, R, b, h0, c0)]
    grads = [rng.standard_normal(shape).astype(dtype) for shape in ((T, B, H), (B, H), (B, H))]
    for side in both(args, grads, clip=None):
        for name, a in side.items():
            assert np.all(np.isfinite(a)), name
        assert np.all(np.abs(side["y"]) <= 1) and np.all(np.abs(side["h"]) <= 1)
        bound = np.abs(c0).astype(np.float64) + np.arange(1, T + 1)[:, None, None]  # [T,B,H]
        assert np.all(np.abs(side["cell_states"]) <= bound * (1 + 1e-6))


# ---- long sequences --------------------------------------------------------------

LONG = 10_000


def test_ten_thousand_float32_steps_match_the_reference(rng):
    """Ordinary weights: the recurrence is contractive, so rounding does not
    pile up over the steps; test_core's float32 tolerance holds at T = 10,000
    as it does at T = 1,000 there."""
    T, B, I, H = LONG, 2, 3, 4
    x, W, R, b = (
        a.astype(np.float32)
        for a in (
            rng.standard_normal((T, B, I)),
            rng.standard_normal((4 * H, I)) / 2,
            rng.standard_normal((4 * H, H)) / 2,
            rng.standard_normal(4 * H) / 2,
        )
    )
    args = [x, W, R, b, None, None]
    grads = [rng.standard_normal((T, B, H)).astype(np.float32), None, None]
    ours, want = both(args, grads)
    for name in ours:
        assert np.all(np.isfinite(ours[name])), name
        assert_close(name, ours[name], want[name], RTOL[np.float32])


@pytest.mark.parametrize("reverse", [False, True])
def test_ten_thousand_float32_steps_of_an_integrating_cell(rng, reverse):
    """Input, forget and cell gates held open (biases of +20: i = f = g = 1 in
    float32), so the cell state counts the steps up to 10,000 (float32 holds
    those integers exactly) and tanh(c) is 1 for all but the first steps:
    forward and backward stay finite, c ends at c0 + T = T."""
    T, B, I, H = LONG, 2, 3, 4
    b = np.zeros(4 * H, np.float32)
    b[: 3 * H] = 20  # i, f, g open; o left to the data
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    W = (0.1 * rng.standard_normal((4 * H, I))).astype(np.float32)
    R = (0.1 * rng.standard_normal((4 * H, H))).astype(np.float32)
    out = lstm_ext.forward(x, W, R, b, reverse=reverse, return_cell_states=True)
    np.testing.assert_allclose(out.c, T, rtol=1e-3)  # each step adds i·g = 1 (to ~1e-6)
    assert np.all(np.isfinite(out.y)) and np.all(np.abs(out.y) <= 1)
    g = lstm_ext.backward(out.cache, np.ones_like(out.y), np.ones_like(out.h), np.ones_like(out.c))
    for name, a in zip(GRAD, g[:6], strict=True):
        assert np.all(np.isfinite(a)), name


# ---- NaN and Inf -----------------------------------------------------------------


def assert_same_specials(name, ours, want, dtype):
    """Non-finite values at the same entries, and there NaN, +Inf and -Inf
    alike; the finite rest within RTOL."""
    ours, want = np.asarray(ours, np.float64), np.asarray(want, np.float64)
    finite = np.isfinite(want)
    np.testing.assert_array_equal(np.isfinite(ours), finite, err_msg=f"{name}: isfinite")
    for kind in (np.isnan, np.isposinf, np.isneginf):
        np.testing.assert_array_equal(kind(ours), kind(want), err_msg=f"{name}: {kind.__name__}")
    assert_close(name, ours[finite], want[finite], RTOL[dtype])


def small_problem(rng, dtype, T=6, B=3, I=2, H=4):
    args = [
        (s * rng.standard_normal(shape)).astype(dtype)
        for shape, s in (
            ((T, B, I), 1.0),
            ((4 * H, I), 0.5),
            ((4 * H, H), 0.5),
            ((4 * H,), 0.5),
            ((B, H), 0.5),
            ((B, H), 1.0),
        )
    ]
    grads = [rng.standard_normal(shape).astype(dtype) for shape in ((T, B, H), (B, H), (B, H))]
    return args, grads


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reverse", [False, True])
def test_a_nan_in_x_reaches_every_later_step_of_its_sequence_only(rng, dtype, reverse):
    T, B = 6, 3
    args, grads = small_problem(rng, dtype, T, B)
    clean = lstm_ext.forward(*args, reverse=reverse)
    g_clean = lstm_ext.backward(clean.cache, *grads)
    t0, b0 = 2, 1
    args[0] = args[0].copy()
    args[0][t0, b0, 0] = np.nan
    out = lstm_ext.forward(*args, reverse=reverse)
    later = np.arange(T) >= t0 if not reverse else np.arange(T) <= t0  # in the order run
    assert np.all(np.isnan(out.y[later, b0]))
    np.testing.assert_array_equal(out.y[~later, b0], clean.y[~later, b0])
    assert np.all(np.isnan(out.h[b0])) and np.all(np.isnan(out.c[b0]))
    others = np.arange(B) != b0
    for name in ("y", "h", "c"):  # the other sequences do not see it, to the bit
        np.testing.assert_array_equal(
            getattr(out, name)[..., others, :], getattr(clean, name)[..., others, :], err_msg=name
        )
    g = lstm_ext.backward(out.cache, *grads)
    # Backward carries it to every step of b0, and into the weight gradients
    # (sums over the batch); the other sequences' input and state gradients
    # do not see it.
    assert np.all(np.isnan(g.dx[:, b0])) and np.all(np.isnan(g.dh0[b0]))
    for name in ("dW", "dR", "db"):
        assert np.all(np.isnan(getattr(g, name))), name
    for name, axis in (("dx", 1), ("dh0", 0), ("dc0", 0)):
        a, c = getattr(g, name), getattr(g_clean, name)
        np.testing.assert_array_equal(
            np.compress(others, a, axis), np.compress(others, c, axis), err_msg=name
        )


CASES = {  # where a NaN or an Inf goes: (argument index or "dy", index in it, value)
    "nan-x": (0, (2, 1, 0), np.nan),
    "inf-x": (0, (2, 1, 0), np.inf),  # with I = 1, the gates of that step saturate
    "-inf-x": (0, (4, 0, 0), -np.inf),
    "nan-W": (1, (3, 0), np.nan),
    "inf-R": (2, (5, 1), np.inf),
    "nan-b": (3, (7,), np.nan),
    "inf-h0": (4, (1, 2), np.inf),
    "inf-c0": (5, (1, 2), np.inf),  # c stays Inf, h = o·tanh(Inf) = o: finite
    "-inf-c0": (5, (0, 0), -np.inf),
    "inf-dy": ("dy", (3, 1, 2), np.inf),
    "nan-dy": ("dy", (0, 2, 1), np.nan),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES)
def test_nan_and_inf_propagate_as_in_ieee_arithmetic(rng, dtype, case):
    """Whatever IEEE arithmetic makes of them (Inf - Inf and 0·Inf are NaN,
    σ(±Inf) is 1 or 0, tanh(±Inf) is ±1), the core makes the same: no check,
    no exception, no warning. The reference runs with the 'invalid' warnings
    off, as the NaN they report is the point."""
    where, index, value = CASES[case]
    args, grads = small_problem(rng, dtype, I=1)
    if where == "dy":
        grads[0][index] = value
    else:
        args[where][index] = value
    out = lstm_ext.forward(*args, return_cell_states=True)
    g = lstm_ext.backward(out.cache, *grads)
    as64 = [np.asarray(a, np.float64) for a in (*args, *grads)]
    with np.errstate(invalid="ignore"):
        r = ref.forward(*as64[:6], return_cell_states=True)
        rg = ref.backward(r[3], *as64[6:])
    ours = [out.y, out.h, out.c, out.cell_states, *g]
    want = [r[0], r[1], r[2], r[4], *rg]
    specials = 0
    for name, a, w in zip(OUT + GRAD, ours, want, strict=True):
        assert a.dtype == dtype, name
        assert_same_specials(name, a, w, dtype)
        specials += np.sum(~np.isfinite(w))
    assert specials > 0  # the case reached the results


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_gate_at_minus_inf_is_exactly_closed(dtype):
    """z_i = -Inf closes the input gate: i = σ(-Inf) = 0 exactly, as in the
    reference, the float64 path and the CUDA path (expf(Inf) = Inf), so no
    gradient passes it: db_i = 0, and dW_i = 0·x = 0·Inf = NaN (IEEE)."""
    x = np.full((1, 1, 1), np.inf, dtype)  # T = B = I = H = 1
    W = np.array([[-1], [1], [1], [1]], dtype)  # z = (-Inf, Inf, Inf, Inf)
    out = lstm_ext.forward(x, W, np.zeros((4, 1), dtype), None, None, np.ones((1, 1), dtype))
    g = lstm_ext.backward(out.cache, None, None, np.ones((1, 1), dtype))
    assert out.c[0, 0] == 1  # f·c0 + i·g = 1·1 + 0·1
    assert g.db[0] == 0, f"db_i = {g.db[0]!r}: gradient through a closed gate"
    assert np.isnan(g.dW[0, 0]), f"dW_i = {g.dW[0, 0]!r}, IEEE's 0·Inf is NaN"


def test_step_propagates_nan_per_row():
    rng = np.random.default_rng(0)
    args, _ = small_problem(rng, np.float64)
    x, W, R, b, h, c = args[0][0].copy(), *args[1:]
    x[1, 0] = np.nan
    h1, c1 = lstm_ext.step(x, h, c, W, R, b)
    assert np.all(np.isnan(h1[1])) and np.all(np.isnan(c1[1]))
    assert np.all(np.isfinite(h1[[0, 2]])) and np.all(np.isfinite(c1[[0, 2]]))
