"""Random LSTM problems, the tolerance check every test uses, and threads started together."""

import shutil
import subprocess
import sys
import threading

import numpy as np


def make_problem(rng, T, B, I, H, dtype=np.float64, scale=0.5):
    """Inputs of one forward/backward call, float64 values rounded to `dtype`.

    Weights have standard deviation 2·scale/√fan_in, which keeps most gates
    out of saturation, so no gradient is all near zero and every term of the
    math is exercised.
    """

    def r(*shape, s=1.0):
        return (s * rng.standard_normal(shape)).astype(dtype)

    return dict(
        x=r(T, B, I),
        W=r(4 * H, I, s=scale / max(I, 1) ** 0.5 * 2),
        R=r(4 * H, H, s=scale / max(H, 1) ** 0.5 * 2),
        b=r(4 * H, s=scale),
        h0=r(B, H, s=0.5),
        c0=r(B, H),
        dy=r(T, B, H),
        dh=r(B, H),
        dc=r(B, H),
    )


def assert_close(name, ours, ref, rtol):
    """|ours - ref| <= rtol·(|ref| + max(max|ref|, 1)), elementwise.

    The second term is the per-tensor atol. Entries of dW, dR, db and dx are
    sums over T·B terms, and any entry can be a difference of O(1) terms
    (the problems from make_problem have O(1) inputs), so cancellation can
    leave an entry far smaller than the rounding error of its terms; a purely
    relative bound would judge the summation order, not the code.
    """
    ours = np.asarray(ours)
    ref = np.asarray(ref, dtype=np.float64)
    assert ours.shape == ref.shape, f"{name}: shape {ours.shape} != {ref.shape}"
    scale = max(np.abs(ref).max(initial=0.0), 1.0)
    err = np.abs(ours.astype(np.float64) - ref)
    bound = rtol * (np.abs(ref) + scale)
    if err.size == 0:
        return
    worst = np.unravel_index(np.argmax(err / bound), err.shape)
    assert np.all(err <= bound), (
        f"{name}: error {err[worst]:.3g} at {worst} exceeds {bound[worst]:.3g} "
        f"(ours {ours[worst]!r}, ref {ref[worst]!r}, max|ref| {scale:.3g})"
    )


def central_difference(f, a, k, eps=1e-6):
    """(f() with a[k] + eps  -  f() with a[k] - eps) / (2 eps), restoring a[k].
    In float64 its error is about eps^2 (third derivative) + 1e-16 |f| / eps, near 1e-10."""
    orig = a[k]
    a[k] = orig + eps
    up = f()
    a[k] = orig - eps
    down = f()
    a[k] = orig
    return (up - down) / (2 * eps)


def run_in_threads(fns):
    """fns[k]() in thread k, all started together; results in order, the
    first error re-raised here."""
    results, errors = [None] * len(fns), []
    start = threading.Barrier(len(fns))

    def worker(k):
        try:
            start.wait()
            results[k] = fns[k]()
        except BaseException as e:  # re-raised in the test's thread
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(len(fns))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


def exported_cpp_symbols(path):
    """The defined dynamic symbols of a shared object, demangled (``nm -D``);
    None where that cannot be listed (not Linux, or no nm)."""
    if not sys.platform.startswith("linux") or shutil.which("nm") is None:
        return None
    out = subprocess.run(["nm", "-D", "--defined-only", "-C", str(path)],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    return [line.split(maxsplit=2)[2] for line in out.splitlines() if line.count(" ") >= 2]
