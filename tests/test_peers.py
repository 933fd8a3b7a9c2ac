"""lstm_ext against independent implementations: torch.nn.LSTM and onnxruntime.

Each peer is optional. Its tests are skipped, with the reason, where it is not
installed, and each peer is imported by its own tests only, so torch's run
without onnxruntime and the other way round.

Both peers compute in the dtype of the call, so the tolerances bound the
rounding of two float32 (or two float64) implementations with different
summation orders and, for onnxruntime, different sigmoid/tanh code. Checked
per tensor with np.testing.assert_allclose, |ours - theirs| <= atol + rtol*|theirs|,
where atol = ATOL*max(1, max|theirs|): an entry of dW, dR or db is a sum of
T*B terms whose rounding scales with the tensor, not with the entry, and
cancellation can leave an entry far below the error of its terms.

Worst seen over the shapes below and 20 seeds each (torch 2.13, onnxruntime 1.32):
- float64 vs torch, rtol 1e-10, ATOL 1e-12. Unit roundoff 1.1e-16. Forward,
  dx, dh0, dc0: 1.3e-15 absolute; dW, dR, db: 3.6e-14 absolute (|dW| up to 20,
  sums of up to T*B = 400 rank-1 terms). At most 7e-4 of the bound: a wrong
  term, off by O(1), still fails by orders of magnitude.
- float32 vs torch, rtol 1e-4, ATOL 1e-5. Unit roundoff 6e-8; a K-term dot
  product typically errs by sqrt(K)*u, the BPTT sums run over T*B terms.
  Forward, dx, dh0, dc0: 5e-7 absolute; dW, dR, db: 3e-5 absolute, 1e-6 of
  their largest entry. At most 0.04 of the bound.
- float32 vs onnxruntime, the same rtol and ATOL, forward only (ONNX has no
  LSTM gradient): 5e-7 absolute, at most 0.02 of the bound. onnxruntime 1.32
  has no float64 LSTM kernel; that test skips while it refuses doubles.
"""

import numpy as np
import pytest

import lstm_ext
from helpers import make_problem

TOL = {np.float64: (1e-10, 1e-12), np.float32: (1e-4, 1e-5)}  # rtol, ATOL
DTYPES = [np.float32, np.float64]
SHAPES = [  # (T, B, I, H); B = 1 and I != H included
    (1, 1, 3, 2),
    (6, 1, 5, 4),
    (9, 3, 10, 6),
    (20, 4, 16, 32),
    (50, 8, 64, 48),
]
OUT = ["y", "h", "c"]
GRAD = ["dx", "dh0", "dc0", "dW", "dR", "db"]


def check(names, ours, theirs, dtype):
    for name, a, t in zip(names, ours, theirs, strict=True):
        assert a.dtype == dtype, name
        rtol, atol = TOL[dtype]
        atol *= max(1.0, np.abs(t).max(initial=0.0))
        np.testing.assert_allclose(a, t, rtol=rtol, atol=atol, err_msg=name)


# torch.nn.LSTM: the same gate order (i, f, g, o) and two biases, b_ih + b_hh.


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch", reason="torch not installed: no torch.nn.LSTM check")


def torch_lstm(torch, p, batch_first=False):
    """Outputs and gradients of torch.nn.LSTM with our weights, as NumPy arrays.

    p holds x ([T,B,I], or [B,T,I] if batch_first), W, R, b, h0, c0, dy, dh, dc.
    The loss sum(y*dy) + sum(hT*dh) + sum(cT*dc) makes autograd's gradients
    those that lstm_ext.backward(cache, dy, dh, dc) returns.
    """
    t = {k: torch.from_numpy(v.copy()) for k, v in p.items()}
    I, H = p["W"].shape[1], p["R"].shape[1]
    lstm = torch.nn.LSTM(I, H, batch_first=batch_first, dtype=t["x"].dtype)
    with torch.no_grad():
        lstm.weight_ih_l0.copy_(t["W"])
        lstm.weight_hh_l0.copy_(t["R"])
        lstm.bias_ih_l0.copy_(t["b"])
        lstm.bias_hh_l0.zero_()
    x = t["x"].requires_grad_()
    h0, c0 = t["h0"][None].requires_grad_(), t["c0"][None].requires_grad_()
    y, (hT, cT) = lstm(x, (h0, c0))
    loss = (y * t["dy"]).sum() + (hT[0] * t["dh"]).sum() + (cT[0] * t["dc"]).sum()
    loss.backward()
    outs = [y, hT[0], cT[0]]
    grads = [x.grad, h0.grad[0], c0.grad[0], lstm.weight_ih_l0.grad, lstm.weight_hh_l0.grad]
    grads.append(lstm.bias_ih_l0.grad)
    return [a.detach().numpy() for a in outs], [g.numpy() for g in grads]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_torch(torch, rng, shape, dtype):
    p = make_problem(rng, *shape, dtype=dtype)
    outs, grads = torch_lstm(torch, p)
    fwd = lstm_ext.forward(p["x"], p["W"], p["R"], p["b"], p["h0"], p["c0"])
    check(OUT, fwd[:3], outs, dtype)
    bwd = lstm_ext.backward(fwd.cache, p["dy"], p["dh"], p["dc"])
    check(GRAD, bwd, grads, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_torch_batch_first(torch, rng, dtype):
    p = make_problem(rng, 7, 3, 5, 4, dtype=dtype)
    p["x"], p["dy"] = p["x"].swapaxes(0, 1).copy(), p["dy"].swapaxes(0, 1).copy()  # [B,T,*]
    outs, grads = torch_lstm(torch, p, batch_first=True)
    fwd = lstm_ext.forward(p["x"], p["W"], p["R"], p["b"], p["h0"], p["c0"], batch_first=True)
    check(OUT, fwd[:3], outs, dtype)
    bwd = lstm_ext.backward(fwd.cache, p["dy"], p["dh"], p["dc"])
    check(GRAD, bwd, grads, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_defaults_match_torch_zero_state(torch, rng, dtype):
    # b, h0, c0 = None in lstm_ext; zeros in torch.
    p = make_problem(rng, 8, 2, 5, 3, dtype=dtype)
    zero = {k: np.zeros_like(p[k]) for k in ("b", "h0", "c0")}
    outs, grads = torch_lstm(torch, {**p, **zero})
    fwd = lstm_ext.forward(p["x"], p["W"], p["R"])
    check(OUT, fwd[:3], outs, dtype)
    bwd = lstm_ext.backward(fwd.cache, p["dy"], p["dh"], p["dc"])
    check(GRAD, bwd, grads, dtype)


# onnxruntime's LSTM: gates ordered i, o, f, c; W [1,4H,I], R [1,4H,H],
# B [1,8H] = (Wb, Rb); time-major only (layout 0), forward only.

ONNX_ORDER = [0, 3, 1, 2]  # ONNX gate k is our gate ONNX_ORDER[k]: i, o, f, g


def onnx_gates(a):
    """Reorder the leading 4H axis of a from i, f, g, o to ONNX's i, o, f, c."""
    H = a.shape[0] // 4
    return np.concatenate([a[k * H : (k + 1) * H] for k in ONNX_ORDER])


@pytest.fixture(scope="module")
def ort():
    pytest.importorskip("onnx", reason="onnx not installed: no onnxruntime check")
    return pytest.importorskip("onnxruntime", reason="onnxruntime not installed: no check")


def ort_lstm(ort, p):
    """Y[:,0], Y_h[0], Y_c[0] of an ONNX LSTM (opset 14) run by onnxruntime's CPU provider."""
    import onnx
    from onnx import helper

    T, B, I = p["x"].shape
    H = p["R"].shape[1]
    elem = helper.np_dtype_to_tensor_dtype(p["x"].dtype)
    shapes = dict(X=[T, B, I], W=[1, 4 * H, I], R=[1, 4 * H, H], B=[1, 8 * H])
    shapes.update(initial_h=[1, B, H], initial_c=[1, B, H])
    inputs = [helper.make_tensor_value_info(k, elem, s) for k, s in shapes.items()]
    outputs = [
        helper.make_tensor_value_info(k, elem, s)
        for k, s in dict(Y=[T, 1, B, H], Y_h=[1, B, H], Y_c=[1, B, H]).items()
    ]
    node = helper.make_node(  # "" skips the optional sequence_lens
        "LSTM",
        ["X", "W", "R", "B", "", "initial_h", "initial_c"],
        ["Y", "Y_h", "Y_c"],
        hidden_size=H,
    )
    graph = helper.make_graph([node], "lstm", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    onnx.checker.check_model(model)
    options = ort.SessionOptions()
    options.log_severity_level = 4  # a refused dtype is reported by the exception, not a log line
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    feed = dict(X=p["x"], W=onnx_gates(p["W"])[None], R=onnx_gates(p["R"])[None])
    feed.update(B=np.concatenate([onnx_gates(p["b"]), np.zeros_like(p["b"])])[None])
    feed.update(initial_h=p["h0"][None], initial_c=p["c0"][None])
    Y, Y_h, Y_c = session.run(None, feed)
    return Y[:, 0], Y_h[0], Y_c[0]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_onnxruntime(ort, rng, shape):
    p = make_problem(rng, *shape, dtype=np.float32)
    fwd = lstm_ext.forward(p["x"], p["W"], p["R"], p["b"], p["h0"], p["c0"], training=False)
    check(OUT, fwd[:3], ort_lstm(ort, p), np.float32)


def test_matches_onnxruntime_float64(ort, rng):
    p = make_problem(rng, 9, 3, 10, 6, dtype=np.float64)
    try:
        theirs = ort_lstm(ort, p)
    except Exception as e:  # onnxruntime 1.32: "LSTM operator does not support double yet"
        if "double" not in str(e):
            raise
        pytest.skip(f"onnxruntime {ort.__version__} has no float64 LSTM kernel")
    fwd = lstm_ext.forward(p["x"], p["W"], p["R"], p["b"], p["h0"], p["c0"], training=False)
    check(OUT, fwd[:3], theirs, np.float64)
