"""The oracle checked on its own: finite differences, stability, step == forward."""

import numpy as np
import pytest

from helpers import make_problem
from lstm_ext import reference as ref


def loss(p):
    """L = Σ y⊙dy + Σ h_T⊙dh + Σ c_T⊙dc, whose gradients backward returns."""
    y, h, c, _ = ref.forward(p["x"], p["W"], p["R"], p["b"], p["h0"], p["c0"])
    return np.sum(y * p["dy"]) + np.sum(h * p["dh"]) + np.sum(c * p["dc"])


@pytest.mark.parametrize("shape", [(4, 2, 3, 5), (1, 1, 1, 1), (6, 3, 2, 2)])
def test_gradients_match_central_differences(rng, shape):
    p = make_problem(rng, *shape)
    _, _, _, cache = ref.forward(p["x"], p["W"], p["R"], p["b"], p["h0"], p["c0"])
    grads = dict(
        zip(
            ["x", "h0", "c0", "W", "R", "b"],
            ref.backward(cache, p["dy"], p["dh"], p["dc"]),
            strict=True,
        )
    )
    # Central differences: truncation error ~ eps²·|L'''| ~ 1e-12 and rounding
    # error ~ 1e-16·|L|/eps ~ 1e-10 for eps = 1e-6, so agreement to 1e-7
    # relative (to the largest gradient entry) leaves margin and still catches
    # any wrong term, which would be off by O(1).
    eps = 1e-6
    for name, g in grads.items():
        num = np.zeros_like(g)
        for k in np.ndindex(g.shape):
            orig = p[name][k]
            p[name][k] = orig + eps
            up = loss(p)
            p[name][k] = orig - eps
            down = loss(p)
            p[name][k] = orig
            num[k] = (up - down) / (2 * eps)
        scale = max(np.abs(num).max(initial=0), 1e-3)
        np.testing.assert_allclose(g, num, rtol=0, atol=1e-7 * scale, err_msg=name)


def test_sigmoid_is_stable_for_huge_inputs():
    z = np.array([-1e4, -800.0, -30.0, 0.0, 30.0, 800.0, 1e4])
    s = ref.sigmoid(z)  # no overflow warning: pytest turns warnings into errors
    assert np.all(np.isfinite(s))
    assert s[0] == 0.0 and s[-1] == 1.0 and s[3] == 0.5


def test_step_matches_forward(rng):
    p = make_problem(rng, 5, 3, 4, 6)
    y, h, c, _ = ref.forward(p["x"], p["W"], p["R"], p["b"], p["h0"], p["c0"])
    hs, cs = p["h0"], p["c0"]
    for t in range(5):
        hs, cs = ref.step(p["x"][t], hs, cs, p["W"], p["R"], p["b"])
        np.testing.assert_array_equal(hs, y[t])
    np.testing.assert_array_equal(hs, h)
    np.testing.assert_array_equal(cs, c)
