"""lstm_ext.forward/backward against torch.nn.LSTM (onnxruntime: test_onnx.py).

torch is optional: these tests skip, saying so, where it is not installed.
torch computes in the dtype of the call, so the tolerances bound the
rounding of two float32 (or two float64) implementations with different
summation orders. Checked
per tensor with np.testing.assert_allclose, |ours - theirs| <= atol + rtol*|theirs|,
where atol = ATOL*max(1, max|theirs|): an entry of dW, dR or db is a sum of
T*B terms whose rounding scales with the tensor, not with the entry, and
cancellation can leave an entry far below the error of its terms.

Worst seen over the shapes below and 20 seeds each (torch 2.13):
- float64 vs torch, rtol 1e-10, ATOL 1e-12. Unit roundoff 1.1e-16. Forward,
  dx, dh0, dc0: 1.3e-15 absolute; dW, dR, db: 3.6e-14 absolute (|dW| up to 20,
  sums of up to T*B = 400 rank-1 terms). At most 7e-4 of the bound: a wrong
  term, off by O(1), still fails by orders of magnitude.
- float32 vs torch, rtol 1e-4, ATOL 1e-5. Unit roundoff 6e-8; a K-term dot
  product typically errs by sqrt(K)*u, the BPTT sums run over T*B terms.
  Forward, dx, dh0, dc0: 5e-7 absolute; dW, dR, db: 3e-5 absolute, 1e-6 of
  their largest entry. At most 0.04 of the bound.
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
