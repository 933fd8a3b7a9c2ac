"""Layers over the functional core, each with ``forward`` and ``backward``
side by side. ``LSTM`` is a drop-in for ``torch.nn.LSTM``: the same
constructor, parameter names and shapes, initialisation, state layout and
output shapes, with NumPy arrays and an explicit ``backward``. ``Linear``
and ``Embedding`` follow PyTorch's too; ``Sequential`` chains them.
``packed()`` freezes an LSTM (``PackedLSTM``) or a Sequential for inference,
the weights packed once.

Every module keeps its parameters in ``params`` and their gradients in
``grads`` (same names and shapes). backward *adds* into ``grads``;
``zero_grad()`` clears them. Parameter arrays are updated in place, never
replaced, so an optimiser's references stay valid. A module keeps what its
last forward call needs for backward: do not share one between threads
(``LSTM`` raises RuntimeError when two threads are inside it at once).
"""

from __future__ import annotations

import concurrent.futures
import functools
import inspect
import os
import threading
import warnings
from collections.abc import Iterator

import numpy as np

import lstm_ext

from . import _core, _device
from ._checks import as_array, check_bool, check_int, check_state_keys, is_real, same_dtype

_BIAS_NAMES = ("bias_ih", "bias_hh")


# The largest LSTM the model file (export, docs/model-format.md) and the C++
# Model take, and so nn.LSTM: far past any memory (4H(I+H) weights a layer);
# an unbounded num_layers had built layers until memory ran out.
LSTM_LIMITS = {"input_size": (1, 1 << 20), "hidden_size": (1, 1 << 20), "num_layers": (1, 1024)}


def _pair(name: str, v) -> tuple:
    """``v`` as two items, ``(h, c)``: a tuple or a list of two, else a
    ValueError naming it. Not an array: one of two rows (the state of
    L·D = 2 layers and directions, given without c) would unpack as h and c."""
    if isinstance(v, (tuple, list)) and len(v) == 2:
        return v[0], v[1]
    shape = getattr(v, "shape", None)
    n = f" of shape {tuple(shape)}" if shape is not None else ""
    if not n and isinstance(v, (tuple, list)):
        n = f" of {len(v)}"
    raise ValueError(f"{name}: expected a pair (h, c), got {type(v).__name__}{n}")


def _one_thread_at_a_time(method):
    """Refuse a call while another thread is inside forward or backward of the
    same instance: their caches would mix. A non-blocking acquire, so it costs
    next to nothing and never waits."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        if not self._busy.acquire(blocking=False):
            raise RuntimeError(
                f"{type(self).__name__}.{method.__name__}: another thread is inside this "
                "instance's forward or backward; an instance keeps one forward call's caches "
                "for backward, so it serves one thread at a time: give each thread its own "
                "(load_state_dict copies the weights)"
            )
        try:
            return method(self, *args, **kwargs)
        finally:
            self._busy.release()

    return wrapper


def _float_dtype(dtype) -> np.dtype:
    dt = np.dtype(dtype)
    if dt not in (np.float32, np.float64):
        raise TypeError(f"dtype: expected float32 or float64, got {dt}")
    return dt


class Module:
    """What every layer shares: parameters, gradients, modes, state dicts."""

    params: dict[str, np.ndarray]
    grads: dict[str, np.ndarray]
    training: bool = True

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def _init_grads(self) -> None:
        self.grads = {
            name: _device.array_module(p).zeros_like(p) for name, p in self.params.items()
        }

    def train(self, mode: bool = True):
        self.training = bool(mode)
        return self

    def eval(self):
        return self.train(False)

    def zero_grad(self) -> None:
        for g in self.grads.values():
            g.fill(0)

    def named_parameters(self) -> Iterator[tuple[str, np.ndarray]]:
        yield from self.params.items()

    def num_parameters(self) -> int:
        return sum(int(p.size) for p in self.params.values())

    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of the parameters as NumPy arrays, by name (PyTorch's names for
        its layers), also where they live on the GPU."""
        return {name: np.array(_device.host(p)) for name, p in self.params.items()}

    def load_state_dict(self, state: dict) -> None:
        """Copy ``state`` into the parameters, in place. Every key must be
        present with its shape, and no other key; values are cast to the
        module's dtype. A torch state dict converted with ``.numpy()`` works."""
        params = self.params
        check_state_keys(state, {k: p.shape for k, p in params.items()}, real=True)
        for k, p in params.items():
            _device.assign(p, state[k])

    def config(self) -> dict:
        """The constructor's arguments, JSON-serialisable: ``from_config``
        rebuilds the module (with fresh parameters) from it."""
        raise NotImplementedError

    def __repr__(self) -> str:
        """As PyTorch prints a module: ``LSTM(32, 128, num_layers=2)``, the
        required arguments, then those that differ from their defaults."""
        try:
            config = self.config()
        except NotImplementedError:  # a module of the user's without one
            return object.__repr__(self)
        kind = config.pop("type")
        taken = inspect.signature(type(self)).parameters
        args = []
        for name, value in config.items():
            default = taken[name].default if name in taken else None
            if default is inspect.Parameter.empty:
                args.append(repr(value))
            elif value != (np.dtype(default).name if name == "dtype" else default):
                args.append(f"{name}={value!r}")
        return f"{kind}({', '.join(args)})"


def _core_can_add_into(a, dtype) -> bool:
    """Whether _core.linear_backward can add into a in place."""
    return (
        isinstance(a, np.ndarray)
        and a.dtype == dtype
        and a.dtype.isnative
        and a.flags.c_contiguous
        and a.flags.writeable
    )


class Linear(Module):
    """y = x Wᵀ + b over the last axis: ``Linear(in_features, out_features,
    bias=True, *, dtype=np.float32, seed=None)``, PyTorch's initialisation
    (uniform ±1/√in_features) and names (``weight`` [out,in], ``bias`` [out])."""

    def __init__(self, in_features, out_features, bias=True, *, dtype=np.float32, seed=None):
        in_features = check_int("in_features", in_features, 1)
        out_features = check_int("out_features", out_features, 1)
        self.in_features, self.out_features = in_features, out_features
        self.bias = check_bool("bias", bias)
        self.dtype = _float_dtype(dtype)
        rng = np.random.default_rng(seed)
        k = 1 / np.sqrt(in_features)
        self.params = {"weight": rng.uniform(-k, k, (out_features, in_features)).astype(self.dtype)}
        if bias:
            self.params["bias"] = rng.uniform(-k, k, out_features).astype(self.dtype)
        self._init_grads()
        self._x = None

    def config(self) -> dict:
        return dict(type="Linear", in_features=self.in_features, out_features=self.out_features,
                    bias=self.bias, dtype=self.dtype.name)  # fmt: skip

    def forward(self, x, *, keep_cache=None):
        """x [..., in_features] -> [..., out_features]. Keeps a copy of x for
        backward in training mode (or with keep_cache=True)."""
        x = as_array("x", x)
        if not same_dtype(x.dtype, self.dtype):
            raise TypeError(f"x: expected dtype {self.dtype} (the Linear's), got {x.dtype}")
        if x.ndim < 1 or x.shape[-1] != self.in_features:
            raise ValueError(f"x: expected shape [..., {self.in_features}], got {x.shape}")
        keep = self.training if keep_cache is None else check_bool("keep_cache", keep_cache)
        self._x = x.copy() if keep else None  # private: later changes to x must not matter
        # On lstm_ext's threads (linear.h), not NumPy's: a multithreaded BLAS
        # keeps its threads spinning after a product, and they took the cores
        # from the LSTM's next call, whose threads meet at every step.
        x2 = x.reshape(-1, self.in_features)
        y = _core.linear_forward(x2, self.params["weight"], self.params.get("bias"))
        return y.reshape(*x.shape[:-1], self.out_features)

    def backward(self, dy):
        """dy [..., out_features] -> dx [..., in_features]; adds dW, db into grads."""
        if self._x is None:
            raise RuntimeError(
                "backward: call forward first (in training mode, or with keep_cache=True)"
            )
        dy = as_array("dy", dy)
        if not same_dtype(dy.dtype, self.dtype):
            raise TypeError(f"dy: expected dtype {self.dtype} (the Linear's), got {dy.dtype}")
        if dy.shape != (*self._x.shape[:-1], self.out_features):
            want = (*self._x.shape[:-1], self.out_features)
            raise ValueError(f"dy: expected the shape of forward's output, {want}, got {dy.shape}")
        x2 = self._x.reshape(-1, self.in_features)
        dy2 = dy.reshape(-1, self.out_features)
        # dW += dy^T x and db += dy's column sums, by the core into the
        # gradients themselves; into zeros first, then added by NumPy, where a
        # caller put there an array the core cannot add into (another layout
        # or dtype), as `+=` took any before.
        g = {k: v if _core_can_add_into(v, self.dtype) else np.zeros(v.shape, self.dtype)
             for k, v in self.grads.items()}  # fmt: skip
        dx = _core.linear_backward(dy2, x2, self.params["weight"], g["weight"], g.get("bias"))
        for k, v in g.items():
            if v is not self.grads[k]:
                self.grads[k] += v
        return dx.reshape(self._x.shape)


class Embedding(Module):
    """Integer tokens to vectors: ``Embedding(num_embeddings, embedding_dim, *,
    dtype=np.float32, seed=None)``; ``weight`` [num,dim] ~ N(0,1), PyTorch's
    initialisation. backward adds into the rows used and returns None."""

    def __init__(self, num_embeddings, embedding_dim, *, dtype=np.float32, seed=None):
        num_embeddings = check_int("num_embeddings", num_embeddings, 1)
        embedding_dim = check_int("embedding_dim", embedding_dim, 1)
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.dtype = _float_dtype(dtype)
        rng = np.random.default_rng(seed)
        w = rng.standard_normal((num_embeddings, embedding_dim)).astype(self.dtype)
        self.params = {"weight": w}
        self._init_grads()
        self._idx = None

    def config(self) -> dict:
        return dict(type="Embedding", num_embeddings=self.num_embeddings,
                    embedding_dim=self.embedding_dim, dtype=self.dtype.name)  # fmt: skip

    def forward(self, idx, *, keep_cache=None):
        """idx: integers in [0, num_embeddings), any shape -> [*idx.shape, dim]."""
        idx = as_array("idx", idx)
        if idx.dtype.kind not in "iu":
            raise TypeError(f"idx: expected integer tokens, got dtype {idx.dtype}")
        if idx.size and (idx.min() < 0 or idx.max() >= self.num_embeddings):
            bad = idx.min() if idx.min() < 0 else idx.max()
            raise ValueError(f"idx: expected tokens in [0, {self.num_embeddings}), got {bad}")
        keep = self.training if keep_cache is None else check_bool("keep_cache", keep_cache)
        self._idx = idx.copy() if keep else None
        return self.params["weight"][idx]

    def backward(self, dy):
        if self._idx is None:
            raise RuntimeError(
                "backward: call forward first (in training mode, or with keep_cache=True)"
            )
        dy = as_array("dy", dy)
        if not same_dtype(dy.dtype, self.dtype):
            raise TypeError(f"dy: expected dtype {self.dtype} (the Embedding's), got {dy.dtype}")
        want = (*self._idx.shape, self.embedding_dim)
        if dy.shape != want:
            raise ValueError(f"dy: expected the shape of forward's output, {want}, got {dy.shape}")
        # Each token's rows of dy summed (in their order), then added to its
        # row of the gradient once: np.add.at took 1.8 ms of a 50 ms training
        # step of the command line's text model, this 0.4-0.5.
        idx = self._idx.reshape(-1)
        if idx.size == 0:
            return
        order = np.argsort(idx, kind="stable")
        tokens = idx[order]
        first = np.flatnonzero(np.concatenate(([True], tokens[1:] != tokens[:-1])))
        sums = np.add.reduceat(dy.reshape(-1, self.embedding_dim)[order], first, axis=0)
        self.grads["weight"][tokens[first]] += sums


# A bidirectional layer's two directions run side by side, each on a pool of
# its own of half lstm_ext's threads (use_own_pool), where there are at
# least two threads, _SIDES_ROWS rows and _SIDES_MACS multiply-adds a
# direction and call (backward's count twice forward's). On two Intel
# AVX-512 cores, against the directions one after the other on both
# threads, 2-layer stacks (T,B,I,H): (100,32,256,256) forward 0.94 of the
# time, forward+backward 0.99; (100,4,128,128) 0.90 and 0.82; (50,8,128,128)
# 0.91 and 0.84; (100,64,512,512) 1.0. Below 4 rows a team of two on one
# direction reads each core's half of the weights, where one thread alone
# reads all of them: (100,1,128,128) forward 1.07, (100,2,256,256) forward+
# backward 1.02. Below about 2^25 the handoff to the two threads shows: at
# 4 rows, forward (40,8,128,128) 0.96 but (20,8,128,128) 1.01, (40,8,64,64)
# 1.11, (20,8,64,64) 1.49 (dev/perf-notes.md, 76; 48's try on two Zen 3
# cores, B = 32: 1.03 and 0.99). The same bits either way.
_SIDES_ROWS, _SIDES_MACS = 4, 1 << 25
# The two threads (named lstm_ext-direction-0 and -1: an executor of one
# thread each, so that the directions never share one), made on first use
# and again after set_num_threads; one layer's directions at a time: a call
# that finds them busy (another thread's layer) runs its directions one
# after the other on its own thread, as a call that finds lstm_ext's pool
# busy does.
_sides: dict = {}  # "threads": their pools' total, "lanes": the executors
_sides_lock, _sides_busy = threading.Lock(), threading.Lock()


def _forget_sides() -> None:
    """In a forked child: the parent's threads are not there, nor its locks' holders."""
    global _sides_lock, _sides_busy
    _sides.clear()
    _sides_lock, _sides_busy = threading.Lock(), threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_sides)


def _sides_lanes(threads: int) -> list:
    """Two one-thread executors whose threads have pools of threads // 2 and
    the rest (a former pair, dropped, ends with its last reference)."""
    with _sides_lock:
        if _sides.get("threads") != threads:
            _sides["lanes"] = [
                concurrent.futures.ThreadPoolExecutor(
                    1, f"lstm_ext-direction-{d}", initializer=_core.use_own_pool, initargs=(n,)
                )
                for d, n in enumerate((threads // 2, threads - threads // 2))
            ]
            _sides["threads"] = threads
        return _sides["lanes"]


def _directions(
    direction, D: int, x_shape: tuple, H: int, O: int, on_cpu: bool, passes=1, out=None
) -> list:
    """[direction(d) for d < D], a layer's directions over x [T,B,I] (passes:
    1 forward, 2 backward, in multiply-adds): side by side where that pays.
    out: a [T,B,D*O] buffer (_both_sides) into whose columns each direction's
    thread copies its result's y [T,B,O]."""
    calls = [functools.partial(direction, d) for d in range(D)]
    if out is not None:
        calls = [functools.partial(_into_columns, call, out, d) for d, call in enumerate(calls)]
    T, rows, I = x_shape
    macs = passes * T * rows * 4 * H * (I + O)
    threads = lstm_ext.get_num_threads() if on_cpu else 1
    if threads < 2 and _sides:  # after set_num_threads(1): the pair's threads end
        with _sides_lock:
            _sides.clear()
    if len(calls) < 2 or threads < 2 or rows < _SIDES_ROWS or macs < _SIDES_MACS:
        return [call() for call in calls]
    if not _sides_busy.acquire(blocking=False):
        _core.use_own_pool(1)  # this thread alone
        try:
            return [call() for call in calls]
        finally:
            _core.use_own_pool(0)
    try:
        futures = []
        try:
            for lane, call in zip(_sides_lanes(threads), calls, strict=True):
                futures.append(lane.submit(call))
        except RuntimeError:  # no new threads: Python is exiting (atexit, daemon threads)
            concurrent.futures.wait(futures)
            return [call() for call in calls]
        concurrent.futures.wait(futures)
        return [f.result() for f in futures]
    finally:
        _sides_busy.release()


def _both_sides(D: int, T: int, B: int, O: int, dtype, xp):
    """The buffer [T,B,D*O] into which each direction's thread copies its out
    [T,B,O] (dev/perf-notes.md, 84): on the host, where D = 2, one of
    lstm_ext's cache, as its calls' results (NumPy's new array took fresh
    pages at every call: np.concatenate 2.5 ms of a 2-layer bidirectional
    (100,32,256,256) forward's 83, this 1.3 of 81; perf-notes, 76); else
    None (_side_by_side joins them)."""
    return _core.cached_empty((T, B, D * O), dtype) if D == 2 and xp is np else None


def _into_columns(call, out, d: int):
    """call()'s result, its y [T,B,O] copied into out's columns [d*O, (d+1)*O)."""
    r = call()
    O = r.y.shape[2]
    out[:, :, d * O : (d + 1) * O] = r.y
    return r


def _side_by_side(outs: list, xp):
    """Each direction's out [T,B,O] side by side, [T,B,D*O]."""
    return outs[0] if len(outs) == 1 else xp.concatenate(outs, axis=2)


class LSTM(Module):
    """A stack of LSTM layers, optionally bidirectional and projected.

    ``LSTM(input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
    dropout=0.0, bidirectional=False, proj_size=0, *, dtype=np.float32,
    seed=None, device="cpu")``: PyTorch's meanings; ``device`` ("cpu", "cuda"
    or "auto", as in ``lstm_ext.forward``) is where the layers run.
    Parameters are uniform in ±1/√hidden_size (drawn from
    ``np.random.default_rng(seed)`` in PyTorch's order), held in ``params``
    under PyTorch's names (``weight_ih_l0``, ``weight_hh_l0``, ``bias_ih_l0``,
    ``bias_hh_l0``, ``weight_hr_l0``, ``..._reverse``);
    ``grads`` holds their gradients under the same names.

    Letters: D = 2 if bidirectional else 1; O = proj_size or hidden_size.

    ``out, (h_n, c_n) = lstm(x, state=None, lengths=None)``:
    x [T,B,I] ([B,T,I] if batch_first); state = (h0 [L*D,B,O], c0 [L*D,B,H]) or
    None (zeros); lengths [B] or None: a ragged batch on a padded array, as
    PyTorch's packed sequences (outputs past a sequence's end are 0, h_n and
    c_n are each sequence's last valid state). out is [T,B,D*O], padded to T
    (PyTorch's pad_packed_sequence pads to the longest length), and a length
    of 0 is allowed (PyTorch refuses it). x may also be one sequence [T,I],
    as PyTorch takes it; then out is [T,D*O] and the state [L*D,O], [L*D,H].

    ``dx = lstm.backward(dy, dstate=None)`` after a forward call: dy shaped as
    out (None: zeros, for a loss on the final state alone), dstate = (dh_n,
    dc_n) (either may be None). Adds the parameter
    gradients into ``grads`` and returns dx, or ``(dx, (dh0, dc0))`` when the
    forward call was given a state.

    In training mode (the default; ``train()``/``eval()`` switch) forward
    keeps what backward needs and applies dropout between layers; in eval
    mode it keeps nothing unless called with ``keep_cache=True``. Setting
    ``inference_weight_dtype = "bfloat16"`` (float32 on the CPU) makes the
    calls that keep nothing use bfloat16 weights (``lstm_ext.forward``'s
    ``weight_dtype``; ``params`` stay float32); calls that keep a cache do not.

    On the GPU (``device="cuda"``) with CuPy installed, ``params`` and
    ``grads`` are CuPy arrays that stay in GPU memory (the optimisers update
    them there, ``state_dict()`` and checkpoints copy them to NumPy), and so
    do the caches between forward and backward: only the batch crosses the
    bus. x and dy may be NumPy arrays (results come back as NumPy arrays) or
    GPU arrays (results stay on the GPU). Without CuPy, parameters are NumPy
    arrays, sent to the GPU at each forward call.

    Threads: an instance holds one forward call's caches for the backward
    that follows, so it serves one thread at a time. A forward or backward
    call while another thread is inside this instance's forward or backward
    raises RuntimeError (caught cheaply, without waiting); calls of two
    threads taking turns are not caught, and the second forward replaces the
    first's caches. Give each thread its own LSTM (``load_state_dict`` copies
    the weights): separate instances, like separate ``lstm_ext.forward``
    calls on separate arrays, run in parallel, the GIL released.

    ``copy.deepcopy`` gives such an instance (so do ``pickle`` and
    multiprocessing): the parameters, gradients, mode and dropout's generator
    copied, without the last forward's caches. Copy a model and its optimiser
    together (``copy.deepcopy((model, opt))``) to keep the two linked. To
    store a model, ``lstm_ext.checkpoint`` is the safe way: loading a pickle
    runs code.
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
        device: str = "cpu",
    ):
        self.device = _device.check_device(device)
        input_size = check_int("input_size", input_size, *LSTM_LIMITS["input_size"])
        hidden_size = check_int("hidden_size", hidden_size, *LSTM_LIMITS["hidden_size"])
        num_layers = check_int("num_layers", num_layers, *LSTM_LIMITS["num_layers"])
        proj_size = check_int("proj_size", proj_size, 0)
        if proj_size >= hidden_size and proj_size > 0:
            raise ValueError(f"proj_size: expected < hidden_size = {hidden_size}, got {proj_size}")
        if not is_real(dropout) or not 0 <= dropout <= 1:
            raise ValueError(f"dropout: expected a probability in [0, 1], got {dropout!r}")
        if dropout and num_layers == 1:  # as torch.nn.LSTM warns
            warnings.warn(
                f"dropout={dropout!r} with num_layers=1 does nothing: dropout applies between "
                "layers, after every layer but the last",
                UserWarning,
                stacklevel=2,
            )
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.dropout = check_bool("bias", bias), float(dropout)
        self.batch_first = check_bool("batch_first", batch_first)
        self.bidirectional, self.proj_size = check_bool("bidirectional", bidirectional), proj_size
        self.dtype = _float_dtype(dtype)
        self._rng = np.random.default_rng(seed)
        k = 1 / np.sqrt(hidden_size)
        self.params = {
            name: self._rng.uniform(-k, k, shape).astype(self.dtype)
            for name, shape in self._shapes().items()
        }
        # On the GPU with CuPy, parameters (so gradients, optimiser state) live there.
        self._xp = self._array_module()
        self.params = {name: self._xp.asarray(p) for name, p in self.params.items()}
        self._init_grads()
        self._saved = None  # what the last forward kept for backward
        self._busy = threading.Lock()  # held during forward and backward
        self._inference_weight_dtype = None

    @property
    def inference_weight_dtype(self) -> str | None:
        """``lstm_ext.forward``'s ``weight_dtype`` for the calls that keep no
        cache: None, or "bfloat16" (a float32 LSTM on the CPU). Checked when
        set, not at the next call."""
        return self._inference_weight_dtype

    @inference_weight_dtype.setter
    def inference_weight_dtype(self, value: str | None) -> None:
        if value is not None and not isinstance(value, str):
            raise TypeError(f"inference_weight_dtype: expected None or 'bfloat16', got {value!r}")
        if value is not None and value != "bfloat16":
            raise ValueError(f"inference_weight_dtype: expected None or 'bfloat16', got {value!r}")
        if value is not None and (self.dtype != np.float32 or self.device != "cpu"):
            raise TypeError(
                "inference_weight_dtype: 'bfloat16' is for a float32 LSTM on the CPU, this one "
                f"is {self.dtype} on {self.device!r}"
            )
        self._inference_weight_dtype = value

    def _array_module(self):
        """The module of params' arrays: CuPy on the GPU where installed, else NumPy."""
        return (_device.gpu_params_module() if self.device == "cuda" else None) or np

    # ---- copies and pickles ------------------------------------------------------

    def __getstate__(self) -> dict:
        """What ``copy.deepcopy`` and ``pickle`` take: parameters, gradients,
        options, mode and dropout's generator; not the lock, nor the last
        forward's caches (a copy's backward needs a forward of its own)."""
        state = dict(self.__dict__)
        del state["_busy"], state["_xp"]
        state["_saved"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        state = dict(state)
        if "inference_weight_dtype" in state:  # pickled before it became a property
            state["_inference_weight_dtype"] = state.pop("inference_weight_dtype")
        self.__dict__.update(state)
        self._xp = self._array_module()
        self._busy = threading.Lock()

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

    def config(self) -> dict:
        return dict(type="LSTM", input_size=self.input_size, hidden_size=self.hidden_size,
                    num_layers=self.num_layers, bias=self.bias, batch_first=self.batch_first,
                    dropout=self.dropout, bidirectional=self.bidirectional,
                    proj_size=self.proj_size, dtype=self.dtype.name)  # fmt: skip

    # ---- forward and backward ----------------------------------------------------

    def packed(self) -> PackedLSTM:
        """This LSTM's weights as they are now, packed once for repeated
        inference on the CPU: a ``PackedLSTM``. Its calls give the bits of
        this LSTM's forward in eval mode at the time of packing."""
        return PackedLSTM(self)

    def _inputs(self, x, state):
        """forward's x and state checked and laid out: x [T,B,I], h0 [L*D,B,O]
        and c0 [L*D,B,H] (None for zeros), whether x was one sequence, and
        whether results go back to the host."""
        xp = self._xp
        host_io = _device.library_of(x) is None  # results go back to the host
        if not host_io and xp is np:
            raise TypeError(
                f"x: a GPU array ({type(x).__module__}.{type(x).__name__}); nn.LSTM takes "
                "those with device='cuda' and CuPy installed, else NumPy arrays"
            )
        x = as_array("x", x, xp)  # the batch crosses the bus here, once
        if x.ndim not in (2, 3):
            raise ValueError(
                f"x: expected 3 dimensions {'[B,T,I]' if self.batch_first else '[T,B,I]'} "
                f"(or 2, [T,I], for one sequence), got shape {x.shape}"
            )
        if not same_dtype(x.dtype, self.dtype):
            raise TypeError(f"x: expected dtype {self.dtype} (the LSTM's), got {x.dtype}")
        if x.shape[-1] != self.input_size:
            raise ValueError(f"x: expected {self.input_size} input features, got shape {x.shape}")
        unbatched = x.ndim == 2  # one sequence [T,I], as torch takes it
        if unbatched:
            x = x[:, None]
        elif self.batch_first:
            x = x.swapaxes(0, 1)  # [T,B,I]
        B = x.shape[1]
        L, D, H, O = self.num_layers, self.num_directions, self.hidden_size, self.output_size
        h0 = c0 = None
        if state is not None:
            h0, c0 = (as_array(f"state[{i}]", s, xp) for i, s in enumerate(_pair("state", state)))
            for name, s, width in (("state[0] (h0)", h0, O), ("state[1] (c0)", c0, H)):
                want = (L * D, width) if unbatched else (L * D, B, width)
                if s.shape != want:
                    raise ValueError(f"{name}: expected shape {want}, got {s.shape}")
                if not same_dtype(s.dtype, self.dtype):
                    raise TypeError(f"{name}: expected dtype {self.dtype}, got {s.dtype}")
            if unbatched:
                h0, c0 = h0[:, None], c0[:, None]
        return x, h0, c0, unbatched, host_io

    @_one_thread_at_a_time
    def forward(self, x, state=None, lengths=None, *, keep_cache=None):
        """See the class docstring. Returns ``out, (h_n, c_n)``."""
        xp = self._xp
        x, h0, c0, unbatched, host_io = self._inputs(x, state)
        B = x.shape[1]
        L, D, H, O = self.num_layers, self.num_directions, self.hidden_size, self.output_size
        keep = self.training if keep_cache is None else check_bool("keep_cache", keep_cache)
        weight_dtype = None if keep else self.inference_weight_dtype
        h_n = xp.empty((L * D, B, O), self.dtype)
        c_n = xp.empty((L * D, B, H), self.dtype)
        caches, masks = [], []
        inp = x
        for layer in range(L):
            both = _both_sides(D, *inp.shape[:2], O, self.dtype, xp)

            def direction(d, inp=inp, layer=layer):
                k = layer * D + d
                _, kw = self._weights(layer, d)
                return lstm_ext.forward(
                    inp, kw["W"], kw["R"], kw["b"],
                    None if h0 is None else h0[k], None if c0 is None else c0[k],
                    training=keep, reverse=bool(d), lengths=lengths, W_hr=kw.get("W_hr"),
                    device=self.device, weight_dtype=weight_dtype,
                )  # fmt: skip

            results = _directions(direction, D, inp.shape, H, O, self.device == "cpu", out=both)
            outs, layer_caches = [], []
            for d, (y, h, c, cache) in enumerate(results):
                outs.append(y)
                layer_caches.append(cache)
                h_n[layer * D + d], c_n[layer * D + d] = h, c
            inp = _side_by_side(outs, xp) if both is None else both  # [T,B,D*O]
            caches.append(layer_caches)
            mask = None
            if self.training and self.dropout > 0 and layer < L - 1:
                keep_p = 1 - self.dropout
                drawn = self._rng.random(inp.shape) < keep_p
                mask = drawn.astype(self.dtype) / keep_p if keep_p > 0 else np.zeros(inp.shape)
                mask = xp.asarray(mask, self.dtype)
                inp = inp * mask
            masks.append(mask)
        self._saved = (caches, masks, state is not None, unbatched, host_io) if keep else None
        out, h_n, c_n = self._as_given(inp, h_n, c_n, unbatched, host_io)
        return out, (h_n, c_n)

    def _as_given(self, seq, first, second, unbatched, host_io):
        """seq [T,B,*] and two states [L*D,B,*] laid out as the caller gave x:
        one sequence without its batch axis, batch_first, on the host."""
        if unbatched:
            seq, first, second = seq[:, 0], first[:, 0], second[:, 0]
        elif self.batch_first:
            seq = seq.swapaxes(0, 1)
        if host_io:
            seq, first, second = (_device.host(a) for a in (seq, first, second))
        return seq, first, second

    @_one_thread_at_a_time
    def backward(self, dy, dstate=None):
        """Gradients of the last forward call; see the class docstring."""
        if self._saved is None:
            raise RuntimeError(
                "backward: no forward call kept what backward needs; call forward in "
                "training mode or with keep_cache=True first"
            )
        caches, masks, had_state, unbatched, host_io = self._saved
        L, D, H, O = self.num_layers, self.num_directions, self.hidden_size, self.output_size
        T, B = caches[0][0].T, caches[0][0].B
        xp = self._xp
        if unbatched:
            want = (T, D * O)
        else:
            want = (B, T, D * O) if self.batch_first else (T, B, D * O)
        dy = (
            xp.zeros(want, self.dtype) if dy is None else as_array("dy", dy, xp)
        )  # a loss on the state only
        if dy.shape != want:
            raise ValueError(f"dy: expected the shape of out, {want}, got {dy.shape}")
        if unbatched:
            dy = dy[:, None]
        elif self.batch_first:
            dy = dy.swapaxes(0, 1)
        dh_n, dc_n = _pair("dstate", dstate) if dstate is not None else (None, None)
        dh_n = None if dh_n is None else as_array("dstate[0]", dh_n, xp)
        dc_n = None if dc_n is None else as_array("dstate[1]", dc_n, xp)
        for name, s, width in (("dstate[0]", dh_n, O), ("dstate[1]", dc_n, H)):
            want = (L * D, width) if unbatched else (L * D, B, width)
            if s is not None and s.shape != want:
                raise ValueError(f"{name}: expected shape {want}, got {s.shape}")
            if s is not None and not same_dtype(s.dtype, self.dtype):
                raise TypeError(f"{name}: expected dtype {self.dtype}, got {s.dtype}")
        if unbatched:
            dh_n = None if dh_n is None else dh_n[:, None]
            dc_n = None if dc_n is None else dc_n[:, None]
        dh0 = xp.empty((L * D, B, O), self.dtype)
        dc0 = xp.empty((L * D, B, H), self.dtype)
        for layer in reversed(range(L)):
            if masks[layer] is not None:
                dy = dy * masks[layer]
            dinp = None

            def direction(d, dy=dy, layer=layer):
                k = layer * D + d
                return lstm_ext.backward(
                    caches[layer][d],
                    dy[:, :, d * O : (d + 1) * O],
                    None if dh_n is None else dh_n[k],
                    None if dc_n is None else dc_n[k],
                )

            x_shape = (T, B, caches[layer][0].I)
            grads = _directions(direction, D, x_shape, H, O, self.device == "cpu", passes=2)
            # The gradients are added once every direction has succeeded.
            for d, g in enumerate(grads):
                k = layer * D + d
                s, _ = self._weights(layer, d)
                dx, dh0[k], dc0[k], dW, dR, db = g[:6]
                if dinp is None:
                    dinp = dx
                else:
                    dinp += dx  # dx: backward's own new array
                self.grads["weight_ih" + s] += dW
                self.grads["weight_hh" + s] += dR
                if self.bias:
                    for name in _BIAS_NAMES:
                        self.grads[name + s] += db
                if self.proj_size:
                    self.grads["weight_hr" + s] += g.dW_hr
            dy = dinp
        dx, dh0, dc0 = self._as_given(dy, dh0, dc0, unbatched, host_io)
        return (dx, (dh0, dc0)) if had_state else dx


class PackedLSTM(LSTM):
    """An ``LSTM`` frozen for inference on the CPU: ``lstm.packed()``.

    Each layer and direction's weights are packed once (``lstm_ext.PackedLayer``)
    instead of at every call: for calls over a few steps, as when a model
    generates text one character at a time, packing is most of a call (half
    of a (T,B,I,H) = (1,1,128,128) call, three quarters at H = 256 on the
    2-core VM). The parameters are private read-only copies taken by
    ``packed()`` (with the panels, about twice the weights' memory): later
    changes to the LSTM's (an optimiser step) do not reach them; pack again
    to take them. ``forward(x, state=None, lengths=None)`` takes and returns
    what the LSTM's does and gives the bits of its forward in eval mode at the
    time of packing (``inference_weight_dtype`` included).
    It keeps nothing for backward, so threads may share one. There is no
    backward, no training mode, no ``load_state_dict``; ``config()`` and
    ``state_dict()`` are the LSTM's, so a saved model loads back as an LSTM.
    """

    def __init__(self, lstm: LSTM):
        if not isinstance(lstm, LSTM):
            raise TypeError(f"lstm: expected an lstm_ext.nn.LSTM, got {type(lstm).__name__}")
        if lstm.device != "cpu":
            raise ValueError(f"lstm: packed weights run on the CPU; this LSTM's device is "
                             f"{lstm.device!r}")  # fmt: skip
        for name in lstm.config().keys() - {"type"}:  # the constructor's arguments
            setattr(self, name, getattr(lstm, name))
        self.device, self._xp, self.training = "cpu", np, False
        self.inference_weight_dtype = lstm.inference_weight_dtype
        # params: read-only views of each layer's private copies (views of a
        # read-only array cannot be made writeable), the biases copied.
        own = {}
        self._layers = []  # [L*D], layer-major as h_n
        for layer in range(self.num_layers):
            for d in range(self.num_directions):
                s, kw = lstm._weights(layer, d)
                packed = lstm_ext.PackedLayer(**kw, weight_dtype=self.inference_weight_dtype)
                self._layers.append(packed)
                own["weight_ih" + s], own["weight_hh" + s] = packed._W, packed._R
                if self.proj_size:
                    own["weight_hr" + s] = packed._W_hr
                for name in _BIAS_NAMES if self.bias else ():
                    own[name + s] = np.array(lstm.params[name + s], copy=True)
                    own[name + s].flags.writeable = False
        self.params = {name: own[name].view() for name in lstm.params}
        self.grads = {}

    @property
    def nbytes(self) -> int:
        """Bytes held: each layer's private copies and packed panels, and the
        biases as given (about twice the weights' bytes)."""
        biases = sum(p.nbytes for name, p in self.params.items() if name.startswith("bias_"))
        return sum(layer.nbytes for layer in self._layers) + biases

    def forward(self, x, state=None, lengths=None, *, keep_cache=None):
        """``lstm(x, state, lengths)`` in eval mode; see ``LSTM``."""
        if check_bool("keep_cache", keep_cache):
            raise ValueError("keep_cache: a PackedLSTM keeps nothing for backward, got True")
        x, h0, c0, unbatched, host_io = self._inputs(x, state)
        L, D, B = self.num_layers, self.num_directions, x.shape[1]
        h_n = np.empty((L * D, B, self.output_size), self.dtype)
        c_n = np.empty((L * D, B, self.hidden_size), self.dtype)
        inp = x
        H, O = self.hidden_size, self.output_size
        for layer in range(L):
            both = _both_sides(D, *inp.shape[:2], O, self.dtype, np)

            def direction(d, inp=inp, layer=layer):
                k = layer * D + d
                return self._layers[k].forward(
                    inp, None if h0 is None else h0[k], None if c0 is None else c0[k],
                    reverse=bool(d), lengths=lengths,
                )  # fmt: skip

            results = _directions(direction, D, inp.shape, H, O, True, out=both)
            for d, r in enumerate(results):
                h_n[layer * D + d], c_n[layer * D + d] = r.h, r.c
            inp = _side_by_side([r.y for r in results], np) if both is None else both
        out, h_n, c_n = self._as_given(inp, h_n, c_n, unbatched, host_io)
        return out, (h_n, c_n)

    def __getstate__(self) -> dict:
        """The LSTM's config and state dict: the panels' layout is the kernel's
        of the CPU that packed them, so a copy, or a pickle loaded elsewhere,
        packs again (the same bits where the kernel is the same)."""
        return {"config": self.config(), "state": self.state_dict(),
                "inference_weight_dtype": self.inference_weight_dtype}  # fmt: skip

    def __setstate__(self, state: dict) -> None:
        lstm = from_config(state["config"])
        lstm.load_state_dict(state["state"])
        lstm.inference_weight_dtype = state["inference_weight_dtype"]
        PackedLSTM.__init__(self, lstm)

    def _refuse(self, what: str):
        raise RuntimeError(
            f"PackedLSTM.{what}: a PackedLSTM is for inference, its weights frozen; train the "
            "LSTM it was packed from and call its packed() again"
        )

    def backward(self, dy, dstate=None):
        self._refuse("backward")

    def train(self, mode: bool = True):
        if mode:
            self._refuse("train")
        return self

    def load_state_dict(self, state: dict) -> None:
        self._refuse("load_state_dict")

    def packed(self) -> PackedLSTM:
        return self

    def __repr__(self) -> str:
        return (f"<lstm_ext.nn.PackedLSTM {self.input_size}->{self.hidden_size} "
                f"layers={self.num_layers} D={self.num_directions} {self.dtype}>")  # fmt: skip


def _features(m: Module) -> tuple:
    """(features m takes, features it gives) on the last axis; "tokens" for
    an Embedding's input, None where m does not say (a module of the user's)."""
    if isinstance(m, LSTM):
        return m.input_size, m.num_directions * m.output_size
    if isinstance(m, Embedding):
        return "tokens", m.embedding_dim
    return getattr(m, "in_features", None), getattr(m, "out_features", None)


def _check_chain(modules) -> None:
    """A Sequential's modules: each one once, none a Sequential, each taking
    the features the one before it gives."""
    for k, m in enumerate(modules):
        if isinstance(m, Sequential):
            raise TypeError(
                f"modules[{k}]: a Sequential inside a Sequential is not supported; "
                "give its modules in order instead"
            )
        if (j := next((j for j in range(k) if modules[j] is m), None)) is not None:
            raise ValueError(
                f"modules[{k}]: the same module object as modules[{j}]; a module keeps its "
                "last forward's input for backward, so each place needs its own"
            )
        takes = _features(m)[0]
        if k and takes == "tokens":
            raise ValueError(f"modules[{k}]: an Embedding takes token indices, so it must be first")
        gives = _features(modules[k - 1])[1] if k else None
        if None not in (takes, gives) and takes != gives:
            raise ValueError(
                f"modules[{k}]: expected {gives} input features (what modules[{k - 1}] "
                f"gives), got a {type(m).__name__} taking {takes}"
            )


class Sequential(Module):
    """Modules applied in order, and backward in reverse::

        model = Sequential(Embedding(V, 32), LSTM(32, 256), Linear(256, V))
        logits, state = model(tokens, state)       # state: the LSTM's
        model.backward(dlogits)

    At most one LSTM (which may itself have several layers): ``forward(x,
    state=None, lengths=None)`` hands it ``state`` and ``lengths`` and returns
    ``(y, its final state)`` (the state is None without an LSTM).
    ``backward(dy, dstate=None)`` returns what the first module's backward
    returns (None after an Embedding), with ``(dh0, dc0)`` too when forward
    was given a state. Parameter names are prefixed by position, as
    PyTorch's: ``"1.weight_ih_l0"``.
    """

    def __init__(self, *modules: Module):
        if not modules or not all(isinstance(m, Module) for m in modules):
            raise TypeError("modules: expected one or more lstm_ext.nn modules")
        if sum(isinstance(m, LSTM) for m in modules) > 1:
            raise ValueError("modules: at most one LSTM (give it num_layers for a stack)")
        _check_chain(modules)
        self.modules = list(modules)
        self._collect()
        self._had_state = False

    def _collect(self) -> None:
        """params and grads: the modules' own arrays, under prefixed names."""
        mods = self.modules
        self.params = {f"{k}.{n}": p for k, m in enumerate(mods) for n, p in m.params.items()}
        self.grads = {f"{k}.{n}": g for k, m in enumerate(mods) for n, g in m.grads.items()}

    def __getstate__(self) -> dict:
        """Copies and pickles take the modules and collect params and grads from
        them again (a PackedLSTM's are new arrays in its copy)."""
        state = dict(self.__dict__)
        del state["params"], state["grads"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._collect()

    def __getitem__(self, k: int) -> Module:
        return self.modules[k]

    def __len__(self) -> int:
        return len(self.modules)

    def config(self) -> dict:
        return dict(type="Sequential", modules=[m.config() for m in self.modules])

    def __repr__(self) -> str:
        rows = "".join(f"\n  ({k}): {m!r}" for k, m in enumerate(self.modules))
        return f"Sequential({rows}\n)"

    def train(self, mode: bool = True):
        for m in self.modules:
            m.train(mode)
        return super().train(mode)

    def packed(self) -> Sequential:
        """For repeated inference on the CPU: a new Sequential of these modules
        as they are now, in eval mode, the LSTM packed (``LSTM.packed``) and
        the others copied; later changes to this one's parameters do not
        reach it. Its calls give the bits of this one's in eval mode."""

        def frozen(m: Module) -> Module:
            if isinstance(m, LSTM):
                return m.packed()
            copy = from_config(m.config())
            copy.load_state_dict(m.state_dict())
            return copy

        return Sequential(*(frozen(m) for m in self.modules)).eval()

    def forward(self, x, state=None, lengths=None, *, keep_cache=None):
        new_state = None
        self._had_state = state is not None
        for m in self.modules:
            if isinstance(m, LSTM):
                x, new_state = m(x, state, lengths, keep_cache=keep_cache)
            else:
                x = m(x, keep_cache=keep_cache)
        return x, new_state

    def backward(self, dy, dstate=None):
        dstate0 = None
        for m in reversed(self.modules):
            if isinstance(m, LSTM):
                dy = m.backward(dy, dstate)
                if self._had_state:
                    dy, dstate0 = dy
            else:
                dy = m.backward(dy)
        return (dy, dstate0) if self._had_state else dy


MODULES = {"Linear": Linear, "Embedding": Embedding, "LSTM": LSTM}


def from_config(config: dict) -> Module:
    """A module (with fresh parameters) from ``module.config()``."""
    if not isinstance(config, dict) or "type" not in config:
        raise ValueError(f"config: expected a dict with a 'type', got {config!r}")
    kind, kw = config["type"], {k: v for k, v in config.items() if k != "type"}
    if kind == "Sequential":
        if not isinstance(modules := kw.get("modules"), list):
            raise ValueError(
                f"config: a Sequential's 'modules' must be a list, got {modules!r:.80}"
            )
        return Sequential(*(from_config(c) for c in modules))
    if not isinstance(kind, str) or kind not in MODULES:
        raise ValueError(f"config: unknown module type {kind!r:.80}")
    taken = inspect.signature(MODULES[kind]).parameters
    if unknown := sorted(set(kw) - set(taken)):
        raise ValueError(f"config: {kind} takes no {', '.join(unknown)}")
    with warnings.catch_warnings():  # the constructor's warnings were for the model's maker
        warnings.simplefilter("ignore", UserWarning)
        return MODULES[kind](**kw)
