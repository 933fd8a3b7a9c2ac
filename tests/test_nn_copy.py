"""copy.deepcopy and pickle of the nn modules, PackedLayer and optimisers.

A copy is a model of its own: the same bits in every call, parameters that do
not share memory with the original, a lock of its own (two threads may use
the original and the copy at once) and no forward cache (its backward needs a
forward of its own). Packed weights are packed again by the copy, since their
layout is the kernel's of the CPU that packed them.
"""

import copy
import pickle

import numpy as np
import pytest

import lstm_ext
from helpers import run_in_threads
from lstm_ext import losses, nn, optim

CASES = [
    dict(),
    dict(num_layers=2, bidirectional=True, dropout=0.5),
    dict(proj_size=5, batch_first=True),
]
ROUND_TRIPS = {"deepcopy": copy.deepcopy, "pickle": lambda m: pickle.loads(pickle.dumps(m))}


def model(**kw):
    lstm = nn.LSTM(7, 9, seed=2, **kw)
    width = lstm.num_directions * lstm.output_size
    return nn.Sequential(nn.Embedding(11, 7, seed=1), lstm, nn.Linear(width, 11, seed=3))


def tokens(rng, lstm, T=5, B=3):
    shape = (B, T) if lstm.batch_first else (T, B)
    return rng.integers(0, 11, shape), rng.integers(0, 11, shape)


def train_steps(m, opt, batches):
    """Training steps (dropout draws from the LSTM's generator); the losses."""
    out = []
    for x, t in batches:
        m.zero_grad()
        logits, _ = m(x)
        loss, dlogits = losses.softmax_cross_entropy(logits, t)
        m.backward(dlogits)
        opt.step()
        out.append(loss)
    return out


def assert_same_params(a, b):
    assert a.params.keys() == b.params.keys()
    for name in a.params:
        np.testing.assert_array_equal(a.params[name], b.params[name], err_msg=name)


@pytest.mark.parametrize("how", ROUND_TRIPS)
@pytest.mark.parametrize("kw", CASES)
def test_copy_trains_as_the_original(rng, how, kw):
    # A model and its optimiser copied together mid-training, then both go on
    # with the same batches: the same losses and parameters, bit for bit (the
    # copy has the generator's state, so dropout's masks are the same).
    m = model(**kw)
    opt = optim.Adam(m, lr=1e-2)
    batches = [tokens(rng, m[1]) for _ in range(6)]
    train_steps(m, opt, batches[:3])
    m2, opt2 = ROUND_TRIPS[how]((m, opt))
    assert opt2.model is m2
    for name, p in m2.params.items():
        assert not np.shares_memory(p, m.params[name]), name
        assert p is m2[int(name.split(".")[0])].params[name.split(".", 1)[1]], name
    assert train_steps(m2, opt2, batches[3:]) == train_steps(m, opt, batches[3:])
    assert_same_params(m, m2)


@pytest.mark.parametrize("how", ROUND_TRIPS)
def test_copy_is_independent(rng, how):
    lstm = nn.LSTM(7, 9, seed=2)
    x = rng.standard_normal((4, 2, 7)).astype(np.float32)
    y, _ = lstm(x)
    c = ROUND_TRIPS[how](lstm)
    c.params["weight_hh_l0"] += 1
    np.testing.assert_array_equal(lstm(x)[0], y)
    assert not np.array_equal(c(x)[0], y)


@pytest.mark.parametrize("how", ROUND_TRIPS)
def test_copy_has_no_forward_cache(rng, how):
    lstm = nn.LSTM(7, 9, seed=2)
    y, _ = lstm(rng.standard_normal((4, 2, 7)).astype(np.float32))
    c = ROUND_TRIPS[how](lstm)
    with pytest.raises(RuntimeError, match="forward"):
        c.backward(np.ones_like(y))
    lstm.backward(np.ones_like(y))  # the original keeps its own


def test_copy_has_its_own_lock(rng):
    # Each instance serves one thread at a time (nn.LSTM's docstring); a copy
    # is another instance, so the two run at once without a RuntimeError.
    lstm = nn.LSTM(16, 32, seed=2)
    c = copy.deepcopy(lstm)
    x = rng.standard_normal((50, 8, 16)).astype(np.float32)

    def fwd_bwd(m):
        for _ in range(20):
            y, _ = m(x)
            m.backward(np.ones_like(y))
        return y

    a, b = run_in_threads([lambda: fwd_bwd(lstm), lambda: fwd_bwd(c)])
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("how", ROUND_TRIPS)
@pytest.mark.parametrize("weight_dtype", [None, "bfloat16"])
@pytest.mark.parametrize("kw", CASES)
def test_packed_copy(rng, how, weight_dtype, kw):
    # A packed Sequential's copy: the same bits, read-only parameters that are
    # its PackedLSTM's own (no second copy), as much memory as the original.
    m = model(**kw)
    m[1].inference_weight_dtype = weight_dtype
    p = m.packed()
    p2 = ROUND_TRIPS[how](p)
    assert isinstance(p2[1], nn.PackedLSTM)
    assert p2[1].inference_weight_dtype == weight_dtype
    assert p2[1].nbytes == p[1].nbytes
    for name, a in p2.params.items():
        assert a is p2[int(name.split(".")[0])].params[name.split(".", 1)[1]], name
        assert not np.shares_memory(a, p.params[name]), name
    for name, a in p2[1].params.items():
        assert not a.flags.writeable, name
    x, _ = tokens(rng, m[1])
    (y2, (h2, c2)), (y, (h, c)) = p2(x), p(x)
    for got, want in ((y2, y), (h2, h), (c2, c)):
        np.testing.assert_array_equal(got, want)
    with pytest.raises(RuntimeError, match="inference"):
        p2[1].train()


@pytest.mark.parametrize("how", ROUND_TRIPS)
def test_packed_layer_copy(rng, how):
    W = rng.standard_normal((36, 5)).astype(np.float32)
    R = rng.standard_normal((36, 9)).astype(np.float32)
    b = rng.standard_normal(36).astype(np.float32)
    layer = lstm_ext.PackedLayer(W, R, b, clip=3.0)
    c = ROUND_TRIPS[how](layer)
    assert c.nbytes == layer.nbytes and repr(c) == repr(layer)
    assert not c._W.flags.writeable and not c._packed.flags.writeable
    x = rng.standard_normal((6, 2, 5)).astype(np.float32)
    for got, want in zip(c.forward(x)[:3], layer.forward(x)[:3], strict=True):
        np.testing.assert_array_equal(got, want)
    want = lstm_ext.forward(x, W, R, b, clip=3.0, training=False)
    np.testing.assert_array_equal(c.forward(x).y, want.y)
