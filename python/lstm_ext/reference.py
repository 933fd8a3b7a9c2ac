"""The LSTM in plain NumPy: the oracle of the tests and the place to learn the math.

Letters: T steps, B batch, I input features, H hidden units (the cell c), P
projection size (the output h; P = H without a projection). The gate axis 4H
is ordered i, f, g, o (PyTorch's order). σ is the logistic sigmoid, ⊙ the
elementwise product, clip(z) = min(max(z, -clip), clip).

Forward, for t = 0 … T-1, from h_{-1} = h0 and c_{-1} = c0::

    z_t = x_t Wᵀ + h_{t-1} Rᵀ + b                       [B,4H]  (R is [4H,P])
    z_i += p_i ⊙ c_{t-1}     z_f += p_f ⊙ c_{t-1}       (peephole)
    z = clip(z)                                         (clip; z_o below too)
    i = σ(z_i)   f = σ(z_f)   g = tanh(z_g)
    f = 1 - i                                           (input_forget: z_f unused)
    c_t = f ⊙ c_{t-1} + i ⊙ g                           [B,H]
    z_o += p_o ⊙ c_t                                    (peephole: o sees the new c)
    o = σ(clip(z_o))
    m_t = o ⊙ tanh(c_t)                                 [B,H]
    h_t = m_t                   or  h_t = m_t W_hrᵀ     [B,P]  (projection W_hr [P,H])
    y_t = h_t

The peephole vector is [3H] in ONNX's order (p_i, p_o, p_f).

lengths [B]: steps t >= len[b] give y_t = 0 and leave sequence b's h and c as
they were, so the returned h, c are its state after its last valid step.
reverse: each sequence's valid part x[0:len[b]] is flipped in time, run
forward, and its y flipped back, so the pass starts at step len[b]-1.

Backward, for t = T-1 … 0, from dh = dL/dh_T and dc = dL/dc_T; steps past a
sequence's length ignore its dy_t and pass its dh, dc through unchanged::

    dh  += dy_t                                  (total dL/dh_t)
    dm   = dh                or  dm = dh W_hr,   dW_hr += dhᵀ m_t
    dz_o = dm ⊙ tanh(c_t) ⊙ o(1-o)
    dc  += dm ⊙ o ⊙ (1 - tanh²(c_t)) + dz_o ⊙ p_o     (total dL/dc_t)
    dz_i = dc ⊙ g ⊙ i(1-i)       dz_f = dc ⊙ c_{t-1} ⊙ f(1-f)
    dz_g = dc ⊙ i ⊙ (1-g²)
    input_forget: dz_i = dc ⊙ (g - c_{t-1}) ⊙ i(1-i),  dz_f = 0
    clip: each dz is zeroed where its z was outside [-clip, clip]
    dp_i += Σ_batch dz_i ⊙ c_{t-1}   dp_f += Σ_batch dz_f ⊙ c_{t-1}
    dp_o += Σ_batch dz_o ⊙ c_t
    dh   = dz_t R                                 (dL/dh_{t-1})
    dc   = dc ⊙ f + dz_i ⊙ p_i + dz_f ⊙ p_f       (dL/dc_{t-1})

and then dx_t = dz_t W, dW = Σ_t dz_tᵀ x_t, dR = Σ_t dz_tᵀ h_{t-1},
db = Σ_t Σ_batch dz_t; dh0 and dc0 are the dh and dc left after step 0.
Without peepholes their terms are absent.

The functions take and return what ``lstm_ext.forward``, ``backward`` and
``step`` do, as plain tuples, and compute in the dtype of ``x``. This module
imports nothing but NumPy, and stays simple: it is the judge, not the fast path.
It does not validate its inputs.
"""

import numpy as np


def round_bfloat16(a):
    """float32 ``a`` rounded to bfloat16 (to nearest, ties to even), as float32.

    bfloat16 keeps float32's sign, exponent and top 7 mantissa bits: the
    rounding adds half of the dropped 16 bits' range (less one, plus the kept
    last bit, for ties to even) and cuts. A NaN stays a (quiet) NaN; numbers
    past bfloat16's largest round to ±inf. This is ``weight_dtype="bfloat16"``'s
    rounding, bit for bit.
    """
    a = np.asarray(a, dtype=np.float32)  # ascontiguousarray made a 0-d array 1-d
    b = a.view(np.uint32).astype(np.uint64)  # room for the carry
    r = (b + 0x7FFF + ((b >> 16) & 1)) & 0xFFFF0000
    r = np.where(np.isnan(a), (b | 0x00400000) & 0xFFFF0000, r)
    return r.astype(np.uint32).view(np.float32)


def sigmoid(z):
    """σ(z) without overflow: e^{-|z|} never exceeds 1."""
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1 / (1 + e), e / (1 + e))


def _zeros_if_none(a, shape, dtype):
    return np.zeros(shape, dtype) if a is None else np.asarray(a, dtype)


def _clip(z, clip):
    return z if clip is None else np.clip(z, -clip, clip)


def _passes(z, clip):
    """1 where clip(z) lets the gradient through (-clip <= z <= clip, or z is
    NaN, which keeps propagating), else 0."""
    return 1 if clip is None else (~((z < -clip) | (z > clip))).astype(z.dtype)


def _reverse_valid(a, lengths):
    """a [T,B,*] with each sequence's valid steps a[0:len[b], b] flipped in time.

    Steps past a sequence's length stay where they are. Applying it twice
    gives a back.
    """
    t = np.arange(a.shape[0])[:, None]  # [T,1]
    src = np.where(t < lengths, lengths - 1 - t, t)  # [T,B]: the step that lands at t
    return np.take_along_axis(a, src.reshape(src.shape + (1,) * (a.ndim - 2)), axis=0)


def forward(
    x,
    W,
    R,
    b=None,
    h0=None,
    c0=None,
    *,
    batch_first=False,
    training=True,
    reverse=False,
    lengths=None,
    W_hr=None,
    peephole=None,
    clip=None,
    input_forget=False,
    return_cell_states=False,
    weight_dtype=None,
):
    """Returns (y, h, c, cache), plus cell_states when return_cell_states.

    weight_dtype="bfloat16": W, R and W_hr go through round_bfloat16 first.

    x [T,B,I]; W [4H,I]; R [4H,P]; b [4H]; h0 [B,P]; c0 [B,H]; lengths [B];
    W_hr [P,H]; peephole [3H] as (p_i, p_o, p_f). y [T,B,P]; h [B,P]; c [B,H];
    cell_states [T,B,H] (c_t of every step, 0 past a sequence's length).
    batch_first swaps the T and B axes of x, y and cell_states. cache is None
    when training is False.
    """
    x = np.asarray(x)
    if batch_first:
        x = x.swapaxes(0, 1)
    if weight_dtype == "bfloat16":
        W, R = round_bfloat16(W), round_bfloat16(R)
        W_hr = None if W_hr is None else round_bfloat16(W_hr)
    dt = x.dtype
    T, B, _ = x.shape
    H = W.shape[0] // 4
    P = H if W_hr is None else W_hr.shape[0]
    lengths = np.full(B, T) if lengths is None else np.asarray(lengths)
    if reverse:
        x = _reverse_valid(x, lengths)
    b = _zeros_if_none(b, (4 * H,), dt)
    if peephole is not None:
        p_i, p_o, p_f = np.split(np.asarray(peephole, dt), 3)  # [H] each
    h = _zeros_if_none(h0, (B, P), dt)
    c = _zeros_if_none(c0, (B, H), dt)
    hs, cs, steps = [h], [c], []
    y, cell_states = np.zeros((T, B, P), dt), np.zeros((T, B, H), dt)
    for t in range(T):
        valid = (t < lengths)[:, None]  # [B,1]
        z_i, z_f, z_g, z_o = np.split(x[t] @ W.T + h @ R.T + b, 4, axis=1)  # [B,H] each
        if peephole is not None:
            z_i, z_f = z_i + p_i * c, z_f + p_f * c
        i, f, g = sigmoid(_clip(z_i, clip)), sigmoid(_clip(z_f, clip)), np.tanh(_clip(z_g, clip))
        if input_forget:
            f = 1 - i
        c_t = f * c + i * g
        if peephole is not None:
            z_o = z_o + p_o * c_t
        o = sigmoid(_clip(z_o, clip))
        m = o * np.tanh(c_t)  # [B,H]
        h_t = m if W_hr is None else m @ W_hr.T  # [B,P]
        y[t] = np.where(valid, h_t, 0)
        cell_states[t] = np.where(valid, c_t, 0)
        h = np.where(valid, h_t, h)
        c = np.where(valid, c_t, c)
        hs.append(h)
        cs.append(c)
        steps.append(dict(z=(z_i, z_f, z_g, z_o), gates=(i, f, g, o), c_t=c_t, m=m))
    if reverse:
        y, cell_states = _reverse_valid(y, lengths), _reverse_valid(cell_states, lengths)
    if batch_first:
        y, cell_states = y.swapaxes(0, 1), cell_states.swapaxes(0, 1)
    cache = dict(
        x=x,
        W=W,
        R=R,
        W_hr=W_hr,
        peephole=peephole,
        clip=clip,
        input_forget=input_forget,
        lengths=lengths,
        reverse=reverse,
        batch_first=batch_first,
        hs=hs,
        cs=cs,
        steps=steps,
    )
    out = (y, h, c, cache if training else None)
    return (*out, cell_states) if return_cell_states else out


def backward(cache, dy, dh=None, dc=None):
    """Returns (dx, dh0, dc0, dW, dR, db), plus (dW_hr, dpeephole) when forward got
    W_hr or peephole (the one it did not get is None).

    dy [T,B,P] ([B,T,P] if batch_first) or None; dh [B,P]; dc [B,H].
    """
    x, W, R, W_hr = cache["x"], cache["W"], cache["R"], cache["W_hr"]
    clip, input_forget = cache["clip"], cache["input_forget"]
    lengths, hs, cs = cache["lengths"], cache["hs"], cache["cs"]
    T, B, _ = x.shape
    H = W.shape[0] // 4
    P = R.shape[1]
    dt = x.dtype
    if dy is None:
        dy = np.zeros((T, B, P), dt)
    elif cache["batch_first"]:
        dy = np.asarray(dy).swapaxes(0, 1)
    if cache["reverse"]:
        dy = _reverse_valid(np.asarray(dy), lengths)
    peephole = cache["peephole"]
    if peephole is not None:
        p_i, p_o, p_f = np.split(np.asarray(peephole, dt), 3)  # [H] each
    dh = _zeros_if_none(dh, (B, P), dt)
    dc = _zeros_if_none(dc, (B, H), dt)
    dx = np.zeros(x.shape, dt)
    dW, dR, db = np.zeros(W.shape, dt), np.zeros(R.shape, dt), np.zeros(4 * H, dt)
    dW_hr = None if W_hr is None else np.zeros(W_hr.shape, dt)
    dp_i, dp_o, dp_f = np.zeros(H, dt), np.zeros(H, dt), np.zeros(H, dt)
    for t in reversed(range(T)):
        s = cache["steps"][t]
        i, f, g, o = s["gates"]
        z_i, z_f, z_g, z_o = s["z"]
        c_prev, c_t = cs[t], s["c_t"]
        tc = np.tanh(c_t)
        valid = (t < lengths)[:, None]  # [B,1]
        dh_t = np.where(valid, dh + dy[t], 0)  # a step past the length sees no gradient
        dc_t = np.where(valid, dc, 0)
        if W_hr is None:
            dm = dh_t
        else:
            dm = dh_t @ W_hr  # [B,H]
            dW_hr += dh_t.T @ s["m"]
        dz_o = dm * tc * o * (1 - o) * _passes(z_o, clip)
        dc_t = dc_t + dm * o * (1 - tc**2)
        if peephole is not None:
            dc_t = dc_t + dz_o * p_o
        if input_forget:  # f = 1 - i
            dz_i = dc_t * (g - c_prev) * i * (1 - i) * _passes(z_i, clip)
            dz_f = np.zeros_like(dz_i)
        else:
            dz_i = dc_t * g * i * (1 - i) * _passes(z_i, clip)
            dz_f = dc_t * c_prev * f * (1 - f) * _passes(z_f, clip)
        dz_g = dc_t * i * (1 - g**2) * _passes(z_g, clip)
        dz = np.concatenate([dz_i, dz_f, dz_g, dz_o], axis=1)  # [B,4H]
        dx[t] = dz @ W
        dW += dz.T @ x[t]
        dR += dz.T @ hs[t]
        db += dz.sum(axis=0)
        dc_prev = dc_t * f
        if peephole is not None:
            dc_prev = dc_prev + dz_i * p_i + dz_f * p_f
            dp_i += (dz_i * c_prev).sum(axis=0)
            dp_f += (dz_f * c_prev).sum(axis=0)
            dp_o += (dz_o * c_t).sum(axis=0)
        dh = np.where(valid, dz @ R, dh)  # ... and passes dh, dc through unchanged
        dc = np.where(valid, dc_prev, dc)
    if cache["reverse"]:
        dx = _reverse_valid(dx, lengths)
    grads = (dx.swapaxes(0, 1) if cache["batch_first"] else dx), dh, dc, dW, dR, db
    if W_hr is None and peephole is None:
        return grads
    dpeephole = None if peephole is None else np.concatenate([dp_i, dp_o, dp_f])
    return (*grads, dW_hr, dpeephole)


def step(x, h, c, W, R, b=None, *, W_hr=None, peephole=None, clip=None, input_forget=False):
    """Returns (h, c) after one step from x [B,I], h [B,P], c [B,H]."""
    x = np.asarray(x)
    _, h, c, _ = forward(
        x[None],
        W,
        R,
        b,
        h,
        c,
        training=False,
        W_hr=W_hr,
        peephole=peephole,
        clip=clip,
        input_forget=input_forget,
    )
    return h, c
