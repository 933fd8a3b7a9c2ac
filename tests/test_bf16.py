"""forward(weight_dtype="bfloat16"): inference with W, R and W_hr rounded to bfloat16.

The promise (lstm.h, Config::bf16_weights): the result is the float32 one
with the weights rounded first, bit for bit. It holds because each product
of a float32 activation and a bfloat16 weight is exact in float32, so the
kernel that reads bfloat16 panels (AVX-512F or AVX2) does the same fused
multiply-adds, in the same order, as the float32 kernel on the rounded
weights (test_packed.py checks that with both kernels on a CPU that has
AVX-512F); the input projection (by the same kernel where
4H(I+H) <= 2^21, else a float32 GEMM) and the projection W_hr read rounded
copies. So
the main tests compare with np.array_equal, on both recurrent paths (the
packed kernel and the BLAS one: conftest's ``path``), over the row counts and hidden sizes the
kernel has its own code for. The rounding itself is checked against an
independent definition (the nearer of the two neighbouring bfloat16 values,
ties to the even one).
"""

import math

import numpy as np
import pytest
from test_features import features_problem

import lstm_ext
from lstm_ext import reference as ref

ARGS = ("x", "W", "R", "b", "h0", "c0")


def rounded(p, kw):
    """p and kw with every weight matrix rounded to bfloat16 (ties included)."""
    q = dict(p)
    q["W"], q["R"] = lstm_ext.round_bfloat16(p["W"]), lstm_ext.round_bfloat16(p["R"])
    kw = dict(kw)
    if "W_hr" in kw:
        kw["W_hr"] = lstm_ext.round_bfloat16(kw["W_hr"])
    return q, kw


def with_ties(rng, a):
    """a with some entries moved to exact halfway points between bfloat16 values."""
    a = a.copy()
    bits = a.reshape(-1).view(np.uint32)
    pick = rng.choice(bits.size, size=max(1, bits.size // 8), replace=False)
    bits[pick] = (bits[pick] & 0xFFFF0000) | 0x8000
    return a


SHAPES = [  # (T, B, I, H): rows 1-3 (all panels at once), 4-13 (one at a time), masked edges
    (5, 1, 5, 1),
    (7, 1, 9, 17),
    (6, 2, 3, 33),
    (5, 3, 33, 130),
    (4, 4, 6, 40),
    (3, 13, 7, 100),
    (6, 16, 64, 64),
    (2, 1, 4, 600),  # a product longer than the kernel's 512-row chunk
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_is_float32_on_rounded_weights(rng, path, shape):
    T, B, I, H = shape
    p, kw = features_problem(rng, T, B, I, H, np.float32)
    p["W"], p["R"] = with_ties(rng, p["W"]), with_ties(rng, p["R"])
    got = lstm_ext.forward(*[p[k] for k in ARGS], training=False, weight_dtype="bfloat16", **kw)
    q, kwq = rounded(p, kw)
    want = lstm_ext.forward(*[q[k] for k in ARGS], training=False, **kwq)
    for name, a, b in zip("yhc", got[:3], want[:3], strict=True):
        assert a.dtype == np.float32, name
        np.testing.assert_array_equal(a, b, err_msg=name)


@pytest.mark.parametrize(
    "options",
    [
        dict(reverse=True),
        dict(lengths=[5, 0, 7, 3, 7, 1]),
        dict(lengths=[2, 7, 0, 5, 6, 7], reverse=True, peephole=True),
        dict(clip=0.7, input_forget=True),
        dict(P=3),  # W_hr rounded too; the BLAS path whatever the CPU
        dict(batch_first=True),
    ],
    ids=["reverse", "ragged", "ragged-reverse-peephole", "clip-coupled", "projection", "bf"],
)
def test_features_are_float32_on_rounded_weights(rng, path, options):
    opts = dict(options)
    T, B, I, H = 7, 6, 5, 45
    p, kw = features_problem(rng, T, B, I, H, np.float32, **opts)
    if kw.pop("batch_first", False):
        kw["batch_first"] = True
        p["x"] = np.ascontiguousarray(p["x"].swapaxes(0, 1))
    args = [p[k] for k in ARGS]
    got = lstm_ext.forward(
        *args, training=False, weight_dtype="bfloat16", return_cell_states=True, **kw
    )
    q, kwq = rounded(p, kw)
    want = lstm_ext.forward(*[q[k] for k in ARGS], training=False, return_cell_states=True, **kwq)
    names = ["y", "h", "c", "cell_states"]
    for name, a, b in zip(names, got[:3] + got[4:], want[:3] + want[4:], strict=True):
        np.testing.assert_array_equal(a, b, err_msg=name)


def test_across_inference_chunks(rng, path):
    # Inference projects the inputs a chunk of steps at a time, and a ragged
    # batch's team shrinks with it: later chunks read panels other threads packed.
    B = 20
    T = 2 * lstm_ext._core.inference_chunk(B) + 3
    p, kw = features_problem(rng, T, B, 9, 70, np.float32, lengths=rng.integers(0, T + 1, B))
    got = lstm_ext.forward(*[p[k] for k in ARGS], training=False, weight_dtype="bfloat16", **kw)
    q, kwq = rounded(p, kw)
    want = lstm_ext.forward(*[q[k] for k in ARGS], training=False, **kwq)
    for name, a, b in zip("yhc", got[:3], want[:3], strict=True):
        np.testing.assert_array_equal(a, b, err_msg=name)


def test_matches_the_reference(rng):
    # The reference rounds the same way and computes in float64: float32's
    # tolerance (test_features, 1e-5 relative) against it.
    p, kw = features_problem(rng, 9, 4, 12, 40, np.float32, peephole=True)
    got = lstm_ext.forward(*[p[k] for k in ARGS], training=False, weight_dtype="bfloat16", **kw)
    q = [np.asarray(p[k], np.float64) for k in ARGS]
    kw64 = {k: np.asarray(v, np.float64) for k, v in kw.items()}
    # round_bfloat16 takes float32 (the weights as given), then float64 for the math
    q[1], q[2] = (ref.round_bfloat16(p[k]).astype(np.float64) for k in ("W", "R"))
    want = ref.forward(*q, training=False, **kw64)
    for name, a, b in zip("yhc", got[:3], want[:3], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5, err_msg=name)
    again = ref.forward(*[p[k] for k in ARGS], training=False, weight_dtype="bfloat16", **kw)
    np.testing.assert_allclose(got.y, again[0], rtol=1e-5, atol=1e-5)


def test_error_against_float32(rng):
    # Rounding a weight moves it by at most 2^-9 of itself, so a gate's
    # pre-activation moves by at most 2^-9 * sum_k |w_k v_k|: about
    # 2^-9 * 0.64 sqrt(K) for unit inputs and weights of scale 1/sqrt(K)
    # (0.014 at K = 128, twice that over x and h), and much less on average,
    # the errors having random signs; the gates' slopes are at most 1. The
    # bounds below are those worst cases; benchmarks/bench_lstm.py prints the
    # error it measures.
    p, _ = features_problem(rng, 20, 4, 128, 128, np.float32)
    args = [p[k] for k in ARGS]
    y16 = lstm_ext.forward(*args, training=False, weight_dtype="bfloat16").y
    y32 = lstm_ext.forward(*args, training=False).y
    err = np.abs(y16.astype(np.float64) - y32)
    assert 0 < err.max() < 0.03
    assert err.mean() < 2.0**-8


def neighbours_rounding(a):
    """round_bfloat16 from its definition: the nearer bfloat16 neighbour, ties to even."""
    out = np.empty_like(a)
    for i, v in enumerate(a.astype(np.float32)):
        bits = int(np.float32(v).view(np.uint32))
        if not np.isfinite(v):
            out[i] = v
            continue
        down = bits & 0xFFFF0000  # toward zero
        up = down + 0x10000  # away from zero: the infinity's pattern past the largest
        lo = float(np.uint32(down).view(np.float32))
        if (up >> 23) & 0xFF == 0xFF:  # as if the exponent went on: 2^128, then overflow
            hi = math.copysign(2.0**128, float(v))
        else:
            hi = float(np.uint32(up).view(np.float32))
        dv, dh = abs(float(v) - lo), abs(hi - float(v))
        if dv < dh or (dv == dh and (down >> 16) % 2 == 0):
            out[i] = np.uint32(down).view(np.float32)
        else:
            out[i] = np.uint32(up).view(np.float32)
    return out


def test_round_bfloat16(rng):
    special = np.array(
        [0.0, -0.0, 1.0, -1.5, 1.00390625, 1.01171875, np.inf, -np.inf, 3.4e38, -3.4e38, 1e-40],
        np.float32,
    )
    scale = 10.0 ** rng.integers(-40, 38, 2000)  # subnormals to near float32's largest
    scale = np.minimum(scale, 1e37)
    a = np.concatenate([special, (rng.standard_normal(2000) * scale).astype(np.float32)])
    a = np.concatenate([a, with_ties(rng, a)])
    got = lstm_ext.round_bfloat16(a)
    assert got.dtype == np.float32 and got.shape == a.shape
    np.testing.assert_array_equal(got, neighbours_rounding(a))
    assert (got.view(np.uint32) & 0xFFFF).max() == 0
    # ties to even: 1 + 2^-8 lies halfway between 1 and 1 + 2^-7
    assert lstm_ext.round_bfloat16(np.float32([1.00390625]))[0] == 1.0
    assert lstm_ext.round_bfloat16(np.float32([1.01171875]))[0] == 1.015625
    # past bfloat16's largest finite value: infinity; a NaN stays a NaN
    assert lstm_ext.round_bfloat16(np.float32([3.4e38]))[0] == np.inf
    nan = np.array([np.nan, -np.nan], np.float32)
    nan.view(np.uint32)[1] |= 0x1  # a payload only in the bits that are cut
    assert np.isnan(lstm_ext.round_bfloat16(nan)).all()
    # any shape and layout kept: a scalar had come back with shape (1,)
    one = lstm_ext.round_bfloat16(np.float32(1.00390625))
    assert one.shape == () and one == 1.0
    np.testing.assert_array_equal(lstm_ext.round_bfloat16(a.reshape(2, -1).T), got.reshape(2, -1).T)


def test_nan_and_inf_weights(rng):
    # IEEE arithmetic on the rounded weights: NaN and inf propagate as in float32.
    p, kw = features_problem(rng, 3, 2, 4, 5, np.float32)
    p["R"][0, 0], p["W"][7, 1] = np.nan, np.inf
    got = lstm_ext.forward(*[p[k] for k in ARGS], training=False, weight_dtype="bfloat16")
    q, _ = rounded(p, kw)
    want = lstm_ext.forward(*[q[k] for k in ARGS], training=False)
    assert np.isnan(got.y).any()
    for a, b in zip(got[:3], want[:3], strict=True):
        np.testing.assert_array_equal(a, b)  # NaN where NaN


def test_refused_where_it_does_not_apply(rng):
    p, _ = features_problem(rng, 3, 2, 4, 5, np.float32)
    args = [p[k] for k in ARGS]
    with pytest.raises(ValueError, match="training=False"):
        lstm_ext.forward(*args, weight_dtype="bfloat16")  # training defaults to True
    with pytest.raises(ValueError, match="'float16'"):
        lstm_ext.forward(*args, training=False, weight_dtype="float16")
    with pytest.raises(TypeError, match="weight_dtype: expected None or 'bfloat16', got int"):
        lstm_ext.forward(*args, training=False, weight_dtype=16)
    p64 = {k: v.astype(np.float64) for k, v in p.items()}
    with pytest.raises(TypeError, match="float32"):
        lstm_ext.forward(*[p64[k] for k in ARGS], training=False, weight_dtype="bfloat16")


def test_cuda_refuses(rng):
    if not lstm_ext.cuda_available():
        pytest.skip(reason=f"no CUDA device: {lstm_ext.cuda_status()}")
    p, _ = features_problem(rng, 3, 2, 4, 5, np.float32)
    with pytest.raises(ValueError, match="device='cpu'"):
        lstm_ext.forward(
            *[p[k] for k in ARGS], training=False, weight_dtype="bfloat16", device="cuda"
        )


def test_layer_in_eval_mode(rng):
    # nn.LSTM.inference_weight_dtype: the calls that keep no cache give the
    # float32 layer's result on rounded weight matrices (biases unrounded).
    from lstm_ext.nn import LSTM

    layer = LSTM(6, 20, num_layers=2, bidirectional=True, proj_size=7, seed=3)
    twin = LSTM(6, 20, num_layers=2, bidirectional=True, proj_size=7, seed=3)
    twin.params = {
        k: lstm_ext.round_bfloat16(v) if k.startswith("weight") else v
        for k, v in layer.params.items()
    }
    x = rng.standard_normal((9, 4, 6)).astype(np.float32)
    layer.inference_weight_dtype = "bfloat16"
    layer.eval(), twin.eval()
    out, (h, c) = layer(x)
    want, (hw, cw) = twin(x)
    for a, b in ((out, want), (h, hw), (c, cw)):
        np.testing.assert_array_equal(a, b)
    # a call that keeps a cache (as training does) runs on the float32 weights
    kept, _ = layer(x, keep_cache=True)
    layer.inference_weight_dtype = None
    np.testing.assert_array_equal(kept, layer(x)[0])
