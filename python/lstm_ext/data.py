"""Data the command line trains on, all generated or shipped with Python:
nothing is downloaded.

- ``pydoc_text()``: the documentation text CPython ships in
  ``pydoc_data.topics`` (460,000 to 510,000 characters, by Python version),
  and a character vocabulary.
- ``adding_batch()``: the adding problem of Hochreiter & Schmidhuber (1997).
- ``forecast_series()``: a noisy sum of seasonal sines with a slow trend.
"""

from __future__ import annotations

import numpy as np


class Vocab:
    """Characters <-> integer ids, in sorted order of the characters."""

    def __init__(self, chars: str):
        self.chars = "".join(sorted(set(chars)))
        self._index = {c: k for k, c in enumerate(self.chars)}

    def __len__(self) -> int:
        return len(self.chars)

    def encode(self, text: str, name: str = "text") -> np.ndarray:
        """text's ids; a ValueError naming it (as ``name``) where a character
        is not in the vocabulary."""
        unknown = sorted(set(text) - set(self._index))
        if unknown:
            raise ValueError(f"{name}: characters not in the vocabulary: {''.join(unknown)!r}")
        return np.fromiter((self._index[c] for c in text), np.int64, len(text))

    def decode(self, ids) -> str:
        return "".join(self.chars[int(k)] for k in ids)


def pydoc_text() -> str:
    """The pydoc topics, in a fixed order (sorted by topic)."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k] for k in sorted(topics))


def unigram_bits(train: np.ndarray, heldout: np.ndarray, vocab_size: int) -> float:
    """Held-out cross-entropy, in bits per token, of the training text's
    token frequencies (add-one smoothed): the baseline a model must beat."""
    counts = np.bincount(train, minlength=vocab_size) + 1.0
    p = counts / counts.sum()
    return float(-np.mean(np.log2(p[heldout])))


def adding_batch(rng: np.random.Generator, batch: int, length: int, dtype=np.float32):
    """The adding problem: x [length,batch,2] with channel 0 uniform in [0,1]
    and channel 1 marking two steps (one in each half of the sequence), and
    the target [batch,1]: the sum of the two marked values. Always answering
    1.0 scores an MSE of 1/6 (the variance of the sum of two uniforms)."""
    if length < 2:
        raise ValueError(f"length: expected >= 2, got {length}")
    x = np.zeros((length, batch, 2), dtype)
    x[:, :, 0] = rng.random((length, batch))
    half = length // 2
    first = rng.integers(0, half, batch)
    second = rng.integers(half, length, batch)
    cols = np.arange(batch)
    x[first, cols, 1] = 1
    x[second, cols, 1] = 1
    y = (x[first, cols, 0] + x[second, cols, 0])[:, None]
    return x, y.astype(dtype)


def forecast_series(n: int = 4000, seed: int = 0) -> np.ndarray:
    """A univariate series: two seasonal sines (periods 50 and 13), a slow
    trend and Gaussian noise, float64 [n]."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    trend = 0.3 * np.sin(2 * np.pi * t / n)
    season = np.sin(2 * np.pi * t / 50) + 0.5 * np.sin(2 * np.pi * t / 13)
    return season + trend + 0.1 * rng.standard_normal(n)
