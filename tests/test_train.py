"""The training API: layers beside LSTM, Sequential, fit, truncated BPTT."""

import re

import numpy as np
import pytest

from helpers import central_difference
from lstm_ext import losses, nn, optim
from lstm_ext.train import History, TruncatedBPTT, fit, stream_chunks


def central_differences(f, a):
    g = np.zeros_like(a)
    for k in np.ndindex(a.shape):
        g[k] = central_difference(f, a, k)
    return g


def test_linear_gradients(rng):
    lin = nn.Linear(4, 3, dtype=np.float64, seed=0)
    x = rng.standard_normal((2, 5, 4))
    dy = rng.standard_normal((2, 5, 3))
    lin(x)
    dx = lin.backward(dy)
    loss = lambda: np.sum(lin(x) * dy)  # noqa: E731
    # float64 central differences: error ~1e-10 (see test_reference)
    np.testing.assert_allclose(dx, central_differences(loss, x), atol=1e-8)
    for name in ("weight", "bias"):
        want = central_differences(loss, lin.params[name])
        np.testing.assert_allclose(lin.grads[name], want, atol=1e-8, err_msg=name)


def test_embedding_gradients_add_up_repeated_tokens():
    emb = nn.Embedding(5, 3, dtype=np.float64, seed=0)
    idx = np.array([[1, 4], [1, 1]])
    out = emb(idx)
    np.testing.assert_array_equal(out[0, 0], emb.params["weight"][1])
    emb.backward(np.ones((2, 2, 3)))
    np.testing.assert_array_equal(emb.grads["weight"][:, 0], [0, 3, 0, 0, 1])
    with pytest.raises(ValueError, match=r"idx: expected tokens in \[0, 5\), got 5"):
        emb(np.array([5]))
    with pytest.raises(TypeError, match="idx: expected integer tokens"):
        emb(np.array([1.0]))


def test_sequential_chains_forward_and_backward(rng):
    model = nn.Sequential(nn.Embedding(7, 4, dtype=np.float64, seed=0),
                          nn.LSTM(4, 5, 2, dtype=np.float64, seed=1),
                          nn.Linear(5, 7, dtype=np.float64, seed=2))  # fmt: skip
    tokens = rng.integers(0, 7, (6, 3))
    targets = rng.integers(0, 7, (6, 3))

    def loss():
        logits, _ = model(tokens)
        return losses.softmax_cross_entropy(logits, targets)[0]

    logits, state = model(tokens)
    assert logits.shape == (6, 3, 7) and state[0].shape == (2, 3, 5)
    _, g = losses.softmax_cross_entropy(logits, targets)
    model.zero_grad()
    assert model.backward(g) is None  # an Embedding first: no input gradient
    assert set(model.params) == set(model.grads)
    assert "1.weight_ih_l0" in model.params and "2.bias" in model.params
    for name in ("0.weight", "1.weight_hh_l1", "1.bias_ih_l0", "2.weight"):
        want = central_differences(loss, model.params[name])
        np.testing.assert_allclose(model.grads[name], want, atol=1e-7, err_msg=name)
    rebuilt = nn.from_config(model.config())
    assert rebuilt.config() == model.config()
    for bad, words in [
        ({"type": "Sequential"}, "a Sequential's 'modules' must be a list, got None"),
        ({"type": ["LSTM"]}, "unknown module type ['LSTM']"),
        ({"type": "LSTM", "input_size": 2, "hidden_size": 3, "colour": 1}, "LSTM takes no colour"),
    ]:
        with pytest.raises(ValueError, match=re.escape(words)):
            nn.from_config(bad)
    with pytest.raises(ValueError, match="at most one LSTM"):
        nn.Sequential(nn.LSTM(2, 2), nn.LSTM(2, 2))


def test_sequential_refuses_what_it_cannot_chain():
    lin = nn.Linear(3, 3)
    for modules, error, words in [
        # one Linear twice kept the second call's input for both backwards:
        # the wrong weight gradient, and its parameters listed twice
        ((lin, lin), ValueError, "modules[1]: the same module object as modules[0]"),
        # an inner Sequential returned (y, state) to the next module as its x
        ((nn.Sequential(lin),), TypeError, "modules[0]: a Sequential inside a Sequential"),
        ((nn.LSTM(3, 4), nn.Linear(5, 2)), ValueError,
         "modules[1]: expected 4 input features (what modules[0] gives), got a Linear taking 5"),
        ((nn.Embedding(5, 3), nn.LSTM(3, 4, bidirectional=True), nn.Linear(4, 2)), ValueError,
         "modules[2]: expected 8 input features"),
        ((lin, nn.Embedding(3, 3)), ValueError, "modules[1]: an Embedding takes token indices"),
    ]:  # fmt: skip
        with pytest.raises(error, match=re.escape(words)):
            nn.Sequential(*modules)
    inner = {"type": "Sequential", "modules": [nn.Linear(2, 2).config()]}
    nested = {"type": "Sequential", "modules": [inner]}
    with pytest.raises(TypeError, match="a Sequential inside a Sequential"):
        nn.from_config(nested)


def test_modules_print_as_pytorch_s():
    model = nn.Sequential(
        nn.Embedding(103, 32),
        nn.LSTM(32, 128, 2, bidirectional=True, dtype=np.float64),
        nn.Linear(256, 103, bias=False),
    )
    assert repr(model) == (
        "Sequential(\n"
        "  (0): Embedding(103, 32)\n"
        "  (1): LSTM(32, 128, num_layers=2, bidirectional=True, dtype='float64')\n"
        "  (2): Linear(256, 103, bias=False)\n"
        ")"
    )
    assert (
        repr(nn.LSTM(3, 4, batch_first=True, proj_size=2))
        == "LSTM(3, 4, batch_first=True, proj_size=2)"
    )

    class Mine(nn.Module):  # no config(): Python's own repr, not an error
        pass

    assert repr(Mine()).startswith("<")


def test_truncated_bptt_equals_a_full_run_on_each_chunk(rng):
    """TBPTT on chunk k = forward/backward on that chunk alone, started from
    the state the previous chunks left: no gradient crosses the boundary."""
    model = nn.Sequential(nn.Embedding(6, 3, dtype=np.float64, seed=0),
                          nn.LSTM(3, 4, dtype=np.float64, seed=1),
                          nn.Linear(4, 6, dtype=np.float64, seed=2))  # fmt: skip
    tokens = rng.integers(0, 6, 200)
    chunks = stream_chunks(tokens, batch=2, seq_len=10)
    tb = TruncatedBPTT()
    state = None
    for step in range(4):
        x, y, first = chunks(step)
        assert first == (step == 0)
        np.testing.assert_array_equal(y[:-1], x[1:])  # targets are the next tokens
        model.zero_grad()
        tb(model, (x, y, first))
        got = {k: g.copy() for k, g in model.grads.items()}
        # the same chunk alone, from the state the earlier chunks left
        model.zero_grad()
        logits, new_state = model(x, state)
        _, g = losses.softmax_cross_entropy(logits, y)
        model.backward(g)  # no dstate: nothing flows in from later chunks
        for k in got:
            np.testing.assert_array_equal(got[k], model.grads[k], err_msg=k)
        state = new_state
        for a, b in zip(tb.state, state, strict=True):
            np.testing.assert_array_equal(a, b)


def test_fit_lowers_the_loss_repeatably(rng):
    def run():
        model = nn.Sequential(nn.LSTM(1, 8, seed=0), nn.Linear(8, 1, seed=1))
        t = np.arange(400, dtype=np.float32)
        z = np.sin(t / 5)

        def batches(step):
            r = np.random.default_rng([3, step])
            starts = r.integers(0, 350, 16)
            w = np.stack([z[s : s + 21] for s in starts], axis=1)[:, :, None]
            return w[:-1], w[1:]

        def step_fn(m, batch):
            out, _ = m(batch[0])
            loss, g = losses.mse(out, batch[1])
            m.backward(g)
            return loss, 16

        evals = lambda m: losses.mse(m(batches(10**6)[0])[0], batches(10**6)[1])[0]  # noqa: E731
        return fit(model, optim.Adam(model, lr=1e-2), batches, step_fn, 60, eval_fn=evals,
                   eval_every=20, progress=False)  # fmt: skip

    h = run()
    assert isinstance(h, History) and len(h.loss) == 60 and h.eval_steps == [19, 39, 59]
    assert np.mean(h.loss[-10:]) < 0.2 * np.mean(h.loss[:10])
    assert h.eval_loss[-1] < h.eval_loss[0]
    assert run().loss == h.loss  # a fixed seed repeats exactly
    assert len(h.smoothed(20)) == 41


def test_stream_chunks_refuses_too_little_text():
    with pytest.raises(ValueError, match="too few"):
        stream_chunks(np.arange(10), batch=4, seq_len=8)


def test_eval_mode_keeps_no_inputs_unless_asked(rng):
    lin = nn.Linear(3, 2, dtype=np.float64, seed=0).eval()
    x = rng.standard_normal((4, 3))
    lin(x)
    with pytest.raises(RuntimeError, match="keep_cache=True"):
        lin.backward(np.ones((4, 2)))
    lin(x, keep_cache=True)
    assert lin.backward(np.ones((4, 2))).shape == (4, 3)


def test_generate_leaves_the_model_in_its_mode():
    # generate had put the caller's model in eval mode and left it there: a
    # training loop that samples then failed at its next backward.
    from lstm_ext import data
    from lstm_ext.train import generate

    vocab = data.Vocab("abc")
    model = nn.Sequential(nn.Embedding(3, 4), nn.LSTM(4, 5), nn.Linear(5, 3))
    generate(model, vocab, "ab", 3, rng=np.random.default_rng(0))
    assert model.training
    model.eval()
    generate(model, vocab, "ab", 3, rng=np.random.default_rng(0))
    assert not model.training

    class Duck:  # not a Sequential: generate calls it as it is, in eval mode
        training = True

        def train(self, mode=True):
            self.training = mode

        def eval(self):
            self.train(False)

        def __call__(self, ids, state=None):
            assert not self.training
            return np.zeros((len(ids), 1, 3)), state

    duck = Duck()
    generate(duck, vocab, "ab", 2, rng=np.random.default_rng(0))
    assert duck.training
    with pytest.raises(ValueError, match=r"^length: expected an integer >= 0, got -1$"):
        generate(model, vocab, "ab", -1)
    with pytest.raises(ValueError, match=r"^prime: characters not in the vocabulary: 'z'$"):
        generate(model, vocab, "az", 1)  # had said "text:"


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: stream_chunks(np.arange(100), 0, 4), r"^batch: expected an integer >= 1, got 0$"),
        (
            lambda: stream_chunks(np.array(5), 1, 1),  # had been len()'s "unsized object"
            r"^tokens: expected one stream, 1-D, got shape \(\)$",
        ),
        (
            lambda: stream_chunks(np.arange(100), 2, 0),
            r"^seq_len: expected an integer >= 1, got 0$",
        ),
        (
            lambda: stream_chunks(np.arange(100), 2.5, 4),
            r"^batch: expected an integer >= 1, got 2.5$",
        ),
        (
            lambda: fit(None, None, None, None, 2, eval_every=0),
            r"^eval_every: expected an integer >= 1, got 0$",
        ),
        (
            lambda: fit(None, None, None, None, 2, eval_every=-1),
            r"^eval_every: expected an integer >= 1, got -1$",
        ),
        (lambda: fit(None, None, None, None, 2.5), r"^steps: expected an integer >= 0, got 2.5$"),
    ],
)
def test_the_training_helpers_name_a_bad_argument(call, match):
    # had been ZeroDivisionError (batch=0, eval_every=0), a TypeError from
    # range (steps=2.5), or accepted (eval_every=-1)
    with pytest.raises(ValueError, match=match):
        call()
