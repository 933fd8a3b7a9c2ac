"""lstm_ext.optim: each optimiser's first steps against its formulas written out
here, in-place updates, schedules, state round trips, clipping, errors, and
(where torch is installed) trajectories against torch.optim.

Tolerances: the hand-written formulas are the textbook forms (Adam's m̂, v̂),
arranged differently from the implementation's (PyTorch's), so they agree to
rounding: float64, a few steps of O(1) values, rtol 1e-12 with atol 1e-14
(errors seen: ~1e-16). Against torch, float64 over 5 steps: torch fuses
some multiply-adds (add with alpha, lerp, addcdiv), so a few ulps per step;
the same rtol 1e-12 leaves a margin of 1000x while a wrong term fails by far.
State round trips and in-place identities are exact.
"""

import io
import math

import numpy as np
import pytest

from lstm_ext import optim
from lstm_ext.nn import LSTM
from lstm_ext.optim import SGD, Adam, AdamW, clip_grad_norm, step_decay, warmup_cosine

RTOL, ATOL = 1e-12, 1e-14


class Stub:
    """The smallest model: params and grads dicts, and zero_grad."""

    def __init__(self, rng, dtype=np.float64):
        self.params = {
            "0.weight": rng.standard_normal((3, 2)).astype(dtype),
            "0.bias": rng.standard_normal(3).astype(dtype),
        }
        self.grads = {k: np.zeros_like(v) for k, v in self.params.items()}

    def zero_grad(self):
        for g in self.grads.values():
            g.fill(0)

    def copy(self):
        new = Stub.__new__(Stub)
        new.params = {k: v.copy() for k, v in self.params.items()}
        new.grads = {k: v.copy() for k, v in self.grads.items()}
        return new


class Quadratic:
    """Gradients that depend on the parameters, so a trajectory depends on every
    earlier step: g = c·p + d (the gradient of Σ c·p²/2 + d·p) per parameter."""

    def __init__(self, rng, model):
        self.c = {k: rng.uniform(0.5, 2, p.shape) for k, p in model.params.items()}
        self.d = {k: rng.standard_normal(p.shape) for k, p in model.params.items()}

    def grads(self, params):
        return {k: (self.c[k] * p + self.d[k]).astype(p.dtype) for k, p in params.items()}

    def fill(self, model):
        for k, g in self.grads(model.params).items():
            model.grads[k][...] = g


def close(ours, want):
    for k in want:
        np.testing.assert_allclose(ours[k], want[k], rtol=RTOL, atol=ATOL, err_msg=k)


# ---- the formulas, written out ------------------------------------------------------


@pytest.mark.parametrize(("momentum", "nesterov"), [(0.0, False), (0.9, False), (0.9, True)])
@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_sgd_formula(rng, momentum, nesterov, wd):
    model, lr = Stub(rng), 0.1
    q = Quadratic(rng, model)
    opt = SGD(model, lr, momentum=momentum, weight_decay=wd, nesterov=nesterov)
    p = {k: v.copy() for k, v in model.params.items()}
    buf = {}
    for t in range(4):
        q.fill(model)
        opt.step()
        for k in p:
            g = q.c[k] * p[k] + q.d[k] + wd * p[k]
            if momentum:
                buf[k] = g if t == 0 else momentum * buf[k] + g
                g = g + momentum * buf[k] if nesterov else buf[k]
            p[k] = p[k] - lr * g
        close(model.params, p)
    assert opt.steps == 4


@pytest.mark.parametrize("cls", [Adam, AdamW])
@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_adam_formula(rng, cls, wd):
    model = Stub(rng)
    q = Quadratic(rng, model)
    lr, b1, b2, eps = 0.01, 0.8, 0.99, 1e-6
    opt = cls(model, lr, betas=(b1, b2), eps=eps, weight_decay=wd)
    p = {k: v.copy() for k, v in model.params.items()}
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v = {k: np.zeros_like(x) for k, x in p.items()}
    for t in range(1, 5):
        q.fill(model)
        opt.step()
        for k in p:
            g = q.c[k] * p[k] + q.d[k]
            if cls is AdamW:
                p[k] = p[k] - lr * wd * p[k]  # decoupled: before the update, g unchanged
            else:
                g = g + wd * p[k]  # L2: into the gradient
            m[k] = b1 * m[k] + (1 - b1) * g
            v[k] = b2 * v[k] + (1 - b2) * g**2
            m_hat, v_hat = m[k] / (1 - b1**t), v[k] / (1 - b2**t)
            p[k] = p[k] - lr * m_hat / (np.sqrt(v_hat) + eps)
        close(model.params, p)
        close(opt.state["exp_avg"], m)
        close(opt.state["exp_avg_sq"], v)


def test_defaults():
    model = Stub(np.random.default_rng(0))
    a, w = Adam(model), AdamW(model)
    assert (a.base_lr, a.betas, a.eps, a.weight_decay) == (1e-3, (0.9, 0.999), 1e-8, 0.0)
    assert (w.base_lr, w.betas, w.eps, w.weight_decay) == (1e-3, (0.9, 0.999), 1e-8, 1e-2)
    s = SGD(model, 0.5)
    assert (s.momentum, s.weight_decay, s.nesterov, s.lr) == (0.0, 0.0, False, 0.5)


# ---- in place, dtypes, a real LSTM ----------------------------------------------------


@pytest.mark.parametrize("make", [lambda m: SGD(m, 0.1, momentum=0.5), Adam, AdamW])
def test_updates_in_place_and_keeps_float32(rng, make):
    model = Stub(rng, np.float32)
    arrays = dict(model.params)
    views = {k: v[:1] for k, v in model.params.items()}
    before = {k: v.copy() for k, v in views.items()}
    Quadratic(rng, model).fill(model)
    opt = make(model)
    opt.step()
    for k, p in model.params.items():
        assert p is arrays[k] and p.dtype == np.float32
        assert not np.array_equal(views[k], before[k])  # a view sees the update
    for bufs in opt.state.values():
        assert all(b.dtype == np.float32 for b in bufs.values())


def test_lstm_model(rng):
    lstm = LSTM(2, 3, seed=1)
    x = rng.standard_normal((4, 2, 2)).astype(np.float32)
    out, _ = lstm(x)
    lstm.backward(np.ones_like(out))
    before = {k: v.copy() for k, v in lstm.params.items()}
    opt = SGD(lstm, 0.5)
    opt.step()
    for k, p in lstm.params.items():
        assert p.dtype == np.float32
        np.testing.assert_array_equal(p, before[k] - np.float32(0.5) * lstm.grads[k])
    opt.zero_grad()
    assert all(not g.any() for g in lstm.grads.values())


def test_zero_grad_without_model_method(rng):
    model = Stub(rng)
    model.zero_grad = None  # a model without the method: the optimiser fills zeros
    for g in model.grads.values():
        g.fill(1)
    SGD(model, 0.1).zero_grad()
    assert all(not g.any() for g in model.grads.values())


def test_lookup_by_name_each_step(rng):
    # A model that replaces its arrays (as LSTM.load_state_dict does) is still updated.
    model = Stub(rng)
    opt = SGD(model, 0.1)
    model.params["0.bias"] = np.zeros(3)
    model.grads["0.bias"][...] = 1
    opt.step()
    np.testing.assert_array_equal(model.params["0.bias"], -0.1)


# ---- schedules ----------------------------------------------------------------------


def test_schedule_hook(rng):
    factors = [1.0, 0.5, 0.25]
    model = Stub(rng)
    opt = SGD(model, 0.2, schedule=lambda s: factors[s])
    for t in range(3):
        assert opt.lr == 0.2 * factors[t]  # the lr of the next update (step t)
        model.grads["0.bias"][...] = 1.0
        before = model.params["0.bias"].copy()
        opt.step()
        np.testing.assert_allclose(before - model.params["0.bias"], 0.2 * factors[t], rtol=1e-12)
    assert opt.base_lr == 0.2


def test_schedule_bad_factor(rng):
    opt = SGD(Stub(rng), 0.1, schedule=lambda s: -1.0)
    with pytest.raises(ValueError, match="schedule: expected a finite factor >= 0"):
        opt.step()
    assert opt.steps == 0
    with pytest.raises(TypeError, match="schedule: expected a callable"):
        SGD(Stub(rng), 0.1, schedule=0.5)


def test_schedule_that_takes_lr_past_float_is_refused(rng):
    """Each finite, the product not: the update would have made the weights
    inf and NaN without a word."""
    model = Stub(rng)
    before = {k: v.copy() for k, v in model.params.items()}
    opt = SGD(model, 1e300, schedule=lambda s: 1e10 + 1)
    with pytest.raises(
        ValueError, match=r"schedule: the factor 10000000001.0 at step 0 takes lr 1e\+300"
    ):
        opt.step()
    assert opt.steps == 0
    assert all(np.array_equal(before[k], v) for k, v in model.params.items())


def test_warmup_cosine_values():
    f = warmup_cosine(10, warmup=2, final=0.1)
    assert [f(0), f(1), f(2)] == [0.5, 1.0, 1.0]
    assert f(6) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)), rel=1e-15)
    assert f(10) == pytest.approx(0.1) and f(100) == pytest.approx(0.1)
    g = warmup_cosine(4)
    assert g(0) == 1.0 and g(2) == pytest.approx(0.5) and g(4) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="warmup: expected < total_steps"):
        warmup_cosine(3, warmup=3)
    with pytest.raises(ValueError, match="total_steps"):
        warmup_cosine(0)
    with pytest.raises(ValueError, match="final"):
        warmup_cosine(10, final=-0.1)
    with pytest.raises(ValueError, match="step: expected >= 0, got -5"):  # was ZeroDivisionError
        warmup_cosine(10)(-5)
    assert warmup_cosine(np.int64(10), warmup=np.uint8(2))(2) == 1.0


def test_step_decay_values():
    f = step_decay(3, 0.5)
    assert [f(s) for s in range(7)] == [1, 1, 1, 0.5, 0.5, 0.5, 0.25]
    with pytest.raises(ValueError, match="every"):
        step_decay(0, 0.5)
    with pytest.raises(ValueError, match="gamma"):
        step_decay(2, 0.0)


# ---- state ----------------------------------------------------------------------------

MAKERS = {
    "sgd": lambda m: SGD(m, 0.05, momentum=0.9, weight_decay=0.01, nesterov=True),
    "adam": lambda m: Adam(m, 0.01, weight_decay=0.01, schedule=warmup_cosine(5, warmup=2)),
    "adamw": lambda m: AdamW(m, 0.01, betas=(0.8, 0.9), schedule=step_decay(2, 0.5)),
}


@pytest.mark.parametrize("kind", MAKERS)
def test_state_dict_round_trip(rng, kind):
    make = MAKERS[kind]
    model = Stub(rng)
    q = Quadratic(rng, model)
    resumed = model.copy()

    opt = make(model)
    for _ in range(5):
        q.fill(model)
        opt.step()

    opt1 = make(resumed)
    for _ in range(3):
        q.fill(resumed)
        opt1.step()
    state = opt1.state_dict()
    assert all(isinstance(v, np.ndarray) and v.dtype != object for v in state.values())
    f = io.BytesIO()
    np.savez(f, **state)
    f.seek(0)
    with np.load(f, allow_pickle=False) as z:
        state = dict(z)

    fresh = resumed.copy()
    opt2 = make(fresh)
    opt2.load_state_dict(state)
    assert opt2.steps == 3 and opt2.lr == opt1.lr
    for _ in range(2):
        q.fill(fresh)
        opt2.step()
    for k in model.params:
        np.testing.assert_array_equal(fresh.params[k], model.params[k], err_msg=k)


def test_state_dict_contents(rng):
    model = Stub(rng, np.float32)
    opt = Adam(model, 0.01, betas=(0.8, 0.9), eps=1e-7, weight_decay=0.5)
    s = opt.state_dict()
    assert set(s) == {
        "optimizer", "steps", "lr", "beta1", "beta2", "eps", "weight_decay",
        "exp_avg/0.weight", "exp_avg/0.bias", "exp_avg_sq/0.weight", "exp_avg_sq/0.bias",
    }  # fmt: skip
    assert s["optimizer"] == "Adam" and s["steps"] == 0 and s["steps"].ndim == 0
    assert (s["lr"], s["beta1"], s["beta2"], s["eps"]) == (0.01, 0.8, 0.9, 1e-7)
    assert s["exp_avg/0.weight"].shape == (3, 2) and s["exp_avg/0.weight"].dtype == np.float32
    s["exp_avg/0.weight"][...] = 7  # a copy: the optimiser's buffer is unchanged
    assert not opt.state["exp_avg"]["0.weight"].any()
    # hyper-parameters come back from the state
    other = Adam(model)
    other.load_state_dict(opt.state_dict())
    assert (other.base_lr, other.betas, other.eps, other.weight_decay) == (
        0.01, (0.8, 0.9), 1e-7, 0.5,
    )  # fmt: skip


def test_load_state_dict_errors(rng):
    model = Stub(rng)
    opt = SGD(model, 0.1, momentum=0.9)
    good = opt.state_dict()
    with pytest.raises(ValueError, match=r"missing keys \['momentum_buffer/0.bias'\]"):
        opt.load_state_dict({k: v for k, v in good.items() if k != "momentum_buffer/0.bias"})
    with pytest.raises(ValueError, match=r"unexpected keys \['extra'\]"):
        opt.load_state_dict({**good, "extra": np.array(1)})
    with pytest.raises(ValueError, match=r"momentum_buffer/0.weight: expected shape \(3, 2\)"):
        opt.load_state_dict({**good, "momentum_buffer/0.weight": np.zeros((2, 3))})
    with pytest.raises(ValueError, match="holds a Adam optimiser, not a SGD"):
        opt.load_state_dict({**good, "optimizer": np.array("Adam")})
    with pytest.raises(ValueError, match="steps"):
        opt.load_state_dict({**good, "steps": np.array(-1)})
    with pytest.raises(ValueError, match="momentum: expected a finite number >= 0"):
        opt.load_state_dict({**good, "lr": np.array(0.5), "momentum": np.array(-1.0)})
    assert (opt.base_lr, opt.momentum) == (0.1, 0.9)  # all or nothing
    with pytest.raises(ValueError, match="missing keys"):
        Adam(model).load_state_dict(good)
    with pytest.raises(ValueError, match=r"unexpected keys \['momentum_buffer/"):
        SGD(model, 0.1).load_state_dict(good)  # no momentum, so no buffers


@pytest.mark.parametrize(
    ("key", "value", "error", "match"),
    [
        # bool() had taken each of these as True
        ("nesterov", np.array("no"), TypeError, "nesterov: expected a bool, got str"),
        ("nesterov", np.array(2.5), TypeError, "nesterov: expected a bool, got float"),
        ("nesterov", np.array(2), TypeError, "nesterov: expected a bool, got 2"),
        ("lr", np.array("0.1"), TypeError, "lr: expected a number"),
        ("momentum", np.array(np.inf), ValueError, "momentum: expected a finite number >= 0"),
        # complex had loaded with a ComplexWarning, its imaginary part dropped;
        # a string had raised NumPy's "could not convert", naming no key
        ("momentum_buffer/0.bias", np.full(3, 1j), ValueError,
         "momentum_buffer/0.bias: expected real numbers, got dtype complex128"),
        ("momentum_buffer/0.weight", np.full((3, 2), "a"), ValueError,
         "momentum_buffer/0.weight: expected real numbers, got dtype <U1"),
    ],
)  # fmt: skip
def test_load_state_dict_checks_values(rng, key, value, error, match):
    opt = SGD(Stub(rng), 0.1, momentum=0.9)
    good = opt.state_dict()
    with pytest.raises(error, match=match):
        opt.load_state_dict({**good, "lr": np.array(0.5), key: value})
    assert (opt.base_lr, opt.nesterov) == (0.1, False)  # all or nothing
    assert not opt.state["momentum_buffer"]["0.bias"].any()
    opt.load_state_dict({**good, "nesterov": np.array(1)})  # a flag: bool, 0 or 1
    assert opt.nesterov is True


def test_sgd_without_momentum_keeps_no_buffers(rng):
    opt = SGD(Stub(rng), 0.1)
    assert opt.state == {}
    assert set(opt.state_dict()) == {
        "optimizer",
        "steps",
        "lr",
        "momentum",
        "weight_decay",
        "nesterov",
    }


# ---- clip_grad_norm ---------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_clip_grad_norm(rng, dtype):
    model = Stub(rng, dtype)
    for g in model.grads.values():
        g[...] = rng.standard_normal(g.shape) * 3
    before = {k: g.copy() for k, g in model.grads.items()}
    flat = np.concatenate([g.astype(np.float64).ravel() for g in before.values()])
    norm = np.linalg.norm(flat)
    assert norm > 2

    assert clip_grad_norm(model, 2 * norm) == pytest.approx(norm, rel=1e-15)
    for k, g in model.grads.items():
        np.testing.assert_array_equal(g, before[k])  # under the limit: untouched

    grads = dict(model.grads)
    assert clip_grad_norm(model, 2.0) == pytest.approx(norm, rel=1e-15)
    for k, g in model.grads.items():
        assert g is grads[k] and g.dtype == dtype  # in place
        np.testing.assert_allclose(g, before[k] * (2.0 / (norm + 1e-6)), rtol=1e-6)
    after = np.linalg.norm(np.concatenate([g.astype(np.float64).ravel() for g in grads.values()]))
    assert after == pytest.approx(2.0, rel=1e-6)


@pytest.mark.parametrize("bad", [np.inf, np.nan])
def test_clip_grad_norm_non_finite(rng, bad):
    model = Stub(rng)
    model.grads["0.bias"][0] = bad
    before = {k: g.copy() for k, g in model.grads.items()}
    norm = clip_grad_norm(model, 1.0)
    assert not math.isfinite(norm)
    for k, g in model.grads.items():
        np.testing.assert_array_equal(g, before[k])
    with pytest.raises(ValueError, match="max_norm"):
        clip_grad_norm(model, 0.0)


# ---- argument errors ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda m: SGD(m, 0.0), "lr: expected a finite number > 0"),
        (lambda m: SGD(m, -1.0), "lr: expected a finite number > 0"),
        (lambda m: SGD(m, float("nan")), "lr: expected a finite number > 0"),
        (lambda m: SGD(m, 0.1, momentum=-0.1), "momentum: expected a finite number >= 0"),
        (lambda m: SGD(m, 0.1, weight_decay=-1), "weight_decay: expected a finite number >= 0"),
        (lambda m: SGD(m, 0.1, nesterov=True), "nesterov: needs momentum > 0"),
        (lambda m: Adam(m, betas=(1.0, 0.9)), r"betas\[0\]: expected a value in \[0, 1\)"),
        (lambda m: Adam(m, betas=(0.9, -0.1)), r"betas\[1\]"),
        (lambda m: Adam(m, betas=(0.9,)), "betas: expected a pair"),
        (lambda m: Adam(m, eps=0.0), "eps: expected a finite number > 0"),
        (lambda m: AdamW(m, weight_decay=-0.1), "weight_decay: expected a finite number >= 0"),
    ],
)
def test_argument_errors(rng, make, match):
    with pytest.raises(ValueError, match=match):
        make(Stub(rng))


BEYOND_FLOAT = 10**400  # float() of it is an OverflowError


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda m: SGD(m, BEYOND_FLOAT), "lr: expected a finite number > 0, got an integer beyond"),
        (lambda m: SGD(m, 10**5000), "lr: expected a finite"),  # repr() of it fails too
        (lambda m: SGD(m, np.inf), "lr: expected a finite number > 0, got inf"),
        (lambda m: SGD(m, 0.1, momentum=BEYOND_FLOAT), "momentum: expected a finite"),
        (lambda m: SGD(m, 0.1, weight_decay=-BEYOND_FLOAT), "weight_decay: expected a finite"),
        (lambda m: Adam(m, betas=(BEYOND_FLOAT, 0.9)), r"betas\[0\]: expected a value in"),
        (lambda m: Adam(m, eps=BEYOND_FLOAT), "eps: expected a finite"),
        (lambda m: clip_grad_norm(m, BEYOND_FLOAT), "max_norm: expected a finite"),
        (lambda m: warmup_cosine(10, final=BEYOND_FLOAT), "final: expected a finite"),
        (lambda m: step_decay(1, BEYOND_FLOAT), "gamma: expected a finite"),
    ],
)
def test_numbers_beyond_float(rng, make, match):
    with pytest.raises(ValueError, match=match):
        make(Stub(rng))


@pytest.mark.parametrize(
    ("schedule", "steps"),
    [(lambda s: BEYOND_FLOAT, 0), (step_decay(1, 1e10), 40)],  # 1e10**40: beyond float
)
def test_schedule_beyond_float(rng, schedule, steps):
    opt = SGD(Stub(rng), 0.1, schedule=schedule)
    opt.steps = steps
    with pytest.raises(
        ValueError, match=f"schedule: expected a finite factor >= 0 at step {steps}"
    ):
        opt.step()
    assert opt.steps == steps


def test_type_errors(rng):
    with pytest.raises(TypeError, match="lr: expected a number"):
        SGD(Stub(rng), "0.1")
    with pytest.raises(TypeError, match="nesterov: expected a bool"):
        SGD(Stub(rng), 0.1, momentum=0.9, nesterov=1)
    with pytest.raises(TypeError, match=r"model: expected an object with \.params and \.grads"):
        SGD(object(), 0.1)
    model = Stub(rng)
    del model.grads["0.bias"]
    with pytest.raises(ValueError, match=r"model: params and grads.*params only: \['0.bias'\]"):
        SGD(model, 0.1)


def test_model_changed_under_the_optimiser(rng):
    model = Stub(rng)
    opt = Adam(model)
    model.grads["0.bias"] = np.zeros(4)
    with pytest.raises(ValueError, match=r"model.grads\['0.bias'\]: expected shape \(3,\)"):
        opt.step()
    model.params["new"] = np.zeros(1)
    with pytest.raises(ValueError, match="parameter names changed"):
        opt.step()


@pytest.mark.parametrize("make", [lambda m: SGD(m, 0.1, momentum=0.5), Adam, AdamW])
def test_gradients_of_other_dtypes(rng, make):
    """A real gradient of another dtype or byte order is used in the
    parameter's dtype; a complex or bool one, or a parameter whose dtype
    changed under the optimiser, is a TypeError naming it, before any update."""
    model = Stub(rng, np.float32)
    opt = make(model)
    for other in (np.float64, ">f4", np.int64):
        Quadratic(rng, model).fill(model)
        model.grads["0.bias"] = model.grads["0.bias"].astype(other)
        opt.step()
        assert all(p.dtype == np.float32 and np.isfinite(p).all() for p in model.params.values())
    before = {k: v.copy() for k, v in model.params.items()}
    for bad in (np.complex64, np.bool_):
        model.grads["0.bias"] = np.ones(3, bad)
        got = np.dtype(bad)
        with pytest.raises(TypeError, match=rf"model.grads\['0.bias'\]: .*real.*got dtype {got}"):
            opt.step()
    model.grads["0.bias"] = np.ones(3, np.float32)
    model.params["0.weight"] = model.params["0.weight"].astype(np.float64)
    with pytest.raises(TypeError, match=r"model.params\['0.weight'\]: expected dtype float32"):
        opt.step()
    assert opt.steps == 3 and all(
        np.array_equal(before[k], p.astype(np.float32)) for k, p in model.params.items()
    )


def test_public_names():
    assert set(optim.__all__) >= {"SGD", "Adam", "AdamW", "clip_grad_norm"}


# ---- torch.optim as an independent implementation --------------------------------------------


@pytest.fixture
def torch():
    return pytest.importorskip("torch", reason="torch is not installed (pip install torch)")


TORCH_CASES = {
    "sgd": (
        lambda m, s: SGD(m, 0.05, momentum=0.9, weight_decay=0.1, schedule=s),
        lambda t, ps: t.optim.SGD(ps, lr=0.05, momentum=0.9, weight_decay=0.1),
    ),
    "sgd-nesterov": (
        lambda m, s: SGD(m, 0.05, momentum=0.8, nesterov=True, schedule=s),
        lambda t, ps: t.optim.SGD(ps, lr=0.05, momentum=0.8, nesterov=True),
    ),
    "adam": (
        lambda m, s: Adam(m, 0.01, betas=(0.8, 0.95), weight_decay=0.1, schedule=s),
        lambda t, ps: t.optim.Adam(ps, lr=0.01, betas=(0.8, 0.95), weight_decay=0.1),
    ),
    "adamw": (
        lambda m, s: AdamW(m, 0.01, weight_decay=0.1, schedule=s),
        lambda t, ps: t.optim.AdamW(ps, lr=0.01, weight_decay=0.1),
    ),
}


@pytest.mark.parametrize("kind", TORCH_CASES)
@pytest.mark.parametrize("scheduled", [False, True])
def test_against_torch(rng, torch, kind, scheduled):
    ours_make, theirs_make = TORCH_CASES[kind]
    schedule = warmup_cosine(6, warmup=2, final=0.1) if scheduled else None
    model = Stub(rng)
    q = Quadratic(rng, model)
    tp = {k: torch.tensor(v.copy(), requires_grad=True) for k, v in model.params.items()}
    opt = ours_make(model, schedule)
    topt = theirs_make(torch, list(tp.values()))
    tsched = torch.optim.lr_scheduler.LambdaLR(topt, schedule) if scheduled else None
    for _ in range(5):
        q.fill(model)
        for k, g in q.grads({k: t.detach().numpy() for k, t in tp.items()}).items():
            tp[k].grad = torch.from_numpy(g)
        opt.step()
        topt.step()
        if tsched is not None:
            tsched.step()
        close(model.params, {k: t.detach().numpy() for k, t in tp.items()})


def test_clip_grad_norm_against_torch(rng, torch):
    model = Stub(rng)
    for g in model.grads.values():
        g[...] = rng.standard_normal(g.shape)
    tp = [
        torch.zeros(g.shape, dtype=torch.float64, requires_grad=True) for g in model.grads.values()
    ]
    for t, g in zip(tp, model.grads.values(), strict=True):
        t.grad = torch.from_numpy(g.copy())
    norm = clip_grad_norm(model, 0.5)
    tnorm = torch.nn.utils.clip_grad_norm_(tp, 0.5)
    assert norm == pytest.approx(float(tnorm), rel=1e-14)
    for t, g in zip(tp, model.grads.values(), strict=True):
        np.testing.assert_allclose(g, t.grad.numpy(), rtol=1e-14)
