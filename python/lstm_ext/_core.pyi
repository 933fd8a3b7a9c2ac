"""Type stubs for the compiled module; see lstm_ext's functions for the docs."""

import numpy as np
from numpy.typing import ArrayLike

def inference_chunk(B: int) -> int: ...
def forward_workspace_size(
    T: int,
    B: int,
    I: int,
    H: int,
    P: int = 0,
    *,
    training: bool = True,
    reverse: bool = False,
    ragged: bool = False,
) -> int: ...
def backward_scratch_size(
    T: int,
    B: int,
    I: int,
    H: int,
    P: int = 0,
    *,
    reverse: bool = False,
    ragged: bool = False,
) -> int: ...
def step_scratch_size(B: int, I: int, H: int, P: int = 0) -> int: ...
def linear_forward(x: ArrayLike, W: ArrayLike, b: ArrayLike | None = None) -> np.ndarray: ...
def linear_backward(
    dy: ArrayLike,
    x: ArrayLike,
    W: ArrayLike,
    dW: np.ndarray,
    db: np.ndarray | None = None,
    *,
    with_dx: bool = True,
) -> np.ndarray | None: ...
def get_num_threads() -> int: ...
def team_backoffs() -> int: ...
def set_num_threads(n: int) -> None: ...
def use_own_pool(n: int) -> None: ...
def cpu_quota_cores() -> int: ...
def packed_recurrent_enabled() -> bool: ...
def set_packed_recurrent(on: bool) -> bool: ...
def packed_recurrent_kernel() -> str: ...
def fused_gate_math() -> bool: ...
def buffer_cache() -> tuple[int, int]: ...
def free_cached_buffers() -> int: ...
def cached_empty(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray: ...

class Cache:
    @property
    def T(self) -> int: ...
    @property
    def B(self) -> int: ...
    @property
    def I(self) -> int: ...  # noqa: E743
    @property
    def H(self) -> int: ...
    @property
    def P(self) -> int: ...
    @property
    def reverse(self) -> bool: ...
    @property
    def dtype(self) -> np.dtype: ...
    @property
    def batch_first(self) -> bool: ...
    @property
    def nbytes(self) -> int: ...

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
    weight_dtype: str | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, Cache | None, np.ndarray | None]: ...
def pack_weights(
    W: ArrayLike,
    R: ArrayLike,
    b: ArrayLike | None = None,
    *,
    W_hr: ArrayLike | None = None,
    peephole: ArrayLike | None = None,
    clip: float | None = None,
    input_forget: bool = False,
    weight_dtype: str | None = None,
) -> np.ndarray: ...
def forward_packed(
    packed: np.ndarray,
    x: ArrayLike,
    W: ArrayLike,
    R: ArrayLike,
    b: ArrayLike | None = None,
    h0: ArrayLike | None = None,
    c0: ArrayLike | None = None,
    *,
    batch_first: bool = False,
    reverse: bool = False,
    lengths: ArrayLike | None = None,
    W_hr: ArrayLike | None = None,
    peephole: ArrayLike | None = None,
    clip: float | None = None,
    input_forget: bool = False,
    return_cell_states: bool = False,
    weight_dtype: str | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, None, np.ndarray | None]: ...
def backward(
    cache: Cache,
    dy: ArrayLike | None,
    dh: ArrayLike | None = None,
    dc: ArrayLike | None = None,
) -> tuple[
    np.ndarray,
    np.ndarray,
    np.ndarray,
    np.ndarray,
    np.ndarray,
    np.ndarray,
    np.ndarray | None,
    np.ndarray | None,
]: ...
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
) -> tuple[np.ndarray, np.ndarray]: ...
