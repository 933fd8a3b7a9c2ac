"""lstm_ext.convert: round trips between the PyTorch, ONNX and Keras layouts,
the gate blocks where each layout puts them, and the converted weights run by
each framework's equations (written here from its documentation) against the
reference."""

import numpy as np
import pytest

from lstm_ext import convert
from lstm_ext import reference as ref

I, H, T, B = 3, 2, 5, 3
LAYOUTS = ["torch", "onnx", "keras"]
CONVERT = {
    ("torch", "onnx"): convert.torch_to_onnx,
    ("onnx", "torch"): convert.onnx_to_torch,
    ("torch", "keras"): convert.torch_to_keras,
    ("keras", "torch"): convert.keras_to_torch,
    ("onnx", "keras"): convert.onnx_to_keras,
    ("keras", "onnx"): convert.keras_to_onnx,
}


def params(layout, rng, dtype=np.float64, one_bias=False):
    """Random parameters in `layout`; with one_bias the second bias (b_hh, Rb) is 0."""

    def r(*shape):
        return (0.5 * rng.standard_normal(shape)).astype(dtype)

    second = np.zeros(4 * H, dtype) if one_bias else r(4 * H)
    if layout == "torch":  # W, R, b_ih, b_hh
        return r(4 * H, I), r(4 * H, H), r(4 * H), second
    if layout == "onnx":  # W, R, B = [Wb | Rb]
        return r(4 * H, I), r(4 * H, H), np.concatenate([r(4 * H), second])
    return r(I, 4 * H), r(H, 4 * H), r(4 * H)  # keras: kernel, recurrent_kernel, bias


def sigmoid(z):
    return 1 / (1 + np.exp(-z))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("src", "dst"), list(CONVERT), ids="-".join)
def test_round_trip_is_exact(rng, src, dst, dtype):
    # Keras has one bias: a second bias of 0 survives the trip through it.
    start = params(src, rng, dtype, one_bias=dst == "keras")
    there = CONVERT[src, dst](*start)
    back = CONVERT[dst, src](*there)
    assert len(back) == len(start)
    for k, (a, b) in enumerate(zip(start, back, strict=True)):
        assert b.dtype == dtype, k
        np.testing.assert_array_equal(b, a, err_msg=str(k))
    for out in (*there, *back):
        assert out.dtype == dtype
        assert not any(np.shares_memory(out, a) for a in (*start, *there) if a is not out)


def test_two_biases_are_added_for_keras(rng):
    W, R, b_ih, b_hh = params("torch", rng)
    np.testing.assert_array_equal(convert.torch_to_keras(W, R, b_ih, b_hh)[2], b_ih + b_hh)
    np.testing.assert_array_equal(convert.torch_to_keras(W, R, b_ih)[2], b_ih)
    W, R, Bo = params("onnx", rng)
    Wb, Rb = np.split(Bo, 2)
    want = convert.reorder_gates(Wb + Rb, "iofg", "ifgo")
    np.testing.assert_array_equal(convert.onnx_to_keras(W, R, Bo)[2], want)
    _, _, Bo = convert.torch_to_onnx(*params("torch", rng)[:3])  # no b_hh: Rb = 0
    np.testing.assert_array_equal(Bo[4 * H :], 0)


def test_gate_blocks_land_where_each_layout_puts_them():
    # Each gate's block is filled with its index in ours: i 0, f 1, g 2, o 3.
    gate = np.repeat(np.arange(4.0), H)  # [4H]
    W, R = np.tile(gate[:, None], (1, I)), np.tile(gate[:, None], (1, H))
    Wo, Ro, Bo = convert.torch_to_onnx(W, R, gate, 10 + gate)
    onnx_order = np.repeat([0.0, 3.0, 1.0, 2.0], H)  # i, o, f, c
    np.testing.assert_array_equal(Wo[:, 0], onnx_order)
    np.testing.assert_array_equal(Ro[:, 0], onnx_order)
    np.testing.assert_array_equal(Bo, np.concatenate([onnx_order, 10 + onnx_order]))
    kernel, recurrent_kernel, bias = convert.torch_to_keras(W, R, gate)
    assert kernel.shape == (I, 4 * H) and recurrent_kernel.shape == (H, 4 * H)
    np.testing.assert_array_equal(kernel[0], gate)  # Keras: i, f, c, o as ours
    np.testing.assert_array_equal(recurrent_kernel[0], gate)
    np.testing.assert_array_equal(bias, gate)


def test_reorder_gates():
    a = np.arange(8)  # H = 2
    np.testing.assert_array_equal(
        convert.reorder_gates(a, "ifgo", "iofg"), [0, 1, 6, 7, 2, 3, 4, 5]
    )
    np.testing.assert_array_equal(
        convert.reorder_gates(a, "ifgo", "iofc"), [0, 1, 6, 7, 2, 3, 4, 5]
    )
    m = np.arange(16).reshape(2, 8)
    out = convert.reorder_gates(m, "iofg", "ifgo", axis=1)
    np.testing.assert_array_equal(out, m[:, [0, 1, 4, 5, 6, 7, 2, 3]])
    assert not np.shares_memory(convert.reorder_gates(a, "ifgo", "ifgo"), a)
    with pytest.raises(ValueError, match=r"dst: expected a permutation of 'ifgo'.*'ifgx'"):
        convert.reorder_gates(a, "ifgo", "ifgx")
    with pytest.raises(ValueError, match=r"src: expected a permutation of 'ifgo'.*1234"):
        convert.reorder_gates(a, 1234, "ifgo")  # was AttributeError
    with pytest.raises(ValueError, match=r"axis: expected an axis of a's 2, got 2"):
        convert.reorder_gates(m, "ifgo", "iofg", axis=2)  # was IndexError
    with pytest.raises(ValueError, match=r"a: expected a gate axis 0 of 4H entries.*\(6,\)"):
        convert.reorder_gates(np.arange(6), "ifgo", "iofg")


def onnx_lstm(X, W, R, B, P):
    """The ONNX LSTM operator, one forward direction, default activations,
    h0 = c0 = 0, as its specification writes it: gates i, o, f, c; P = [Pi, Po, Pf]."""
    Wi, Wo, Wf, Wc = np.split(W, 4)
    Ri, Ro, Rf, Rc = np.split(R, 4)
    Wbi, Wbo, Wbf, Wbc, Rbi, Rbo, Rbf, Rbc = np.split(B, 8)
    Pi, Po, Pf = np.split(P, 3)
    Ht = Ct = np.zeros((X.shape[1], R.shape[1]))
    Y = []
    for Xt in X:
        it = sigmoid(Xt @ Wi.T + Ht @ Ri.T + Pi * Ct + Wbi + Rbi)
        ft = sigmoid(Xt @ Wf.T + Ht @ Rf.T + Pf * Ct + Wbf + Rbf)
        ct = np.tanh(Xt @ Wc.T + Ht @ Rc.T + Wbc + Rbc)
        Ct = ft * Ct + it * ct
        ot = sigmoid(Xt @ Wo.T + Ht @ Ro.T + Po * Ct + Wbo + Rbo)
        Ht = ot * np.tanh(Ct)
        Y.append(Ht)
    return np.stack(Y)  # [T,B,H]


def keras_lstm(x, kernel, recurrent_kernel, bias):
    """tf.keras.layers.LSTM (default activations, zero initial state) as its
    cell computes it: z = x·kernel + h·recurrent_kernel + bias, gates i, f, c, o.
    x is batch-major [B,T,I]; returns every h, [B,T,H]."""
    h = c = np.zeros((x.shape[0], recurrent_kernel.shape[0]))
    ys = []
    for t in range(x.shape[1]):
        z = x[:, t] @ kernel + h @ recurrent_kernel + bias
        zi, zf, zc, zo = np.split(z, 4, axis=1)
        c = sigmoid(zf) * c + sigmoid(zi) * np.tanh(zc)
        h = sigmoid(zo) * np.tanh(c)
        ys.append(h)
    return np.stack(ys, axis=1)


# Same math, different association of sums and matrix products: rounding only.
TOL = dict(rtol=1e-12, atol=1e-14)


def test_onnx_weights_converted_give_the_reference_output(rng):
    W, R, Bo = params("onnx", rng)
    P = 0.5 * rng.standard_normal(3 * H)
    x = rng.standard_normal((T, B, I))
    Wt, Rt, b_ih, b_hh = convert.onnx_to_torch(W, R, Bo)
    y = ref.forward(x, Wt, Rt, b_ih + b_hh, peephole=P)[0]  # ONNX's P passes as it is
    np.testing.assert_allclose(y, onnx_lstm(x, W, R, Bo, P), **TOL)


def test_keras_weights_converted_give_the_reference_output(rng):
    kernel, recurrent_kernel, bias = params("keras", rng)
    x = rng.standard_normal((B, T, I))
    Wt, Rt, b_ih, b_hh = convert.keras_to_torch(kernel, recurrent_kernel, bias)
    y = ref.forward(x, Wt, Rt, b_ih + b_hh, batch_first=True)[0]
    np.testing.assert_allclose(y, keras_lstm(x, kernel, recurrent_kernel, bias), **TOL)


@pytest.mark.parametrize(("src", "dst"), list(CONVERT), ids="-".join)
def test_every_conversion_keeps_the_output(rng, src, dst):
    run = dict(
        torch=lambda x, W, R, b_ih, b_hh: ref.forward(x, W, R, b_ih + b_hh)[0],
        onnx=lambda x, W, R, Bo: onnx_lstm(x, W, R, Bo, np.zeros(3 * H)),
        keras=lambda x, *p: keras_lstm(x.swapaxes(0, 1), *p).swapaxes(0, 1),
    )
    start = params(src, rng)
    x = rng.standard_normal((T, B, I))
    np.testing.assert_allclose(run[dst](x, *CONVERT[src, dst](*start)), run[src](x, *start), **TOL)


def bad(shape):
    return np.zeros(shape)


@pytest.mark.parametrize(
    ("function", "args", "message"),
    [
        (convert.torch_to_onnx, (bad((7, I)), bad((8, H)), bad(8)), r"W: expected shape \[4H,I\]"),
        (convert.torch_to_onnx, (bad((1, 8, I)), bad((8, H)), bad(8)), r"W: .*\(1, 8, 3\)"),
        (
            convert.torch_to_onnx,
            (bad((8, I)), bad((8, 3)), bad(8)),
            r"R: expected shape \[4H,H\] = \(8, 2\), got \(8, 3\)",
        ),
        (convert.torch_to_keras, (bad((8, I)), bad((8, H)), bad(6)), r"b_ih: .*\(8,\), got \(6,\)"),
        (convert.torch_to_keras, (bad((8, I)), bad((8, H)), bad(8), bad(4)), r"b_hh: .*\(4,\)"),
        (convert.onnx_to_torch, (bad((8, I)), bad((8, H)), bad(8)), r"B: .*\[8H\] = \(16,\)"),
        (convert.onnx_to_keras, (bad((8, I)), bad((4, H)), bad(16)), r"R: .*\(4, 2\)"),
        (convert.keras_to_torch, (bad((I, 9)), bad((H, 8)), bad(8)), r"kernel: .*\[I,4H\]"),
        (
            convert.keras_to_onnx,
            (bad((I, 8)), bad((8, H)), bad(8)),
            r"recurrent_kernel: expected shape \[H,4H\] = \(2, 8\), got \(8, 2\)",
        ),
        (convert.keras_to_torch, (bad((I, 8)), bad((H, 8)), bad(4)), r"bias: .*\(8,\)"),
    ],
)
def test_bad_shapes_raise_naming_the_argument(function, args, message):
    with pytest.raises(ValueError, match=message):
        function(*args)


def test_a_model_without_biases_converts_with_zero_biases():
    # torch's bias=False has no b_ih: it had been refused as "b_ih: expected
    # shape [4H] = (24,), got ()".
    rng = np.random.default_rng(3)
    W, R = rng.standard_normal((24, 3)), rng.standard_normal((24, 6))
    Wo, Ro, B = convert.torch_to_onnx(W, R, None)
    assert B.shape == (48,) and not B.any() and B.dtype == W.dtype
    np.testing.assert_array_equal(convert.onnx_to_torch(Wo, Ro, B)[0], W)
    kernel, _, bias = convert.torch_to_keras(W, R)
    assert bias.shape == (24,) and not bias.any()
    np.testing.assert_array_equal(kernel, W.T)
