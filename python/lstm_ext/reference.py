"""The LSTM in plain NumPy: the oracle of the tests and the place to learn the math.

Letters: T steps, B batch, I input features, H hidden units. The gate axis 4H
is ordered i, f, g, o (PyTorch's order). σ is the logistic sigmoid, ⊙ the
elementwise product.

Forward, for t = 0 … T-1, from h_{-1} = h0 and c_{-1} = c0::

    z_t = x_t Wᵀ + h_{t-1} Rᵀ + b                       [B,4H]
    i = σ(z_i)   f = σ(z_f)   g = tanh(z_g)   o = σ(z_o)
    c_t = f ⊙ c_{t-1} + i ⊙ g
    h_t = o ⊙ tanh(c_t)
    y_t = h_t

Backward, for t = T-1 … 0, from dh = dL/dh_T and dc = dL/dc_T::

    dh  += dy_t                                  (total dL/dh_t)
    dc  += dh ⊙ o ⊙ (1 - tanh²(c_t))             (total dL/dc_t)
    dz_i = dc ⊙ g ⊙ i(1-i)       dz_f = dc ⊙ c_{t-1} ⊙ f(1-f)
    dz_g = dc ⊙ i ⊙ (1-g²)       dz_o = dh ⊙ tanh(c_t) ⊙ o(1-o)
    dh   = dz_t R                 (dL/dh_{t-1})
    dc   = dc ⊙ f                 (dL/dc_{t-1})

and then dx_t = dz_t W, dW = Σ_t dz_tᵀ x_t, dR = Σ_t dz_tᵀ h_{t-1},
db = Σ_t Σ_batch dz_t; dh0 and dc0 are the dh and dc left after step 0.

The functions take and return what ``lstm_ext.forward``, ``backward`` and
``step`` do, as plain tuples, and compute in the dtype of ``x``. This module
imports nothing but NumPy, and stays simple: it is the judge, not the fast path.
"""

import numpy as np


def sigmoid(z):
    """σ(z) without overflow: e^{-|z|} never exceeds 1."""
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1 / (1 + e), e / (1 + e))


def _zeros_if_none(a, shape, dtype):
    return np.zeros(shape, dtype) if a is None else np.asarray(a, dtype)


def forward(x, W, R, b=None, h0=None, c0=None, *, batch_first=False, training=True):
    """Returns (y, h, c, cache); cache is None when training is False."""
    x = np.asarray(x)
    if batch_first:
        x = x.swapaxes(0, 1)
    dt = x.dtype
    T, B, _ = x.shape
    H = R.shape[1]
    b = _zeros_if_none(b, (4 * H,), dt)
    h = _zeros_if_none(h0, (B, H), dt)
    c = _zeros_if_none(c0, (B, H), dt)
    hs, cs, gates = [h], [c], []
    for t in range(T):
        z = x[t] @ W.T + h @ R.T + b
        i, f, g, o = np.split(z, 4, axis=1)
        i, f, g, o = sigmoid(i), sigmoid(f), np.tanh(g), sigmoid(o)
        c = f * c + i * g
        h = o * np.tanh(c)
        hs.append(h)
        cs.append(c)
        gates.append((i, f, g, o))
    y = np.stack(hs[1:]) if T else np.zeros((0, B, H), dt)
    cache = dict(x=x, W=W, R=R, hs=hs, cs=cs, gates=gates, batch_first=batch_first)
    return (y.swapaxes(0, 1) if batch_first else y), h, c, (cache if training else None)


def backward(cache, dy, dh=None, dc=None):
    """Returns (dx, dh0, dc0, dW, dR, db)."""
    x, W, R, hs, cs = cache["x"], cache["W"], cache["R"], cache["hs"], cache["cs"]
    T, B, _ = x.shape
    H = R.shape[1]
    dt = x.dtype
    if dy is None:
        dy = np.zeros((T, B, H), dt)
    elif cache["batch_first"]:
        dy = np.asarray(dy).swapaxes(0, 1)
    dh = _zeros_if_none(dh, (B, H), dt)
    dc = _zeros_if_none(dc, (B, H), dt)
    dx = np.zeros(x.shape, dt)
    dW, dR, db = np.zeros(W.shape, dt), np.zeros(R.shape, dt), np.zeros(4 * H, dt)
    for t in reversed(range(T)):
        i, f, g, o = cache["gates"][t]
        tc = np.tanh(cs[t + 1])
        dh = dh + dy[t]
        dc = dc + dh * o * (1 - tc**2)
        dz = np.concatenate(
            [
                dc * g * i * (1 - i),
                dc * cs[t] * f * (1 - f),
                dc * i * (1 - g**2),
                dh * tc * o * (1 - o),
            ],
            axis=1,
        )
        dx[t] = dz @ W
        dW += dz.T @ x[t]
        dR += dz.T @ hs[t]
        db += dz.sum(axis=0)
        dh = dz @ R
        dc = dc * f
    return (dx.swapaxes(0, 1) if cache["batch_first"] else dx), dh, dc, dW, dR, db


def step(x, h, c, W, R, b=None):
    """Returns (h, c) after one step from x [B,I]."""
    x = np.asarray(x)
    _, h, c, _ = forward(x[None], W, R, b, h, c, training=False)
    return h, c
