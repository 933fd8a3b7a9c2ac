"""nn.Linear's products on lstm_ext's threads (_core.linear_forward and
linear_backward, linear.h), and nn.Embedding's backward.

Both are checked against the formulas in float64 NumPy. Tolerances: in float64
the core's products and NumPy's differ only in the order of K additions of
terms of order 1, so 1e-12 absolute; in float32 by K * 2^-24 of the terms'
magnitudes, K <= 40 here, so 2e-5 absolute on values of order sqrt(K) (worst
seen over 20 seeds: 2.1e-6; dW sums 15 rows).
"""

import numpy as np
import pytest

import lstm_ext
from lstm_ext import _core, nn

TOL = {np.float64: 1e-12, np.float32: 2e-5}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_forward_and_backward_match_the_formulas(rng, dtype, bias):
    lin = nn.Linear(40, 7, bias=bias, dtype=dtype, seed=1)
    x = rng.standard_normal((5, 3, 40)).astype(dtype)
    dy = rng.standard_normal((5, 3, 7)).astype(dtype)
    W = lin.params["weight"].astype(np.float64)
    b = lin.params["bias"].astype(np.float64) if bias else 0.0
    y = lin(x)
    assert y.shape == (5, 3, 7) and y.dtype == dtype
    np.testing.assert_allclose(y, x.astype(np.float64) @ W.T + b, rtol=0, atol=TOL[dtype])
    lin.grads["weight"] += 1  # backward adds into the gradients
    dx = lin.backward(dy)
    assert dx.shape == x.shape and dx.dtype == dtype
    dy2, x2 = dy.reshape(-1, 7).astype(np.float64), x.reshape(-1, 40).astype(np.float64)
    np.testing.assert_allclose(dx.reshape(-1, 40), dy2 @ W, rtol=0, atol=TOL[dtype])
    np.testing.assert_allclose(lin.grads["weight"], 1 + dy2.T @ x2, rtol=0, atol=TOL[dtype])
    if bias:
        np.testing.assert_allclose(lin.grads["bias"], dy2.sum(0), rtol=0, atol=TOL[dtype])


def test_linear_gradients_match_central_differences(rng):
    """The loss sum(y * dy) in float64: its derivative in x and in W."""
    lin = nn.Linear(4, 3, dtype=np.float64, seed=0)
    x, dy = rng.standard_normal((6, 4)), rng.standard_normal((6, 3))
    lin(x)
    dx = lin.backward(dy)
    eps = 1e-6
    for name, arr, grad in (("x", x, dx), ("weight", lin.params["weight"], lin.grads["weight"])):
        num = np.zeros_like(arr)
        for i in np.ndindex(arr.shape):
            old = arr[i]
            arr[i] = old + eps
            up = float((lin(x) * dy).sum())
            arr[i] = old - eps
            down = float((lin(x) * dy).sum())
            arr[i] = old
            num[i] = (up - down) / (2 * eps)
        np.testing.assert_allclose(grad, num, rtol=0, atol=1e-8, err_msg=name)


def test_linear_gives_the_same_bits_at_any_thread_count(rng):
    """Sizes at which every product is cut into blocks (blas.cpp's cut: y, dx
    and dW along their 2,100 rows) and db's columns are several tasks."""
    lin = nn.Linear(40, 2100, seed=2)
    x = rng.standard_normal((2100, 40)).astype(np.float32)
    dy = rng.standard_normal((2100, 2100)).astype(np.float32)
    before = lstm_ext.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 3):
            lstm_ext.set_num_threads(threads)
            lin.zero_grad()
            y = lin(x)
            dx = lin.backward(dy)
            results.append([y, dx, lin.grads["weight"].copy(), lin.grads["bias"].copy()])
    finally:
        lstm_ext.set_num_threads(before)
    for other in results[1:]:
        for a, b in zip(results[0], other, strict=True):
            assert np.array_equal(a, b)


def test_linear_takes_views_and_other_byte_orders(rng):
    lin = nn.Linear(6, 2, seed=3)
    x = rng.standard_normal((4, 12)).astype(np.float32)[:, ::2]  # not contiguous
    want = x @ lin.params["weight"].T + lin.params["bias"]
    np.testing.assert_allclose(lin(x), want, rtol=0, atol=1e-6)
    np.testing.assert_allclose(lin(x.astype(">f4")), want, rtol=0, atol=1e-6)
    np.testing.assert_allclose(lin(np.zeros((0, 6), np.float32)), np.zeros((0, 2)))
    assert lin.backward(np.zeros((0, 2), np.float32)).shape == (0, 6)


def test_linear_adds_into_gradients_of_any_layout_and_dtype(rng):
    """Gradient arrays a caller swapped in that the core cannot add into (here
    Fortran order, float64) take the sums as `+=` would."""
    lin = nn.Linear(5, 3, seed=4)
    x, dy = rng.standard_normal((4, 5)).astype(np.float32), np.ones((4, 3), np.float32)
    lin.grads["weight"] = np.asfortranarray(np.ones((3, 5), np.float32))
    lin.grads["bias"] = np.ones(3)
    lin(x)
    lin.backward(dy)
    want = 1 + dy.T.astype(np.float64) @ x
    np.testing.assert_allclose(lin.grads["weight"], want, rtol=0, atol=1e-5)
    assert lin.grads["weight"].flags.f_contiguous and lin.grads["bias"].dtype == np.float64
    np.testing.assert_allclose(lin.grads["bias"], 5.0, rtol=0, atol=0)


def test_core_linear_names_bad_arguments():
    f32 = np.ones((3, 4), np.float32)
    W = np.ones((2, 4), np.float32)
    dy = np.ones((3, 2), np.float32)
    dW0, db3 = np.zeros((2, 4), np.float32), np.zeros(3, np.float32)
    empty = lambda *shape: np.zeros(shape, np.float32)  # noqa: E731 (no memory at size 0)
    cases = [
        (lambda: _core.linear_forward(f32, np.ones((2, 3), np.float32)), ValueError,
         r"W: expected shape \[M,K\] \(K from x\) = \(2, 4\), got \(2, 3\)"),
        (lambda: _core.linear_forward(f32, W.astype(np.float64)), TypeError,
         "W: expected dtype float32 to match x, got float64"),
        (lambda: _core.linear_forward(f32.astype(int), W), TypeError,
         "x: expected dtype float32 or float64, got int"),
        (lambda: _core.linear_forward(f32, W, np.ones(3, np.float32)), ValueError,
         r"b: expected shape \[M\] \(M from W\) = \(2,\), got \(3,\)"),
        (lambda: _core.linear_forward(f32[0], W), ValueError, "x: expected 2 dimensions"),
        (lambda: _core.linear_backward(dy, f32, W, [[0.0] * 4] * 2), TypeError,
         "dW: expected a NumPy array to add into, got list"),
        (lambda: _core.linear_backward(dy, f32, W, np.zeros((2, 4))), TypeError,
         "dW: expected dtype float32 to match x, got float64"),
        (lambda: _core.linear_backward(dy, f32, W, np.zeros((2, 4), int)), TypeError,
         "dW: expected dtype float32 to match x, got int64"),
        (lambda: _core.linear_backward(dy, f32, W, dW0, np.zeros(2, bool)), TypeError,
         "db: expected dtype float32 to match x, got bool"),
        (lambda: _core.linear_backward(dy, f32, W, np.zeros((4, 2), np.float32)), ValueError,
         r"dW: expected shape \[M,K\] \(W's\) = \(2, 4\), got \(4, 2\)"),
        (lambda: _core.linear_backward(dy, f32, W, np.zeros((4, 2), np.float32).T), ValueError,
         "dW: expected a writeable, C-contiguous array in native byte order to add into, got "
         "an array that is not C-contiguous"),
        (lambda: _core.linear_backward(dy, f32, W, np.zeros((2, 4), ">f4")), ValueError,
         "dW: .* got an array in the other byte order"),
        (lambda: _core.linear_forward(empty(2**31, 0), empty(2, 0)), ValueError,
         "GEMM dimension N = 2147483648 exceeds the BLAS limit of 2147483647"),
        (lambda: _core.linear_forward(empty(2**30, 0), empty(2**30, 0)), ValueError,
         "size 1073741824 x 1073741824 overflows a 64-bit byte count"),
        (lambda: _core.linear_backward(dy, f32, W, dW0, db3), ValueError,
         r"db: expected shape \[M\] \(M from W\) = \(2,\), got \(3,\)"),
        (lambda: _core.linear_backward(dy.T, f32, W, np.zeros((2, 4), np.float32)), ValueError,
         r"dy: expected shape \[N,M\] \(N from x, M from W\) = \(3, 2\), got \(2, 3\)"),
        (lambda: _core.linear_backward(dy, f32, W, np.zeros((2, 4), np.float32), with_dx="yes"),
         TypeError, "with_dx: expected a bool, got str"),
    ]  # fmt: skip
    for call, error, match in cases:
        with pytest.raises(error, match=match):
            call()
    readonly = np.zeros((2, 4), np.float32)
    readonly.flags.writeable = False
    with pytest.raises(ValueError, match=r"dW: .* to add into, got a read-only array"):
        _core.linear_backward(dy, f32, W, readonly)
    shared = np.zeros(10, np.float32)  # db inside dW: refused by the core
    with pytest.raises(ValueError, match="buffers db and dW overlap"):
        _core.linear_backward(dy, f32, W, shared[:8].reshape(2, 4), shared[1:3])
    dW = np.zeros((2, 4), np.float32)
    assert _core.linear_backward(dy, f32, W, dW, with_dx=False) is None
    assert np.array_equal(dW, np.full((2, 4), 3, np.float32))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_embedding_backward_adds_each_tokens_rows(rng, dtype):
    emb = nn.Embedding(9, 5, dtype=dtype, seed=0)
    idx = rng.integers(0, 4, (6, 7))  # repeats; tokens 4-8 unused
    dy = rng.standard_normal((6, 7, 5)).astype(dtype)
    emb(idx)
    emb.grads["weight"] += 2
    emb.backward(dy)
    want = np.full((9, 5), 2.0)
    np.add.at(want, idx.reshape(-1), dy.reshape(-1, 5).astype(np.float64))
    np.testing.assert_allclose(emb.grads["weight"], want, rtol=0, atol=10 * TOL[dtype])
    assert (emb.grads["weight"][4:] == 2).all()
    emb(np.zeros((0, 3), int))
    emb.backward(np.zeros((0, 3, 5), dtype))  # nothing to add
    np.testing.assert_allclose(emb.grads["weight"], want, rtol=0, atol=10 * TOL[dtype])


class _NoProducts(np.ndarray):
    """An array that refuses to be an operand of NumPy's products (`@`,
    np.matmul, np.dot and kin), which run on NumPy's BLAS threads; every
    other operation runs on the plain array beneath."""

    def __array_ufunc__(self, ufunc, method, *inputs, out=None, **kwargs):
        if ufunc is np.matmul:
            raise AssertionError("a NumPy product (np.matmul) in lstm_ext's training step")
        plain = [a.view(np.ndarray) if isinstance(a, _NoProducts) else a for a in inputs]
        if out is not None:
            kwargs["out"] = tuple(o.view(np.ndarray) for o in out)
        return getattr(ufunc, method)(*plain, **kwargs)

    def __array_function__(self, func, types, args, kwargs):
        if func in (np.dot, np.vdot, np.inner, np.tensordot, np.linalg.norm):
            raise AssertionError(f"a NumPy product ({func.__name__}) in lstm_ext's training step")
        return super().__array_function__(func, types, args, kwargs)


def test_a_training_step_uses_no_numpy_product(rng):
    """NumPy's BLAS threads spin for about 0.1 s after a product and took the
    cores from the LSTM's next call (a training step twice as long; README,
    dev/perf-notes.md 64). Every parameter, gradient and optimiser buffer is
    an array that refuses to be an operand of one, through the whole step."""
    from lstm_ext import losses, optim

    model = nn.Sequential(nn.Embedding(11, 4, seed=0), nn.LSTM(4, 6, seed=1), nn.Linear(6, 11))
    opt = optim.Adam(model, lr=1e-2)
    opt.step()  # makes the optimiser's buffers
    for d in (*(d for m in model.modules for d in (m.params, m.grads)), *opt.state.values()):
        for k, a in d.items():
            d[k] = a.view(_NoProducts)
    model._collect()
    x, y = rng.integers(0, 11, (5, 3)), rng.integers(0, 11, (5, 3))
    with pytest.raises(AssertionError, match=r"np\.matmul"):  # the guard works
        model.params["2.weight"] @ np.ones(6, np.float32)
    opt.zero_grad()
    logits, _ = model(x)
    model.backward(losses.softmax_cross_entropy(logits, y)[1])
    assert optim.clip_grad_norm(model, 0.1) > 0
    opt.step()
