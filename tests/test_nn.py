"""lstm_ext.nn.LSTM: a drop-in for torch.nn.LSTM.

Checked three ways: against torch.nn.LSTM where torch is installed (every
output, final state, input, state and parameter gradient); by central finite
differences in float64 (independent of torch); and for its errors.

Tolerances against torch (|ours - theirs| <= rtol*|theirs| + atol*max(1,
max|theirs|), as in test_peers): float64 rtol 1e-10, atol 1e-12; float32
rtol 1e-4, atol 1e-5. Stacking feeds one layer's rounding into the next, but
each layer is contractive (|f| < 1), so errors stay those of test_peers'
single layers times the depth. Worst seen over the cases below and 5 seeds
(absolute; for parameter gradients relative to max(1, max|theirs|)):
float64 4e-16 on outputs and states, 8e-16 on parameter gradients; float32
4e-7 and 5e-7. The bounds leave margins of 100x and more.
"""

import json

import numpy as np
import pytest

from helpers import central_difference
from lstm_ext.nn import LSTM, from_config

TOL = {np.float64: (1e-10, 1e-12), np.float32: (1e-4, 1e-5)}


def close(name, ours, theirs, dtype):
    rtol, atol = TOL[dtype]
    atol *= max(1.0, np.abs(theirs).max(initial=0.0))
    np.testing.assert_allclose(ours, theirs, rtol=rtol, atol=atol, err_msg=name)


def inputs(rng, lstm, T, B, lengths=None):
    """x, state, dy, dstate for one call (x and dy batch_first if the LSTM is)."""
    L, D, H, O = lstm.num_layers, lstm.num_directions, lstm.hidden_size, lstm.output_size
    dt = lstm.dtype

    def r(*shape):
        return rng.standard_normal(shape).astype(dt)

    xshape = (B, T, lstm.input_size) if lstm.batch_first else (T, B, lstm.input_size)
    yshape = (B, T, D * O) if lstm.batch_first else (T, B, D * O)
    dy = r(*yshape)
    if lengths is not None:  # padded outputs are constant 0: their gradient is meaningless
        for b, n in enumerate(lengths):
            (dy[b, n:] if lstm.batch_first else dy[n:, b])[...] = 0
    return r(*xshape), (r(L * D, B, O), r(L * D, B, H)), dy, (r(L * D, B, O), r(L * D, B, H))


# ---- against torch.nn.LSTM ------------------------------------------------------


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch", reason="torch not installed: no torch.nn.LSTM check")


def run_torch(torch, lstm, x, state, dy, dstate, lengths):
    """torch.nn.LSTM with lstm's state_dict: outputs and every gradient, as NumPy."""
    t = torch.nn.LSTM(
        lstm.input_size, lstm.hidden_size, lstm.num_layers, lstm.bias, lstm.batch_first,
        0.0, lstm.bidirectional, lstm.proj_size, dtype=getattr(torch, lstm.dtype.name),
    )  # fmt: skip
    t.load_state_dict({k: torch.from_numpy(v) for k, v in lstm.state_dict().items()})
    xt = torch.from_numpy(x.copy()).requires_grad_()
    h0, c0 = (torch.from_numpy(s.copy()).requires_grad_() for s in state)
    if lengths is None:
        out, (hn, cn) = t(xt, (h0, c0))
    else:
        pack = torch.nn.utils.rnn
        packed = pack.pack_padded_sequence(
            xt, torch.tensor(lengths), batch_first=lstm.batch_first, enforce_sorted=False
        )
        out, (hn, cn) = t(packed, (h0, c0))
        T = x.shape[1] if lstm.batch_first else x.shape[0]
        out, _ = pack.pad_packed_sequence(out, batch_first=lstm.batch_first, total_length=T)
    dh, dc = (torch.from_numpy(s) for s in dstate)
    ((out * torch.from_numpy(dy)).sum() + (hn * dh).sum() + (cn * dc).sum()).backward()
    grads = {k: p.grad.numpy() for k, p in t.named_parameters()}
    n = lambda a: a.detach().numpy()  # noqa: E731
    return n(out), n(hn), n(cn), n(xt.grad), n(h0.grad), n(c0.grad), grads


TORCH_CASES = {  # (num_layers, bidirectional, proj_size, batch_first, ragged)
    "1-layer": (1, False, 0, False, False),
    "1-layer-bidirectional": (1, True, 0, False, False),
    "2-layer-bidirectional": (2, True, 0, False, False),
    "3-layer": (3, False, 0, True, False),
    "2-layer-proj": (2, False, 3, False, False),
    "2-layer-bidirectional-proj-batch_first": (2, True, 3, True, False),
    "1-layer-ragged": (1, False, 0, False, True),
    "3-layer-bidirectional-ragged": (3, True, 0, False, True),
    "2-layer-bidirectional-proj-ragged-batch_first": (2, True, 2, True, True),
}


# torch says so when its oneDNN path does not take projections; nothing to act on.
@pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", TORCH_CASES, ids=str)
def test_matches_torch(torch, rng, case, dtype):
    layers, bidi, proj, bf, ragged = TORCH_CASES[case]
    T, B = 7, 5
    lstm = LSTM(4, 6, layers, batch_first=bf, bidirectional=bidi, proj_size=proj,
                dtype=dtype, seed=1)  # fmt: skip
    lengths = [7, 3, 1, 7, 5] if ragged else None  # torch refuses length 0
    x, state, dy, dstate = inputs(rng, lstm, T, B, lengths)
    out, (hn, cn) = lstm(x, state, lengths)
    dx, (dh0, dc0) = lstm.backward(dy, dstate)
    want = run_torch(torch, lstm, x, state, dy, dstate, lengths)
    for name, a, b in zip(["out", "h_n", "c_n", "dx", "dh0", "dc0"],
                          [out, hn, cn, dx, dh0, dc0], want[:6], strict=True):  # fmt: skip
        assert a.dtype == dtype, name
        close(name, a, b, dtype)
    assert set(lstm.grads) == set(want[6])
    for name, g in want[6].items():
        close(name, lstm.grads[name], g, dtype)


@pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")
def test_unbatched_input_matches_torch(torch, rng):
    lstm = LSTM(3, 4, 2, bidirectional=True, dtype=np.float64, seed=2)
    x, state, dy, dstate = inputs(rng, lstm, 6, 1)
    x, dy = x[:, 0], dy[:, 0]
    state = tuple(s[:, 0] for s in state)
    dstate = tuple(s[:, 0] for s in dstate)
    out, (hn, cn) = lstm(x, state)
    assert out.shape == (6, 8) and hn.shape == (4, 4)
    dx, (dh0, dc0) = lstm.backward(dy, dstate)
    want = run_torch(torch, lstm, x, state, dy, dstate, None)
    for name, a, b in zip(["out", "h_n", "c_n", "dx", "dh0", "dc0"],
                          [out, hn, cn, dx, dh0, dc0], want[:6], strict=True):  # fmt: skip
        close(name, a, b, np.float64)
    for name, g in want[6].items():
        close(name, lstm.grads[name], g, np.float64)


def test_dropout_one_zeroes_between_layers(rng):
    lstm = LSTM(3, 4, 2, dropout=1.0, dtype=np.float64, seed=0)
    x = rng.standard_normal((5, 2, 3))
    lstm(x)  # layer 1 sees zeros: its output is a function of its weights alone
    lstm.backward(np.ones((5, 2, 4)))
    assert not lstm.grads["weight_ih_l1"].any()


@pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")
def test_state_dict_moves_both_ways(torch):
    t = torch.nn.LSTM(3, 5, 2, bidirectional=True, proj_size=2)
    ours = LSTM(3, 5, 2, bidirectional=True, proj_size=2)
    ours.load_state_dict({k: v.numpy() for k, v in t.state_dict().items()})
    assert list(ours.state_dict()) == list(t.state_dict())
    t2 = torch.nn.LSTM(3, 5, 2, bidirectional=True, proj_size=2)
    t2.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()})
    for k, v in t.state_dict().items():
        np.testing.assert_array_equal(t2.state_dict()[k].numpy(), v.numpy())


def test_initialisation_matches_torch_distribution(torch):
    t = torch.nn.LSTM(7, 9, 2, bidirectional=True)
    ours = LSTM(7, 9, 2, bidirectional=True, seed=0)
    k = 1 / np.sqrt(9)
    for name, v in t.state_dict().items():
        p = ours.params[name]
        assert p.shape == tuple(v.shape) and p.dtype == np.float32
        assert np.abs(p).max() <= k and np.abs(p).max() > 0.8 * k


# ---- without torch ------------------------------------------------------------------


def loss_of(lstm, x, state, dy, dstate, lengths):
    out, (hn, cn) = lstm(x, state, lengths)
    return np.sum(out * dy) + np.sum(hn * dstate[0]) + np.sum(cn * dstate[1])


@pytest.mark.parametrize("dropout", [0.0, 0.5])
def test_gradients_match_central_differences(rng, dropout):
    """Every parameter, x and the state, by central differences in float64;
    with dropout, each evaluation redraws the same masks from the same seed."""
    lstm = LSTM(3, 4, 2, bidirectional=True, proj_size=2, dropout=dropout, dtype=np.float64)
    lengths = [5, 2, 0]
    x, state, dy, dstate = inputs(rng, lstm, 5, 3, lengths)

    def loss():
        lstm._rng = np.random.default_rng(7)
        return loss_of(lstm, x, state, dy, dstate, lengths)

    loss()
    lstm.zero_grad()
    dx, (dh0, dc0) = lstm.backward(dy, dstate)
    grads = dict(lstm.grads, x=dx, h0=dh0, c0=dc0)
    arrays = dict(lstm.params, x=x, h0=state[0], c0=state[1])
    for name, g in grads.items():  # 12 entries of each, at random
        a = arrays[name]
        for f in rng.choice(a.size, size=min(a.size, 12), replace=False):
            k = np.unravel_index(f, a.shape)
            num = central_difference(loss, a, k)  # error ~1e-10: 1e-7 leaves margin
            assert abs(g[k] - num) <= 1e-7 * max(1.0, abs(num)), (name, k, g[k], num)


def test_backward_of_a_loss_on_the_state_alone(rng):
    # dy=None is zeros, as lstm_ext.backward takes it (had been "dy: expected
    # the shape of out, (5, 2, 4), got ()")
    lstm = LSTM(3, 4, 2, bidirectional=True, dtype=np.float64, seed=0)
    x = rng.standard_normal((5, 2, 3))
    state = (rng.standard_normal((4, 2, 4)), rng.standard_normal((4, 2, 4)))
    dh = rng.standard_normal((4, 2, 4))
    grads = []
    for dy in (None, np.zeros((5, 2, 8))):
        lstm.zero_grad()
        lstm(x, state)
        dx, (dh0, dc0) = lstm.backward(dy, (dh, None))
        grads.append([dx, dh0, dc0, *(g.copy() for g in lstm.grads.values())])
    for a, b in zip(*grads, strict=True):
        np.testing.assert_array_equal(a, b)
    assert np.abs(grads[0][0]).max() > 0


def test_dropout_with_one_layer_warns_as_torch():
    with pytest.warns(UserWarning, match=r"dropout=0.5 with num_layers=1 does nothing"):
        lstm = LSTM(3, 4, dropout=0.5)
    from_config(lstm.config())  # a checkpoint's model: no warning (errors under pytest)


def test_shapes_and_modes(rng):
    lstm = LSTM(3, 5, 2, bidirectional=True, proj_size=2, batch_first=True, dropout=0.3, seed=4)
    x = rng.standard_normal((4, 6, 3)).astype(np.float32)
    out, (hn, cn) = lstm(x)
    assert out.shape == (4, 6, 4) and hn.shape == (4, 4, 2) and cn.shape == (4, 4, 5)
    dx = lstm.backward(np.ones_like(out))  # no state given: dx alone
    assert isinstance(dx, np.ndarray) and dx.shape == x.shape
    # eval: no dropout, deterministic, no cache unless asked for
    lstm.eval()
    a, _ = lstm(x)
    b, _ = lstm(x)
    np.testing.assert_array_equal(a, b)
    with pytest.raises(RuntimeError, match="keep_cache=True"):
        lstm.backward(np.ones_like(a))
    c, _ = lstm(x, keep_cache=True)
    np.testing.assert_array_equal(a, c)
    lstm.backward(np.ones_like(c))
    # dropout only in training mode, and seeded
    no_drop = LSTM(3, 5, 2, bidirectional=True, proj_size=2, batch_first=True, seed=4).eval()
    np.testing.assert_array_equal(no_drop(x)[0], a)
    t1 = LSTM(3, 5, 2, dropout=0.5, seed=9)(x.swapaxes(0, 1))[0]
    t2 = LSTM(3, 5, 2, dropout=0.5, seed=9)(x.swapaxes(0, 1))[0]
    np.testing.assert_array_equal(t1, t2)


def test_grads_accumulate_until_zero_grad(rng):
    lstm = LSTM(2, 3, dtype=np.float64, seed=0)
    x = rng.standard_normal((4, 2, 2))
    out, _ = lstm(x)
    lstm.backward(np.ones_like(out))
    once = {k: g.copy() for k, g in lstm.grads.items()}
    lstm.backward(np.ones_like(out))
    for k, g in lstm.grads.items():
        np.testing.assert_allclose(g, 2 * once[k], rtol=1e-15)
    lstm.zero_grad()
    assert all(not g.any() for g in lstm.grads.values())


def test_load_state_dict_errors():
    lstm = LSTM(3, 4, bidirectional=True)
    good = lstm.state_dict()
    bad = dict(good)
    del bad["weight_hh_l0_reverse"]
    bad["weight_hh_l1"] = np.zeros((16, 4))
    bad["bias_ih_l0"] = np.zeros(15)
    with pytest.raises(ValueError) as e:
        lstm.load_state_dict(bad)
    msg = str(e.value)
    assert "missing keys ['weight_hh_l0_reverse']" in msg
    assert "unexpected keys ['weight_hh_l1']" in msg
    assert "bias_ih_l0: expected shape (16,), got (15,)" in msg
    lstm.load_state_dict({k: v.astype(np.float64) for k, v in good.items()})
    assert lstm.params["weight_ih_l0"].dtype == np.float32


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (
            dict(input_size=3, hidden_size=0),
            ValueError,
            r"hidden_size: expected an integer in \[1,",
        ),
        (dict(input_size=3, hidden_size=4, num_layers=0), ValueError, "num_layers"),
        (
            dict(input_size=3, hidden_size=4, proj_size=4),
            ValueError,
            "proj_size: expected < hidden_size",
        ),
        (dict(input_size=3, hidden_size=4, dropout=1.5), ValueError, "dropout"),
        (dict(input_size=3, hidden_size=4, dtype=np.int32), TypeError, "dtype"),
        (dict(input_size=3.5, hidden_size=4), ValueError, "input_size"),
        # Bounded as the model file is: an unbounded num_layers built layers
        # until memory ran out, a huge hidden_size failed in NumPy unnamed.
        (
            dict(input_size=1, hidden_size=1, num_layers=2**40),
            ValueError,
            r"num_layers: expected an integer in \[1, 1024\], got 1099511627776",
        ),
        (
            dict(input_size=1, hidden_size=2**61),
            ValueError,
            r"hidden_size: expected an integer in \[1, 1048576\]",
        ),
        (dict(input_size=3, hidden_size=4, dropout="a"), ValueError, "dropout: expected"),
        (dict(input_size=3, hidden_size=4, dropout=True), ValueError, "dropout: expected"),
        (
            dict(input_size=3, hidden_size=4, num_layers=0),
            ValueError,
            r"num_layers: expected an integer in \[1, 1024\], got 0",
        ),
        (
            dict(input_size=np.int8(-3), hidden_size=4),
            ValueError,
            r"input_size: expected an integer in \[1, 1048576\], got -3",
        ),
        (dict(input_size=np.bool_(True), hidden_size=4), ValueError, "input_size"),
    ],
)
def test_constructor_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        LSTM(**kwargs)


def test_numpy_integer_sizes_are_ints():
    """np.uint8 sizes had wrapped 4*H around (weight_ih_l0 (144, 3) for
    H = 100), np.int64 ones made config() fail to save as JSON."""
    lstm = LSTM(np.uint8(3), np.uint8(100), np.int64(2), proj_size=np.int16(7))
    assert lstm.params["weight_ih_l0"].shape == (400, 3)
    assert lstm.params["weight_hh_l1"].shape == (400, 7)
    cfg = lstm.config()
    assert all(
        type(cfg[k]) is int for k in ("input_size", "hidden_size", "num_layers", "proj_size")
    )
    json.dumps(cfg)


def test_big_endian_arrays_are_float32_too(rng):
    """x, the state and dy in either byte order, in LSTM and Linear (each had
    been refused as '>f4', not float32)."""
    from lstm_ext.nn import Linear

    lstm, linear = LSTM(3, 4), Linear(4, 2)
    x = rng.standard_normal((5, 2, 3)).astype(np.float32)
    s = (np.zeros((1, 2, 4), np.float32), np.ones((1, 2, 4), np.float32))
    out, _ = lstm(x, s)
    np.testing.assert_array_equal(lstm(x.astype(">f4"), [a.astype(">f4") for a in s])[0], out)
    dx, _ = lstm.backward(out)  # (dx, dstate): the call had a state
    np.testing.assert_array_equal(lstm.backward(out.astype(">f4"))[0], dx)
    np.testing.assert_array_equal(linear(out.astype(">f4")), linear(out))


def test_state_and_dstate_must_be_pairs():
    lstm = LSTM(3, 4)
    x = np.zeros((5, 2, 3), np.float32)
    s = np.zeros((1, 2, 4), np.float32)
    with pytest.raises(ValueError, match=r"state: expected a pair \(h, c\), got tuple of 3"):
        lstm(x, (s, s, s))
    with pytest.raises(ValueError, match=r"state: expected a pair \(h, c\), got int"):
        lstm(x, 3)
    with pytest.raises(ValueError, match=r"state: expected a pair \(h, c\), got ndarray"):
        lstm(x, np.array(0.0))  # 0-d: len() raises
    lstm(x)
    with pytest.raises(ValueError, match=r"dstate: expected a pair \(h, c\), got list of 1"):
        lstm.backward(np.zeros((5, 2, 4), np.float32), [s])


def test_a_state_without_its_pair_is_named_as_such():
    # With L*D = 2, h0 [2,B,H] alone had unpacked along its first axis as h
    # and c, and the message said "expected shape (2, 2, 4), got (2, 4)" of
    # what was passed as (2, 2, 4).
    lstm = LSTM(3, 4, num_layers=2)
    x = np.zeros((5, 2, 3), np.float32)
    h0 = np.zeros((2, 2, 4), np.float32)
    with pytest.raises(
        ValueError, match=r"^state: expected a pair \(h, c\), got ndarray of shape \(2, 2, 4\)$"
    ):
        lstm(x, h0)
    lstm(x, [h0, h0])  # a list of two is a pair
    with pytest.raises(
        ValueError, match=r"^dstate: expected a pair \(h, c\), got ndarray of shape"
    ):
        lstm.backward(np.zeros((5, 2, 4), np.float32), h0)


def test_dstate_of_another_dtype_is_named():
    lstm = LSTM(3, 4)
    lstm(np.zeros((5, 2, 3), np.float32))
    d = np.zeros((1, 2, 4))
    with pytest.raises(TypeError, match=r"^dstate\[0\]: expected dtype float32, got float64$"):
        lstm.backward(np.zeros((5, 2, 4), np.float32), (d, None))  # had said "dh: ..."
    with pytest.raises(TypeError, match=r"^dstate\[1\]: expected dtype float32, got float64$"):
        lstm.backward(np.zeros((5, 2, 4), np.float32), (None, d))


def test_inference_weight_dtype_is_checked_when_set():
    import pickle

    lstm = LSTM(3, 4)
    with pytest.raises(
        ValueError, match=r"inference_weight_dtype: expected None or 'bfloat16', got 'bf16'"
    ):
        lstm.inference_weight_dtype = "bf16"  # had failed only at the next call, as weight_dtype
    assert lstm.inference_weight_dtype is None
    with pytest.raises(TypeError, match=r"expected None or 'bfloat16', got 1"):
        lstm.inference_weight_dtype = 1
    with pytest.raises(
        TypeError, match=r"'bfloat16' is for a float32 LSTM on the CPU, this one is float64"
    ):
        LSTM(3, 4, dtype=np.float64).inference_weight_dtype = "bfloat16"
    lstm.inference_weight_dtype = "bfloat16"
    assert pickle.loads(pickle.dumps(lstm)).inference_weight_dtype == "bfloat16"
    # a pickle from before it was a property: the attribute in the instance dict
    state = lstm.__getstate__()
    state["inference_weight_dtype"] = state.pop("_inference_weight_dtype")
    old = LSTM.__new__(LSTM)
    old.__setstate__(state)
    assert old.inference_weight_dtype == "bfloat16"


@pytest.mark.parametrize("flag", ["bias", "batch_first", "bidirectional"])
def test_flags_of_the_constructors_are_bools(flag):
    # "no" is truthy: bidirectional="no" had built a bidirectional LSTM.
    with pytest.raises(TypeError, match=f"^{flag}: expected a bool, got str$"):
        LSTM(3, 4, **{flag: "no"})
    with pytest.raises(TypeError, match=f"^{flag}: expected a bool, got 2$"):
        LSTM(3, 4, **{flag: 2})
    assert getattr(LSTM(3, 4, **{flag: None}), flag) is False  # as earlier versions stored it
    assert getattr(LSTM(3, 4, **{flag: np.bool_(True)}), flag) is True
    assert getattr(LSTM(3, 4, **{flag: 0}), flag) is False


def test_keep_cache_and_linear_bias_are_bools():
    from lstm_ext.nn import Embedding, Linear

    with pytest.raises(TypeError, match=r"^bias: expected a bool, got str$"):
        Linear(3, 4, bias="no")
    x = np.zeros((5, 2, 3), np.float32)
    for m, inp in ((LSTM(3, 4), x), (Linear(3, 4), x), (Embedding(4, 3), np.zeros((2, 2), int))):
        with pytest.raises(TypeError, match=r"^keep_cache: expected a bool, got str$"):
            m(inp, keep_cache="yes")
    with pytest.raises(TypeError, match=r"^keep_cache: expected a bool, got str$"):
        LSTM(3, 4).packed()(x, keep_cache="no")  # had been "keep_cache: ... got True"


def test_embedding_backward_dtype_is_a_type_error_as_linear_s():
    from lstm_ext.nn import Embedding

    e = Embedding(4, 3)
    e(np.zeros((2, 2), int))
    with pytest.raises(
        TypeError, match=r"^dy: expected dtype float32 \(the Embedding's\), got float64$"
    ):
        e.backward(np.zeros((2, 2, 3)))
    with pytest.raises(
        ValueError, match=r"^dy: expected the shape of forward's output, \(2, 2, 3\)"
    ):
        e.backward(np.zeros((2, 3), np.float32))


def test_load_state_dict_takes_real_numbers_only():
    """Strings would fail late, None had loaded as NaN and complex values
    silently lost their imaginary part."""
    lstm = LSTM(3, 4)
    good = lstm.state_dict()
    for bad in (np.full((16, 3), None), np.full((16, 3), "a"), np.zeros((16, 3), complex)):
        with pytest.raises(ValueError, match=r"weight_ih_l0: expected real numbers, got dtype"):
            lstm.load_state_dict({**good, "weight_ih_l0": bad})
    lstm.load_state_dict({**good, "weight_ih_l0": np.ones((16, 3), np.int32)})  # cast
    assert lstm.params["weight_ih_l0"].dtype == np.float32


def test_call_errors(rng):
    lstm = LSTM(3, 4, 2)
    x = np.zeros((5, 2, 3), np.float32)
    with pytest.raises(RuntimeError, match="no forward call"):
        lstm.backward(np.zeros((5, 2, 4), np.float32))
    with pytest.raises(TypeError, match="x: expected dtype float32"):
        lstm(x.astype(np.float64))
    with pytest.raises(ValueError, match="x: expected 3 input features"):
        lstm(np.zeros((5, 2, 4), np.float32))
    with pytest.raises(ValueError, match=r"x: expected 3 dimensions \[T,B,I\]"):
        lstm(np.zeros(5, np.float32))
    with pytest.raises(TypeError, match=r"state\[1\] \(c0\): expected dtype float32"):
        lstm(x, (np.zeros((2, 2, 4), np.float32), np.zeros((2, 2, 4), np.float64)))
    with pytest.raises(ValueError, match=r"state\[0\] \(h0\): expected shape \(2, 2, 4\), got"):
        lstm(x, (np.zeros((1, 2, 4), np.float32), np.zeros((2, 2, 4), np.float32)))
    lstm(x)
    with pytest.raises(ValueError, match=r"dy: expected the shape of out, \(5, 2, 4\)"):
        lstm.backward(np.zeros((5, 2, 3), np.float32))
    with pytest.raises(ValueError, match=r"lengths\[1\] = 6"):
        lstm(x, lengths=[5, 6])
