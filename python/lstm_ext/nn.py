"""Layers over the functional core. ``LSTM`` is a drop-in for ``torch.nn.LSTM``:
the same constructor, parameter names and shapes, initialisation, state
layout and output shapes, with NumPy arrays and an explicit ``backward``.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from . import _core

_BIAS_NAMES = ("bias_ih", "bias_hh")


class LSTM:
    """A stack of LSTM layers, optionally bidirectional and projected.

    ``LSTM(input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
    dropout=0.0, bidirectional=False, proj_size=0, *, dtype=np.float32,
    seed=None)``: PyTorch's meanings. Parameters are uniform in ±1/√hidden_size
    (drawn from ``np.random.default_rng(seed)`` in PyTorch's order), held in
    ``params`` under PyTorch's names (``weight_ih_l0``, ``weight_hh_l0``,
    ``bias_ih_l0``, ``bias_hh_l0``, ``weight_hr_l0``, ``..._reverse``);
    ``grads`` holds their gradients under the same names.

    Letters: D = 2 if bidirectional else 1; O = proj_size or hidden_size.

    ``out, (h_n, c_n) = lstm(x, state=None, lengths=None)``:
    x [T,B,I] ([B,T,I] if batch_first); state = (h0 [L*D,B,O], c0 [L*D,B,H]) or
    None (zeros); lengths [B] or None: a ragged batch on a padded array, as
    PyTorch's packed sequences (outputs past a sequence's end are 0, h_n and
    c_n are each sequence's last valid state). out is [T,B,D*O].

    ``dx = lstm.backward(dy, dstate=None)`` after a forward call: dy shaped as
    out, dstate = (dh_n, dc_n) (either may be None). Adds the parameter
    gradients into ``grads`` and returns dx, or ``(dx, (dh0, dc0))`` when the
    forward call was given a state.

    In training mode (the default; ``train()``/``eval()`` switch) forward
    keeps what backward needs and applies dropout between layers; in eval
    mode it keeps nothing unless called with ``keep_cache=True``. One
    instance holds one forward's caches at a time: do not share an instance
    between threads.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        *,
        dtype=np.float32,
        seed: int | None = None,
    ):
        for name, v, low in (
            ("input_size", input_size, 0),
            ("hidden_size", hidden_size, 1),
            ("num_layers", num_layers, 1),
            ("proj_size", proj_size, 0),
        ):
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < low:
                raise ValueError(f"{name}: expected an integer >= {low}, got {v!r}")
        if proj_size >= hidden_size and proj_size > 0:
            raise ValueError(f"proj_size: expected < hidden_size = {hidden_size}, got {proj_size}")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout: expected a probability in [0, 1), got {dropout!r}")
        if np.dtype(dtype) not in (np.float32, np.float64):
            raise TypeError(f"dtype: expected float32 or float64, got {np.dtype(dtype)}")
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first, self.dropout = bias, batch_first, float(dropout)
        self.bidirectional, self.proj_size = bidirectional, proj_size
        self.dtype = np.dtype(dtype)
        self.training = True
        self._rng = np.random.default_rng(seed)
        k = 1 / np.sqrt(hidden_size)
        self.params = {
            name: self._rng.uniform(-k, k, shape).astype(self.dtype)
            for name, shape in self._shapes().items()
        }
        self.grads = {name: np.zeros_like(p) for name, p in self.params.items()}
        self._saved = None  # what the last forward kept for backward

    # ---- shapes and names ------------------------------------------------------

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def output_size(self) -> int:
        """O: the size of h (proj_size, or hidden_size without a projection)."""
        return self.proj_size or self.hidden_size

    def _shapes(self) -> dict[str, tuple[int, ...]]:
        """PyTorch's parameter names and shapes, in its state_dict order."""
        H, O, D = self.hidden_size, self.output_size, self.num_directions
        shapes = {}
        for layer in range(self.num_layers):
            I = self.input_size if layer == 0 else D * O
            for d in range(D):
                s = f"_l{layer}" + ("_reverse" if d else "")
                shapes["weight_ih" + s] = (4 * H, I)
                shapes["weight_hh" + s] = (4 * H, O)
                if self.bias:
                    shapes["bias_ih" + s] = (4 * H,)
                    shapes["bias_hh" + s] = (4 * H,)
                if self.proj_size:
                    shapes["weight_hr" + s] = (self.proj_size, H)
        return shapes

    def _weights(self, layer: int, d: int) -> tuple[str, dict]:
        """The suffix of (layer, direction) and its arguments for lstm_ext.forward."""
        s = f"_l{layer}" + ("_reverse" if d else "")
        p = self.params
        kw = {"W": p["weight_ih" + s], "R": p["weight_hh" + s]}
        kw["b"] = p["bias_ih" + s] + p["bias_hh" + s] if self.bias else None
        if self.proj_size:
            kw["W_hr"] = p["weight_hr" + s]
        return s, kw

    # ---- modes, parameters ------------------------------------------------------

    def train(self, mode: bool = True) -> LSTM:
        self.training = bool(mode)
        return self

    def eval(self) -> LSTM:
        return self.train(False)

    def zero_grad(self) -> None:
        for g in self.grads.values():
            g.fill(0)

    def named_parameters(self) -> Iterator[tuple[str, np.ndarray]]:
        yield from self.params.items()

    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of the parameters, as ``torch_lstm.load_state_dict`` takes them
        (after ``torch.from_numpy``)."""
        return {name: p.copy() for name, p in self.params.items()}

    def load_state_dict(self, state: dict) -> None:
        """Load ``{k: v.numpy() for k, v in torch_lstm.state_dict().items()}``,
        or a ``state_dict()`` of this class. Every key must be present with its
        shape, and no other key; values are cast to this LSTM's dtype."""
        shapes = self._shapes()
        missing = [k for k in shapes if k not in state]
        extra = [k for k in state if k not in shapes]
        wrong = [
            f"{k}: expected shape {shapes[k]}, got {np.shape(state[k])}"
            for k in shapes
            if k in state and np.shape(state[k]) != shapes[k]
        ]
        if missing or extra or wrong:
            parts = []
            if missing:
                parts.append(f"missing keys {missing}")
            if extra:
                parts.append(f"unexpected keys {extra}")
            parts += wrong
            raise ValueError("state: " + "; ".join(parts))
        for k in shapes:
            self.params[k] = np.array(state[k], dtype=self.dtype, copy=True)

    # ---- forward and backward ----------------------------------------------------

    def __call__(self, x, state=None, lengths=None, *, keep_cache=None):
        return self.forward(x, state, lengths, keep_cache=keep_cache)

    def forward(self, x, state=None, lengths=None, *, keep_cache=None):
        """See the class docstring. Returns ``out, (h_n, c_n)``."""
        x = np.asarray(x)
        if x.ndim != 3:
            raise ValueError(
                f"x: expected 3 dimensions {'[B,T,I]' if self.batch_first else '[T,B,I]'}, "
                f"got shape {x.shape}"
            )
        if x.dtype != self.dtype:
            raise TypeError(f"x: expected dtype {self.dtype} (the LSTM's), got {x.dtype}")
        if x.shape[2] != self.input_size:
            raise ValueError(f"x: expected {self.input_size} input features, got shape {x.shape}")
        x = x.swapaxes(0, 1) if self.batch_first else x  # [T,B,I]
        B = x.shape[1]
        L, D, H, O = self.num_layers, self.num_directions, self.hidden_size, self.output_size
        h0 = c0 = None
        if state is not None:
            h0, c0 = (np.asarray(s) for s in state)
            for name, s, width in (("state[0] (h0)", h0, O), ("state[1] (c0)", c0, H)):
                if s.shape != (L * D, B, width):
                    raise ValueError(
                        f"{name}: expected shape [L*D,B,{'O' if width == O else 'H'}] = "
                        f"{(L * D, B, width)}, got {s.shape}"
                    )
        keep = self.training if keep_cache is None else keep_cache
        h_n = np.empty((L * D, B, O), self.dtype)
        c_n = np.empty((L * D, B, H), self.dtype)
        caches, masks = [], []
        inp = x
        for layer in range(L):
            outs, layer_caches = [], []
            for d in range(D):
                k = layer * D + d
                _, kw = self._weights(layer, d)
                y, h, c, cache, _ = _core.forward(
                    inp, kw["W"], kw["R"], kw["b"],
                    None if h0 is None else h0[k], None if c0 is None else c0[k],
                    training=keep, reverse=bool(d), lengths=lengths, W_hr=kw.get("W_hr"),
                )  # fmt: skip
                outs.append(y)
                layer_caches.append(cache)
                h_n[k], c_n[k] = h, c
            inp = outs[0] if D == 1 else np.concatenate(outs, axis=2)  # [T,B,D*O]
            caches.append(layer_caches)
            mask = None
            if self.training and self.dropout > 0 and layer < L - 1:
                keep_p = 1 - self.dropout
                mask = (self._rng.random(inp.shape) < keep_p).astype(self.dtype) / keep_p
                inp = inp * mask
            masks.append(mask)
        self._saved = (caches, masks, state is not None) if keep else None
        out = inp.swapaxes(0, 1) if self.batch_first else inp
        return out, (h_n, c_n)

    def backward(self, dy, dstate=None):
        """Gradients of the last forward call; see the class docstring."""
        if self._saved is None:
            raise RuntimeError(
                "backward: no forward call kept what backward needs; call forward in "
                "training mode or with keep_cache=True first"
            )
        caches, masks, had_state = self._saved
        L, D, H, O = self.num_layers, self.num_directions, self.hidden_size, self.output_size
        T, B = caches[0][0].T, caches[0][0].B
        dy = np.asarray(dy)
        want = (B, T, D * O) if self.batch_first else (T, B, D * O)
        if dy.shape != want:
            raise ValueError(f"dy: expected the shape of out, {want}, got {dy.shape}")
        dy = dy.swapaxes(0, 1) if self.batch_first else dy
        dh_n, dc_n = dstate if dstate is not None else (None, None)
        for name, s, width in (("dstate[0]", dh_n, O), ("dstate[1]", dc_n, H)):
            if s is not None and np.shape(s) != (L * D, B, width):
                raise ValueError(f"{name}: expected shape {(L * D, B, width)}, got {np.shape(s)}")
        dh0 = np.empty((L * D, B, O), self.dtype)
        dc0 = np.empty((L * D, B, H), self.dtype)
        for layer in reversed(range(L)):
            if masks[layer] is not None:
                dy = dy * masks[layer]
            dinp = None
            for d in range(D):
                k = layer * D + d
                s, _ = self._weights(layer, d)
                g = _core.backward(
                    caches[layer][d],
                    dy[:, :, d * O : (d + 1) * O],
                    None if dh_n is None else dh_n[k],
                    None if dc_n is None else dc_n[k],
                )
                dx, dh0[k], dc0[k], dW, dR, db, dW_hr, _ = g
                dinp = dx if dinp is None else dinp + dx
                self.grads["weight_ih" + s] += dW
                self.grads["weight_hh" + s] += dR
                if self.bias:
                    for name in _BIAS_NAMES:
                        self.grads[name + s] += db
                if self.proj_size:
                    self.grads["weight_hr" + s] += dW_hr
            dy = dinp
        dx = dy.swapaxes(0, 1) if self.batch_first else dy
        return (dx, (dh0, dc0)) if had_state else dx
