"""Type stubs for the compiled module; see lstm_ext's functions for the docs."""

import numpy as np
from numpy.typing import ArrayLike

inference_chunk: int

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
) -> tuple[np.ndarray, np.ndarray, np.ndarray, Cache | None]: ...
def backward(
    cache: Cache,
    dy: ArrayLike | None,
    dh: ArrayLike | None = None,
    dc: ArrayLike | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]: ...
def step(
    x: ArrayLike,
    h: ArrayLike | None,
    c: ArrayLike | None,
    W: ArrayLike,
    R: ArrayLike,
    b: ArrayLike | None = None,
) -> tuple[np.ndarray, np.ndarray]: ...
