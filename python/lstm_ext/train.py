"""A training loop over the NumPy API: ``fit``, truncated BPTT, a history.

The pieces, each replaceable:

- a *batch source*: ``batches(step) -> batch``, any object the step function
  understands. Drawing batch ``step`` from ``np.random.default_rng([seed,
  step])`` makes a run repeatable and a resumed run identical to an
  uninterrupted one;
- a *step function*: ``step_fn(model, batch) -> (loss, items)`` runs forward,
  the loss and backward (gradients accumulate in ``model.grads``); ``items``
  counts what the throughput is measured in (tokens, sequences);
- ``fit`` zeroes the gradients, calls the step function, clips, steps the
  optimiser, evaluates now and then, shows a progress bar and keeps a
  ``History``; ``after_eval`` can save a checkpoint at each evaluation, and
  ``stop`` ends training between two steps (the command line's Ctrl-C).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from . import losses, nn
from ._checks import as_array, check_int, is_real
from .optim import clip_grad_norm


@dataclass
class History:
    """What ``fit`` saw, ready to plot: training loss per step, evaluation
    loss at the steps it ran, and the throughput (items per second)."""

    steps: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    eval_steps: list[int] = field(default_factory=list)
    eval_loss: list[float] = field(default_factory=list)
    items_per_s: list[float] = field(default_factory=list)

    def smoothed(self, window: int = 20) -> np.ndarray:
        """The training loss, averaged over a sliding window (for plots)."""
        loss = np.asarray(self.loss, np.float64)
        if len(loss) < window:
            return loss
        return np.convolve(loss, np.ones(window) / window, mode="valid")


class Interrupted(KeyboardInterrupt):
    """``fit`` stopped between two steps because its ``stop()`` said so:
    ``steps_done`` optimiser steps were completed (the model holds their
    result; no step was cut short), ``history`` has what fit saw."""

    def __init__(self, steps_done: int, history: History):
        super().__init__(f"stopped after {steps_done} steps")
        self.steps_done, self.history = steps_done, history


def fit(
    model,
    optimizer,
    batches: Callable[[int], object],
    step_fn: Callable,
    steps: int,
    *,
    start: int = 0,
    eval_fn: Callable | None = None,
    eval_every: int = 100,
    clip: float | None = None,
    progress: bool = True,
    unit: str = "item",
    scale: float = 1.0,
    history: History | None = None,
    after_eval: Callable[[int, float], None] | None = None,
    stop: Callable[[], bool] | None = None,
) -> History:
    """Train for ``steps`` optimiser steps (numbered from ``start``).

    eval_fn(model) -> loss runs every ``eval_every`` steps and after the last;
    the model is in eval mode meanwhile. ``clip``: clip the gradients' global
    norm to it. ``scale`` multiplies losses for display and history (e.g.
    1/ln 2 for bits). Returns the History (appended to, if given).

    ``after_eval(steps_done, eval_loss)`` runs after each evaluation (to save
    a checkpoint, say), ``steps_done`` counting from ``start``. ``stop()`` is
    asked after every step, its evaluation and after_eval; when it answers
    True, fit raises ``Interrupted`` (a KeyboardInterrupt) right there.
    """
    steps, start = check_int("steps", steps, 0), check_int("start", start, 0)
    eval_every = check_int("eval_every", eval_every, 1)
    history = history or History()
    bar = tqdm(total=start + steps, initial=start, disable=not progress, unit="step",
               dynamic_ncols=True)  # fmt: skip
    postfix = {}
    try:
        for step in range(start, start + steps):
            model.train()
            t0 = time.perf_counter()
            optimizer.zero_grad()
            loss, items = step_fn(model, batches(step))
            if clip is not None:
                clip_grad_norm(model, clip)
            optimizer.step()
            rate = items / max(time.perf_counter() - t0, 1e-9)
            history.steps.append(step)
            history.loss.append(loss * scale)
            history.items_per_s.append(rate)
            postfix.update(loss=f"{loss * scale:.3f}", **{f"{unit}/s": f"{rate:,.0f}"})
            if not math.isfinite(loss):  # before after_eval could save a broken model
                raise FloatingPointError(f"training loss is {loss} at step {step}")
            last = step == start + steps - 1
            if eval_fn is not None and ((step + 1) % eval_every == 0 or last):
                model.eval()
                ev = eval_fn(model) * scale
                history.eval_steps.append(step)
                history.eval_loss.append(ev)
                postfix["eval"] = f"{ev:.3f}"
                if after_eval is not None:
                    after_eval(step + 1 - start, ev)
            bar.set_postfix(postfix, refresh=False)
            bar.update(1)
            if stop is not None and stop():
                raise Interrupted(step + 1 - start, history)
    finally:
        bar.close()
        model.train()
    return history


class TruncatedBPTT:
    """Truncated backpropagation through time over consecutive chunks of long
    streams, for a model returning ``(logits, state)`` (a Sequential with an
    LSTM). The final state of one chunk is the initial state of the next;
    gradients stop at chunk boundaries (backward gets no gradient from later
    chunks, and the gradient reaching the initial state is dropped).

    A step function for ``fit``: batches are ``(inputs [T,B], targets [T,B],
    first)`` where ``first`` says the chunk starts a new stream (the state is
    reset to zeros).
    """

    def __init__(self, loss_fn=losses.softmax_cross_entropy):
        self.loss_fn = loss_fn
        self.state = None

    def __call__(self, model, batch):
        x, targets, first = batch
        if first:
            self.state = None
        logits, state = model(x, self.state)
        loss, dlogits = self.loss_fn(logits, targets)
        model.backward(dlogits)
        self.state = tuple(np.array(s) for s in state)  # values only: no path back
        return loss, targets.size


def stream_chunks(tokens: np.ndarray, batch: int, seq_len: int):
    """Split one long stream into ``batch`` parallel streams and return a
    batch source over their consecutive chunks, for ``TruncatedBPTT``.

    Stream b is tokens[b*L:(b+1)*L] with L = len(tokens) // batch. Chunk k of
    an epoch holds steps k*seq_len ... of every stream as inputs [seq_len,B],
    and the next token of each as targets. ``batches(step)`` cycles through
    the chunks, epoch after epoch; ``len(batches)`` is the chunks per epoch.
    """
    batch, seq_len = check_int("batch", batch, 1), check_int("seq_len", seq_len, 1)
    tokens = as_array("tokens", tokens)
    if tokens.ndim != 1:
        raise ValueError(f"tokens: expected one stream, 1-D, got shape {tokens.shape}")
    L = len(tokens) // batch
    n = (L - 1) // seq_len
    if n < 1:
        raise ValueError(
            f"tokens: {len(tokens)} are too few for batch={batch} streams of seq_len={seq_len}"
        )
    streams = tokens[: batch * L].reshape(batch, L).T  # [L,B]

    class Chunks:
        def __len__(self):
            return n

        def __call__(self, step):
            k = step % n
            t0 = k * seq_len
            return streams[t0 : t0 + seq_len], streams[t0 + 1 : t0 + seq_len + 1], k == 0

    return Chunks()


def generate(model, vocab, prime: str, length: int, temperature: float = 1.0, rng=None) -> str:
    """Text from a character model (a Sequential returning ``(logits, state)``):
    feed ``prime``, then draw ``length`` characters, each fed back in, from
    softmax(logits / temperature). ``vocab`` is a ``data.Vocab``. An empty
    ``prime`` starts from the vocabulary's first character (id 0), which the
    text returned does not include. The model's mode is as it was after."""
    if not (is_real(temperature) and 0 < temperature < math.inf):
        raise ValueError(f"temperature: expected a finite number > 0, got {temperature!r}")
    length = check_int("length", length, 0)
    rng = np.random.default_rng() if rng is None else rng
    # Weights packed once, not at every one-character call (the same bits); a
    # packed copy is in eval mode, and so is the model itself meanwhile,
    # restored after (a training loop that samples goes on training).
    if isinstance(model, nn.Sequential) and all(
        m.device == "cpu" for m in model.modules if isinstance(m, nn.LSTM)
    ):
        return _generate(model.packed(), vocab, prime, length, temperature, rng)
    was_training = getattr(model, "training", False)
    model.eval()
    try:
        return _generate(model, vocab, prime, length, temperature, rng)
    finally:
        model.train(was_training)


def _generate(model, vocab, prime, length, temperature, rng) -> str:
    ids = vocab.encode(prime, "prime") if prime else np.zeros(1, np.int64)
    logits, state = model(ids[:, None])  # [T,1,V]
    if logits.shape[-1] != len(vocab):
        raise ValueError(f"vocab: {len(vocab)} characters, but the model gives "
                         f"{logits.shape[-1]} logits")  # fmt: skip
    out = []
    for _ in range(length):
        last = logits[-1, 0].astype(np.float64)
        if not np.isfinite(last).all():
            raise ValueError(f"the model's logits are not finite ({last[~np.isfinite(last)][0]})")
        with np.errstate(over="ignore"):
            z = last / temperature
        if np.isfinite(z).all():
            p = np.exp(z - z.max())
            k = int(rng.choice(len(p), p=p / p.sum()))
        else:  # a temperature so small that z overflows: its limit, the likeliest
            k = int(np.argmax(last))
        out.append(k)
        logits, state = model(np.array([[k]]), state)
    return prime + vocab.decode(out)
