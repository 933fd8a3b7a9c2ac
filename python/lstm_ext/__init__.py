"""lstm_ext: LSTM forward and backpropagation through time, NumPy in, NumPy out.

One layer, one direction, a whole sequence per call. Letters: T steps, B batch,
I input features, H hidden units; the gate axis 4H is ordered i, f, g, o as in
PyTorch. Arrays are ``[T,B,*]``, or ``[B,T,*]`` with ``batch_first=True``.
``lstm_ext.reference`` states the same math in plain NumPy.

float32 and float64 are supported; every array of one call must share the
dtype of ``x`` and the results come back in it. NaN and Inf in inputs
propagate as IEEE arithmetic does (a NaN anywhere in ``x[t]`` reaches every
later step of that sequence); they are not checked for. Calls release the GIL.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import scipy_openblas32  # noqa: F401  (loads libscipy_openblas before _core needs it)
from numpy.typing import ArrayLike

from . import _core
from ._core import Cache
from ._version import __version__

__all__ = [
    "Cache",
    "ForwardResult",
    "GradResult",
    "StepResult",
    "__version__",
    "backward",
    "forward",
    "step",
]


class ForwardResult(NamedTuple):
    y: np.ndarray  #: [T,B,H] (or [B,T,H]): h_t of every step
    h: np.ndarray  #: [B,H] h after the last step
    c: np.ndarray  #: [B,H] c after the last step
    cache: Cache | None  #: what backward needs; None when training=False


class GradResult(NamedTuple):
    dx: np.ndarray  #: [T,B,I] (or [B,T,I])
    dh0: np.ndarray  #: [B,H]
    dc0: np.ndarray  #: [B,H]
    dW: np.ndarray  #: [4H,I]
    dR: np.ndarray  #: [4H,H]
    db: np.ndarray  #: [4H]


class StepResult(NamedTuple):
    h: np.ndarray  #: [B,H]
    c: np.ndarray  #: [B,H]


def forward(
    x: ArrayLike,
    W: ArrayLike,
    R: ArrayLike,
    b: ArrayLike | None = None,
    h0: ArrayLike | None = None,
    c0: ArrayLike | None = None,
    *,
    batch_first: bool = False,
    training: bool = True,
) -> ForwardResult:
    """Run the LSTM over a whole sequence.

    x: [T,B,I] (``[B,T,I]`` if batch_first); W: [4H,I]; R: [4H,H]; b: [4H] or
    None (zeros); h0, c0: [B,H] or None (zeros). With ``training=False`` no
    cache is kept and the call needs only O(B*H) memory beyond ``y``.

    Returns ``ForwardResult(y, h, c, cache)``. The cache holds private copies
    of x, W and R, so changing those arrays afterwards does not change what
    backward computes. Non-contiguous inputs are copied once. Raises
    TypeError for a wrong dtype, ValueError for a wrong shape.
    """
    return ForwardResult(
        *_core.forward(x, W, R, b, h0, c0, batch_first=batch_first, training=training)
    )


def backward(
    cache: Cache, dy: ArrayLike | None, dh: ArrayLike | None = None, dc: ArrayLike | None = None
) -> GradResult:
    """Backpropagation through time from a forward call's cache.

    dy: dL/dy, shaped like forward's y, or None (zeros); dh, dc: dL/dh and
    dL/dc of the final state, [B,H] or None (zeros). The cache is only read:
    it may serve several backward calls.

    Returns ``GradResult(dx, dh0, dc0, dW, dR, db)``.
    """
    return GradResult(*_core.backward(cache, dy, dh, dc))


def step(
    x: ArrayLike,
    h: ArrayLike | None,
    c: ArrayLike | None,
    W: ArrayLike,
    R: ArrayLike,
    b: ArrayLike | None = None,
) -> StepResult:
    """One LSTM step for streaming inference: x [B,I], h and c [B,H] (None: zeros).

    Returns ``StepResult(h, c)``, the new state, in new arrays. Feeding the
    steps of a sequence one by one gives what ``forward`` gives.
    """
    return StepResult(*_core.step(x, h, c, W, R, b))
