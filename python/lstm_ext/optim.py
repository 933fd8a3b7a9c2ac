"""Optimisers that update a model's NumPy parameters in place: PyTorch's
``SGD``, ``Adam`` and ``AdamW`` formulas, learning-rate schedules, and
``clip_grad_norm``.

A model is any object with ``params`` and ``grads``: dicts with the same keys
mapping names to arrays of the same shapes (``nn.LSTM``, or a container that
merges its layers' dicts under prefixed names). The optimiser looks the arrays
up by name at every step and updates them in place, so every reference to a
parameter array sees the change. Buffers (momentum, Adam's moments) have each
parameter's shape and dtype, and each update computes in it: a gradient
of another real dtype is used in the parameter's (as ``+=`` would), one of
no real dtype (complex, bool) is a ``TypeError``, and so is a parameter
whose dtype changed since the optimiser was made.

Each update uses ``lr = base_lr * schedule(step)``, step counting updates from
0 (``schedule=None``: factor 1). ``state_dict()`` holds only NumPy arrays
(0-d for scalars), fit for ``np.savez`` and ``np.load(allow_pickle=False)``:
the optimiser's name, the hyper-parameters, ``steps`` and the buffers as
``"<buffer>/<param name>"``. The schedule is code, not state: give the new
optimiser the same one and it carries on from the loaded ``steps``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from . import _device
from ._checks import check_bool, check_int, check_state_keys, dtype_of, is_real, same_dtype

__all__ = ["SGD", "Adam", "AdamW", "Optimizer", "clip_grad_norm", "step_decay", "warmup_cosine"]

Schedule = Callable[[int], float]

_POSITIVE, _NON_NEGATIVE = "a finite number > 0", "a finite number >= 0"


def _check(name: str, value, ok: Callable[[float], bool], want: str) -> float:
    """``value`` as a float, if it is a finite real number for which ``ok``
    holds; else a TypeError or ValueError naming it. The one place where
    hyper-parameters (and schedule factors) become floats."""
    if not is_real(value):
        raise TypeError(f"{name}: expected a number, got {value!r}")
    try:
        x = float(value)
    except OverflowError:  # an integer such as 10**400 (its repr may fail too)
        raise ValueError(f"{name}: expected {want}, got an integer beyond float's range") from None
    if not (math.isfinite(x) and ok(x)):
        raise ValueError(f"{name}: expected {want}, got {value!r}")
    return x


def _scalar(value):
    """A state dict's 0-d array as the Python scalar it holds, for the
    hyper-parameters' own checks; an object array (``None`` in it would pass
    for False) as the array, which they refuse."""
    a = np.asarray(value)
    return a if a.dtype.kind == "O" else a.item()


class Optimizer:
    """The common part: parameters by name, buffers, steps, schedule, state.

    A subclass names its buffers in ``_buffer_names``, sets its hyper-parameters as
    attributes before calling ``__init__``, lists them in ``_hyper``, validates
    and sets them in ``_set_hyper``, and updates one parameter in ``_update``.
    """

    def __init__(self, model, lr: float, schedule: Schedule | None = None):
        params, grads = getattr(model, "params", None), getattr(model, "grads", None)
        if not isinstance(params, dict) or not isinstance(grads, dict):
            raise TypeError("model: expected an object with .params and .grads dicts")
        if params.keys() != grads.keys():
            raise ValueError(
                f"model: params and grads must have the same keys; params only: "
                f"{sorted(params.keys() - grads.keys())}, grads only: "
                f"{sorted(grads.keys() - params.keys())}"
            )
        for name, p in params.items():
            array = isinstance(p, np.ndarray) or _device.library_of(p) == "cupy"
            if not array or not np.issubdtype(p.dtype, np.floating):
                raise TypeError(
                    f"model.params[{name!r}]: expected a floating-point NumPy or CuPy array"
                )
        if schedule is not None and not callable(schedule):
            raise TypeError(f"schedule: expected a callable step -> factor, got {schedule!r}")
        self.model = model
        self.base_lr = lr
        self.schedule = schedule
        self.steps = 0
        self._shapes = {name: (p.shape, p.dtype) for name, p in params.items()}
        self.state = {
            b: {name: _device.array_module(p).zeros_like(p) for name, p in params.items()}
            for b in self._buffer_names()
        }
        self._set_hyper(self._hyper())  # validates

    def _buffer_names(self) -> tuple[str, ...]:
        return ()

    # ---- hyper-parameters ----------------------------------------------------

    def _hyper(self) -> dict[str, float | bool]:
        return {"lr": self.base_lr}

    def _set_hyper(self, h: dict) -> None:
        self.base_lr = _check("lr", h["lr"], lambda x: x > 0, _POSITIVE)

    @property
    def lr(self) -> float:
        """The learning rate of the next update: base_lr * schedule(steps)."""
        if self.schedule is None:
            return self.base_lr
        want = f"a finite factor >= 0 at step {self.steps}"
        factor = _check("schedule", self.schedule(self.steps), lambda x: x >= 0, want)
        lr = self.base_lr * factor
        if not math.isfinite(lr):  # both finite, the product past float's range
            raise ValueError(f"schedule: the factor {factor!r} at step {self.steps} takes lr "
                             f"{self.base_lr!r} past float's range")  # fmt: skip
        return lr

    # ---- steps -----------------------------------------------------------------

    def _arrays(self) -> list[tuple[str, np.ndarray, np.ndarray]]:
        """The model's current (name, param, grad), checked against the start."""
        params, grads = self.model.params, self.model.grads
        if params.keys() != self._shapes.keys() or grads.keys() != self._shapes.keys():
            raise ValueError(
                "model: its parameter names changed since the optimiser was made; "
                f"expected {list(self._shapes)}"
            )
        for name, (shape, dtype) in self._shapes.items():
            p, g = params[name], grads[name]
            for what, a in (("params", p), ("grads", g)):
                if np.shape(a) != shape:
                    raise ValueError(
                        f"model.{what}[{name!r}]: expected shape {shape}, got {np.shape(a)}"
                    )
            # The buffers were made in the parameter's dtype; a gradient of
            # another real dtype is used in it (as `+=` would), one of no real
            # dtype (complex, bool, object) is refused before any update.
            got = getattr(p, "dtype", None)
            if got is None or not same_dtype(got, dtype):
                raise TypeError(
                    f"model.params[{name!r}]: expected dtype {dtype} (its buffers', from "
                    f"when the optimiser was made), got {type(p).__name__ if got is None else got}"
                )
            got = dtype_of(g)
            if got.kind not in "fiu":
                raise TypeError(
                    f"model.grads[{name!r}]: expected a real (float or integer) gradient, "
                    f"got dtype {got}"
                )
        return [(name, params[name], grads[name]) for name in self._shapes]

    def step(self) -> None:
        """One update of every parameter from its gradient; then ``steps += 1``."""
        lr = self.lr
        for name, p, g in self._arrays():
            self._update(name, p, g, lr)
        self.steps += 1

    def _update(self, name: str, p: np.ndarray, g: np.ndarray, lr: float) -> None:
        raise NotImplementedError

    def zero_grad(self) -> None:
        """``model.zero_grad()`` (or fill the grads with 0 where it has none)."""
        zero = getattr(self.model, "zero_grad", None)
        if zero is not None:
            zero()
        else:
            for g in self.model.grads.values():
                g.fill(0)

    # ---- state -----------------------------------------------------------------

    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of everything ``load_state_dict`` restores, all NumPy arrays."""
        d = {"optimizer": np.array(type(self).__name__), "steps": np.array(self.steps, np.int64)}
        d.update({k: np.array(v) for k, v in self._hyper().items()})
        d.update({k: np.array(_device.host(a)) for k, a in self._buffers().items()})
        return d

    def _buffers(self) -> dict[str, np.ndarray]:
        """Every buffer by its key in the state dict, ``"<buffer>/<param name>"``."""
        return {f"{b}/{name}": a for b, bufs in self.state.items() for name, a in bufs.items()}

    def load_state_dict(self, state: dict) -> None:
        """Restore a ``state_dict()`` of the same optimiser class over parameters
        of the same names and shapes (buffers, of real numbers, are cast to each
        parameter's dtype). Hyper-parameters pass the constructor's checks."""
        want = self.state_dict()
        check_state_keys(state, {k: v.shape for k, v in want.items()})
        buffers = {k: a.shape for k, a in self._buffers().items()}
        check_state_keys({k: state[k] for k in buffers}, buffers, real=True)
        kind = str(np.asarray(state["optimizer"]).item())
        if kind != type(self).__name__:
            raise ValueError(f"state: holds a {kind} optimiser, not a {type(self).__name__}")
        steps = np.asarray(state["steps"])
        if not np.issubdtype(steps.dtype, np.integer) or steps < 0:
            raise ValueError(f"state: steps must be an integer >= 0, got {steps!r}")
        old = self._hyper()
        hyper = {k: _scalar(state[k]) for k in old}
        hyper.update({k: check_bool(k, hyper[k]) for k, v in old.items() if isinstance(v, bool)})
        try:
            self._set_hyper(hyper)  # validates
        except (TypeError, ValueError):
            self._set_hyper(old)  # all or nothing
            raise
        for k, a in self._buffers().items():
            _device.assign(a, state[k])
        self.steps = int(steps)


class SGD(Optimizer):
    """Stochastic gradient descent with momentum, as ``torch.optim.SGD``
    (dampening 0). Per parameter p with gradient g, at learning rate lr:

        g = g + weight_decay·p
        b = g on the first step, else momentum·b + g      (when momentum > 0)
        g = g + momentum·b if nesterov else b             (when momentum > 0)
        p = p - lr·g

    Buffer: ``momentum_buffer``, kept only when momentum > 0 (so a state with
    momentum loads only into an SGD made with momentum, and one without into
    one without).
    """

    def __init__(
        self,
        model,
        lr: float,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        *,
        schedule: Schedule | None = None,
    ):
        self.momentum, self.weight_decay, self.nesterov = momentum, weight_decay, nesterov
        super().__init__(model, lr, schedule)

    def _buffer_names(self):
        return ("momentum_buffer",) if self.momentum else ()

    def _hyper(self):
        return {
            "lr": self.base_lr,
            "momentum": self.momentum,
            "weight_decay": self.weight_decay,
            "nesterov": self.nesterov,
        }

    def _set_hyper(self, h):
        super()._set_hyper(h)
        self.momentum = _check("momentum", h["momentum"], lambda x: x >= 0, _NON_NEGATIVE)
        self.weight_decay = _check(
            "weight_decay", h["weight_decay"], lambda x: x >= 0, _NON_NEGATIVE
        )
        if not isinstance(h["nesterov"], (bool, np.bool_)):
            raise TypeError(f"nesterov: expected a bool, got {h['nesterov']!r}")
        if h["nesterov"] and self.momentum == 0:
            raise ValueError("nesterov: needs momentum > 0")
        self.nesterov = bool(h["nesterov"])

    def _update(self, name, p, g, lr):
        if self.weight_decay:
            g = g + self.weight_decay * p
        if self.momentum:
            b = self.state["momentum_buffer"][name]
            if self.steps == 0:
                b[...] = g
            else:
                b *= self.momentum
                b += g
            g = g + self.momentum * b if self.nesterov else b
        p -= lr * g


class Adam(Optimizer):
    """Adam, as ``torch.optim.Adam`` (L2 weight decay, bias correction). At
    update t = 1, 2, ... (``steps + 1``), per parameter p with gradient g:

        g  = g + weight_decay·p
        m  = m + (1 - β1)·(g - m)          (= β1·m + (1 - β1)·g)
        v  = β2·v + (1 - β2)·g²
        p  = p - lr/(1 - β1^t) · m / (√v / √(1 - β2^t) + eps)

    Buffers: ``exp_avg`` (m) and ``exp_avg_sq`` (v), zero at the start.
    """

    _decoupled = False

    def __init__(
        self,
        model,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        *,
        schedule: Schedule | None = None,
    ):
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"betas: expected a pair (beta1, beta2), got {betas!r}")
        self.betas, self.eps, self.weight_decay = tuple(betas), eps, weight_decay
        super().__init__(model, lr, schedule)

    def _buffer_names(self):
        return ("exp_avg", "exp_avg_sq")

    def _hyper(self):
        return {
            "lr": self.base_lr,
            "beta1": self.betas[0],
            "beta2": self.betas[1],
            "eps": self.eps,
            "weight_decay": self.weight_decay,
        }

    def _set_hyper(self, h):
        super()._set_hyper(h)
        self.betas = tuple(
            _check(f"betas[{i}]", h[k], lambda x: 0 <= x < 1, "a value in [0, 1)")
            for i, k in enumerate(("beta1", "beta2"))
        )
        self.eps = _check("eps", h["eps"], lambda x: x > 0, _POSITIVE)
        self.weight_decay = _check(
            "weight_decay", h["weight_decay"], lambda x: x >= 0, _NON_NEGATIVE
        )

    def step(self) -> None:
        t = self.steps + 1
        b1, b2 = self.betas
        self._bc1, self._bc2_sqrt = 1 - b1**t, math.sqrt(1 - b2**t)
        super().step()

    def _update(self, name, p, g, lr):
        b1, b2 = self.betas
        if self._decoupled:
            p *= 1 - lr * self.weight_decay
        elif self.weight_decay:
            g = g + self.weight_decay * p
        m, v = self.state["exp_avg"][name], self.state["exp_avg_sq"][name]
        # One scratch array for every intermediate, in the order of the formulas
        # above: the bits of the expressions written out (0.75x their time at
        # the command line's model, 345k parameters: 1.11 against 1.47 ms).
        xp, t = _device.array_module(p), self._scratch_like(name, p)
        xp.subtract(g, m, out=t)
        t *= 1 - b1
        m += t  # torch's lerp
        v *= b2
        xp.multiply(g, g, out=t)
        t *= 1 - b2
        v += t
        xp.sqrt(v, out=t)  # the denominator
        t /= self._bc2_sqrt
        t += self.eps
        xp.divide(m, t, out=t)
        t *= lr / self._bc1
        p -= t

    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("_scratch", None)  # working memory, made again on use
        return state

    def _scratch_like(self, name, p):
        """An array like p for one update's intermediates, kept between steps
        (not in ``state``: never saved, made again after a copy or a load)."""
        scratch = self.__dict__.setdefault("_scratch", {})
        t = scratch.get(name)
        if (
            t is None
            or (t.shape, t.dtype, type(t)) != (p.shape, p.dtype, type(p))
            or getattr(t, "device", None) != getattr(p, "device", None)
        ):
            t = scratch[name] = _device.array_module(p).empty_like(p)
        return t


class AdamW(Adam):
    """Adam with decoupled weight decay, as ``torch.optim.AdamW``: before
    Adam's update (without the L2 term), ``p = p·(1 - lr·weight_decay)``."""

    _decoupled = True

    def __init__(
        self,
        model,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        *,
        schedule: Schedule | None = None,
    ):
        super().__init__(model, lr, betas, eps, weight_decay, schedule=schedule)


# ---- schedules: step -> factor of the base learning rate ------------------------


def warmup_cosine(total_steps: int, warmup: int = 0, final: float = 0.0) -> Schedule:
    """Linear warm-up, then cosine decay to ``final``:

        factor(s) = (s + 1)/warmup                          for s < warmup
        factor(s) = final + (1 - final)·(1 + cos(π·r))/2    otherwise,
        r = min(1, (s - warmup)/(total_steps - warmup))

    so the first update already moves (1/warmup), the factor is 1 at s = warmup
    and ``final`` from s = total_steps on.
    """
    total_steps = check_int("total_steps", total_steps, 1)
    warmup = check_int("warmup", warmup, 0)
    if warmup >= total_steps:
        raise ValueError(f"warmup: expected < total_steps = {total_steps}, got {warmup}")
    final = _check("final", final, lambda x: x >= 0, "a finite factor >= 0")

    def factor(step: int) -> float:
        if step < 0:
            raise ValueError(f"step: expected >= 0, got {step}")
        if step < warmup:
            return (step + 1) / warmup
        r = min(1.0, (step - warmup) / (total_steps - warmup))
        return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * r))

    return factor


def step_decay(every: int, gamma: float) -> Schedule:
    """``factor(s) = gamma ** (s // every)``, as ``torch.optim.lr_scheduler.StepLR``."""
    every = check_int("every", every, 1)
    gamma = _check("gamma", gamma, lambda x: x > 0, _POSITIVE)

    def factor(step: int) -> float:
        try:
            return gamma ** (step // every)
        except OverflowError:  # beyond float's range: the optimiser refuses it by name
            return math.inf

    return factor


# ---- gradient clipping --------------------------------------------------------------


def clip_grad_norm(model, max_norm: float) -> float:
    """Scale all of ``model.grads`` in place so that their total L2 norm is at most
    ``max_norm``, as ``torch.nn.utils.clip_grad_norm_``:

        norm = √(Σ over all gradients of Σ g²)        (in float64)
        g = g · max_norm/(norm + 1e-6)                 when that factor is < 1

    Returns the norm before clipping. A non-finite norm leaves the gradients
    as they are (and is returned, for the caller to skip the step).
    """
    max_norm = _check("max_norm", max_norm, lambda x: x > 0, _POSITIVE)
    grads = list(model.grads.values())
    total = 0.0
    for g in grads:
        # einsum, not a dot: NumPy's BLAS threads a long dot and leaves its
        # threads spinning, which slowed the LSTM's next call twofold (nn.Linear).
        xp = _device.array_module(g)  # NumPy or CuPy, where g lives
        if xp is np:  # in float64 chunk by chunk (the norm the same to rounding,
            # its order of sums einsum's): no float64 copy of g, whose fresh
            # pages cost 467 faults a call (dev/perf-notes.md, 78)
            flat = g.ravel()
            total += float(np.einsum("i,i->", flat, flat, dtype=np.float64))
        else:
            g64 = g.astype(np.float64).ravel()
            total += float(xp.einsum("i,i->", g64, g64))
    norm = math.sqrt(total)
    if not math.isfinite(norm):
        return norm
    coef = max_norm / (norm + 1e-6)
    if coef < 1:
        for g in grads:
            g *= coef
    return norm
