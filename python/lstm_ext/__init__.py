"""lstm_ext: LSTM forward and backpropagation through time, NumPy in, NumPy out.

One layer, one direction, a whole sequence per call. Letters: T steps, B batch,
I input features, H hidden units; the gate axis 4H is ordered i, f, g, o as in
PyTorch. Arrays are ``[T,B,*]``, or ``[B,T,*]`` with ``batch_first=True``.
``lstm_ext.reference`` states the same math in plain NumPy.

float32 and float64 are supported; every array of one call must share the
dtype of ``x`` and the results come back in it. NaN and Inf in inputs
propagate as IEEE arithmetic does (a NaN anywhere in ``x[t]`` reaches every
later step of that sequence); they are not checked for.

``device="cuda"`` runs a call on the GPU (the CUDA path, where it is
compiled and a GPU is visible; ``cuda_available()`` says whether), "auto"
picks the GPU where it can, "cpu" (the default) never does. On the GPU,
arguments may be NumPy arrays (copied over) or GPU arrays (CuPy, PyTorch
CUDA tensors, anything with ``__cuda_array_interface__``, and through CuPy
or PyTorch anything with ``__dlpack__``, such as JAX: used in place);
results come back as NumPy arrays for a NumPy ``x``, else as arrays of x's
library (CuPy's for a DLPack one; forward's x's, or dy's, for backward). A training cache stays on
the device that made it, and backward runs there.

Calls release the GIL. A call only reads its arguments and its cache, so
threads may share weights and caches (an ``nn.LSTM`` instance, which keeps
a forward's caches, serves one thread at a time). lstm_ext computes on its
own threads (``set_num_threads``, or the environment variable
LSTM_EXT_NUM_THREADS; default: the CPUs the process may run on, at most its
cgroup's CPU limit rounded up, as in a container run with ``--cpus``, and at
most OMP_NUM_THREADS where set) with the BLAS single-threaded inside its
calls; threadpoolctl's ``threadpool_limits`` sizes them too, where it is
installed. Results are bit-identical from run to run at any thread count.
Where other processes' threads keep a call's threads off their cores, the
next calls run on half as many for a while (``_core.team_backoffs()``
counts how often).

Arrays of 128 KiB and more that lstm_ext hands out reuse the memory of such
arrays freed before (up to LSTM_EXT_BUFFER_CACHE_MB megabytes, default 1024,
are kept for that; 0 turns it off); ``free_cached_buffers()`` gives it back.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike

from . import _threadpool

with _threadpool.blas_loads_on_one_thread():  # no spinning BLAS threads at import
    import scipy_openblas32  # loads libscipy_openblas, which _core links

    from . import _core
from . import _checks, convert, nn
from ._core import Cache, free_cached_buffers, get_num_threads, set_num_threads
from ._device import (
    as_library,
    check_device,
    cuda_available,
    cuda_status,
    library_of,
    module,
    module_of_cache,
    to_gpu_args,
)
from ._version import __version__
from .onnx import onnx_lstm
from .reference import round_bfloat16

_checks.check_environment()  # before the core reads the variables, on first use
_threadpool.register()  # threadpoolctl sizes lstm_ext's threads too, where installed

# The training side loads on first use (lstm_ext.optim, ...), keeping import light.
_LAZY = ("checkpoint", "data", "export", "losses", "optim", "train")


def __dir__() -> list[str]:
    """The public names, ``__all__``, and the module's own (``__file__``,
    ...): dir() and tab completion had listed the imports too (np,
    NamedTuple, scipy_openblas32, ...)."""
    own = {k for k in globals() if k.startswith("__") and k.endswith("__")}
    return sorted(set(__all__) | own)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'lstm_ext' has no attribute {name!r}")


__all__ = [
    "Cache",
    "ForwardResult",
    "ForwardResultWithCells",
    "GradResult",
    "GradResultWithExtras",
    "PackedLayer",
    "StepResult",
    "__version__",
    "backward",
    "checkpoint",
    "convert",
    "cuda_available",
    "cuda_status",
    "data",
    "export",
    "forward",
    "free_cached_buffers",
    "get_cmake_dir",
    "get_cmake_prefix_path",
    "get_include",
    "get_num_threads",
    "losses",
    "nn",
    "onnx_lstm",
    "optim",
    "reference",
    "round_bfloat16",
    "set_num_threads",
    "step",
    "train",
]


def _installed_dir():
    """The folder pip installed the compiled package into, _core's: in an
    editable install ``__file__`` is the source tree's, which holds neither
    the headers nor the CMake package."""
    from pathlib import Path

    return Path(_core.__file__).parent


def get_cmake_dir() -> str:
    """The folder of lstm_ext's CMake package: ``find_package(lstm_ext CONFIG)``
    with ``-Dlstm_ext_DIR=<this>`` gives the target ``lstm_ext::core``. Also
    ``python -m lstm_ext --cmake-dir``."""
    return str(_installed_dir() / "share" / "cmake" / "lstm_ext")


def get_cmake_prefix_path() -> str:
    """``CMAKE_PREFIX_PATH`` for ``find_package(lstm_ext CONFIG)``: lstm_ext's
    folder and the ``scipy-openblas32`` wheel's, ';'-separated, so that CMake
    finds both also where pip put them in different places (``--prefix``,
    ``--user``, a venv with system packages). Also ``python -m lstm_ext
    --cmake-prefix-path``."""
    from pathlib import Path

    return f"{_installed_dir()};{Path(scipy_openblas32.get_lib_dir()).parent}"


def get_include() -> str:
    """The folder holding ``lstm_ext/lstm.h`` and the other C++ headers."""
    return str(_installed_dir() / "include")


class ForwardResult(NamedTuple):
    y: np.ndarray  #: [T,B,O] (or [B,T,O]): h_t of every step, 0 past a sequence's end
    h: np.ndarray  #: [B,O] h after each sequence's last valid step
    c: np.ndarray  #: [B,H] c after each sequence's last valid step
    cache: Cache | None  #: what backward needs; None when training=False


class ForwardResultWithCells(NamedTuple):
    y: np.ndarray
    h: np.ndarray
    c: np.ndarray
    cache: Cache | None
    cell_states: np.ndarray  #: [T,B,H] (or [B,T,H]): c_t of every step, 0 past the end


class GradResult(NamedTuple):
    dx: np.ndarray  #: [T,B,I] (or [B,T,I])
    dh0: np.ndarray  #: [B,O]
    dc0: np.ndarray  #: [B,H]
    dW: np.ndarray  #: [4H,I]
    dR: np.ndarray  #: [4H,O]
    db: np.ndarray  #: [4H]


class GradResultWithExtras(NamedTuple):
    dx: np.ndarray
    dh0: np.ndarray
    dc0: np.ndarray
    dW: np.ndarray
    dR: np.ndarray
    db: np.ndarray
    dW_hr: np.ndarray | None  #: [P,H] when forward had W_hr
    dpeephole: np.ndarray | None  #: [3H] when forward had peephole


class StepResult(NamedTuple):
    h: np.ndarray  #: [B,O]
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
    reverse: bool = False,
    lengths: ArrayLike | None = None,
    W_hr: ArrayLike | None = None,
    peephole: ArrayLike | None = None,
    clip: float | None = None,
    input_forget: bool = False,
    return_cell_states: bool = False,
    device: str = "cpu",
    weight_dtype: str | None = None,
) -> ForwardResult | ForwardResultWithCells:
    """Run one LSTM layer in one direction over a whole batch of sequences.

    Shapes (O is P with a projection, else H):
    x [T,B,I] ([B,T,I] if batch_first); W [4H,I]; R [4H,O]; b [4H] or None
    (zeros); h0 [B,O], c0 [B,H] or None (zeros).

    Options:
    - ``reverse``: run from the last step to the first.
    - ``lengths`` [B] integers in [0,T]: a ragged batch on a padded array.
      Steps at or past a sequence's length give y = 0 and leave its state
      alone; h and c are each sequence's state after its last valid step; in
      reverse, each sequence starts at its own last valid step. The work
      scales with the sum of the lengths, not with T·B.
    - ``W_hr`` [P,H]: projection (LSTMP, PyTorch's proj_size): h = (o*tanh(c)) W_hrᵀ.
    - ``peephole`` [3H] in ONNX's order (i, o, f): i and f see c_{t-1}, o sees c_t.
    - ``clip`` > 0: clamp every gate pre-activation to [-clip, clip] (ONNX's clip).
    - ``input_forget``: coupled gates, f = 1 - i (ONNX's input_forget=1).
    - ``training=False``: keep no cache; then only O(B*H) memory beyond y.
    - ``return_cell_states``: add c_t of every step, [T,B,H], as a fifth result.
    - ``device``: "cpu", "cuda" or "auto" (see the module docstring). On the
      GPU the cache keeps x, the weights and the workspace in GPU memory.
    - ``weight_dtype="bfloat16"`` (float32, ``training=False``, CPU): W, R and
      W_hr rounded to bfloat16 (to nearest, ties to even), products summed in
      float32. On a CPU with AVX-512F the recurrent product then reads half
      the bytes a step, which is where small batches spend their time
      (elsewhere the float32 kernel runs on the rounded weights, no faster).
      The result is the float32 one with the weights rounded first, bit for
      bit (``round_bfloat16``); its distance from the unrounded float32
      result is in benchmarks/README.md.

    Returns ``ForwardResult(y, h, c, cache)``, or ``ForwardResultWithCells(y,
    h, c, cache, cell_states)``. The cache holds private copies of x (in its
    workspace) and the weights (W and R as backward's products read them, packed in the
    workspace, where 4H(I+H) <= 2^21), so changing those arrays afterwards
    does not change what backward computes. Non-contiguous inputs are copied once. Raises
    TypeError for a wrong dtype, ValueError for a wrong shape or value.
    """
    dev = check_device(device)
    names = ("x", "W", "R", "b", "h0", "c0", "W_hr", "peephole")
    x, W, R, b, h0, c0, W_hr, peephole = to_gpu_args(
        names, (x, W, R, b, h0, c0, W_hr, peephole), dev
    )
    y, h, c, cache, cs = module(dev).forward(
        x, W, R, b, h0, c0,
        batch_first=batch_first, training=training, reverse=reverse, lengths=lengths,
        W_hr=W_hr, peephole=peephole, clip=clip, input_forget=input_forget,
        return_cell_states=return_cell_states, weight_dtype=weight_dtype,
    )  # fmt: skip
    lib = library_of(x)  # after to_gpu_args: a DLPack array is CuPy's or torch's now
    if lib is not None:
        y, h, c, cs = (as_library(a, lib) for a in (y, h, c, cs))
        if cache is not None:
            cache._library = lib
    if return_cell_states:
        return ForwardResultWithCells(y, h, c, cache, cs)
    return ForwardResult(y, h, c, cache)


def backward(
    cache: Cache, dy: ArrayLike | None, dh: ArrayLike | None = None, dc: ArrayLike | None = None
) -> GradResult | GradResultWithExtras:
    """Backpropagation through time from a forward call's cache.

    dy: dL/dy, shaped like forward's y, or None (zeros); its values past a
    sequence's end are ignored. dh [B,O], dc [B,H]: dL/dh and dL/dc of the
    final state, or None (zeros). The cache is only read: it may serve
    several backward calls. Backward runs on the device forward ran on.

    Returns ``GradResult(dx, dh0, dc0, dW, dR, db)``; when forward had W_hr
    or peephole, ``GradResultWithExtras`` with ``dW_hr`` and ``dpeephole``
    added (None for the one it did not have).
    """
    mod = module_of_cache(cache)
    dev = "cpu" if mod.__name__.endswith("_core") else "cuda"
    dy, dh, dc = to_gpu_args(("dy", "dh", "dc"), (dy, dh, dc), dev)
    g = mod.backward(cache, dy, dh, dc)
    lib = getattr(cache, "_library", None) or library_of(dy)
    g = tuple(as_library(a, lib) for a in g)
    if cache.P > 0 or g[7] is not None:
        return GradResultWithExtras(*g)
    return GradResult(*g[:6])


def step(
    x: ArrayLike,
    h: ArrayLike | None,
    c: ArrayLike | None,
    W: ArrayLike,
    R: ArrayLike,
    b: ArrayLike | None = None,
    *,
    W_hr: ArrayLike | None = None,
    peephole: ArrayLike | None = None,
    clip: float | None = None,
    input_forget: bool = False,
    device: str = "cpu",
) -> StepResult:
    """One LSTM step for streaming inference: x [B,I], h [B,O] and c [B,H] (None: zeros).

    Returns ``StepResult(h, c)``, the new state, in new arrays. Feeding the
    steps of a sequence one by one gives what ``forward`` gives; the options
    mean what they mean there. On the GPU with NumPy arguments every call
    copies the weights over and the state back; with GPU arrays (weights put
    there once, e.g. ``cupy.asarray(W)``) nothing crosses the bus.
    """
    ndarray = np.ndarray
    if (
        device == "cpu"
        and type(x) is ndarray
        and type(W) is ndarray
        and type(R) is ndarray
        and (h is None or type(h) is ndarray)
        and (c is None or type(c) is ndarray)
        and (b is None or type(b) is ndarray)
    ):
        # The streaming loop's common case, without the device handling below
        # (7 of 18 µs a call at B = 1, H = 128), and without keywords when no
        # option is set (2 µs more).
        if W_hr is None and peephole is None and clip is None and input_forget is False:
            return StepResult(*_core.step(x, h, c, W, R, b))
        extras = (W_hr is None or type(W_hr) is ndarray) and (
            peephole is None or type(peephole) is ndarray
        )
        if extras:
            h, c = _core.step(
                x, h, c, W, R, b, W_hr=W_hr, peephole=peephole, clip=clip, input_forget=input_forget
            )
            return StepResult(h, c)
    args = (x, h, c, W, R, b, W_hr, peephole)
    dev = check_device(device)
    names = ("x", "h", "c", "W", "R", "b", "W_hr", "peephole")
    x, h, c, W, R, b, W_hr, peephole = to_gpu_args(names, args, dev)
    h, c = module(dev).step(
        x, h, c, W, R, b, W_hr=W_hr, peephole=peephole, clip=clip, input_forget=input_forget
    )
    lib = library_of(x)
    return StepResult(as_library(h, lib), as_library(c, lib))


class PackedLayer:
    """One layer-direction for repeated inference, its weights packed once.

    ``forward`` packs W and R into the panels its products read at every call:
    on the 2-core VM more than half of a ``(T,B,I,H) = (1,1,128,128)``
    inference call, a third at T = 10 and a few percent at T = 100
    (dev/perf-notes.md, 53). A ``PackedLayer`` packs them at construction and
    keeps private, read-only copies of every weight, so later changes to the
    arrays passed in do not reach it; ``forward`` then gives the bits of
    ``lstm_ext.forward(x, W, R, b, ..., training=False)`` with the same
    options. Made for streams fed in chunks and for servers; the CPU only
    (float32 or float64, and ``weight_dtype="bfloat16"`` as forward takes it).
    Costs the weights' memory about twice (copies and panels). Threads may
    share one: ``forward`` only reads it.

    >>> layer = lstm_ext.PackedLayer(W, R, b)
    >>> y, h, c, _ = layer.forward(x_chunk, h, c)
    """

    def __init__(
        self,
        W: ArrayLike,
        R: ArrayLike,
        b: ArrayLike | None = None,
        *,
        W_hr: ArrayLike | None = None,
        peephole: ArrayLike | None = None,
        clip: float | None = None,
        input_forget: bool = False,
        weight_dtype: str | None = None,
    ) -> None:
        def private(a):
            if a is None:
                return None
            a = np.array(a, copy=True, order="C")
            a = a.astype(a.dtype.newbyteorder("="), copy=False)  # native: x's compares equal
            a.flags.writeable = False
            return a

        self._W, self._R, self._b = private(W), private(R), private(b)
        self._W_hr, self._peephole = private(W_hr), private(peephole)
        self._clip, self._input_forget, self._weight_dtype = clip, input_forget, weight_dtype
        # Checked as forward checks them (errors name the argument).
        self._packed = _core.pack_weights(
            self._W, self._R, self._b, W_hr=self._W_hr, peephole=self._peephole,
            clip=clip, input_forget=input_forget, weight_dtype=weight_dtype,
        )  # fmt: skip
        self._packed.flags.writeable = False

    @property
    def dtype(self) -> np.dtype:
        """The weights' dtype, which ``x`` must have."""
        return self._W.dtype

    @property
    def nbytes(self) -> int:
        """Bytes held: the private copies and the packed panels."""
        arrays = (self._W, self._R, self._b, self._W_hr, self._peephole, self._packed)
        return sum(a.nbytes for a in arrays if a is not None)

    def forward(
        self,
        x: ArrayLike,
        h0: ArrayLike | None = None,
        c0: ArrayLike | None = None,
        *,
        batch_first: bool = False,
        reverse: bool = False,
        lengths: ArrayLike | None = None,
        return_cell_states: bool = False,
    ) -> ForwardResult | ForwardResultWithCells:
        """``lstm_ext.forward(x, W, R, b, h0, c0, training=False, ...)`` on
        this layer's weights and options; the cache is None."""
        x = np.asarray(x)
        if not _checks.same_dtype(x.dtype, self._W.dtype):
            raise TypeError(f"x: expected dtype {self._W.dtype} (the layer's), got {x.dtype}")
        y, h, c, _, cs = _core.forward_packed(
            self._packed, x, self._W, self._R, self._b, h0, c0,
            batch_first=batch_first, reverse=reverse, lengths=lengths, W_hr=self._W_hr,
            peephole=self._peephole, clip=self._clip, input_forget=self._input_forget,
            return_cell_states=return_cell_states, weight_dtype=self._weight_dtype,
        )  # fmt: skip
        if return_cell_states:
            return ForwardResultWithCells(y, h, c, None, cs)
        return ForwardResult(y, h, c, None)

    __call__ = forward

    def __getstate__(self) -> dict:
        """What ``copy.deepcopy`` and ``pickle`` take: the weights and options,
        not the panels, whose layout is the kernel's of the CPU that packed
        them; a copy packs again (the same bits where the kernel is the same)."""
        return dict(W=self._W, R=self._R, b=self._b, W_hr=self._W_hr, peephole=self._peephole,
                    clip=self._clip, input_forget=self._input_forget,
                    weight_dtype=self._weight_dtype)  # fmt: skip

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)

    def __repr__(self) -> str:
        H4, I = self._W.shape
        return f"<lstm_ext.PackedLayer I={I} H={H4 // 4} {self._W.dtype}>"
