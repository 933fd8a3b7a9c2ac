"""The cache of freed large buffers (python/lstm_ext/buffers.h).

Large workspaces and outputs reuse the buffers earlier calls freed, which
hold stale numbers where a fresh buffer held zeros. These tests check that
no result depends on what a buffer held before, that a buffer is never
handed out while an array still uses it, that the cache stays within its
bound, and that LSTM_EXT_BUFFER_CACHE_MB=0 turns it off.
"""

import gc
import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest

import lstm_ext
from helpers import run_in_threads
from lstm_ext import _core

# Big enough that x, y, the workspace and the scratch pass the cache's 1 MiB.
T, B, I, H = 64, 32, 128, 128


def problem(seed, dtype=np.float32):
    rng = np.random.default_rng(seed)

    def r(*shape, s=1.0):
        return (s * rng.standard_normal(shape)).astype(dtype)

    lengths = rng.integers(0, T + 1, B)
    return dict(
        x=r(T, B, I), W=r(4 * H, I, s=0.1), R=r(4 * H, H, s=0.1), b=r(4 * H, s=0.1),
        dy=r(T, B, H), lengths=lengths,
    )  # fmt: skip


def run(p, **kw):
    """fwd+bwd; every array it returns, as bytes."""
    f = lstm_ext.forward(p["x"], p["W"], p["R"], p["b"], **kw)
    g = lstm_ext.backward(f.cache, p["dy"])
    arrays = (f.y, f.h, f.c, g.dx, g.dh0, g.dc0, g.dW, g.dR, g.db)
    return [a.tobytes() for a in arrays]


def digest(results):
    h = hashlib.sha256()
    for r in results:
        for a in r:
            h.update(a)
    return h.hexdigest()


CASES = [dict(), dict(reverse=True), dict(lengths=True), dict(lengths=True, reverse=True)]


def case_kwargs(kw, p):
    """A case of CASES as forward's keywords, lengths=True taking p's lengths."""
    return dict(kw, lengths=p["lengths"]) if kw.get("lengths") else kw


def all_cases(seed, before=lambda: None):
    """run() for each case of CASES, before() ahead of each."""
    p = problem(seed)
    out = []
    for kw in CASES:
        before()
        out.append(run(p, **case_kwargs(kw, p)))
    return out


def in_fresh_process(code, cache_mb):
    """What `code` prints (test_buffers imported as t, lstm_ext._core as c) in
    a new interpreter with LSTM_EXT_BUFFER_CACHE_MB=cache_mb."""
    env = dict(os.environ, LSTM_EXT_BUFFER_CACHE_MB=str(cache_mb))
    tests = os.path.dirname(os.path.abspath(__file__))
    prelude = f"import sys; sys.path.insert(0, {tests!r}); "
    prelude += "import test_buffers as t, lstm_ext._core as c"
    out = subprocess.run(
        [sys.executable, "-c", f"{prelude}; {code}"],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return out.stdout.strip()


def test_freed_buffers_are_kept_and_reused():
    gc.collect()
    p = problem(0)
    run(p)
    held, limit = _core.buffer_cache()
    assert 0 < held <= limit  # the last call's workspace, scratch and outputs
    before = held
    run(p)  # takes those buffers and gives them back
    assert _core.buffer_cache()[0] == before


def poison(value):
    """Leave buffers full of `value` in the cache: every case, all inputs `value`."""
    p = {k: np.full_like(v, value) if k != "lengths" else v for k, v in problem(0).items()}
    for kw in CASES:
        run(p, **case_kwargs(kw, p))


def test_results_do_not_depend_on_what_buffers_held():
    # Each case right after buffers of its sizes were filled with NaN, then
    # with 1e30: anything read before it is written would carry NaN into the
    # results, or differ between the two; compare with a process whose cache
    # is off as well.
    after_nan = all_cases(1, before=lambda: poison(np.nan))
    assert not any(np.isnan(np.frombuffer(a, np.float32)).any() for r in after_nan for a in r)
    after_big = all_cases(1, before=lambda: poison(1e30))
    fresh = in_fresh_process("print(t.digest(t.all_cases(1)))", 0)
    assert digest(after_big) == digest(after_nan) == fresh


def test_cache_off_holds_nothing():
    out = in_fresh_process("t.all_cases(1); print(*c.buffer_cache())", 0)
    assert out.split() == ["0", "0"]


def test_live_arrays_are_never_handed_out_again():
    p = problem(2)
    kept = lstm_ext.forward(p["x"], p["W"], p["R"], p["b"], training=False).y
    copy = kept.copy()
    for seed in range(3, 8):  # calls that free and take buffers of kept's size
        q = problem(seed)
        lstm_ext.forward(q["x"], q["W"], q["R"], q["b"], training=False)
        run(q)
    np.testing.assert_array_equal(kept, copy)


def test_cache_stays_within_its_bound():
    limit = _core.buffer_cache()[1]
    for seed in range(10):
        run(problem(seed))
        assert _core.buffer_cache()[0] <= limit


def test_free_cached_buffers_gives_the_memory_back():
    p = problem(3)
    kept = lstm_ext.forward(p["x"], p["W"], p["R"], p["b"], training=False).y
    copy = kept.copy()
    run(p)
    held = _core.buffer_cache()[0]
    assert held > 0
    assert lstm_ext.free_cached_buffers() == held
    assert _core.buffer_cache()[0] == 0
    np.testing.assert_array_equal(kept, copy)  # arrays in use keep their memory
    run(p)  # and the cache fills again
    assert _core.buffer_cache()[0] > 0


def test_the_cuda_module_shares_the_cache():
    try:
        from lstm_ext import _cuda
    except ImportError:
        pytest.skip(reason="the CUDA module is not compiled into this install")
    run(problem(4))
    assert _cuda.buffer_cache() == _core.buffer_cache()
    assert _core.buffer_cache()[0] > 0


def test_threads_share_the_cache():
    alone = [digest(all_cases(s)) for s in range(4)]
    together = run_in_threads([lambda s=s: digest(all_cases(s)) for s in range(4)] * 2)
    assert together == alone * 2


def address(a):
    return a.__array_interface__["data"][0]


HUGE = 2 << 20  # buffers.h's kHuge: a huge page


def test_large_buffers_start_on_a_huge_page_and_are_reused_whole():
    # From 2 MiB a buffer is 2 MiB-aligned and a whole number of huge pages
    # (so that the kernel can back it with huge pages: fewer TLB misses in
    # the BLAS's copies), and a request just past a multiple of 2 MiB gets
    # the rounded-up buffer back from the cache.
    # An empty cache first: a block an earlier test freed (up to 5/4 of the
    # size asked for) would serve `small` below, and the count would be its.
    gc.collect()
    lstm_ext.free_cached_buffers()
    n = HUGE // 4 + 1  # float32 elements: 2 MiB and 4 bytes
    a = _core.cached_empty((n,), np.dtype(np.float32))
    where = address(a)
    assert where % HUGE == 0
    del a
    gc.collect()
    b = _core.cached_empty((n,), np.dtype(np.float32))
    assert address(b) == where
    # What the cache holds once they are freed: the whole huge pages, and
    # under 2 MiB the size rounded to 64 bytes.
    small = _core.cached_empty((HUGE // 8 + 1,), np.dtype(np.float32))  # 1 MiB and 4 bytes
    gc.collect()
    lstm_ext.free_cached_buffers()
    del b, small
    assert _core.buffer_cache()[0] == 2 * HUGE + HUGE // 2 + 64


def test_cached_empty_gives_the_array_asked_for_and_checks_its_arguments():
    for shape, dtype in [((3, 4), np.float32), ((), np.float64), ((0, 5), np.float32),
                         ((300, 400), np.float64)]:  # fmt: skip
        a = _core.cached_empty(shape, np.dtype(dtype))
        assert a.shape == shape and a.dtype == dtype
        assert a.flags.c_contiguous and a.flags.writeable
    with pytest.raises(ValueError, match="shape: expected sizes >= 0, got -1"):
        _core.cached_empty((2, -1), np.dtype(np.float32))
    with pytest.raises(TypeError, match="dtype: expected float32 or float64, got int64"):
        _core.cached_empty((2,), np.dtype(np.int64))
    with pytest.raises(
        ValueError,
        match=r"array is too big: an array with shape \(1099511627776, 1099511627776\) and "
        r"data type float32 would pass 2\^63 bytes",
    ):
        _core.cached_empty((2**40, 2**40), np.dtype(np.float32))
    with pytest.raises(ValueError, match=r"too big: an array with shape \(2305843009213693951,\)"):
        _core.cached_empty((2**61 - 1,), np.dtype(np.float64))  # 2^64 - 8 bytes
    with pytest.raises(
        MemoryError,
        match=r"Unable to allocate 4503599627370496 bytes for an array with shape "
        r"\(562949953421312,\) and data type float64",
    ):
        _core.cached_empty((2**49,), np.dtype(np.float64))


@pytest.mark.parametrize("training", [True, False])
def test_a_strided_view_is_copied_privately(training):
    # A view that is not C-contiguous (the slices of a bidirectional layer's
    # dy, a strided x) is copied into a buffer of the cache: the same results
    # as from its contiguous copy, and in training a copy that changing the
    # viewed array afterwards does not reach.
    p = problem(5)
    wide_x = np.repeat(p["x"], 2, axis=2)  # [T,B,2I]: x in its even columns
    wide_dy = np.concatenate([p["dy"], -p["dy"]], axis=2)  # [T,B,2H]
    x_view, dy_view = wide_x[:, :, ::2], wide_dy[:, :, :H]
    assert not x_view.flags.c_contiguous and not dy_view.flags.c_contiguous
    want = lstm_ext.forward(p["x"], p["W"], p["R"], p["b"], training=training)
    got = lstm_ext.forward(x_view, p["W"], p["R"], p["b"], training=training)
    np.testing.assert_array_equal(got.y, want.y)
    if training:
        wide_x[...] = 7  # backward reads the copy forward kept
        g_want = lstm_ext.backward(want.cache, p["dy"])
        g_got = lstm_ext.backward(got.cache, dy_view)
        for name, u, v in zip(lstm_ext.GradResult._fields, g_got, g_want, strict=True):
            np.testing.assert_array_equal(u, v, err_msg=name)
