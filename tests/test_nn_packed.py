"""nn.LSTM.packed() and nn.Sequential.packed(): frozen for inference, the
weights packed once (lstm_ext.PackedLayer per layer and direction).

The promise is bits, not a tolerance: every output and final state equal to
the source module's in eval mode at the time of packing, for every layout and
option nn.LSTM takes (PackedLayer gives forward's bits, test_packed_layer).
"""

import numpy as np
import pytest

from helpers import run_in_threads
from lstm_ext import nn, train
from lstm_ext.data import Vocab

CASES = [
    dict(),
    dict(num_layers=2, bidirectional=True),
    dict(proj_size=5, num_layers=2),
    dict(batch_first=True, num_layers=3, dropout=0.5),  # no dropout in eval mode
    dict(bias=False, bidirectional=True),
]


def calls(rng, lstm, T=6, B=4):
    """Arguments of forward calls: plain, with a state, ragged, one sequence."""
    L = lstm.num_layers * lstm.num_directions
    dt = lstm.dtype
    x = rng.standard_normal((B, T, 7) if lstm.batch_first else (T, B, 7)).astype(dt)
    state = (rng.standard_normal((L, B, lstm.output_size)).astype(dt),
             rng.standard_normal((L, B, lstm.hidden_size)).astype(dt))  # fmt: skip
    one = rng.standard_normal((T, 7)).astype(dt)
    one_state = tuple(s[:, 0] for s in state)
    return [(x,), (x, state), (x, state, np.array([T, 2, 0, 5])), (one,), (one, one_state)]


def assert_same(got, want):
    (y, (h, c)), (y0, (h0, c0)) = got, want
    for name, a, b in (("out", y, y0), ("h_n", h, h0), ("c_n", c, c0)):
        assert a.dtype == b.dtype and a.shape == b.shape, name
        np.testing.assert_array_equal(a, b, err_msg=name)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kw", CASES)
def test_same_bits_as_eval_forward(rng, dtype, kw):
    lstm = nn.LSTM(7, 9, dtype=dtype, seed=3, **kw)
    packed = lstm.packed()
    lstm.eval()
    for args in calls(rng, lstm):
        assert_same(packed(*args), lstm(*args))
    assert packed.nbytes >= sum(p.nbytes for p in lstm.params.values())


def test_memory_about_twice_the_weights():
    # Copies and panels (none on a CPU without the packed kernel); panels pad
    # H to whole blocks (32 units in float32): at H = 64 none.
    lstm = nn.LSTM(64, 64, num_layers=2, seed=1)
    params = sum(p.nbytes for p in lstm.params.values())
    assert params <= lstm.packed().nbytes <= 2.1 * params


def test_same_bits_with_bfloat16_weights(rng):
    lstm = nn.LSTM(7, 9, num_layers=2, seed=1)
    lstm.inference_weight_dtype = "bfloat16"
    packed = lstm.packed()
    lstm.eval()
    for args in calls(rng, lstm):
        assert_same(packed(*args), lstm(*args))


def test_a_snapshot_of_the_weights(rng):
    lstm = nn.LSTM(7, 9, seed=2).eval()
    args = calls(rng, lstm)[1]
    packed = lstm.packed()
    before = lstm(*args)
    for p in lstm.params.values():
        p *= 0.5  # as an optimiser step would, in place
    assert_same(packed(*args), before)  # not reached by the change
    assert not np.array_equal(lstm(*args)[0], before[0])
    assert_same(lstm.packed()(*args), lstm(*args))  # packed again: the new weights
    for p in packed.params.values():
        with pytest.raises(ValueError, match="read-only"):
            p[0] = 1.0
        with pytest.raises(ValueError, match="WRITEABLE"):
            p.flags.writeable = True  # a view of a read-only array stays one


def test_threads_share_one(rng):
    lstm = nn.LSTM(7, 9, num_layers=2, bidirectional=True, seed=4).eval()
    packed = lstm.packed()
    every = calls(rng, lstm)
    want = [lstm(*args) for args in every]
    for _ in range(3):
        got = run_in_threads([lambda a=args: packed(*a) for args in every])
        for g, w in zip(got, want, strict=True):
            assert_same(g, w)


def test_inference_only(rng):
    lstm = nn.LSTM(7, 9, seed=5)
    packed = lstm.packed()
    assert not packed.training and packed.packed() is packed
    assert packed.config() == lstm.config()  # saved, it loads back as an LSTM
    assert packed.state_dict().keys() == lstm.state_dict().keys()
    x = calls(rng, lstm)[0][0]
    with pytest.raises(RuntimeError, match=r"PackedLSTM\.backward: .* for inference"):
        packed.backward(np.zeros_like(packed(x)[0]))
    with pytest.raises(RuntimeError, match=r"PackedLSTM\.train"):
        packed.train()
    with pytest.raises(RuntimeError, match=r"PackedLSTM\.load_state_dict"):
        packed.load_state_dict(lstm.state_dict())
    with pytest.raises(ValueError, match="keep_cache"):
        packed(x, keep_cache=True)
    packed.eval()  # allowed: it is in eval mode already


def test_errors_name_the_argument(rng):
    lstm = nn.LSTM(7, 9, num_layers=2, seed=6)
    packed = lstm.packed()
    x = calls(rng, lstm)[0][0]
    with pytest.raises(ValueError, match=r"x: expected 7 input features"):
        packed(x[..., :5])
    with pytest.raises(TypeError, match=r"x: expected dtype float32"):
        packed(x.astype(np.float64))
    with pytest.raises(ValueError, match=r"state\[0\] \(h0\): expected shape \(2, 4, 9\)"):
        packed(x, (np.zeros((1, 4, 9), np.float32), np.zeros((2, 4, 9), np.float32)))
    with pytest.raises(ValueError, match="lengths"):
        packed(x, None, np.array([1, 2]))
    with pytest.raises(TypeError, match=r"lstm: expected an lstm_ext\.nn\.LSTM, got Linear"):
        nn.PackedLSTM(nn.Linear(3, 4))
    lstm.device = "cuda"  # as an LSTM made with device="cuda" has it
    with pytest.raises(ValueError, match=r"lstm: packed weights run on the CPU; .* 'cuda'"):
        lstm.packed()


def char_model(V=20, seed=0):
    return nn.Sequential(nn.Embedding(V, 6, seed=seed), nn.LSTM(6, 12, 2, seed=seed + 1),
                         nn.Linear(12, V, seed=seed + 2))  # fmt: skip


def test_sequential_packed_gives_the_same_bits_and_keeps_its_weights(rng):
    model = char_model()
    frozen = model.packed()
    assert isinstance(frozen[1], nn.PackedLSTM) and not frozen.training
    model.eval()
    ids = rng.integers(0, 20, (5, 3))
    assert_same(frozen(ids), model(ids))
    want = model(ids)
    for p in model.params.values():
        p += 1.0
    assert_same(frozen(ids), want)  # every module's weights are its own copy
    assert model.training is False and frozen[0] is not model[0]


def test_generate_samples_the_same_text_from_packed_weights(monkeypatch):
    """train.generate packs the model's weights once (a call per character);
    the text is the same as with the weights packed at every call."""
    model, vocab = char_model(), Vocab([chr(97 + k) for k in range(20)])
    text = train.generate(model, vocab, "abc", 40, 0.8, np.random.default_rng(1))
    monkeypatch.setattr(nn.Sequential, "packed", lambda self: self)
    again = train.generate(model, vocab, "abc", 40, 0.8, np.random.default_rng(1))
    assert text == again and len(text) == 43


def test_generate_takes_the_limit_of_a_tiny_temperature_and_checks_the_vocabulary():
    """logits / 1e-320 overflow: the draw is then the likeliest character
    (the limit), not NaN probabilities; a vocabulary of another size than the
    model's logits, or a temperature that is not a finite number > 0, is a
    ValueError."""
    model = nn.Sequential(
        nn.Embedding(3, 2, seed=0), nn.LSTM(2, 4, seed=1), nn.Linear(4, 3, seed=2)
    )
    vocab = Vocab("abc")
    cold = train.generate(model, vocab, "a", 20, 1e-320, np.random.default_rng(0))
    greedy = train.generate(model, vocab, "a", 20, 1e-30, np.random.default_rng(1))
    assert cold == greedy and len(cold) == 21
    for t in (0, -1.0, float("inf"), float("nan"), "0.8", True):
        with pytest.raises(ValueError, match="temperature: expected a finite number > 0"):
            train.generate(model, vocab, "a", 5, t)
    with pytest.raises(ValueError, match="vocab: 2 characters, but the model gives 3 logits"):
        train.generate(model, Vocab("ab"), "a", 5)
    model.modules[2].params["bias"][:] = np.nan  # a diverged model: not a run of one character
    with pytest.raises(ValueError, match="the model's logits are not finite"):
        train.generate(model, vocab, "a", 5)
