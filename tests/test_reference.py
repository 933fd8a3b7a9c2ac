"""The oracle checked on its own: finite differences, stability, step == forward,
and each feature (reverse, lengths, projection, peephole, clip, input_forget)
against a statement of it that does not use the feature's own code path.
"""

import numpy as np
import pytest

from helpers import make_problem
from lstm_ext import reference as ref

ARGS = ["x", "W", "R", "b", "h0", "c0"]  # forward's positional arguments
GRADS = ["x", "h0", "c0", "W", "R", "b", "W_hr", "peephole"]  # backward's results, in order


def problem(rng, T=4, B=3, I=3, H=3, P=None, peephole=False, batch_first=False):
    """make_problem's float64 arrays, plus W_hr [P,H] (h-sized arrays resized to
    P) when P is given, plus peephole [3H], and x, dy as [B,T,*] if batch_first."""
    p = make_problem(rng, T, B, I, H)
    if P is not None:
        p["R"] = rng.standard_normal((4 * H, P)) / P**0.5  # as make_problem's, fan-in P
        p["W_hr"] = rng.standard_normal((P, H)) / H**0.5
        p["h0"] = 0.5 * rng.standard_normal((B, P))
        p["dy"] = rng.standard_normal((T, B, P))
        p["dh"] = rng.standard_normal((B, P))
    if peephole:
        p["peephole"] = 0.5 * rng.standard_normal(3 * H)
    if batch_first:
        p["x"], p["dy"] = p["x"].swapaxes(0, 1).copy(), p["dy"].swapaxes(0, 1).copy()
    return p


def run(p, **kw):
    """ref.forward on the problem's arrays, W_hr and peephole included when present."""
    extra = {k: p[k] for k in ("W_hr", "peephole") if k in p}
    return ref.forward(*(p[k] for k in ARGS), **extra, **kw)


def run_backward(p, **kw):
    """{name: gradient} from ref.forward then ref.backward; absent ones left out."""
    cache = run(p, **kw)[3]
    grads = ref.backward(cache, p["dy"], p["dh"], p["dc"])
    assert len(grads) == (8 if "W_hr" in p or "peephole" in p else 6)
    named = dict(zip(GRADS, grads, strict=False))
    for k in ("W_hr", "peephole"):
        assert (named.get(k) is None) == (k not in p), k
    return {k: g for k, g in named.items() if g is not None}


def loss(p, **kw):
    """L = Σ y⊙dy + Σ h_T⊙dh + Σ c_T⊙dc, whose gradients backward returns."""
    y, h, c, _ = run(p, training=False, **kw)
    return np.sum(y * p["dy"]) + np.sum(h * p["dh"]) + np.sum(c * p["dc"])


def pre_activations(p, **kw):
    """Every step's gate pre-activations before clipping, [T·B·4H] (from the cache)."""
    steps = run(p, **kw)[3]["steps"]
    return np.concatenate([np.concatenate(s["z"], axis=1).ravel() for s in steps])


def pick_clip(p, kw, margin=1e-4):
    """A clip that cuts 10–90 % of the pre-activations of the clipped run, with
    none of them within `margin` of ±clip: far more than the eps = 1e-6 steps of
    the finite differences move a pre-activation, so no difference straddles a kink."""
    for clip in np.linspace(0.5, 1.5, 21):
        z = np.abs(pre_activations(p, clip=clip, **kw))
        clipped = np.mean(z > clip)
        if 0.1 <= clipped <= 0.9 and np.min(np.abs(z - clip)) > margin:
            return clip
    pytest.fail("no clip in [0.5, 1.5] cuts 10-90 % of the pre-activations with a margin")


def assert_gradients_match_central_differences(p, **kw):
    grads = run_backward(p, **kw)
    # Central differences: truncation error ~ eps²·|L'''| ~ 1e-12 and rounding
    # error ~ 1e-16·|L|/eps ~ 1e-10 for eps = 1e-6, so agreement to 1e-7
    # relative (to the largest gradient entry) leaves margin and still catches
    # any wrong term, which would be off by O(1).
    eps = 1e-6
    for name, g in grads.items():
        assert g.shape == p[name].shape, name
        num = np.zeros_like(g)
        for k in np.ndindex(g.shape):
            orig = p[name][k]
            p[name][k] = orig + eps
            up = loss(p, **kw)
            p[name][k] = orig - eps
            down = loss(p, **kw)
            p[name][k] = orig
            num[k] = (up - down) / (2 * eps)
        scale = max(np.abs(num).max(initial=0), 1e-3)
        np.testing.assert_allclose(g, num, rtol=0, atol=1e-7 * scale, err_msg=name)


@pytest.mark.parametrize("shape", [(4, 2, 3, 5), (1, 1, 1, 1), (6, 3, 2, 2)])
def test_gradients_match_central_differences(rng, shape):
    assert_gradients_match_central_differences(make_problem(rng, *shape))


# (problem options, forward options); clip="pick" asks pick_clip for a value.
# B = 3 and lengths [2, 0, 4] give a short, an empty and a full sequence (T = 4).
FEATURES = {
    "reverse": ({}, dict(reverse=True)),
    "lengths": ({}, dict(lengths=[2, 0, 4])),
    "lengths-reverse": ({}, dict(lengths=[2, 0, 4], reverse=True)),
    "projection": (dict(P=2), {}),
    "projection-wide": (dict(H=2, P=3), {}),
    "peephole": (dict(peephole=True), {}),
    "clip": ({}, dict(clip="pick")),
    "input_forget": ({}, dict(input_forget=True)),
    "input_forget-peephole": (dict(peephole=True), dict(input_forget=True)),
    "projection-peephole": (dict(P=2, peephole=True), {}),
    "batch_first": (dict(batch_first=True), dict(batch_first=True)),
    "all-but-input_forget": (
        dict(P=2, peephole=True, batch_first=True),
        dict(reverse=True, lengths=[2, 0, 4], clip="pick", batch_first=True),
    ),
    "all": (
        dict(P=2, peephole=True, batch_first=True),
        dict(reverse=True, lengths=[3, 0, 4], clip="pick", input_forget=True, batch_first=True),
    ),
}


@pytest.mark.parametrize("feature", FEATURES)
def test_feature_gradients_match_central_differences(rng, feature):
    options, kw = FEATURES[feature]
    p = problem(rng, **options)
    if kw.get("clip") == "pick":
        kw = {k: v for k, v in kw.items() if k != "clip"}
        kw["clip"] = pick_clip(p, kw)
    assert_gradients_match_central_differences(p, **kw)


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


OPTIONS = dict(clip=0.8, input_forget=True)  # step's options beside W_hr and peephole


@pytest.mark.parametrize("batch_first", [False, True])
def test_cell_states_match_step_by_step(rng, batch_first):
    p = problem(rng, T=5, P=2, peephole=True)
    extra = dict(W_hr=p["W_hr"], peephole=p["peephole"], **OPTIONS)
    x = p["x"].swapaxes(0, 1) if batch_first else p["x"]
    y, h, c, _, cells = run(
        dict(p, x=x), batch_first=batch_first, return_cell_states=True, **OPTIONS
    )
    if batch_first:
        y, cells = y.swapaxes(0, 1), cells.swapaxes(0, 1)
    assert cells.shape == (5, 3, 3)
    hs, cs = p["h0"], p["c0"]
    for t in range(5):
        hs, cs = ref.step(p["x"][t], hs, cs, p["W"], p["R"], p["b"], **extra)
        np.testing.assert_array_equal(hs, y[t])
        np.testing.assert_array_equal(cs, cells[t])
    np.testing.assert_array_equal(hs, h)
    np.testing.assert_array_equal(cs, c)


def test_step_with_options_matches_forward_of_one_step(rng):
    p = problem(rng, T=1, P=2, peephole=True)
    extra = dict(W_hr=p["W_hr"], peephole=p["peephole"], **OPTIONS)
    y, h, c, _ = run(p, **OPTIONS)
    hs, cs = ref.step(p["x"][0], p["h0"], p["c0"], p["W"], p["R"], p["b"], **extra)
    assert hs.shape == (3, 2) and cs.shape == (3, 3)
    np.testing.assert_array_equal(hs, y[0])
    np.testing.assert_array_equal(hs, h)
    np.testing.assert_array_equal(cs, c)


@pytest.mark.parametrize("reverse", [False, True])
def test_full_lengths_equal_no_lengths_bit_for_bit(rng, reverse):
    p = problem(rng, P=2, peephole=True)
    full = run(p, reverse=reverse, lengths=[4, 4, 4], return_cell_states=True)
    none = run(p, reverse=reverse, return_cell_states=True)
    for name, a, b in zip(
        ["y", "h", "c", "cells"], full[:3] + full[4:], none[:3] + none[4:], strict=True
    ):
        np.testing.assert_array_equal(a, b, err_msg=name)
    g_full = ref.backward(full[3], p["dy"], p["dh"], p["dc"])
    g_none = ref.backward(none[3], p["dy"], p["dh"], p["dc"])
    for name, a, b in zip(GRADS, g_full, g_none, strict=True):
        np.testing.assert_array_equal(a, b, err_msg=name)


@pytest.mark.parametrize("reverse", [False, True])
def test_zero_length_passes_state_through(rng, reverse):
    p = problem(rng, P=2, peephole=True)
    y, h, c, cache, cells = run(p, reverse=reverse, lengths=[3, 0, 4], return_cell_states=True)
    np.testing.assert_array_equal(y[:, 1], 0)
    np.testing.assert_array_equal(cells[:, 1], 0)
    np.testing.assert_array_equal(h[1], p["h0"][1])
    np.testing.assert_array_equal(c[1], p["c0"][1])
    dx, dh0, dc0, *_ = ref.backward(cache, p["dy"], p["dh"], p["dc"])
    np.testing.assert_array_equal(dx[:, 1], 0)
    np.testing.assert_array_equal(dh0[1], p["dh"][1])
    np.testing.assert_array_equal(dc0[1], p["dc"][1])


@pytest.mark.parametrize("reverse", [False, True])
def test_lengths_equal_each_sequence_run_alone(rng, reverse):
    """A batch with lengths == each sequence cut to its length and run alone
    (flipped in time for reverse), zeros past the length, weight gradients summed."""
    lengths = [2, 0, 4, 1]
    p = problem(rng, B=4, P=2, peephole=True)
    kw = dict(clip=0.8, return_cell_states=True)
    y, h, c, cache, cells = run(p, reverse=reverse, lengths=lengths, **kw)
    grads = dict(zip(GRADS, ref.backward(cache, p["dy"], p["dh"], p["dc"]), strict=True))
    summed = {k: np.zeros_like(p[k]) for k in ["W", "R", "b", "W_hr", "peephole"]}
    for b, n in enumerate(lengths):
        t = np.arange(n)[::-1] if reverse else np.arange(n)  # its valid steps, in order of use
        one = slice(b, b + 1)
        alone = dict(p, x=p["x"][t, one], h0=p["h0"][one], c0=p["c0"][one])
        alone.update(dy=p["dy"][t, one], dh=p["dh"][one], dc=p["dc"][one])
        ya, ha, ca, cache_a, cells_a = run(alone, **kw)
        ga = dict(
            zip(GRADS, ref.backward(cache_a, alone["dy"], alone["dh"], alone["dc"]), strict=True)
        )
        pairs = [("y", y[t, b], ya[:, 0]), ("cells", cells[t, b], cells_a[:, 0])]
        pairs += [("h", h[b], ha[0]), ("c", c[b], ca[0]), ("dx", grads["x"][t, b], ga["x"][:, 0])]
        pairs += [(k, grads[k][b], ga[k][0]) for k in ["h0", "c0"]]
        for name, whole, single in pairs:
            np.testing.assert_allclose(whole, single, rtol=1e-12, atol=1e-15, err_msg=name)
        for name, past_end in [("y", y), ("cells", cells), ("dx", grads["x"])]:
            np.testing.assert_array_equal(past_end[n:, b], 0, err_msg=name)
        for name in summed:
            summed[name] += ga[name]
    for name, total in summed.items():
        np.testing.assert_allclose(grads[name], total, rtol=1e-12, atol=1e-14, err_msg=name)


def test_reverse_equals_forward_on_flipped_input(rng):
    p = problem(rng, P=2, peephole=True)
    y, h, c, cache = run(p, reverse=True, clip=0.8)
    flipped = dict(p, x=p["x"][::-1].copy(), dy=p["dy"][::-1].copy())
    yf, hf, cf, cache_f = run(flipped, clip=0.8)
    np.testing.assert_array_equal(y, yf[::-1])
    np.testing.assert_array_equal(h, hf)
    np.testing.assert_array_equal(c, cf)
    g = ref.backward(cache, p["dy"], p["dh"], p["dc"])
    gf = ref.backward(cache_f, flipped["dy"], p["dh"], p["dc"])
    np.testing.assert_array_equal(g[0], gf[0][::-1])
    for name, a, b in zip(GRADS[1:], g[1:], gf[1:], strict=True):
        np.testing.assert_array_equal(a, b, err_msg=name)
