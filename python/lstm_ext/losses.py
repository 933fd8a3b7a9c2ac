"""Losses on NumPy arrays: each returns ``(loss, dpred)``.

``loss`` is a Python float, the mean over the counted elements; ``dpred`` is
d loss / d pred, with the shape and dtype of the prediction, ready for
``LSTM.backward`` (after the output layer's own backward).

Letters: C classes; ``...`` any leading shape (e.g. T, B for a [T,B,C] output).
A ``mask`` marks what counts: True (or 1) counts, False (or 0) does not, e.g.
the padded steps of a ragged batch. Masked-out elements add nothing to the
loss and get a zero gradient; the mean divides by the number counted. A mask
that counts nothing is an error, not a division by zero.

Losses are in nats; ``bits(loss)`` (or ``loss / LN2``) gives bits, e.g. bits
per character for a character model.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike

from ._checks import as_array, same_dtype

__all__ = ["LN2", "bits", "mse", "softmax_cross_entropy"]

LN2 = math.log(2.0)  # nats per bit


def bits(nats: float) -> float:
    """A loss in nats (natural log) in bits: ``nats / ln 2``."""
    return nats / LN2


def _float_array(name: str, a: ArrayLike) -> np.ndarray:
    """a as float32 or float64, the dtypes lstm_ext computes in (float16's
    counts and sums overflow past 65,504: a loss of inf or NaN)."""
    a = as_array(name, a)
    if not (same_dtype(a.dtype, np.float32) or same_dtype(a.dtype, np.float64)):
        raise TypeError(f"{name}: expected a float32 or float64 array, got dtype {a.dtype}")
    return a


def _mask(mask: ArrayLike | None, shape: tuple[int, ...], what: str) -> np.ndarray | None:
    """``mask`` as a boolean array of ``shape`` (broadcast), or None for all.

    Raises if it does not broadcast, holds values other than 0/1, or counts
    nothing (``what`` names the counted thing in the message)."""
    if mask is None:
        if math.prod(shape) == 0:
            raise ValueError(f"mask: counts no {what} (the input is empty)")
        return None
    m = as_array("mask", mask)
    if m.dtype != np.bool_:
        if not (np.issubdtype(m.dtype, np.number) and np.all((m == 0) | (m == 1))):
            raise ValueError(f"mask: expected booleans or 0/1 values, got dtype {m.dtype}")
        m = m != 0
    try:
        m = np.broadcast_to(m, shape)
    except ValueError:
        raise ValueError(f"mask: shape {m.shape} does not broadcast to {shape}") from None
    if not m.any():
        raise ValueError(f"mask: counts no {what}")
    return m


def mse(pred: ArrayLike, target: ArrayLike, mask: ArrayLike | None = None):
    """Mean squared error and its gradient.

    loss = Σ m·(pred - target)² / Σ m,   dpred = 2·m·(pred - target) / Σ m

    over all elements, with m = 1 everywhere when ``mask`` is None. ``target``
    has the shape of ``pred``; ``mask`` broadcasts to it. Computed in pred's
    dtype (target is cast to it). Returns ``(loss, dpred)``.
    """
    pred = _float_array("pred", pred)
    target = as_array("target", target)
    if target.shape != pred.shape:
        raise ValueError(f"target: expected the shape of pred {pred.shape}, got {target.shape}")
    if not np.issubdtype(target.dtype, np.number) or np.iscomplexobj(target):
        raise TypeError(f"target: expected a real numeric array, got dtype {target.dtype}")
    m = _mask(mask, pred.shape, "element")
    diff = pred - target.astype(pred.dtype, copy=False)
    if m is not None:
        diff = np.where(m, diff, pred.dtype.type(0))
    count = pred.size if m is None else int(np.count_nonzero(m))
    loss = float(np.sum(diff * diff) / pred.dtype.type(count))
    return loss, diff * pred.dtype.type(2.0 / count)


def softmax_cross_entropy(logits: ArrayLike, targets: ArrayLike, mask: ArrayLike | None = None):
    """Mean cross-entropy of softmax(logits) against class indices, and its gradient.

    logits [...,C] (floating), targets [...] (integers in [0, C)), mask [...]
    or broadcastable to it (None: every position counts). With
    z = logits - max_c logits (so exp never overflows; the max cancels),

        log p[..., c] = z[..., c] - log Σ_c' exp z[..., c']
        loss  = -Σ m·log p[..., targets] / Σ m
        dlogits = m·(p - onehot(targets)) / Σ m

    Computed in the logits' dtype. Targets at masked-out positions are not
    read, so padding may hold any integer (e.g. -1). Returns ``(loss, dlogits)``.
    """
    logits = _float_array("logits", logits)
    if logits.ndim < 1 or logits.shape[-1] < 1:
        raise ValueError(f"logits: expected shape [...,C] with C >= 1, got {logits.shape}")
    targets = as_array("targets", targets)
    if targets.shape != logits.shape[:-1]:
        raise ValueError(
            f"targets: expected class indices of shape logits.shape[:-1] = "
            f"{logits.shape[:-1]}, got {targets.shape}"
        )
    if not np.issubdtype(targets.dtype, np.integer):
        raise TypeError(f"targets: expected integer class indices, got dtype {targets.dtype}")
    C = logits.shape[-1]
    m = _mask(mask, targets.shape, "position")
    counted = targets if m is None else targets[m]
    if counted.size and (counted.min() < 0 or counted.max() >= C):
        bad = counted[(counted < 0) | (counted >= C)][0]
        raise ValueError(f"targets: expected class indices in [0, {C}), got {bad}")
    t = targets if m is None else np.where(m, targets, 0)  # safe indices everywhere
    count = targets.size if m is None else int(np.count_nonzero(m))
    one = logits.dtype.type(1)
    # One array of the logits' size, z, then e, then the gradient, in place:
    # a temporary each took fresh pages from the C library at every call
    # (601 page faults a call at (64,32,103); dev/perf-notes.md, 78).
    with np.errstate(invalid="ignore"):  # Inf - Inf where a logit is Inf: NaN, as IEEE says
        grad = logits - logits.max(axis=-1, keepdims=True)  # z [...,C], max 0
        z_t = np.take_along_axis(grad, t[..., None], axis=-1)[..., 0]
        np.exp(grad, out=grad)  # e, in (0, 1]: no overflow, at least one term is 1
        s = grad.sum(axis=-1, keepdims=True)  # [...,1], in [1, C]
        logp_t = z_t - np.log(s[..., 0])
        if m is not None:
            logp_t = np.where(m, logp_t, 0)
        loss = float(-np.sum(logp_t) / logits.dtype.type(count))
        grad /= s  # softmax
        np.put_along_axis(grad, t[..., None], np.take_along_axis(grad, t[..., None], -1) - one, -1)
    grad *= one / logits.dtype.type(count)
    if m is not None:
        grad[~m] = 0  # not 0·grad: a masked-out NaN or Inf logit must not leak
    return loss, grad
