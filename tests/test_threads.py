"""Two Python threads calling the core at once: right answers, GIL released."""

import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

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


def _default_threads(env_threads=None, cpus=None, omp=None):
    """get_num_threads() in a fresh process, on the CPUs `cpus` if given,
    with LSTM_EXT_NUM_THREADS and OMP_NUM_THREADS as given (else unset)."""
    code = (
        "import os, sys\n"
        "if len(sys.argv) > 1: os.sched_setaffinity(0, [int(c) for c in sys.argv[1:]])\n"
        "import lstm_ext._core as c\n"
        "print(c.get_num_threads(), c.cpu_quota_cores(), len(os.sched_getaffinity(0)))\n"
    )
    unset = ("LSTM_EXT_NUM_THREADS", "OMP_NUM_THREADS")
    env = {k: v for k, v in os.environ.items() if k not in unset}
    if env_threads is not None:
        env["LSTM_EXT_NUM_THREADS"] = env_threads
    if omp is not None:
        env["OMP_NUM_THREADS"] = omp
    args = [sys.executable, "-c", code, *(str(c) for c in cpus or [])]
    out = subprocess.run(args, env=env, capture_output=True, text=True, check=True).stdout
    return tuple(int(v) for v in out.split())


def test_default_threads_are_the_cores_available():
    """Without LSTM_EXT_NUM_THREADS: the CPUs the process may run on, but no
    more than its cgroup's CPU limit (a container's --cpus, rounded up; the
    parsing of the cgroup files is tested in tests/cpp, Threads.*)."""
    threads, quota, affinity = _default_threads()
    assert quota >= 0
    assert threads == (min(affinity, quota) if quota else affinity)
    cpu = sorted(os.sched_getaffinity(0))[0]
    assert _default_threads(cpus=[cpu])[0] == 1  # affinity of one CPU: one thread
    assert _default_threads(env_threads="3", cpus=[cpu])[0] == 3  # the variable wins
    assert _default_threads(env_threads="0")[0] == threads  # out of range: ignored


def test_omp_num_threads_caps_the_default():
    """OMP_NUM_THREADS, which joblib's loky workers, Ray and Dask set in their
    worker processes so that the processes' threads together fit the cores,
    caps the default; LSTM_EXT_NUM_THREADS and set_num_threads still win.
    Its forms are tested in tests/cpp (Threads.OmpNumThreadsIsReadAsOpenMPWritesIt)."""
    threads = _default_threads()[0]
    assert _default_threads(omp="1")[0] == 1
    assert _default_threads(omp="1,1")[0] == 1  # OpenMP's nesting list: the first
    assert _default_threads(omp=str(threads + 5))[0] == threads  # a cap, not a count
    assert _default_threads(omp="none")[0] == threads  # not a count: no cap
    assert _default_threads(env_threads="3", omp="1")[0] == 3


_THREADS_AT_IMPORT = """
import os
import numpy
before = len(os.listdir("/proc/self/task"))
import lstm_ext
print(before, len(os.listdir("/proc/self/task")), os.environ.get("OPENBLAS_NUM_THREADS"))
"""


_CPUS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 0


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="no /proc/self/task to read")
@pytest.mark.skipif(_CPUS < 2, reason="under two CPUs: OpenBLAS would start no worker threads")
@pytest.mark.parametrize("variable", [None, "3"])
def test_importing_lstm_ext_starts_no_thread(variable):
    """lstm_ext's OpenBLAS loads on one thread: its workers, one a core less
    one, used to start as `_core` was imported and spin about 0.1 s, taking a
    core from a script's first calls (dev/perf-notes.md, 73). The variable
    OPENBLAS_NUM_THREADS is set to 1 for that import alone: as it was after."""
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    if variable is not None:
        env["OPENBLAS_NUM_THREADS"] = variable
    out = subprocess.run([sys.executable, "-c", _THREADS_AT_IMPORT], env=env,
                         capture_output=True, text=True, check=True).stdout.split()  # fmt: skip
    assert out[0] == out[1], f"threads before and after importing lstm_ext: {out[:2]}"
    assert out[2] == str(variable), f"OPENBLAS_NUM_THREADS after the import: {out[2]}"


def _in_v1_cgroup(controller: str, limits: dict, code: str, env: dict):
    """`code` run by a fresh interpreter in a cgroup of its own (v1, made for
    the test where this user may, with `limits` written to its files), and
    the completed process; the test skips where no such cgroup can be made."""
    base = f"/sys/fs/cgroup/{controller}"
    if not (os.path.isdir(base) and os.access(base, os.W_OK)):
        pytest.skip(reason=f"needs a writable cgroup v1 {controller} hierarchy (root on a v1 host)")
    group = f"{base}/lstm_ext_test_{os.getpid()}"
    os.mkdir(group)
    try:
        for name, value in limits.items():
            with open(f"{group}/{name}", "w") as f:
                f.write(value)
        join = f"import os\nopen('{group}/cgroup.procs', 'w').write(str(os.getpid()))\n"
        return subprocess.run([sys.executable, "-c", join + code], env=env,
                              capture_output=True, text=True, timeout=60)  # fmt: skip
    finally:
        os.rmdir(group)  # the child has exited: the group is empty


def test_default_threads_follow_a_real_cgroup_limit():
    """End to end on the kernel's own files: a process in a cgroup with half a
    core gets one thread. In such a cgroup on this 2-core VM, two threads took
    24 % longer per call on average than one at (100,16,256,256)
    (dev/perf-notes.md, 57)."""
    env = {k: v for k, v in os.environ.items() if k != "LSTM_EXT_NUM_THREADS"}
    code = "import lstm_ext._core as c\nprint(c.get_num_threads(), c.cpu_quota_cores())\n"
    # Of cpu.cfs_period_us's default 100000: half a core.
    out = _in_v1_cgroup("cpu", {"cpu.cfs_quota_us": "50000"}, code, env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["1", "1"]


_ONE_CPU = """
import os, sys
import numpy as np
import lstm_ext
from lstm_ext import _core
cpu = min(os.sched_getaffinity(0))
os.sched_setaffinity(0, {cpu})  # this thread, and the pool's threads made below
lstm_ext.set_num_threads(2)
rng = np.random.default_rng(5)
x = rng.standard_normal((100, 1, 128), dtype=np.float32)
W = rng.standard_normal((512, 128), dtype=np.float32) * 0.1
R = rng.standard_normal((512, 128), dtype=np.float32) * 0.1
outs = [lstm_ext.forward(x, W, R, training=False).y for _ in range(30)]
print(_core.team_backoffs(), int(all(np.array_equal(o, outs[0]) for o in outs)))
np.save(sys.argv[1], outs[0])
"""


def test_calls_on_threads_sharing_one_cpu_back_off_with_the_same_bits(tmp_path):
    """Two threads on one CPU, as when other processes' threads share the
    cores: each step waits for a thread off its core, so after two such calls
    the next run alone for a while (cpp/src/parallel.h, TeamBackoff). On two
    cores shared by two processes, a B = 1 forward took 28-34 times its time
    alone before (two runs of three), 1.2-2.0 times after, one thread each
    1.2-1.4 times (dev/perf-notes.md, 66). Results are the
    same bits as on one thread."""
    if lstm_ext._core.packed_recurrent_kernel() == "none":
        pytest.skip(reason="the team runs the packed kernel: this CPU has no AVX2+FMA or AVX-512F")
    env = dict(os.environ, LSTM_EXT_PACKED_RECURRENT="1")
    env.pop("LSTM_EXT_NUM_THREADS", None)
    out = subprocess.run([sys.executable, "-c", _ONE_CPU, str(tmp_path / "y.npy")],
                         env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    backoffs, same = (int(v) for v in out.stdout.split())
    assert backoffs >= 1 and same == 1
    rng = np.random.default_rng(5)
    x = rng.standard_normal((100, 1, 128), dtype=np.float32)
    W = rng.standard_normal((512, 128), dtype=np.float32) * 0.1
    R = rng.standard_normal((512, 128), dtype=np.float32) * 0.1
    before = lstm_ext.get_num_threads()
    try:
        lstm_ext.set_num_threads(1)
        y = lstm_ext.forward(x, W, R, training=False).y
        np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), y)
    finally:
        lstm_ext.set_num_threads(before)


def test_a_pool_the_system_caps_is_smaller():
    """In a cgroup that caps the process's tasks (pids.max, as a container's
    --pids-limit) below LSTM_EXT_NUM_THREADS, the pool starts the threads it
    may, get_num_threads says how many, and results are those of one thread.
    Before, the pool's construction hung (parallel.cpp, Pool)."""
    code = (
        "import numpy as np, lstm_ext\n"
        "x = np.ones((20, 16, 64), np.float32)\n"
        "W, R = np.full((256, 64), 0.01, np.float32), np.full((256, 64), 0.02, np.float32)\n"
        "threads = lstm_ext._core.get_num_threads()\n"
        "y = lstm_ext.forward(x, W, R, training=False).y\n"
        "lstm_ext.set_num_threads(1)\n"
        "same = np.array_equal(y, lstm_ext.forward(x, W, R, training=False).y)\n"
        "print(threads, same)\n"
    )
    env = dict(os.environ, LSTM_EXT_NUM_THREADS="40", OPENBLAS_NUM_THREADS="1")
    out = _in_v1_cgroup("pids", {"pids.max": "12"}, code, env)
    assert out.returncode == 0, out.stderr[-2000:]
    threads, same = out.stdout.split()
    assert 1 < int(threads) <= 12 and same == "True", out.stdout  # 12 tasks in all


def test_small_calls_after_the_threads_sleep_give_the_same_bits():
    """A small call that finds the pool's threads asleep (calls spaced out by
    more than their 100 us of spinning) runs on the calling thread alone
    (parallel.h, parallel_team): the same bits as with them awake."""
    rng = np.random.default_rng(3)
    x, h, c = (rng.standard_normal((2, 128)).astype(np.float32) for _ in range(3))
    W, R = (rng.standard_normal((512, 128)).astype(np.float32) * 0.1 for _ in range(2))
    x3 = x[None]
    awake = [lstm_ext.step(x, h, c, W, R) for _ in range(5)][-1]  # in a tight loop
    awake_fwd = [lstm_ext.forward(x3, W, R, None, h, c, training=False) for _ in range(5)][-1]
    for _ in range(5):
        time.sleep(0.002)
        for a, b in zip(lstm_ext.step(x, h, c, W, R), awake, strict=True):
            np.testing.assert_array_equal(a, b)
        time.sleep(0.002)
        got = lstm_ext.forward(x3, W, R, None, h, c, training=False)
        for a, b in zip(got[:3], awake_fwd[:3], strict=True):
            np.testing.assert_array_equal(a, b)


_FORKING = """
import multiprocessing, sys
import numpy as np
import lstm_ext

def run(_):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((20, 16, 64)).astype(np.float32)
    W, R = (rng.standard_normal((256, 64)).astype(np.float32) * 0.1 for _ in range(2))
    out = lstm_ext.forward(x, W, R)  # the team's calls, forward and backward
    grads = lstm_ext.backward(out.cache, np.ones_like(out.y))
    return lstm_ext._core.get_num_threads(), [a.tobytes() for a in (*out[:3], *grads)]

if __name__ == "__main__":
    lstm_ext.set_num_threads(int(sys.argv[1]))
    want = run(0)  # the pool's threads started before the fork
    with multiprocessing.get_context("fork").Pool(2) as pool:
        got = pool.map_async(run, range(4)).get(timeout=60)
    assert all(g == want for g in got), "a child's results or thread count differ"
    print("ok")
"""


@pytest.mark.parametrize("threads", [2, 3])
def test_forked_children_make_a_pool_of_their_own(threads):
    """multiprocessing's fork start method (Linux's default before Python
    3.14): a child forked after the pool's threads started has none of them,
    and makes a pool of its own of the parent's size (parallel.cpp,
    pool_after_fork_in_child): the same bits. Before, the child's first team
    call waited forever for the parent's threads."""
    out = subprocess.run([sys.executable, "-c", _FORKING, str(threads)],
                         capture_output=True, text=True, timeout=180)  # fmt: skip
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


_DAEMONS_AT_EXIT = """
import threading, time
import numpy as np
import lstm_ext

rng = np.random.default_rng(0)
x = rng.standard_normal((200, 32, 128)).astype(np.float32)
W, R = (rng.standard_normal((512, 128)).astype(np.float32) * 0.1 for _ in range(2))
layer = lstm_ext.PackedLayer(W, R)
h = np.zeros((1, 128), np.float32)

def train():
    while True:
        out = lstm_ext.forward(x, W, R)
        lstm_ext.backward(out.cache, np.ones_like(out.y))

def infer():
    while True:
        layer.forward(x[:, :4])

def step():
    while True:
        lstm_ext.step(x[0, :1], h, h, W, R)

for f in (train, infer, step):
    threading.Thread(target=f, daemon=True).start()
time.sleep(0.2)
"""


def test_daemon_threads_inside_calls_when_python_exits():
    """Python exits while daemon threads are inside lstm_ext's calls: the
    process ends cleanly. Before, it aborted in 8 runs of 8 ("terminate called
    without an active exception": Python ended each thread taking the GIL
    back with pthread_exit, whose unwinding cannot pass the GIL guard's
    destructor) or crashed in OpenBLAS, whose buffers the exit freed under a
    call. Now a thread that Python ends inside lstm_ext parks there, and the
    teardown waits for the calls still computing (bind_args.h, ExitGuard)."""
    for _ in range(6):
        out = subprocess.run([sys.executable, "-c", _DAEMONS_AT_EXIT],
                             capture_output=True, text=True, timeout=120)  # fmt: skip
        assert (out.returncode, out.stderr) == (0, ""), out.stderr[-2000:]


def test_calls_from_atexit_handlers_still_run():
    """An atexit handler that Python runs late (registered before lstm_ext
    was imported) may still call it."""
    code = (
        "import atexit\n"
        "import numpy as np\n"
        "def last():\n"
        "    import lstm_ext\n"
        "    x = np.ones((50, 8, 16), np.float32)\n"
        "    W, R = np.full((128, 16), 0.01, np.float32), np.full((128, 32), 0.01, np.float32)\n"
        "    out = lstm_ext.forward(x, W, R)\n"
        "    lstm_ext.backward(out.cache, np.ones_like(out.y))\n"
        "    print('ran', out.y.shape)\n"
        "atexit.register(last)\n"
        "import lstm_ext\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert (out.returncode, out.stdout, out.stderr) == (0, "ran (50, 8, 32)\n", "")


_LOCK_AT_EXIT = """
import atexit, threading, time
import numpy as np

lock = threading.Lock()

def last():  # registered before lstm_ext: Python runs it after lstm_ext's handler
    with lock:
        print("took the lock")

atexit.register(last)
import lstm_ext

x = np.ones((100, 16, 64), np.float32)
W, R = np.full((256, 64), 0.01, np.float32), np.full((256, 64), 0.01, np.float32)

def worker():
    while True:
        with lock:
            lstm_ext.forward(x, W, R)
        time.sleep(0.0005)

threading.Thread(target=worker, daemon=True).start()
time.sleep(0.2)
"""


def test_a_daemon_thread_holding_a_lock_lets_it_go_at_exit():
    """A daemon thread that calls lstm_ext while holding a lock, and an atexit
    handler that Python runs after lstm_ext's (registered before lstm_ext
    was imported) and takes that lock: the process ends. Before, lstm_ext's
    atexit handler parked every thread that entered a call after it, lock and
    all, and the exit hung in 2 runs of 3."""
    for _ in range(6):
        out = subprocess.run([sys.executable, "-c", _LOCK_AT_EXIT],
                             capture_output=True, text=True, timeout=60)  # fmt: skip
        got = (out.returncode, out.stdout, out.stderr)
        assert got == (0, "took the lock\n", ""), out.stderr[-2000:]


_FORK_DURING_A_CALL = """
import os, sys, threading, time
import numpy as np
import lstm_ext

x = np.ones((400, 32, 128), np.float32)
W = R = np.full((512, 128), 0.01, np.float32)

def work():
    while True:
        lstm_ext.forward(x, W, R, training=False)

threading.Thread(target=work, daemon=True).start()
time.sleep(0.3)
t = time.monotonic()
if os.fork() == 0:
    sys.exit(0)
os.wait()
print(round(time.monotonic() - t))
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no os.fork on this platform")
def test_a_child_forked_during_a_call_exits_at_once():
    """A child forked while another thread of the parent is inside a call has
    no call in flight: its exit does not wait for one. Before, it kept the
    parent's count and its exit waited 10 s (bind_args.h, ExitGuard)."""
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", _FORK_DURING_A_CALL],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert (out.returncode, out.stdout, out.stderr) == (0, "0\n", ""), out.stderr[-2000:]


def test_threadpoolctl_sizes_lstm_exts_threads():
    """threadpoolctl (in the test extra) lists lstm_ext's pool and sizes it
    with the BLAS's and OpenMP's: `threadpool_limits(1)` puts a call on one
    thread (the same bits), and the count comes back after the block.
    lstm_ext registers its controller at import (python/lstm_ext/_threadpool.py)."""
    threadpoolctl = pytest.importorskip(
        "threadpoolctl", minversion="3.3", reason="threadpoolctl >= 3.3 is in the test extra"
    )
    from lstm_ext import _core

    before = lstm_ext.get_num_threads()
    ours = [i for i in threadpoolctl.threadpool_info() if i["internal_api"] == "lstm_ext"]
    assert len(ours) == 1, ours
    assert ours[0]["user_api"] == "lstm_ext" and ours[0]["num_threads"] == before
    assert os.path.samefile(ours[0]["filepath"], _core.__file__)
    assert ours[0]["version"] == lstm_ext.__version__

    p = make_problem(np.random.default_rng(4), 20, 3, 16, 64, np.float32)
    args = (p["x"], p["W"], p["R"], p["b"])
    want = lstm_ext.forward(*args).y
    try:
        lstm_ext.set_num_threads(2)
        with threadpoolctl.threadpool_limits(1):
            assert lstm_ext.get_num_threads() == 1
            assert np.array_equal(lstm_ext.forward(*args).y, want)
        assert lstm_ext.get_num_threads() == 2
        with threadpoolctl.threadpool_limits({"lstm_ext": 1}):  # by its user_api
            assert lstm_ext.get_num_threads() == 1
        with threadpoolctl.threadpool_limits(1, user_api="blas"):  # the BLAS only
            assert lstm_ext.get_num_threads() == 2
        # The C function threadpoolctl calls clamps what set_num_threads refuses.
        import ctypes

        core = ctypes.CDLL(_core.__file__)
        assert core.lstm_ext_threadpool_set_num_threads(0) == 0
        assert lstm_ext.get_num_threads() == 1
        assert core.lstm_ext_threadpool_get_num_threads() == 1
    finally:
        lstm_ext.set_num_threads(before)

    # Listing the pools (sklearn's show_versions does) starts none of lstm_ext's threads.
    code = (
        "import os, threadpoolctl, lstm_ext\n"
        "tasks = lambda: len(os.listdir('/proc/self/task'))\n"
        "n = tasks()\n"
        "info = [i for i in threadpoolctl.threadpool_info() if i['user_api'] == 'lstm_ext']\n"
        "print(info[0]['num_threads'], tasks() - n)\n"
    )
    env = dict(os.environ, LSTM_EXT_NUM_THREADS="4")
    out = subprocess.run([sys.executable, "-c", code], env=env,
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert (out.returncode, out.stdout) == (0, "4 0\n"), out.stderr[-2000:]


def test_lstm_ext_imports_without_threadpoolctl_or_with_a_broken_one():
    """Registering with threadpoolctl is optional: lstm_ext imports and runs
    where threadpoolctl is missing (None in sys.modules makes its import
    fail) or broken (a module without a spec), and registers nothing."""
    code = (
        "import sys, types\n"
        "sys.modules['threadpoolctl'] = None if sys.argv[1] == 'missing' else "
        "types.ModuleType('threadpoolctl')\n"
        "import numpy as np, lstm_ext\n"
        "from lstm_ext import _threadpool\n"
        "x = np.ones((5, 2, 4), np.float32)\n"
        "W, R = np.full((32, 4), 0.1, np.float32), np.full((32, 8), 0.1, np.float32)\n"
        "print(_threadpool.register(), lstm_ext.forward(x, W, R).y.shape)\n"
    )
    for how in ("missing", "broken"):
        out = subprocess.run([sys.executable, "-c", code, how],
                             capture_output=True, text=True, timeout=60)  # fmt: skip
        assert (out.returncode, out.stdout, out.stderr) == (0, "False (5, 2, 8)\n", ""), how


# ---- a bidirectional layer's directions side by side (nn._directions) -------


def _bidirectional_run(lstm, packed, x, dy):
    """Everything a forward, backward and packed forward give, as bytes."""
    lstm.zero_grad()
    out, (h, c) = lstm(x)
    dx = lstm.backward(dy)
    arrays = [out, h, c, dx, *lstm.grads.values(), packed(x)[0]]
    return [a.tobytes() for a in arrays]


@pytest.mark.parametrize("threads", [1, 2, 3, 4])
def test_directions_side_by_side_give_the_bits_of_one_after_the_other(monkeypatch, threads):
    # Large enough for _directions to run the two directions on two threads
    # of their own (B >= 4, 2^25 multiply-adds), each with a pool of half the
    # threads (3: pools of 1 and 2); with _SIDES_MACS past any call, one after
    # the other on the process's pool. Projection and ragged lengths too.
    from lstm_ext import nn

    rng = np.random.default_rng(5)
    T, B, I, H, P = 128, 8, 96, 128, 24
    assert T * B * 4 * H * (2 * P + P) >= nn._SIDES_MACS and B >= nn._SIDES_ROWS  # the least
    x = rng.standard_normal((T, B, I), dtype=np.float32)
    before = lstm_ext.get_num_threads()
    where = []  # the threads the core's calls ran on, and their pools' sizes
    for name in ("forward", "forward_packed", "backward"):
        core = getattr(lstm_ext._core, name)

        def spy(*a, core=core, **kw):
            where.append((threading.current_thread().name, lstm_ext.get_num_threads()))
            return core(*a, **kw)

        monkeypatch.setattr(lstm_ext._core, name, spy)
    try:
        lstm_ext.set_num_threads(threads)
        for kw in (dict(), dict(proj_size=P)):
            lstm = nn.LSTM(I, H, 2, bidirectional=True, seed=1, **kw)  # the second layer's I: 2H
            dy = rng.standard_normal((T, B, 2 * lstm.output_size), dtype=np.float32)
            packed = lstm.packed()
            where.clear()
            side = _bidirectional_run(lstm, packed, x, dy)
            halves = sorted({n for name, n in where if name.startswith("lstm_ext-direction")})
            assert len(where) == 12  # 2 layers x 2 directions x (forward, backward, packed)
            if threads == 1:
                assert all(name == threading.current_thread().name for name, _ in where)
            else:
                assert halves == sorted({threads // 2, threads - threads // 2}), where
                lanes = {name for name, _ in where}
                assert lanes == {"lstm_ext-direction-0_0", "lstm_ext-direction-1_0"}, where
            on = nn._SIDES_MACS
            monkeypatch.setattr(nn, "_SIDES_MACS", 1 << 62)
            after = _bidirectional_run(lstm, packed, x, dy)
            monkeypatch.setattr(nn, "_SIDES_MACS", on)
            assert side == after
        lengths = rng.integers(0, T + 1, B)
        lstm = nn.LSTM(I, H, 1, bidirectional=True, seed=2)
        got = lstm(x, lengths=lengths)[0]
        monkeypatch.setattr(nn, "_SIDES_MACS", 1 << 62)
        np.testing.assert_array_equal(got, lstm(x, lengths=lengths)[0])
    finally:
        lstm_ext.set_num_threads(before)


def test_an_error_in_one_direction_reaches_the_caller(monkeypatch):
    from lstm_ext import nn

    lstm = nn.LSTM(96, 128, 1, bidirectional=True, seed=1)
    x = np.zeros((64, 8, 96), np.float32)
    forward = lstm_ext.forward

    def failing(*args, reverse=False, **kw):
        if reverse:
            raise ValueError("the reverse direction failed")
        return forward(*args, reverse=reverse, **kw)

    before = lstm_ext.get_num_threads()
    lstm_ext.set_num_threads(2)  # side by side
    try:
        monkeypatch.setattr(lstm_ext, "forward", failing)
        with pytest.raises(ValueError, match="the reverse direction failed"):
            lstm(x)
        monkeypatch.undo()
        assert lstm(x)[0].shape == (64, 8, 256)  # and the next call runs
    finally:
        lstm_ext.set_num_threads(before)


def test_a_backward_error_in_one_direction_leaves_the_gradients(monkeypatch):
    # The gradients are added once both directions have succeeded: a failed
    # backward leaves them as they were, and the next one adds them once.
    from lstm_ext import nn

    lstm = nn.LSTM(96, 128, 1, bidirectional=True, seed=1)
    x = np.ones((64, 8, 96), np.float32)
    backward = lstm_ext.backward

    def failing(cache, *args, **kw):
        if cache.reverse:
            raise ValueError("the reverse direction failed")
        return backward(cache, *args, **kw)

    before = lstm_ext.get_num_threads()
    lstm_ext.set_num_threads(2)  # side by side
    try:
        out, _ = lstm(x)
        monkeypatch.setattr(lstm_ext, "backward", failing)
        with pytest.raises(ValueError, match="the reverse direction failed"):
            lstm.backward(out)
        assert all(not g.any() for g in lstm.grads.values())
        monkeypatch.undo()
        lstm.backward(out)
        once = {k: g.copy() for k, g in lstm.grads.items()}
        lstm.zero_grad()
        lstm.backward(out)
        assert all(np.array_equal(once[k], g) for k, g in lstm.grads.items())
    finally:
        lstm_ext.set_num_threads(before)


def test_a_thread_s_own_pool():
    # use_own_pool(n): the calling thread's calls run on n threads of its own
    # (get_num_threads says so there), other threads' on the process's; 0 goes
    # back; outside [0, 1024] a ValueError.
    from lstm_ext import _core

    seen = {}

    def own(n):
        _core.use_own_pool(n)
        seen[n] = lstm_ext.get_num_threads()
        p = make_problem(np.random.default_rng(3), 20, 8, 16, 32, np.float32)
        seen[n, "bits"] = [a.tobytes() for a in forward_backward(p)]
        _core.use_own_pool(0)
        seen[n, "after"] = lstm_ext.get_num_threads()

    for n in (1, 3):
        t = threading.Thread(target=own, args=(n,))
        t.start()
        t.join()
    p = make_problem(np.random.default_rng(3), 20, 8, 16, 32, np.float32)
    want = [a.tobytes() for a in forward_backward(p)]
    assert seen[1] == 1 and seen[3] == 3
    assert seen[1, "after"] == seen[3, "after"] == lstm_ext.get_num_threads()
    assert seen[1, "bits"] == seen[3, "bits"] == want
    for n in (-1, 1025):
        with pytest.raises(ValueError, match=rf"own pool must be in \[0, 1024\], got {n}"):
            _core.use_own_pool(n)


_FORKING_SIDES = """
import multiprocessing
import numpy as np
import lstm_ext
from lstm_ext import nn

lstm_ext.set_num_threads(2)  # side by side
rng = np.random.default_rng(6)
x = rng.standard_normal((64, 8, 96)).astype(np.float32)
lstm = nn.LSTM(96, 128, 2, bidirectional=True, seed=1)
lstm.eval()

def run(_):
    return lstm(x)[0].tobytes()

if __name__ == "__main__":
    want = run(0)  # the directions' threads started before the fork
    with multiprocessing.get_context("fork").Pool(2) as pool:
        got = pool.map_async(run, range(4)).get(timeout=60)
    assert all(g == want for g in got), "a child's results differ"
    print("ok")
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no os.fork on this platform")
def test_forked_children_run_directions_side_by_side():
    """A child forked after the directions' threads started has none of them:
    it makes its own (nn._forget_sides). Before, it would wait for the
    parent's."""
    out = subprocess.run([sys.executable, "-c", _FORKING_SIDES],
                         capture_output=True, text=True, timeout=180)  # fmt: skip
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_two_threads_each_running_a_bidirectional_lstm():
    # One runs its directions on the two direction threads, the other (finding
    # them busy) one after the other on its own thread: both their own bits.
    from lstm_ext import nn

    rng = np.random.default_rng(7)
    x = rng.standard_normal((64, 8, 96), dtype=np.float32)
    lstms = [nn.LSTM(96, 128, 2, bidirectional=True, seed=s) for s in (1, 2)]
    before = lstm_ext.get_num_threads()
    lstm_ext.set_num_threads(2)
    try:
        alone = [lstm(x)[0].tobytes() for lstm in lstms]
        for _ in range(5):
            together = run_in_threads([lambda m=m: m(x)[0].tobytes() for m in lstms])
            assert together == alone
    finally:
        lstm_ext.set_num_threads(before)


_AT_EXIT_SIDES = """
import atexit
import numpy as np
import lstm_ext
from lstm_ext import nn

lstm_ext.set_num_threads(2)
x = np.random.default_rng(8).standard_normal((64, 8, 96)).astype(np.float32)
lstm = nn.LSTM(96, 128, 1, bidirectional=True, seed=1)
want = lstm(x)[0].tobytes()  # the direction threads started

def last():  # after Python has shut the executors' threads down
    print("ok" if lstm(x)[0].tobytes() == want else "differs")

atexit.register(last)
"""


def test_a_bidirectional_lstm_runs_in_an_atexit_handler():
    """Python shuts thread-pool executors down before the atexit handlers run:
    the directions then run one after the other instead of failing."""
    out = subprocess.run([sys.executable, "-c", _AT_EXIT_SIDES],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
