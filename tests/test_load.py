"""Under load: many threads at once, many calls in a row, one nn.LSTM shared.

- 8 threads x 1,000 rounds of forward, backward and step, each thread on its
  own problem (sizes, dtype and options differ), every result bit-identical
  to the same call made alone (the README promises bit-identical results at
  any thread count); the calls made alone match the reference (test_core's
  tolerances).
- Threads sharing weights and one cache (calls only read their arguments).
- 10,000 calls in a row do not grow the process's memory: forward,
  backward, step, and calls that raise.
- An nn.LSTM instance serves one thread at a time; a second thread calling
  it meanwhile gets a RuntimeError.
"""

import gc
import os
import threading

import numpy as np
import pytest

import lstm_ext
from helpers import assert_close, run_in_threads
from lstm_ext import nn
from lstm_ext import reference as ref

RTOL = {np.float32: 1e-5, np.float64: 1e-12}  # test_core's, for the calls made alone
THREADS, ROUNDS = 8, 1000


def problem(seed):
    """A small call with options that differ from seed to seed."""
    rng = np.random.default_rng(seed)
    dtype = (np.float32, np.float64)[seed % 2]
    T, B, I, H = 3 + seed % 4, 1 + seed % 3, 2 + seed % 3, 3 + seed % 2
    P = 2 if seed % 3 == 0 else 0
    O = P or H

    def r(*shape, s=1.0):
        return (s * rng.standard_normal(shape)).astype(dtype)

    opts = dict(reverse=seed % 2 == 0, input_forget=seed % 4 == 1, clip=3.0 if seed % 5 else None)
    if P:
        opts["W_hr"] = r(P, H, s=H**-0.5)
    if seed % 4 == 2:
        opts["peephole"] = r(3 * H, s=0.5)
    if seed % 3 == 1:
        opts["lengths"] = rng.integers(0, T + 1, B)
    args = (
        r(T, B, I),
        r(4 * H, I, s=I**-0.5),
        r(4 * H, O, s=O**-0.5),
        r(4 * H, s=0.5),
        r(B, O, s=0.5),
        r(B, H),
    )
    return args, opts, (r(T, B, O), r(B, O), r(B, H))


def one_round(args, opts, grads):
    """Every output of forward, backward and a step, as a flat list."""
    out = lstm_ext.forward(*args, return_cell_states=True, **opts)
    g = lstm_ext.backward(out.cache, *grads)
    step_opts = {k: v for k, v in opts.items() if k not in ("reverse", "lengths")}
    s = lstm_ext.step(args[0][0], args[4], args[5], *args[1:4], **step_opts)
    return [out.y, out.h, out.c, out.cell_states, *(a for a in g if a is not None), *s]


def test_eight_threads_get_the_bits_of_a_call_made_alone():
    problems = [problem(seed) for seed in range(THREADS)]
    alone = [one_round(*p) for p in problems]
    for (args, opts, grads), want in zip(problems, alone, strict=True):  # the answers are right
        r = ref.forward(*args, return_cell_states=True, **opts)
        rg = ref.backward(r[3], *grads)
        dtype = args[0].dtype.type
        for name, a, b in zip(["y", "h", "c"], want, r, strict=False):
            assert_close(name, a, b, RTOL[dtype])
        for name, a, b in zip(["dx", "dh0", "dc0", "dW", "dR", "db"], want[4:], rg, strict=False):
            assert_close(name, a, b, RTOL[dtype])

    def hammer(k):
        args, opts, grads = problems[k]
        bad = 0
        for _ in range(ROUNDS):
            got = one_round(args, opts, grads)
            bad += not all(np.array_equal(u, v) for u, v in zip(got, alone[k], strict=True))
        return bad

    mismatches = run_in_threads([lambda k=k: hammer(k) for k in range(THREADS)])
    assert mismatches == [0] * THREADS, f"rounds differing from the call made alone: {mismatches}"


def test_threads_share_weights_and_one_cache():
    args, opts, grads = problem(3)
    out = lstm_ext.forward(*args, **opts)
    want = list(lstm_ext.backward(out.cache, *grads))
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal(args[0].shape).astype(args[0].dtype) for _ in range(THREADS)]
    ys = [lstm_ext.forward(x, *args[1:], **opts).y for x in xs]

    def hammer(k):
        bad = 0
        for _ in range(ROUNDS // 4):
            g = lstm_ext.backward(out.cache, *grads)  # one cache, every thread
            y = lstm_ext.forward(xs[k], *args[1:], training=False, **opts).y  # shared weights
            bad += not all(np.array_equal(u, v) for u, v in zip(g, want, strict=True))
            bad += not np.array_equal(y, ys[k])
        return bad

    assert run_in_threads([lambda k=k: hammer(k) for k in range(THREADS)]) == [0] * THREADS


# ---- memory: 10,000 calls --------------------------------------------------------


def rss_bytes():
    """Resident set size of this process, from /proc/self/statm (in pages)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# Sizes where each call allocates kilobytes (y 4 kB, the cache 65 kB): a leak
# of the smallest output, h (512 bytes and its array object), grew RSS by
# 6.6 MB over these calls when tried; any copy or cache leaked would pass
# 40 MB. The slack allows for the allocator keeping freed pages and Python's
# own caches: growth without a leak measured 0 to 0.13 MB here.
LEAK_CALLS, SLACK = 10_000, 4 * 2**20
T, B, I, H = 8, 4, 16, 16


@pytest.fixture(scope="module")
def leak_problem():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((T, B, 2 * I))[:, :, ::2]  # strided: the call copies it
    W = rng.standard_normal((4 * H, I)) / 4
    R = rng.standard_normal((4 * H, H)) / 4
    return x, W, R, rng.standard_normal((T, B, H))


def grows(fn):
    """RSS growth over LEAK_CALLS calls of fn, after 1,000 to warm up."""
    for _ in range(1000):
        fn()
    gc.collect()
    before = rss_bytes()
    for _ in range(LEAK_CALLS):
        fn()
    gc.collect()
    return rss_bytes() - before


def test_forward_does_not_leak(leak_problem):
    x, W, R, _ = leak_problem
    growth = grows(lambda: lstm_ext.forward(x, W, R, return_cell_states=True))
    assert growth < SLACK, f"RSS grew by {growth / 2**20:.1f} MB over {LEAK_CALLS} forward calls"


def test_backward_does_not_leak(leak_problem):
    x, W, R, dy = leak_problem
    cache = lstm_ext.forward(x, W, R).cache
    growth = grows(lambda: lstm_ext.backward(cache, dy, dy[0], dy[1]))
    assert growth < SLACK, f"RSS grew by {growth / 2**20:.1f} MB over {LEAK_CALLS} backward calls"


def test_step_does_not_leak(leak_problem):
    x, W, R, dy = leak_problem
    growth = grows(lambda: lstm_ext.step(x[0], dy[0], dy[1], W, R))
    assert growth < SLACK, f"RSS grew by {growth / 2**20:.1f} MB over {LEAK_CALLS} step calls"


def test_calls_that_raise_do_not_leak(leak_problem):
    x, W, R, _ = leak_problem
    cache = lstm_ext.forward(x, W, R).cache
    bad_h0 = np.zeros((B, H + 1))  # checked after x was taken in (and copied)
    bad_dy = np.zeros((T, B, H), np.float32)

    def calls():
        for fn, error in (
            (lambda: lstm_ext.forward(x, W, R, None, bad_h0), ValueError),
            (lambda: lstm_ext.backward(cache, bad_dy), TypeError),
            (lambda: lstm_ext.step(x[0], bad_dy[0], None, W, R), TypeError),
        ):
            try:
                fn()
            except error:
                pass
            else:
                raise AssertionError("the call did not raise")

    growth = grows(calls)
    assert growth < SLACK, (
        f"RSS grew by {growth / 2**20:.1f} MB over {3 * LEAK_CALLS} failing calls"
    )


# ---- nn.LSTM: one instance, one thread at a time ---------------------------------


class Gate:
    """Wraps a function so that its first call, in whichever thread, signals
    `inside` and waits for `release` before going on."""

    def __init__(self, fn):
        self.fn, self.inside, self.release, self.first = (
            fn,
            threading.Event(),
            threading.Event(),
            True,
        )

    def __call__(self, *args, **kwargs):
        if self.first:
            self.first = False
            self.inside.set()
            assert self.release.wait(30), "never released"
        return self.fn(*args, **kwargs)


@pytest.mark.parametrize("blocked", ["forward", "backward"])
def test_a_second_thread_inside_one_lstm_is_refused(monkeypatch, rng, blocked):
    lstm = nn.LSTM(3, 4, 2, bidirectional=True, dtype=np.float64, seed=0)
    x, dy = rng.standard_normal((5, 2, 3)), rng.standard_normal((5, 2, 8))
    want_out, _ = lstm(x)
    want_dx = lstm.backward(dy)
    if blocked == "backward":
        lstm(x)
    gate = Gate(getattr(lstm_ext, blocked))
    monkeypatch.setattr(lstm_ext, blocked, gate)  # nn.LSTM calls lstm_ext.<blocked>
    call = (lambda: lstm(x)[0]) if blocked == "forward" else (lambda: lstm.backward(dy))
    result = []
    t = threading.Thread(target=lambda: result.append(call()))
    t.start()
    try:
        assert gate.inside.wait(30)
        for second in (lambda: lstm(x), lambda: lstm.backward(dy)):
            with pytest.raises(RuntimeError, match=r"another thread is inside this instance's"):
                second()
    finally:
        gate.release.set()
        t.join()
    np.testing.assert_array_equal(result[0], want_out if blocked == "forward" else want_dx)
    lstm(x)  # free again once the first thread is out
    lstm.backward(dy)


def test_an_lstm_is_free_again_after_an_error(rng):
    lstm = nn.LSTM(3, 4, dtype=np.float64, seed=0)
    with pytest.raises(ValueError, match="input features"):
        lstm(np.zeros((2, 1, 5)))
    with pytest.raises(RuntimeError, match="call forward"):
        lstm.backward(np.zeros((2, 1, 4)))
    out, _ = lstm(rng.standard_normal((2, 1, 3)))
    assert lstm.backward(np.ones_like(out)).shape == (2, 1, 3)


def test_separate_lstms_run_in_threads(rng):
    lstms = [nn.LSTM(3, 4, 2, dtype=np.float64, seed=k) for k in range(THREADS)]
    xs = [rng.standard_normal((6, 2, 3)) for _ in range(THREADS)]

    def train(k, rounds):
        for _ in range(rounds):
            lstms[k].zero_grad()
            out, _ = lstms[k](xs[k])
            dx = lstms[k].backward(out)
        return out, dx, {n: g.copy() for n, g in lstms[k].grads.items()}

    alone = [train(k, 1) for k in range(THREADS)]
    together = run_in_threads([lambda k=k: train(k, 50) for k in range(THREADS)])
    for a, b in zip(alone, together, strict=True):
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
        for n in a[2]:
            np.testing.assert_array_equal(a[2][n], b[2][n])
