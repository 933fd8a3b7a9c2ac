"""lstm_ext.losses against the textbook formulas, by finite differences, for
stability, masks and errors.

Values are compared in float64 with rtol 1e-12 against the formulas written
out directly (no max subtraction; logits are O(1) there, so the direct form is
exact to rounding). Gradients are compared with central differences,
(f(x+h) - f(x-h))/2h with h = 1e-6: truncation error O(h²·f''') ~ 1e-12 and
cancellation error ~ 1e-16/h = 1e-10, so atol 1e-8 leaves a margin of 100x
while a wrong term (off by O(1/count) ~ 0.05) fails by far.
"""

import math

import numpy as np
import pytest

from lstm_ext.losses import LN2, bits, mse, softmax_cross_entropy

FD_H, FD_ATOL = 1e-6, 1e-8


def numeric_grad(f, x):
    """Central differences of the scalar f at x, elementwise."""
    g = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        old = x[i]
        x[i] = old + FD_H
        up = f(x)
        x[i] = old - FD_H
        down = f(x)
        x[i] = old
        g[i] = (up - down) / (2 * FD_H)
    return g


def ce_direct(logits, targets, mask=None):
    """-mean log softmax(logits)[target], straight from the definition."""
    p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    nll = -np.log(np.take_along_axis(p, np.maximum(targets, 0)[..., None], -1)[..., 0])
    m = np.ones(targets.shape, bool) if mask is None else np.broadcast_to(mask, targets.shape)
    return nll[m].mean()


# ---- bits -------------------------------------------------------------------------


def test_bits():
    assert LN2 == math.log(2)
    assert bits(math.log(2)) == 1.0
    assert bits(math.log(256)) == pytest.approx(8.0, rel=1e-15)


# ---- mse --------------------------------------------------------------------------


@pytest.mark.parametrize("masked", [False, True])
def test_mse_value_and_gradient(rng, masked):
    pred, target = rng.standard_normal((2, 4, 3, 5))
    mask = rng.random((4, 3, 1)) < 0.6 if masked else None  # broadcasts over the last axis
    mask_full = np.ones(pred.shape, bool) if mask is None else np.broadcast_to(mask, pred.shape)
    loss, grad = mse(pred, target, mask)
    assert isinstance(loss, float)
    assert grad.shape == pred.shape and grad.dtype == pred.dtype
    np.testing.assert_allclose(loss, ((pred - target)[mask_full] ** 2).mean(), rtol=1e-12)
    num = numeric_grad(lambda p: mse(p, target, mask)[0], pred.copy())
    np.testing.assert_allclose(grad, num, rtol=0, atol=FD_ATOL)
    assert np.all(grad[~mask_full] == 0)


def test_mse_mask_as_integers_and_float32(rng):
    pred = rng.standard_normal((3, 4)).astype(np.float32)
    target = rng.standard_normal((3, 4)).astype(np.float32)
    mask = np.array([1, 0, 1], np.int8)[:, None]
    loss, grad = mse(pred, target, mask)
    assert grad.dtype == np.float32
    want = ((pred[[0, 2]].astype(np.float64) - target[[0, 2]]) ** 2).mean()
    assert loss == pytest.approx(want, rel=1e-6)
    assert np.all(grad[1] == 0)


def test_mse_masked_out_nan_does_not_leak():
    pred = np.array([1.0, np.nan])
    loss, grad = mse(pred, np.zeros(2), mask=[True, False])
    assert loss == 1.0 and grad.tolist() == [2.0, 0.0]


def test_mse_errors():
    with pytest.raises(ValueError, match="target: expected the shape"):
        mse(np.zeros((2, 3)), np.zeros((3, 2)))
    with pytest.raises(TypeError, match="pred: expected a float32 or float64 array, got dtype int"):
        mse(np.zeros(3, int), np.zeros(3))
    # float16's count and sum overflow past 65,504 elements: the loss was NaN.
    with pytest.raises(
        TypeError, match="pred: expected a float32 or float64 array, got dtype float16"
    ):
        mse(np.zeros(70_000, np.float16), np.zeros(70_000))
    with pytest.raises(TypeError, match="logits: expected a float32 or float64 array"):
        softmax_cross_entropy(np.zeros((70_000, 2), np.float16), np.zeros(70_000, int))
    loss, g = mse(np.ones(3, ">f4"), np.zeros(3))  # either byte order
    assert loss == 1.0 and g.dtype.newbyteorder("=") == np.float32
    with pytest.raises(ValueError, match="mask: counts no element"):
        mse(np.zeros(3), np.zeros(3), mask=np.zeros(3, bool))
    with pytest.raises(ValueError, match="mask: counts no element"):
        mse(np.zeros(0), np.zeros(0))
    with pytest.raises(ValueError, match="mask: shape"):
        mse(np.zeros((2, 3)), np.zeros((2, 3)), mask=np.ones(2, bool))
    with pytest.raises(ValueError, match="mask: expected booleans or 0/1"):
        mse(np.zeros(3), np.zeros(3), mask=np.array([0.5, 1, 1]))


# ---- softmax cross-entropy --------------------------------------------------------


@pytest.mark.parametrize("shape", [(5,), (4, 7), (3, 2, 6)])  # [...,C]; C = 5, 7, 6
@pytest.mark.parametrize("masked", [False, True])
def test_ce_value_and_gradient(rng, shape, masked):
    logits = rng.standard_normal(shape) * 2
    targets = rng.integers(0, shape[-1], shape[:-1])
    mask = None
    if masked:
        mask = rng.random(shape[:-1]) < 0.6
        mask.flat[0] = True  # count at least one position
        targets = np.where(mask, targets, -1)  # padding: not a class, never read
    loss, grad = softmax_cross_entropy(logits, targets, mask)
    assert isinstance(loss, float)
    assert grad.shape == logits.shape and grad.dtype == logits.dtype
    np.testing.assert_allclose(loss, ce_direct(logits, targets, mask), rtol=1e-12)
    num = numeric_grad(lambda z: softmax_cross_entropy(z, targets, mask)[0], logits.copy())
    np.testing.assert_allclose(grad, num, rtol=0, atol=FD_ATOL)
    if masked:
        assert np.all(grad[~mask] == 0)


def test_ce_gradient_formula(rng):
    # (softmax - onehot) * mask / count, written out
    logits = rng.standard_normal((2, 3, 4))
    targets = rng.integers(0, 4, (2, 3))
    mask = np.array([[1, 1, 0], [0, 1, 1]])
    _, grad = softmax_cross_entropy(logits, targets, mask)
    p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    want = (p - np.eye(4)[targets]) * mask[..., None] / 4
    np.testing.assert_allclose(grad, want, rtol=1e-12, atol=1e-16)


def test_ce_mask_counts_only_kept_positions(rng):
    # The loss over a padded batch equals the loss over the kept rows alone.
    logits = rng.standard_normal((6, 5))
    targets = rng.integers(0, 5, 6)
    keep = np.array([True, False, True, True, False, False])
    loss, grad = softmax_cross_entropy(logits, targets, keep)
    loss_kept, grad_kept = softmax_cross_entropy(logits[keep], targets[keep])
    assert loss == pytest.approx(loss_kept, rel=1e-15)
    np.testing.assert_array_equal(grad[keep], grad_kept)
    np.testing.assert_array_equal(grad[~keep], 0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_ce_stable_for_huge_logits(dtype):
    # pyproject turns warnings into errors; errstate makes NumPy's FP errors raise too.
    logits = np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4], [1e4, 1e4, -1e4]], dtype)
    targets = np.array([1, 2, 0])
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        loss, grad = softmax_cross_entropy(logits, targets)
    assert grad.dtype == dtype
    # nll per row: 2e4; log 3 (equal logits); log 2 (two tied maxima)
    assert loss == pytest.approx((2e4 + math.log(3) + math.log(2)) / 3, rel=1e-6)
    assert np.all(np.isfinite(grad))
    want = np.array([[1, -1, 0], [1 / 3, 1 / 3, -2 / 3], [-0.5, 0.5, 0]]) / 3
    np.testing.assert_allclose(grad, want, rtol=1e-6, atol=1e-7)


def test_ce_masked_out_nan_does_not_leak():
    logits = np.array([[0.0, 0.0], [np.nan, 1.0]])
    loss, grad = softmax_cross_entropy(logits, np.array([0, 1]), mask=[True, False])
    assert loss == pytest.approx(math.log(2), rel=1e-15)
    assert grad.tolist() == [[-0.5, 0.5], [0.0, 0.0]]


def test_ce_errors():
    z = np.zeros((2, 3))
    with pytest.raises(ValueError, match=r"targets: expected class indices of shape"):
        softmax_cross_entropy(z, np.zeros((2, 3), int))  # one-hot is not accepted
    with pytest.raises(TypeError, match="targets: expected integer"):
        softmax_cross_entropy(z, np.zeros(2))
    with pytest.raises(ValueError, match=r"targets: expected class indices in \[0, 3\), got 3"):
        softmax_cross_entropy(z, np.array([0, 3]))
    with pytest.raises(ValueError, match=r"in \[0, 3\), got -1"):
        softmax_cross_entropy(z, np.array([-1, 0]))
    with pytest.raises(ValueError, match="mask: counts no position"):
        softmax_cross_entropy(z, np.array([0, 1]), mask=[False, False])
    with pytest.raises(ValueError, match="mask: counts no position"):
        softmax_cross_entropy(np.zeros((0, 3)), np.zeros(0, int))
    with pytest.raises(ValueError, match="mask: shape"):
        softmax_cross_entropy(z, np.array([0, 1]), mask=[True, False, True])
    with pytest.raises(TypeError, match="logits: expected a float32 or float64 array"):
        softmax_cross_entropy(np.zeros((2, 3), int), np.array([0, 1]))
    with pytest.raises(ValueError, match="logits: expected shape"):
        softmax_cross_entropy(np.zeros((2, 0)), np.array([0, 1]))
