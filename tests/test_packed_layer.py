"""lstm_ext.PackedLayer: weights packed once, then inference calls that read them.

Its forward must give the bits of lstm_ext.forward(training=False) with the
same weights and options (the same products on the same panels: lstm.h,
pack_weights), which the rest of the suite checks against the reference; so
comparisons here are exact. Shapes cover one and several rows, partial
blocks of units, a second chunk of steps, and weights past 2^21 elements
(W then goes to the BLAS and only R is packed).
"""

import copy
import pickle
import threading

import numpy as np
import pytest
from test_features import CASES, features_problem

import lstm_ext
from helpers import make_problem
from lstm_ext import _core

DTYPES = [np.float32, np.float64]


def forward_both(p, kw, **call):
    """(PackedLayer's result, forward's) on the same arrays and options."""
    layer_kw = {k: kw[k] for k in ("W_hr", "peephole", "clip", "input_forget") if k in kw}
    call_kw = {k: kw[k] for k in ("lengths", "reverse") if k in kw}
    layer = lstm_ext.PackedLayer(p["W"], p["R"], p["b"], **layer_kw, **call.pop("layer", {}))
    got = layer.forward(p["x"], p["h0"], p["c0"], **call_kw, **call)
    want = lstm_ext.forward(
        p["x"], p["W"], p["R"], p["b"], p["h0"], p["c0"], training=False,
        weight_dtype=layer._weight_dtype, **layer_kw, **call_kw, **call,
    )  # fmt: skip
    return got, want


def assert_same(got, want):
    assert got.cache is None
    assert len(got) == len(want)
    for name, a, b in zip(got._fields, got, want, strict=True):
        if name == "cache":
            continue
        assert a.dtype == b.dtype, name
        np.testing.assert_array_equal(a, b, err_msg=name)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "shape",
    [(5, 1, 7, 20), (4, 3, 9, 33), (3, 16, 40, 64), (260, 1, 3, 20), (2, 2, 520, 520)],
    ids=lambda s: "x".join(map(str, s)),
)
def test_same_bits_as_forward(rng, dtype, shape):
    p = make_problem(rng, *shape, dtype)
    assert_same(*forward_both(p, {}))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(CASES))
def test_same_bits_with_every_feature(rng, dtype, case):
    p, kw = features_problem(rng, 7, 6, 5, 4 if case != "everything" else 37, dtype, **CASES[case])
    assert_same(*forward_both(p, kw, return_cell_states=True))
    assert_same(*forward_both(p, kw))


def test_same_bits_batch_first_and_bfloat16(rng):
    p = make_problem(rng, 6, 3, 10, 40, np.float32)
    p["x"] = np.ascontiguousarray(p["x"].swapaxes(0, 1))  # [B,T,I]
    assert_same(*forward_both(p, {}, batch_first=True))
    got, want = forward_both(p, {}, batch_first=True, layer=dict(weight_dtype="bfloat16"))
    assert_same(got, want)


def test_chunks_carry_the_state(rng):
    # A stream in chunks, each starting from the last one's state: the bits of
    # one call over the whole sequence.
    p = make_problem(rng, 12, 2, 8, 24, np.float32)
    layer = lstm_ext.PackedLayer(p["W"], p["R"], p["b"])
    whole = layer.forward(p["x"], p["h0"], p["c0"])
    h, c, ys = p["h0"], p["c0"], []
    for t0, t1 in ((0, 1), (1, 5), (5, 12)):
        y, h, c, _ = layer.forward(p["x"][t0:t1], h, c)
        ys.append(y)
    np.testing.assert_array_equal(np.concatenate(ys), whole.y)
    np.testing.assert_array_equal(h, whole.h)
    np.testing.assert_array_equal(c, whole.c)


def test_keeps_private_read_only_copies(rng):
    p = make_problem(rng, 4, 2, 6, 20, np.float64)
    W, R, b = p["W"].copy(), p["R"].copy(), p["b"].copy()
    layer = lstm_ext.PackedLayer(W, R, b)
    want = layer.forward(p["x"])
    W *= 2
    R[:] = 0
    b += 1
    assert_same(layer.forward(p["x"]), want)
    plain = lstm_ext.forward(p["x"], p["W"], p["R"], p["b"], training=False)
    np.testing.assert_array_equal(want.y, plain.y)
    assert not layer._W.flags.writeable and not layer._packed.flags.writeable
    assert layer.dtype == np.float64
    assert layer.nbytes >= 2 * (W.nbytes + R.nbytes)
    assert repr(layer) == "<lstm_ext.PackedLayer I=6 H=20 float64>"
    assert layer(p["x"]).y.shape == (4, 2, 20)  # __call__ is forward


def test_packed_kernel_switched_off_after_packing(rng):
    # The panels are then not what the call would read: it runs as without.
    p = make_problem(rng, 5, 3, 7, 40, np.float32)
    layer = lstm_ext.PackedLayer(p["W"], p["R"], p["b"])
    before = _core.set_packed_recurrent(False)
    try:
        got = layer.forward(p["x"], p["h0"], p["c0"])
        want = lstm_ext.forward(p["x"], p["W"], p["R"], p["b"], p["h0"], p["c0"], training=False)
    finally:
        _core.set_packed_recurrent(before)
    assert_same(got, want)
    assert_same(layer.forward(p["x"], p["h0"], p["c0"]), forward_both(p, {})[1])


def test_threads_share_a_layer(rng):
    p = make_problem(rng, 20, 4, 16, 48, np.float32)
    layer = lstm_ext.PackedLayer(p["W"], p["R"], p["b"])
    want = layer.forward(p["x"]).y
    results = [None] * 4

    def run(k):
        results[k] = [layer.forward(p["x"]).y for _ in range(5)]

    threads = [threading.Thread(target=run, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r in results:
        for y in r:
            np.testing.assert_array_equal(y, want)


def test_bad_arguments_name_themselves(rng):
    p = make_problem(rng, 3, 2, 5, 8, np.float32)
    with pytest.raises(TypeError, match="W: expected dtype float32 or float64, got int64"):
        lstm_ext.PackedLayer(np.zeros((32, 5), np.int64), p["R"])
    with pytest.raises(ValueError, match=r"R: expected shape \[4H,H\]"):
        lstm_ext.PackedLayer(p["W"], p["R"][:, :5])
    with pytest.raises(ValueError, match=r"b: expected shape \[4H\] = \(32,\), got \(31,\)"):
        lstm_ext.PackedLayer(p["W"], p["R"], p["b"][:31])
    with pytest.raises(TypeError, match="weight_dtype='bfloat16': expected float32"):
        lstm_ext.PackedLayer(p["W"].astype(np.float64), p["R"].astype(np.float64),
                             weight_dtype="bfloat16")  # fmt: skip
    with pytest.raises(ValueError, match="clip: expected a number > 0"):
        lstm_ext.PackedLayer(p["W"], p["R"], clip=-1.0)
    layer = lstm_ext.PackedLayer(p["W"], p["R"], p["b"])
    with pytest.raises(TypeError, match=r"x: expected dtype float32 \(the layer's\), got float64"):
        layer.forward(p["x"].astype(np.float64))
    with pytest.raises(ValueError, match=r"W: expected shape \[4H,I\] = \(32, 6\)"):
        layer.forward(np.zeros((3, 2, 6), np.float32))
    with pytest.raises(ValueError, match=r"h0: expected shape \[B,H\]"):
        layer.forward(p["x"], np.zeros((3, 8), np.float32))
    with pytest.raises(ValueError, match=r"lengths\[1\] = 9 is outside \[0, 3\]"):
        layer.forward(p["x"], lengths=[1, 9])


def test_core_refuses_panels_of_another_layer(rng):
    # What PackedLayer keeps together, mismatched through the private calls:
    # a ValueError naming the mismatch, never a crash.
    p = make_problem(rng, 3, 2, 5, 8, np.float32)
    q = make_problem(rng, 3, 2, 5, 9, np.float32)
    packed_p = _core.pack_weights(p["W"], p["R"])
    packed_q = _core.pack_weights(q["W"], q["R"])
    with pytest.raises(ValueError, match="packed: expected shape"):
        _core.forward_packed(packed_q, p["x"], p["W"], p["R"])
    same_size = np.resize(packed_q, packed_p.shape)
    mismatch = "packed for float I=5 H=9 O=9, this call has float I=5 H=8"
    with pytest.raises(ValueError, match=mismatch):
        _core.forward_packed(same_size, p["x"], p["W"], p["R"])
    with pytest.raises(ValueError, match="does not start with pack_weights' header"):
        _core.forward_packed(np.ones_like(packed_p), p["x"], p["W"], p["R"])
    with pytest.raises(TypeError, match="packed: expected dtype float32 to match x"):
        _core.forward_packed(packed_p.astype(np.float64), p["x"], p["W"], p["R"])
    with pytest.raises(TypeError, match="packed: expected dtype float32 or float64, got object"):
        _core.forward_packed(None, p["x"], p["W"], p["R"])


def test_empty_sizes_and_copies(rng):
    # H = 0, I = 0, T = 0 and B = 0 run as forward does; a pickled or copied
    # layer gives the same bits (it packs again, for the kernel of the CPU it
    # is loaded on; test_nn_copy.py has more).
    f = np.float32
    empty = lstm_ext.PackedLayer(np.zeros((0, 3), f), np.zeros((0, 0), f))
    y = empty.forward(np.zeros((2, 1, 3), f))
    assert y.y.shape == (2, 1, 0) and y.h.shape == (1, 0)
    p = make_problem(rng, 4, 3, 5, 6, f)
    layer = lstm_ext.PackedLayer(p["W"], p["R"], p["b"])
    assert layer.forward(p["x"][:0]).y.shape == (0, 3, 6)
    assert layer.forward(p["x"][:, :0]).h.shape == (0, 6)
    no_input = lstm_ext.PackedLayer(p["W"][:, :0], p["R"])
    assert_same(no_input.forward(p["x"][:, :, :0]), no_input.forward(np.zeros((4, 3, 0), f)))
    want = layer.forward(p["x"], p["h0"], p["c0"])
    for other in (pickle.loads(pickle.dumps(layer)), copy.deepcopy(layer)):
        assert_same(other.forward(p["x"], p["h0"], p["c0"]), want)


def test_either_byte_order(rng):
    """Big-endian weights had made the layer's dtype '>f4', and it then
    refused native float32 x (and the other way round); forward takes any
    byte order of each."""
    p = make_problem(rng, 5, 2, 3, 4, np.float32)
    x, W, R, b = p["x"], p["W"], p["R"], p["b"]
    want = lstm_ext.forward(x, W, R, b, training=False).y
    for wo, xo in ((">f4", "<f4"), ("<f4", ">f4"), (">f4", ">f4")):
        layer = lstm_ext.PackedLayer(W.astype(wo), R.astype(wo), b.astype(wo))
        assert layer.dtype == np.float32
        np.testing.assert_array_equal(layer(x.astype(xo)).y, want)
