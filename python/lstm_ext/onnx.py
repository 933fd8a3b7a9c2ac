"""The ONNX ``LSTM`` operator (opset 14) on NumPy arrays, run by lstm_ext's core.

``onnx_lstm`` takes the operator's inputs and attributes in ONNX's layouts and
returns its three outputs in ONNX's shapes. It converts layouts and calls
``lstm_ext.forward`` once per direction (``training=False``); the math is the
core's. Only the default activations (Sigmoid, Tanh, Tanh) are supported.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from ._checks import as_array, is_int, same_dtype
from .convert import reorder_gates

__all__ = ["onnx_lstm"]

DIRECTIONS = {"forward": 1, "reverse": 1, "bidirectional": 2}
DEFAULT_ACTIVATIONS = ["sigmoid", "tanh", "tanh"]


def _shaped(name, a, shape, letters):
    """a as an array, or ValueError unless its shape is `shape` (spelled `letters`)."""
    a = as_array(name, a)
    if a.shape != shape:
        raise ValueError(f"{name}: expected shape {letters} = {shape}, got {a.shape}")
    return a


def _typed(inputs: dict) -> dict:
    """The inputs of ONNX's type T (X, W, R, B, initial_h, initial_c, P) as
    arrays, None kept, each of X's dtype, float32 or float64; else a TypeError
    naming the input as ONNX does (lstm_ext.forward's checks say b, h0, ...)."""
    arrays = {k: None if a is None else as_array(k, a) for k, a in inputs.items()}
    T = arrays["X"].dtype
    if not (same_dtype(T, np.float32) or same_dtype(T, np.float64)):
        raise TypeError(f"X: expected dtype float32 or float64, got {T}")
    X = inputs["X"]  # a list has no dtype: say what NumPy read it as
    of_X = "X" if isinstance(X, np.ndarray) else f"X (a {type(X).__name__}, read as {T})"
    for k, a in arrays.items():
        if a is not None and not same_dtype(a.dtype, T):
            raise TypeError(f"{k}: expected dtype {T} to match {of_X}, got {a.dtype}")
    return arrays


def _lengths(a, Bn: int, T: int) -> np.ndarray:
    """sequence_lens as an array of Bn integers in [0, T]; else an error by its ONNX name."""
    a = _shaped("sequence_lens", a, (Bn,), "[B]")
    if a.size == 0:  # B = 0: [] of any dtype, as lstm_ext.forward takes it
        return a
    if a.dtype.kind not in "iu":
        raise TypeError(f"sequence_lens: expected an integer array, got dtype {a.dtype}")
    bad = np.flatnonzero((a < 0) | (a > T))
    if bad.size:
        i = bad[0]
        raise ValueError(f"sequence_lens: expected integers in [0, {T}], got {a[i]} at [{i}]")
    return a


def onnx_lstm(
    X: ArrayLike,
    W: ArrayLike,
    R: ArrayLike,
    B: ArrayLike | None = None,
    sequence_lens: ArrayLike | None = None,
    initial_h: ArrayLike | None = None,
    initial_c: ArrayLike | None = None,
    P: ArrayLike | None = None,
    *,
    direction: str = "forward",
    clip: float | None = None,
    input_forget: int = 0,
    layout: int = 0,
    activations: list[str] | None = None,
    activation_alpha: list[float] | None = None,
    activation_beta: list[float] | None = None,
    hidden_size: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Outputs ``(Y, Y_h, Y_c)`` of an ONNX ``LSTM`` node (opset 14).

    Inputs and attributes carry the operator's names and meanings. D is 2 for
    ``direction="bidirectional"``, else 1 (``"forward"``, ``"reverse"``);
    T steps, B batch, I input features, H hidden units. ONNX orders the gate
    axis 4H as i, o, f, c (lstm_ext: i, f, g, o) and stacks directions first:

    - X [T,B,I] (layout 0) or [B,T,I] (layout 1)
    - W [D,4H,I], R [D,4H,H], B [D,8H] = [Wb | Rb] or None (zeros)
    - sequence_lens [B] integers in [0,T], or None (all T)
    - initial_h, initial_c [D,B,H] (layout 0) or [B,D,H] (layout 1), or None (zeros)
    - P [D,3H] peepholes in the order i, o, f, or None (none)

    Returns Y [T,D,B,H] (layout 0) or [B,T,D,H] (layout 1), whose steps past
    a sequence's length are 0, and Y_h, Y_c [D,B,H] (layout 0) or [B,D,H]
    (layout 1), each sequence's state after its last valid step; the reverse
    direction starts at each sequence's own last valid step. ``clip`` clamps
    the gate pre-activations; ``input_forget=1`` couples f = 1 - i. A
    sequence of length 0 gives Y = 0 and keeps its initial state as Y_h, Y_c
    (the ONNX spec leaves this open; onnxruntime 1.32 returns zeros there).

    The node runs through ``lstm_ext.forward``, once per direction, with
    b = Wb + Rb; arrays share X's dtype (float32 or float64) as there.
    Raises NotImplementedError for activations other than the defaults or
    for activation_alpha/activation_beta, ValueError for a bad attribute,
    shapes that disagree or sequence_lens outside [0,T], TypeError for an
    input of another dtype than X's, and what ``lstm_ext.forward`` raises.
    """
    from . import forward  # the package imports this module: import at call time

    if not isinstance(direction, str) or direction not in DIRECTIONS:
        raise ValueError(f"direction: expected one of {list(DIRECTIONS)}, got {direction!r}")
    D = DIRECTIONS[direction]
    if not is_int(layout) or layout not in (0, 1):
        raise ValueError(f"layout: expected 0 or 1, got {layout!r}")
    # 0 or 1, as ONNX's attribute; a bool too, as lstm_ext.forward takes it
    if not (is_int(input_forget) or isinstance(input_forget, bool)) or input_forget not in (0, 1):
        raise ValueError(f"input_forget: expected 0 or 1, got {input_forget!r}")
    if activations is not None:
        if not isinstance(activations, (list, tuple)) or len(activations) != 3 * D:
            raise ValueError(
                f"activations: expected {3 * D} names for direction={direction!r}, "
                f"got {activations!r:.80}"
            )
        if [str(a).lower() for a in activations] != DEFAULT_ACTIVATIONS * D:
            raise NotImplementedError(
                f"activations: only the defaults {['Sigmoid', 'Tanh', 'Tanh'] * D} are "
                f"supported, got {list(activations)}"
            )
    if activation_alpha is not None or activation_beta is not None:
        raise NotImplementedError(
            "activation_alpha, activation_beta: not supported (the default activations take none)"
        )

    X, W, R, B, initial_h, initial_c, P = _typed(
        dict(X=X, W=W, R=R, B=B, initial_h=initial_h, initial_c=initial_c, P=P)
    ).values()
    if X.ndim != 3:
        letters = "[B,T,I]" if layout else "[T,B,I]"
        raise ValueError(f"X: expected shape {letters}, got {X.shape}")
    Bn, I = X.shape[0 if layout else 1], X.shape[2]
    if R.ndim != 3 or R.shape[0] != D or R.shape[1] != 4 * R.shape[2]:
        raise ValueError(f"R: expected shape [D,4H,H] with D = {D}, got {R.shape}")
    H = R.shape[2]
    if hidden_size is not None and (not is_int(hidden_size) or hidden_size != H):
        raise ValueError(f"hidden_size: expected {H} (from R {R.shape}), got {hidden_size!r}")
    W = _shaped("W", W, (D, 4 * H, I), "[D,4H,I]")
    if B is not None:
        B = _shaped("B", B, (D, 8 * H), "[D,8H]")
    if P is not None:
        P = _shaped("P", P, (D, 3 * H), "[D,3H]")
    if sequence_lens is not None:
        sequence_lens = _lengths(sequence_lens, Bn, X.shape[1 if layout else 0])
    state = ((Bn, D, H), "[B,D,H]") if layout else ((D, Bn, H), "[D,B,H]")
    if initial_h is not None:
        initial_h = _shaped("initial_h", initial_h, *state)
    if initial_c is not None:
        initial_c = _shaped("initial_c", initial_c, *state)

    def state_of(a, d):  # [B,H] of direction d, or None
        return None if a is None else (a[:, d] if layout else a[d])

    ys, hs, cs = [], [], []
    for d in range(D):
        b = None if B is None else reorder_gates(B[d, : 4 * H] + B[d, 4 * H :], "iofg", "ifgo")
        y, h, c, _ = forward(
            X,
            reorder_gates(W[d], "iofg", "ifgo"),
            reorder_gates(R[d], "iofg", "ifgo"),
            b,
            state_of(initial_h, d),
            state_of(initial_c, d),
            batch_first=bool(layout),
            training=False,
            reverse=direction == "reverse" or d == 1,
            lengths=sequence_lens,
            peephole=None if P is None else P[d],
            clip=clip,
            input_forget=bool(input_forget),
        )
        ys.append(y)  # [T,B,H] or [B,T,H]
        hs.append(h)  # [B,H]
        cs.append(c)
    axis = 1 if layout else 0  # of D in Y_h, Y_c
    return np.stack(ys, axis=axis + 1), np.stack(hs, axis=axis), np.stack(cs, axis=axis)
