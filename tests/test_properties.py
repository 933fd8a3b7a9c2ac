"""Property tests (hypothesis) of the public API against lstm_ext.reference.

Hypothesis draws the *structure* of a call: the sizes (T, B, I, H and the
projection P, each possibly 0 where the API takes it: the functions take any
of T, B, I, H = 0, nn.LSTM takes T = 0 and B = 0), the dtype, every option
(batch_first, reverse, lengths, W_hr, peephole, clip, input_forget,
training, which of b, h0, c0, dy, dh, dc are None) and the memory layout of
every array (C or Fortran order, a reversed axis, every other element with
a positive or a negative step, axes permuted). The *values* come from a
NumPy generator seeded by a drawn integer, at the scales of
helpers.make_problem (O(1) inputs, gates mostly out of saturation), which is
what the tolerances below were measured on; test_stability covers extreme
values. Each example either matches the reference or, for the wrong
arguments drawn on purpose, raises the documented TypeError or ValueError
naming the argument.

Tolerances: helpers.assert_close with RTOL = 1e-12 (float64) and 1e-5
(float32), test_core's and test_features': the sizes here (T <= 6, I, H <=
5) are smaller than theirs, so the rounding is no larger. nn.LSTM stacks up
to 3 layers and 2 directions; each layer is contractive (|f| < 1) and feeds
its rounding to the next (test_nn's argument), so there the float32 bound
is 3x test_core's: 3e-5.

The profile (tests/conftest.py) sets the number of examples: "ci" by
default, HYPOTHESIS_PROFILE=long for thousands.
"""

import numpy as np
import pytest

pytest.importorskip("hypothesis", reason="hypothesis (the `test` extra) is not installed")
from hypothesis import assume, given, note
from hypothesis import strategies as st

import lstm_ext
from helpers import assert_close
from lstm_ext import nn
from lstm_ext import reference as ref

RTOL = {np.float32: 1e-5, np.float64: 1e-12}
RTOL_STACK = {np.float32: 3e-5, np.float64: 1e-12}
DTYPES = st.sampled_from([np.float32, np.float64])

# ---- memory layouts --------------------------------------------------------------

LAYOUTS = ("C", "F", "flip", "step2", "step-2", "perm")


def relayout(a, how, axis):
    """An array equal to `a` (same shape and values) in another memory layout.

    "F": Fortran order; "flip": axis `axis` reversed in memory (a negative
    stride); "step2" / "step-2": every other element of an array twice as
    long on `axis`, read forwards / backwards, the gaps holding NaN (a read
    of a gap would show); "perm": stored with its axes rotated, viewed back.
    """
    a = np.asarray(a)
    if a.ndim == 0 or how == "C":
        return np.ascontiguousarray(a)
    axis %= a.ndim
    if how == "F":
        return np.asfortranarray(a)
    if how == "flip":
        return np.flip(np.ascontiguousarray(np.flip(a, axis)), axis)
    if how in ("step2", "step-2"):
        shape = list(a.shape)
        shape[axis] *= 2
        fill = np.nan if a.dtype.kind == "f" else np.iinfo(a.dtype).max  # a length > T: refused
        big = np.full(shape, fill, a.dtype)
        index = [slice(None)] * a.ndim
        index[axis] = slice(None, None, 2 if how == "step2" else -2)
        big[tuple(index)] = a
        return big[tuple(index)]
    assert how == "perm"
    return np.moveaxis(np.ascontiguousarray(np.moveaxis(a, axis, -1)), -1, axis)


@st.composite
def layouts(draw):
    return draw(st.sampled_from(LAYOUTS)), draw(st.integers(0, 2))


def laid_out(draw, a):
    """`a` in a drawn layout (None stays None)."""
    if a is None:
        return None
    how, axis = draw(layouts())
    return relayout(a, how, axis)


# ---- problems --------------------------------------------------------------------


def values(seed, T, B, I, H, P, dtype, *, peephole):
    """Every array of a call, float64 values rounded to `dtype`, at
    helpers.make_problem's scales. O = P with a projection, else H."""
    rng = np.random.default_rng(seed)
    O = P or H

    def r(*shape, s=1.0):
        return (s * rng.standard_normal(shape)).astype(dtype)

    return dict(
        x=r(T, B, I),
        W=r(4 * H, I, s=1 / max(I, 1) ** 0.5),
        R=r(4 * H, O, s=1 / max(O, 1) ** 0.5),
        b=r(4 * H, s=0.5),
        h0=r(B, O, s=0.5),
        c0=r(B, H),
        W_hr=r(P, H, s=1 / max(H, 1) ** 0.5) if P else None,
        peephole=r(3 * H, s=0.5) if peephole else None,
        dy=r(T, B, O),
        dh=r(B, O),
        dc=r(B, H),
    )


@st.composite
def problems(draw):
    """A forward call (args, options) and backward's (dy, dh, dc), all laid out."""
    dtype = draw(DTYPES)
    T, B, I, H = (draw(st.integers(0, n)) for n in (6, 4, 5, 5))
    P = draw(st.integers(0, 4))  # any P >= 1 is a projection (P > H too), 0 none
    peephole = draw(st.booleans())
    v = values(draw(st.integers(0, 2**32 - 1)), T, B, I, H, P, dtype, peephole=peephole)
    batch_first = draw(st.booleans())
    if batch_first:
        v["x"], v["dy"] = v["x"].swapaxes(0, 1), v["dy"].swapaxes(0, 1)
    for k in ("b", "h0", "c0", "dh", "dc", "dy"):  # each may be None: zeros
        if draw(st.booleans()):
            v[k] = None
    opts = dict(
        batch_first=batch_first,
        reverse=draw(st.booleans()),
        training=draw(st.integers(0, 3)) > 0,  # mostly True: backward is checked then
        W_hr=v["W_hr"],
        peephole=v["peephole"],
        clip=draw(st.sampled_from([None, None, 0.5, 1.0, 3.0])),
        input_forget=draw(st.booleans()),
    )
    if draw(st.booleans()):
        lengths = draw(st.lists(st.integers(0, T), min_size=B, max_size=B))
        kind = draw(st.sampled_from(["list", np.int64, np.int32, np.uint8, np.intp]))
        opts["lengths"] = lengths if kind == "list" else laid_out(draw, np.array(lengths, kind))
    for k in ("W_hr", "peephole"):
        opts[k] = laid_out(draw, opts[k])
    args = [laid_out(draw, v[k]) for k in ("x", "W", "R", "b", "h0", "c0")]
    grads = [laid_out(draw, v[k]) for k in ("dy", "dh", "dc")]
    note(f"T={T} B={B} I={I} H={H} P={P} {np.dtype(dtype).name} options={opts}")
    return dtype, args, opts, grads


def as64(a):
    return None if a is None else np.array(a, np.float64)


def ref_options(opts):
    o = dict(opts)
    for k in ("W_hr", "peephole"):
        o[k] = as64(o[k])
    if o.get("lengths") is not None:
        o["lengths"] = np.array(o["lengths"], np.int64)
    return o


def away_from_clip(cache, clip):
    """True unless a gate pre-activation lies within rounding of ±clip, where
    the core's z and the reference's may fall on either side of the clamp
    (the gradient is discontinuous there). Margin: 1e-4·max(1,|z|), 1000x
    float32's rounding of z."""
    if clip is None:
        return True
    for s in cache["steps"]:
        for z in s["z"]:
            if np.any(np.abs(np.abs(z) - clip) <= 1e-4 * np.maximum(1, np.abs(z))):
                return False
    return True


def snapshot(arrays):
    return [None if a is None else np.array(a, copy=True) for a in arrays]


def assert_unchanged(before, after, what):
    for k, (u, v) in enumerate(zip(before, after, strict=True)):
        if u is not None:
            np.testing.assert_array_equal(np.asarray(v), u, err_msg=f"{what}[{k}] was written")


# ---- forward, backward, step ------------------------------------------------------


@given(problems())
def test_forward_backward_match_the_reference(problem):
    """Every output and gradient, in the input's dtype; backward twice from one
    cache gives the same bits; no argument is written to."""
    dtype, args, opts, grads = problem
    before = snapshot([*args, opts["W_hr"], opts["peephole"], *grads])

    ours = lstm_ext.forward(*args, return_cell_states=True, **opts)
    want = ref.forward(
        *(as64(a) for a in args), return_cell_states=True, **dict(ref_options(opts), training=True)
    )
    assume(away_from_clip(want[3], opts["clip"]))
    for name, a, b in zip(("y", "h", "c"), ours[:3], want[:3], strict=True):
        assert a.dtype == dtype, name
        assert_close(name, a, b, RTOL[dtype])
    assert_close("cell_states", ours.cell_states, want[4], RTOL[dtype])
    if not opts["training"]:
        assert ours.cache is None
        assert_unchanged(before, [*args, opts["W_hr"], opts["peephole"], *grads], "argument")
        return

    g = lstm_ext.backward(ours.cache, *grads)
    rg = ref.backward(want[3], *(as64(a) for a in grads))
    names = ["dx", "dh0", "dc0", "dW", "dR", "db", "dW_hr", "dpeephole"]
    extras = opts["W_hr"] is not None or opts["peephole"] is not None
    assert len(g) == len(rg) == (8 if extras else 6)
    for name, a, b in zip(names, g, rg, strict=False):
        if b is None:
            assert a is None, name
            continue
        assert a.dtype == dtype, name
        assert_close(name, a, b, RTOL[dtype])
    again = lstm_ext.backward(ours.cache, *grads)  # the cache serves any number of calls
    for name, a, b in zip(names, g, again, strict=False):
        np.testing.assert_array_equal(a, b, err_msg=name)
    assert_unchanged(before, [*args, opts["W_hr"], opts["peephole"], *grads], "argument")


@st.composite
def step_problems(draw):
    """One step's (x, h, c, W, R, b) and options, laid out; h, c, b may be None."""
    dtype = draw(DTYPES)
    B, I, H, P = (draw(st.integers(0, n)) for n in (4, 5, 5, 4))
    v = values(draw(st.integers(0, 2**32 - 1)), 1, B, I, H, P, dtype, peephole=draw(st.booleans()))
    v["x"] = v["x"][0]
    args = [
        None if k in ("h0", "c0", "b") and draw(st.booleans()) else laid_out(draw, v[k])
        for k in ("x", "h0", "c0", "W", "R", "b")
    ]
    opts = dict(
        W_hr=laid_out(draw, v["W_hr"]),
        peephole=laid_out(draw, v["peephole"]),
        clip=draw(st.sampled_from([None, None, 0.5, 1.0, 3.0])),
        input_forget=draw(st.booleans()),
    )
    note(f"B={B} I={I} H={H} P={P} {np.dtype(dtype).name} options={opts}")
    return dtype, args, opts


@given(step_problems())
def test_step_matches_the_reference(problem):
    """h and c of one step, in the input's dtype; no argument is written to."""
    dtype, args, opts = problem
    before = snapshot([*args, opts["W_hr"], opts["peephole"]])
    ours = lstm_ext.step(*args, **opts)
    x, h, c, W, R, b = (as64(a) for a in args)
    want = ref.step(x, h, c, W, R, b, **ref_options(opts))
    cache = ref.forward(x[None], W, R, b, h, c, **ref_options(opts))[3]
    assume(away_from_clip(cache, opts["clip"]))
    for name, a, w in zip(("h", "c"), ours, want, strict=True):
        assert a.dtype == dtype, name
        assert_close(name, a, w, RTOL[dtype])
    assert_unchanged(before, [*args, opts["W_hr"], opts["peephole"]], "argument")


# ---- wrong arguments: the documented errors ----------------------------------------

# Arguments whose shape fixes no size of its own (the sizes come from x, W and
# W_hr), so a wrong one is reported under its own name; the axis to change.
SHAPED = {"b": 0, "h0": 1, "c0": 1, "peephole": 0}


@given(problems(), st.data())
def test_a_wrong_shape_is_a_value_error_naming_the_argument(problem, data):
    dtype, args, opts, _ = problem
    _, _, R, b, h0, c0 = args
    kw = dict(opts, training=True)
    given_ = {"b": b, "h0": h0, "c0": c0, "peephole": kw["peephole"]}
    name = data.draw(st.sampled_from([k for k, v in given_.items() if v is not None] or ["R"]))
    if name == "R":  # R [4H,O]: its second axis must be O
        bad = np.zeros((R.shape[0], R.shape[1] + 1), dtype)
    else:
        a = given_[name]
        how = data.draw(st.sampled_from(["grow", "shrink", "extra axis"]))
        shape = list(a.shape)
        if how == "extra axis":
            shape.append(1)
        elif how == "shrink" and shape[SHAPED[name]] > 0:
            shape[SHAPED[name]] -= 1
        else:
            shape[SHAPED[name]] += 1
        bad = np.zeros(shape, dtype)
    call = dict(zip(("x", "W", "R", "b", "h0", "c0"), args, strict=True))
    if name == "peephole":
        kw["peephole"] = bad
    else:
        call[name] = bad
    with pytest.raises(ValueError) as e:
        lstm_ext.forward(**call, **kw)
    assert str(e.value).startswith(f"{name}: "), str(e.value)


@given(problems(), st.data())
def test_a_wrong_dtype_is_a_type_error_naming_the_argument(problem, data):
    dtype, args, opts, _ = problem
    call = dict(zip(("x", "W", "R", "b", "h0", "c0"), args, strict=True))
    kw = dict(opts, training=True)
    names = [k for k in ("W", "R", "b", "h0", "c0") if call[k] is not None]
    names += [k for k in ("W_hr", "peephole") if kw[k] is not None]
    name = data.draw(st.sampled_from(names))
    other = data.draw(st.sampled_from([np.float32, np.float64, np.int64, np.float16]))
    assume(other != dtype)
    if name in call:
        call[name] = np.asarray(call[name]).astype(other)
    else:
        kw[name] = np.asarray(kw[name]).astype(other)
    with pytest.raises(TypeError) as e:
        lstm_ext.forward(**call, **kw)
    assert str(e.value).startswith(f"{name}: "), str(e.value)


@given(problems(), st.data())
def test_backward_refuses_a_wrong_gradient_shape_or_dtype(problem, data):
    dtype, args, opts, _ = problem
    out = lstm_ext.forward(*args, **dict(opts, training=True))
    dy, dh, dc = (np.zeros(s, dtype) for s in (out.y.shape, out.h.shape, out.c.shape))
    k = data.draw(st.integers(0, 2))
    name = ("dy", "dh", "dc")[k]
    g = [dy, dh, dc]
    if data.draw(st.booleans()):
        shape = list(g[k].shape)
        shape[data.draw(st.integers(0, len(shape) - 1))] += 1
        g[k] = np.zeros(shape, dtype)
        error = ValueError
    else:
        g[k] = g[k].astype(np.float64 if dtype == np.float32 else np.float32)
        error = TypeError
    with pytest.raises(error) as e:
        lstm_ext.backward(out.cache, *g)
    assert str(e.value).startswith(f"{name}: "), str(e.value)


@given(problems(), st.data())
def test_lengths_out_of_range_are_a_value_error(problem, data):
    _, args, opts, _ = problem
    x = np.asarray(args[0])
    T, B = (x.shape[1], x.shape[0]) if opts["batch_first"] else x.shape[:2]
    assume(B > 0)
    lengths = [min(T, 1)] * B
    k = data.draw(st.integers(0, B - 1))
    lengths[k] = data.draw(st.sampled_from([-1, T + 1, T + 100]))
    with pytest.raises(ValueError) as e:
        lstm_ext.forward(*args, **dict(opts, lengths=np.array(lengths)))
    assert str(e.value).startswith(f"lengths[{k}] = {lengths[k]} is outside"), str(e.value)


# ---- nn.LSTM against a stack of reference layers -----------------------------------


def reference_stack(lstm, x, state, lengths, dy, dstate):
    """nn.LSTM's documented math from reference.forward/backward, in float64:
    layer l direction d runs on the previous layer's [T,B,D*O] output (the
    reverse direction with reverse=True), b = bias_ih + bias_hh, and both
    biases get db. x, dy [T,B,*]; state, dstate (h, c) [L*D,B,*] or None.
    Returns out, h_n, c_n, dx, dh0, dc0, grads."""
    p = {k: np.asarray(v, np.float64) for k, v in lstm.params.items()}
    L, D, H, O = lstm.num_layers, lstm.num_directions, lstm.hidden_size, lstm.output_size
    B = x.shape[1]
    h0, c0 = (None, None) if state is None else state
    h_n, c_n, caches, inp = np.zeros((L * D, B, O)), np.zeros((L * D, B, H)), [], x
    for layer in range(L):
        outs = []
        for d in range(D):
            k, s = layer * D + d, f"_l{layer}" + ("_reverse" if d else "")
            b = p["bias_ih" + s] + p["bias_hh" + s] if lstm.bias else None
            y, h_n[k], c_n[k], cache = ref.forward(
                inp,
                p["weight_ih" + s],
                p["weight_hh" + s],
                b,
                None if h0 is None else h0[k],
                None if c0 is None else c0[k],
                reverse=bool(d),
                lengths=lengths,
                W_hr=p.get("weight_hr" + s),
            )
            outs.append(y)
            caches.append(cache)
        inp = np.concatenate(outs, axis=2)
    grads = {k: np.zeros_like(v) for k, v in p.items()}
    dh_n, dc_n = (None, None) if dstate is None else dstate
    dh0, dc0, g_out = np.zeros((L * D, B, O)), np.zeros((L * D, B, H)), dy
    for layer in reversed(range(L)):
        dinp = 0
        for d in range(D):
            k, s = layer * D + d, f"_l{layer}" + ("_reverse" if d else "")
            g = ref.backward(
                caches[k],
                g_out[:, :, d * O : (d + 1) * O],
                None if dh_n is None else dh_n[k],
                None if dc_n is None else dc_n[k],
            )
            dinp = dinp + g[0]
            dh0[k], dc0[k] = g[1], g[2]
            grads["weight_ih" + s] += g[3]
            grads["weight_hh" + s] += g[4]
            if lstm.bias:
                grads["bias_ih" + s] += g[5]
                grads["bias_hh" + s] += g[5]
            if lstm.proj_size:
                grads["weight_hr" + s] += g[6]
        g_out = dinp
    return inp, h_n, c_n, g_out, dh0, dc0, grads


@st.composite
def lstm_problems(draw):
    """An nn.LSTM (layers, directions, projection, bias, batch_first, dtype),
    one call's x, state, lengths, dy and dstate as the reference takes them
    ([T,B,*], [L*D,B,*]), and the same laid out as the LSTM is called with
    them (batch_first, or one sequence [T,I]; in a drawn memory layout).
    Dropout is 0: its masks come from the LSTM's generator."""
    dtype = draw(DTYPES)
    I, H = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    lstm = nn.LSTM(
        I,
        H,
        draw(st.integers(1, 3)),
        bias=draw(st.booleans()),
        batch_first=draw(st.booleans()),
        bidirectional=draw(st.booleans()),
        proj_size=draw(st.integers(0, H - 1)),
        dtype=dtype,
        seed=draw(st.integers(0, 2**32 - 1)),
    )
    unbatched = draw(st.integers(0, 4)) == 0  # x [T,I]: one sequence
    T, B = draw(st.integers(0, 5)), 1 if unbatched else draw(st.integers(0, 3))
    L, D, O = lstm.num_layers, lstm.num_directions, lstm.output_size
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))

    def r(*shape):
        return rng.standard_normal(shape).astype(dtype)

    x, dy = r(T, B, I), r(T, B, D * O)  # [T,B,*]: as the reference takes them
    state = (r(L * D, B, O), r(L * D, B, H)) if draw(st.booleans()) else None
    dstate = (r(L * D, B, O), r(L * D, B, H)) if draw(st.booleans()) else None
    lengths = None
    if not unbatched and draw(st.booleans()):  # dy past the ends is ignored, on both sides
        lengths = np.array(draw(st.lists(st.integers(0, T), min_size=B, max_size=B)), np.int64)

    def as_called(a, seq):  # the layout the LSTM is called with, from [T,B,*] / [L*D,B,*]
        if unbatched:
            a = a[:, 0]
        elif seq and lstm.batch_first:
            a = a.swapaxes(0, 1)
        return laid_out(draw, a)

    call = dict(
        x=as_called(x, True),
        state=None if state is None else tuple(as_called(s, False) for s in state),
        lengths=lengths,
        dy=as_called(dy, True),
        dstate=None if dstate is None else tuple(as_called(s, False) for s in dstate),
    )
    note(f"{lstm.config()} T={T} B={B} unbatched={unbatched} lengths={lengths}")
    return lstm, unbatched, (x, state, lengths, dy, dstate), call


@given(lstm_problems())
def test_nn_lstm_matches_a_stack_of_reference_layers(problem):
    """out, h_n, c_n, dx, dh0, dc0 and every parameter gradient."""
    lstm, unbatched, (x, state, lengths, dy, dstate), call = problem
    dt, rtol = lstm.dtype.type, RTOL_STACK[lstm.dtype.type]
    out, (h_n, c_n) = lstm(call["x"], call["state"], call["lengths"])
    grad = lstm.backward(call["dy"], call["dstate"])
    dx, (dh0, dc0) = grad if state is not None else (grad, (None, None))

    want = reference_stack(
        lstm,
        as64(x),
        None if state is None else tuple(map(as64, state)),
        lengths,
        as64(dy),
        None if dstate is None else tuple(map(as64, dstate)),
    )
    w_out, w_hn, w_cn, w_dx, w_dh0, w_dc0, w_grads = want

    def given_layout(a, seq):  # the reference's [T,B,*] / [L*D,B,*] as nn.LSTM lays it out
        if unbatched:
            return a[:, 0]
        return a.swapaxes(0, 1) if seq and lstm.batch_first else a

    checks = [
        ("out", out, given_layout(w_out, True)),
        ("h_n", h_n, given_layout(w_hn, False)),
        ("c_n", c_n, given_layout(w_cn, False)),
        ("dx", dx, given_layout(w_dx, True)),
    ]
    if state is not None:
        checks += [
            ("dh0", dh0, given_layout(w_dh0, False)),
            ("dc0", dc0, given_layout(w_dc0, False)),
        ]
    for name, a, b in checks:
        assert a.dtype == dt, name
        assert_close(name, a, b, rtol)
    assert set(lstm.grads) == set(w_grads)
    for name, g in lstm.grads.items():
        assert_close(name, g, w_grads[name], rtol)


@given(lstm_problems(), st.data())
def test_nn_lstm_refuses_wrong_inputs(problem, data):
    """A wrong feature count, number of dimensions, dtype or state shape:
    the documented ValueError or TypeError, naming the argument."""
    lstm, unbatched, _, call = problem
    x = np.asarray(call["x"])
    how = data.draw(st.sampled_from(["features", "ndim", "dtype", "state"]))
    if how == "features":
        bad, error, words = np.zeros((*x.shape[:-1], x.shape[-1] + 1), x.dtype), ValueError, "x:"
    elif how == "ndim":
        bad, error, words = x[(None,) * (4 - x.ndim)], ValueError, "x: expected 3 dim"  # 4-D
    elif how == "dtype":
        other = np.float64 if x.dtype == np.float32 else np.float32
        bad, error, words = x.astype(other), TypeError, "x: expected dtype"
    else:
        bad, error, words = x, ValueError, "state[0] (h0): expected shape"
    state = None
    if how == "state":
        L, D, O, H = lstm.num_layers, lstm.num_directions, lstm.output_size, lstm.hidden_size
        lead = (L * D,) if unbatched else (L * D, x.shape[0 if lstm.batch_first else 1])
        state = (np.zeros((*lead, O + 1), lstm.dtype), np.zeros((*lead, H), lstm.dtype))
    with pytest.raises(error) as e:
        lstm(bad, state)
    assert str(e.value).startswith(words), str(e.value)
