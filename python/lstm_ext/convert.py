"""LSTM parameters of one layer and one direction, converted between layouts.

Letters: I input features, H hidden units; the gate axis has 4H entries, H per
gate, in the order the layout names. Gate orders are written as strings of
i (input), f (forget), g (cell candidate; ONNX and Keras call it c) and o
(output). The layouts:

- **ours / PyTorch** (``lstm_ext``, ``torch.nn.LSTM``): W [4H,I], R [4H,H],
  gates ``"ifgo"``. PyTorch keeps two biases, ``bias_ih_l0`` and
  ``bias_hh_l0`` (b_ih, b_hh), each [4H]; ``lstm_ext`` takes one, b = b_ih + b_hh.
  PyTorch's projection (``proj_size``: R [4H,P], ``weight_hr``) has no
  counterpart in ONNX or Keras, so R must be [4H,H] here.
- **ONNX** (the ``LSTM`` operator): W [4H,I], R [4H,H], B [8H] = [Wb | Rb],
  gates ``"iofg"`` (ONNX's i, o, f, c). The operator's tensors carry a leading
  num_directions axis (W [D,4H,I], R [D,4H,H], B [D,8H], P [D,3H]); the
  functions here take one direction's slice, e.g. ``W[0], R[0], B[0]``, and
  return one. ONNX's peephole P [3H] (order i, o, f) is already the order of
  ``reference.forward``'s ``peephole``, so it passes as it is.
- **Keras** (``tf.keras.layers.LSTM``): kernel [I,4H], recurrent_kernel
  [H,4H], bias [4H], gates ``"ifgo"`` (Keras's i, f, c, o): the gate order is
  ours, the matrices are transposed, and there is one bias.

Every function returns new arrays (never views of its inputs) in the dtype of
its inputs, and raises ValueError, naming the argument and its expected and
actual shape, when a gate axis is not a multiple of 4 or shapes disagree.
Where the target has one bias and the source two, the two are added; where the
target has two and the source one, the second is zeros.
"""

import numpy as np

from ._checks import as_array, is_int

__all__ = [
    "keras_to_onnx",
    "keras_to_torch",
    "onnx_to_keras",
    "onnx_to_torch",
    "reorder_gates",
    "torch_to_keras",
    "torch_to_onnx",
]

OURS = TORCH = KERAS = "ifgo"
ONNX = "iofg"


def _gate_order(order, name):
    """The order as letters of "ifgo" ("c" read as "g"); ValueError if not a permutation."""
    letters = order.replace("c", "g") if isinstance(order, str) else None
    if letters is None or sorted(letters) != sorted("ifgo"):
        raise ValueError(f"{name}: expected a permutation of 'ifgo' (c for g), got {order!r}")
    return letters


def reorder_gates(a, src, dst, axis=0):
    """a with its gate blocks along `axis` moved from order `src` to order `dst`.

    a: any array whose `axis` has 4H entries, H per gate. src, dst: gate
    orders such as "ifgo" (ours, PyTorch, Keras) or "iofg" (ONNX); "c" may
    stand for "g". Returns a new array of a's dtype.
    """
    a = as_array("a", a)
    src, dst = _gate_order(src, "src"), _gate_order(dst, "dst")
    if not is_int(axis) or not -a.ndim <= axis < a.ndim:
        raise ValueError(f"axis: expected an axis of a's {a.ndim}, got {axis!r}")
    if a.shape[axis] % 4:
        raise ValueError(f"a: expected a gate axis {axis} of 4H entries, got shape {a.shape}")
    blocks = dict(zip(src, np.split(a, 4, axis=axis), strict=True))  # gate -> [..,H,..]
    return np.concatenate([blocks[gate] for gate in dst], axis=axis)


def _check(name, a, shape, layout):
    """a as an array, or ValueError unless its shape is `shape`, which `layout`
    spells in letters."""
    a = as_array(name, a)
    if a.shape != shape:
        raise ValueError(f"{name}: expected shape {layout} = {shape}, got {a.shape}")
    return a


def _hidden(name, a, axis, layout):
    """H from the gate axis of a 2-D a, or ValueError if it is not a multiple of 4."""
    a = as_array(name, a)
    if a.ndim != 2 or a.shape[axis] % 4:
        raise ValueError(
            f"{name}: expected shape {layout} with a gate axis of 4H entries, got {a.shape}"
        )
    return a.shape[axis] // 4


def _torch_args(W, R, b_ih, b_hh):
    """Checked (W [4H,I], R [4H,H], b_ih [4H], b_hh [4H] or None); b_ih None
    is zeros (a model without biases, torch's bias=False)."""
    H = _hidden("W", W, 0, "[4H,I]")
    W = np.asarray(W)
    R = _check("R", R, (4 * H, H), "[4H,H]")
    b_ih = np.zeros(4 * H, W.dtype) if b_ih is None else _check("b_ih", b_ih, (4 * H,), "[4H]")
    if b_hh is not None:
        b_hh = _check("b_hh", b_hh, (4 * H,), "[4H]")
    return W, R, b_ih, b_hh


def _onnx_args(W, R, B):
    """Checked (W [4H,I], R [4H,H], B [8H])."""
    H = _hidden("W", W, 0, "[4H,I]")
    return (
        np.asarray(W),
        _check("R", R, (4 * H, H), "[4H,H]"),
        _check("B", B, (8 * H,), "[8H]"),
    )


def _keras_args(kernel, recurrent_kernel, bias):
    """Checked (kernel [I,4H], recurrent_kernel [H,4H], bias [4H])."""
    H = _hidden("kernel", kernel, 1, "[I,4H]")
    recurrent_kernel = _check("recurrent_kernel", recurrent_kernel, (H, 4 * H), "[H,4H]")
    bias = _check("bias", bias, (4 * H,), "[4H]")
    return np.asarray(kernel), recurrent_kernel, bias


def torch_to_onnx(W, R, b_ih=None, b_hh=None):
    """PyTorch (or ours) to ONNX, one direction.

    Source: W [4H,I], R [4H,H], b_ih [4H] or None, b_hh [4H] or None (None:
    zeros, as for torch's bias=False; pass ours as b_ih), gates i, f, g, o.
    Target: W [4H,I], R [4H,H], B [8H] = [Wb | Rb] with Wb = b_ih, Rb = b_hh,
    gates i, o, f, c.
    """
    W, R, b_ih, b_hh = _torch_args(W, R, b_ih, b_hh)
    b_hh = np.zeros_like(b_ih) if b_hh is None else b_hh
    B = np.concatenate([reorder_gates(b_ih, TORCH, ONNX), reorder_gates(b_hh, TORCH, ONNX)])
    return reorder_gates(W, TORCH, ONNX), reorder_gates(R, TORCH, ONNX), B


def onnx_to_torch(W, R, B):
    """ONNX to PyTorch, one direction.

    Source: W [4H,I], R [4H,H], B [8H] = [Wb | Rb], gates i, o, f, c.
    Target: W [4H,I], R [4H,H], b_ih = Wb [4H], b_hh = Rb [4H], gates i, f, g, o
    (ours takes b = b_ih + b_hh).
    """
    W, R, B = _onnx_args(W, R, B)
    Wb, Rb = np.split(B, 2)
    return tuple(reorder_gates(a, ONNX, TORCH) for a in (W, R, Wb, Rb))


def torch_to_keras(W, R, b_ih=None, b_hh=None):
    """PyTorch (or ours) to Keras.

    Source: W [4H,I], R [4H,H], b_ih [4H] or None, b_hh [4H] or None (None:
    zeros), gates i, f, g, o.
    Target: kernel = Wᵀ [I,4H], recurrent_kernel = Rᵀ [H,4H],
    bias = b_ih + b_hh [4H], gates i, f, c, o (the same order).
    """
    W, R, b_ih, b_hh = _torch_args(W, R, b_ih, b_hh)
    return W.T.copy(), R.T.copy(), (b_ih.copy() if b_hh is None else b_ih + b_hh)


def keras_to_torch(kernel, recurrent_kernel, bias):
    """Keras to PyTorch (or ours).

    Source: kernel [I,4H], recurrent_kernel [H,4H], bias [4H], gates i, f, c, o.
    Target: W = kernelᵀ [4H,I], R = recurrent_kernelᵀ [4H,H], b_ih = bias [4H],
    b_hh = zeros [4H], gates i, f, g, o (the same order).
    """
    kernel, recurrent_kernel, bias = _keras_args(kernel, recurrent_kernel, bias)
    return kernel.T.copy(), recurrent_kernel.T.copy(), bias.copy(), np.zeros_like(bias)


def onnx_to_keras(W, R, B):
    """ONNX to Keras, one direction.

    Source: W [4H,I], R [4H,H], B [8H] = [Wb | Rb], gates i, o, f, c.
    Target: kernel [I,4H], recurrent_kernel [H,4H], bias = Wb + Rb [4H],
    gates i, f, c, o.
    """
    W, R, b_ih, b_hh = onnx_to_torch(W, R, B)
    return torch_to_keras(W, R, b_ih, b_hh)


def keras_to_onnx(kernel, recurrent_kernel, bias):
    """Keras to ONNX, one direction.

    Source: kernel [I,4H], recurrent_kernel [H,4H], bias [4H], gates i, f, c, o.
    Target: W [4H,I], R [4H,H], B [8H] = [bias | zeros] in gate order i, o, f, c.
    """
    W, R, b_ih, b_hh = keras_to_torch(kernel, recurrent_kernel, bias)
    return torch_to_onnx(W, R, b_ih, b_hh)
