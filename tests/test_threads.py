"""Two Python threads calling the core at once: right answers, GIL released."""

import threading
import time

import numpy as np

import lstm_ext
from helpers import make_problem, run_in_threads


def forward_backward(p):
    out = lstm_ext.forward(p["x"], p["W"], p["R"], p["b"], p["h0"], p["c0"])
    return list(out[:3]) + list(lstm_ext.backward(out.cache, p["dy"], p["dh"], p["dc"]))


def test_two_threads_get_their_own_right_answers():
    rng = np.random.default_rng(1)
    problems = [make_problem(rng, 40, 8, 32, 48, np.float32), make_problem(rng, 25, 3, 16, 64)]
    alone = [forward_backward(p) for p in problems]
    for _ in range(5):
        together = run_in_threads([lambda p=p: forward_backward(p) for p in problems])
        for a, b in zip(alone, together, strict=True):
            for u, v in zip(a, b, strict=True):
                np.testing.assert_array_equal(u, v)


def test_the_gil_is_released_while_the_core_computes():
    """While one thread is inside a long forward call, another keeps running
    Python. With the GIL held, the watcher would stall for the whole call."""
    rng = np.random.default_rng(2)

    def call():
        t0 = time.perf_counter()
        lstm_ext.forward(p["x"], p["W"], p["R"], training=False)
        return time.perf_counter() - t0

    # A call long enough to tell, on a fast machine too: T grows until it is.
    T = 200
    while True:
        p = make_problem(rng, T, 64, 128, 128, np.float32)
        if call() > 0.1 or T >= 12800:
            break
        T *= 2
    done = threading.Event()
    gaps = []

    def watcher():
        last = time.perf_counter()
        while not done.is_set():
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    w = threading.Thread(target=watcher)
    w.start()
    try:
        duration = max(call() for _ in range(3))
    finally:
        done.set()
        w.join()
    # The watcher is preempted only at the interpreter's switch interval
    # (5 ms by default); a held GIL would give one gap as long as the call.
    assert duration > 0.05, f"the call took {duration:.3f}s: too short to tell"
    assert max(gaps) < 0.5 * duration, f"watcher stalled {max(gaps):.3f}s of a {duration:.3f}s call"
