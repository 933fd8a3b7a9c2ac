"""Every bad argument gives a TypeError (wrong kind or dtype) or a ValueError
(wrong shape), whose message names the argument and shows what was expected
and what was given."""

import subprocess
import sys

import numpy as np
import pytest

import lstm_ext

T, B, I, H = 3, 2, 4, 5


def good(dtype=np.float64):
    r = np.random.default_rng(0)
    return dict(
        x=r.standard_normal((T, B, I)).astype(dtype),
        W=r.standard_normal((4 * H, I)).astype(dtype),
        R=r.standard_normal((4 * H, H)).astype(dtype),
        b=r.standard_normal(4 * H).astype(dtype),
        h0=r.standard_normal((B, H)).astype(dtype),
        c0=r.standard_normal((B, H)).astype(dtype),
    )


def call_forward(**changes):
    a = dict(good(), **changes)
    return lstm_ext.forward(a["x"], a["W"], a["R"], a["b"], a["h0"], a["c0"])


F64 = np.zeros((), np.float64)  # dtype token


@pytest.mark.parametrize(
    "changes, error, words",
    [
        # wrong number of dimensions
        (dict(x=np.zeros((T, I))), ValueError, ["x", "3 dimensions", "[T,B,I]", "(3, 4)"]),
        (dict(W=np.zeros(4 * H * I)), ValueError, ["W", "2 dimensions", "[4H,I]", "(80,)"]),
        (dict(R=np.zeros((4 * H, H, 1))), ValueError, ["R", "2 dimensions", "(20, 5, 1)"]),
        # wrong shapes
        (dict(W=np.zeros((4 * H, I + 1))), ValueError, ["W", "[4H,I]", "(20, 4)", "(20, 5)"]),
        (
            dict(R=np.zeros((4 * H, H + 1))),
            ValueError,
            ["R", "[4H,H] (H=6 from R's columns)", "(24, 6)", "(20, 6)"],
        ),
        # R with I columns for H: the rule that H comes from R is said, as
        # W's rows alone would point to another H
        (dict(R=np.zeros((4 * H, I))), ValueError, ["R", f"(H={I} from R's columns)"]),
        (dict(R=np.zeros((H, H))), ValueError, ["R", "(20, 5)", "(5, 5)"]),
        (dict(b=np.zeros(H)), ValueError, ["b", "[4H]", "(20,)", "(5,)"]),
        (dict(b=np.zeros((1, 4 * H))), ValueError, ["b", "(20,)", "(1, 20)"]),
        (dict(h0=np.zeros((B + 1, H))), ValueError, ["h0", "[B,H]", "(2, 5)", "(3, 5)"]),
        (dict(c0=np.zeros((B, H, 1))), ValueError, ["c0", "[B,H]", "(2, 5)", "(2, 5, 1)"]),
        (dict(h0=np.zeros(H)), ValueError, ["h0", "(2, 5)", "(5,)"]),
        # wrong dtypes
        (dict(x=np.zeros((T, B, I), np.int64)), TypeError, ["x", "float32 or float64", "int64"]),
        (dict(x=np.zeros((T, B, I), np.complex128)), TypeError, ["x", "complex128"]),
        (dict(x=np.zeros((T, B, I), np.float16)), TypeError, ["x", "float16"]),
        (dict(x=np.zeros((T, B, I), bool)), TypeError, ["x", "bool"]),
        (dict(W=np.zeros((4 * H, I), np.int32)), TypeError, ["W", "int32"]),
        (dict(b=np.zeros(4 * H, np.uint8)), TypeError, ["b", "uint8"]),
        (dict(h0=np.zeros((B, H), object)), TypeError, ["h0", "object"]),
        (dict(x="not an array"), TypeError, ["x", "<U12"]),
        (dict(x=None), TypeError, ["x", "object"]),
        # mixed float32 / float64
        (dict(W=np.zeros((4 * H, I), np.float32)), TypeError, ["W", "float64", "float32"]),
        (dict(R=np.zeros((4 * H, H), np.float32)), TypeError, ["R", "float64", "float32"]),
        (dict(b=np.zeros(4 * H, np.float32)), TypeError, ["b", "float64", "float32"]),
        (dict(c0=np.zeros((B, H), np.float32)), TypeError, ["c0", "float64", "float32"]),
    ],
    ids=lambda v: "-".join(v) if isinstance(v, dict) else None,
)
def test_forward_rejects(changes, error, words):
    with pytest.raises(error) as e:
        call_forward(**changes)
    for w in words:
        assert w in str(e.value), f"{w!r} not in {str(e.value)!r}"


def test_forward_float32_x_with_float64_weights():
    with pytest.raises(TypeError, match=r"W: expected dtype float32 to match x, got float64"):
        call_forward(x=good()["x"].astype(np.float32))


def test_a_dtype_mismatch_names_where_the_dtype_came_from():
    # A list x is float64: the message had blamed the float32 weights alone.
    w = {k: v.astype(np.float32) for k, v in good().items()}
    why = r"W: expected dtype float64 to match x \(a list, read as float64\), got float32"
    with pytest.raises(TypeError, match=why):
        lstm_ext.forward(w["x"].tolist(), w["W"], w["R"])
    with pytest.raises(TypeError, match=why):
        lstm_ext.step(w["x"][0].tolist(), None, None, w["W"], w["R"])
    # PackedLayer has no x: its weights' dtype is W's
    with pytest.raises(TypeError, match=r"R: expected dtype float32 to match W, got float64"):
        lstm_ext.PackedLayer(w["W"], good()["R"])


def test_forward_batch_first_shape_letters():
    with pytest.raises(ValueError, match=r"x: expected 3 dimensions \[B,T,I\]"):
        lstm_ext.forward(np.zeros((2, 2)), np.zeros((4, 2)), np.zeros((4, 1)), batch_first=True)


def test_sizes_past_64_bit_byte_counts_are_refused_before_allocating():
    # A broadcast view takes no memory, so only the size check stands between
    # this call and an absurd allocation.
    x = np.broadcast_to(np.float32(0), (2**30, 2**30, 1))  # 2^60 elements
    with pytest.raises(ValueError, match="overflow"):
        lstm_ext.forward(x, np.zeros((4, 1), np.float32), np.zeros((4, 1), np.float32))


def test_forward_keywords_are_keyword_only():
    a = good()
    with pytest.raises(TypeError):
        lstm_ext.forward(a["x"], a["W"], a["R"], a["b"], a["h0"], a["c0"], True)


@pytest.fixture
def cache():
    a = good()
    return lstm_ext.forward(a["x"], a["W"], a["R"], a["b"]).cache


@pytest.mark.parametrize(
    "changes, error, words",
    [
        (dict(dy=np.zeros((T, B, H + 1))), ValueError, ["dy", "[T,B,H]", "(3, 2, 5)", "(3, 2, 6)"]),
        (dict(dy=np.zeros((B, T, H))), ValueError, ["dy", "(3, 2, 5)", "(2, 3, 5)"]),
        (dict(dy=np.zeros((T, B))), ValueError, ["dy", "(3, 2, 5)", "(3, 2)"]),
        (dict(dh=np.zeros((B, H + 1))), ValueError, ["dh", "[B,H]", "(2, 5)", "(2, 6)"]),
        (dict(dc=np.zeros((1, B, H))), ValueError, ["dc", "(2, 5)", "(1, 2, 5)"]),
        (dict(dy=np.zeros((T, B, H), np.float32)), TypeError, ["dy", "float64", "float32"]),
        (dict(dy=np.zeros((T, B, H), np.int64)), TypeError, ["dy", "int64"]),
        (dict(dh=np.zeros((B, H), np.float32)), TypeError, ["dh", "float64", "float32"]),
    ],
    ids=lambda v: "-".join(v) if isinstance(v, dict) else None,
)
def test_backward_rejects(cache, changes, error, words):
    a = {"dy": np.zeros((T, B, H)), "dh": None, "dc": None, **changes}
    with pytest.raises(error) as e:
        lstm_ext.backward(cache, a["dy"], a["dh"], a["dc"])
    for w in words:
        assert w in str(e.value), f"{w!r} not in {str(e.value)!r}"


def test_backward_batch_first_dy_shape():
    a = good()
    x = np.ascontiguousarray(a["x"].swapaxes(0, 1))
    c = lstm_ext.forward(x, a["W"], a["R"], batch_first=True).cache
    with pytest.raises(
        ValueError, match=r"dy: expected shape \[B,T,H\].*\(2, 3, 5\), got \(3, 2, 5\)"
    ):
        lstm_ext.backward(c, np.zeros((T, B, H)))


def test_backward_without_a_cache():
    a = good()
    out = lstm_ext.forward(a["x"], a["W"], a["R"], training=False)
    with pytest.raises(TypeError, match="training=True"):
        lstm_ext.backward(out.cache, np.zeros((T, B, H)))
    with pytest.raises(
        TypeError, match=r"cache: expected the cache returned by lstm_ext\.forward, got dict"
    ):
        lstm_ext.backward({}, np.zeros((T, B, H)))


@pytest.mark.parametrize(
    "changes, error, words",
    [
        (dict(x=np.zeros((1, B, I))), ValueError, ["x", "2 dimensions", "[B,I]"]),
        (dict(x=np.zeros((B, I + 1))), ValueError, ["W", "(20, 5)", "(20, 4)"]),
        (dict(h=np.zeros((B, H + 1))), ValueError, ["h", "[B,H]", "(2, 5)", "(2, 6)"]),
        (dict(c=np.zeros((B + 1, H))), ValueError, ["c", "(2, 5)", "(3, 5)"]),
        (dict(h="h"), TypeError, ["h", "<U1"]),
        (dict(c=np.zeros((B, H), np.float32)), TypeError, ["c", "float64", "float32"]),
        (dict(x=np.zeros((B, I), np.int8)), TypeError, ["x", "int8"]),
    ],
    ids=lambda v: "-".join(v) if isinstance(v, dict) else None,
)
def test_step_rejects(changes, error, words):
    g = good()
    a = {"x": g["x"][0], "h": g["h0"], "c": g["c0"], **changes}
    with pytest.raises(error) as e:
        lstm_ext.step(a["x"], a["h"], a["c"], g["W"], g["R"], g["b"])
    for w in words:
        assert w in str(e.value), f"{w!r} not in {str(e.value)!r}"


def test_cache_cannot_be_made_by_hand():
    with pytest.raises(TypeError, match=r"made only by lstm_ext\.forward"):
        lstm_ext.Cache.__new__(lstm_ext.Cache)
    with pytest.raises(TypeError, match=r"made only by lstm_ext\.forward"):
        lstm_ext.Cache()


def test_cache_cannot_be_made_through_its_base_class():
    """pybind11_object.__new__(Cache), which Python's own message suggests,
    had made a Cache of uninitialised memory: backward on it crashed the
    interpreter (SIGSEGV). In a child, so that a crash fails only this test."""
    code = """
import lstm_ext
base = lstm_ext.Cache.__mro__[1]
for make in (lambda: base.__new__(lstm_ext.Cache),
             lambda: type("Sub", (lstm_ext.Cache,), {})(),
             lambda: type("Sub", (lstm_ext.Cache,), {"__new__": lambda c: base.__new__(c)})()):
    try:
        c = make()
    except TypeError as e:
        print("refused:", e)
    else:
        lstm_ext.backward(c, None)
        raise SystemExit("made a Cache")
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
    assert r.stdout.count("refused:") == 3, r.stdout


def test_conversion_errors_keep_their_cause_and_interrupts_pass():
    """A failed conversion names the argument and says why (it had said only
    'expected a NumPy array'); a KeyboardInterrupt or MemoryError raised
    inside it is not turned into a TypeError."""
    a = good()

    class Refuses:
        def __array__(self, dtype=None, copy=None):
            raise RuntimeError("no array today")

    with pytest.raises(TypeError) as e:
        lstm_ext.forward(Refuses(), a["W"], a["R"])
    assert str(e.value) == "x: expected a NumPy array, got Refuses (RuntimeError: no array today)"
    assert isinstance(e.value.__cause__, RuntimeError)
    for raised in (KeyboardInterrupt, MemoryError):

        class Raises:
            def __array__(self, dtype=None, copy=None, raised=raised):
                raise raised()

        with pytest.raises(raised):
            lstm_ext.forward(a["x"], Raises(), a["R"])


RAGGED = [[1.0, 2.0], [3.0]]  # NumPy makes no array of it


def _ragged_calls():
    """(call, name): the Python functions that make arrays of their
    arguments themselves, each given one ragged argument."""
    from lstm_ext import convert, losses, nn, train

    f = np.zeros((2, 2), np.float32)
    lin, emb, lstm = nn.Linear(2, 2), nn.Embedding(3, 2), nn.LSTM(2, 2)
    W, R = np.zeros((1, 8, 2), np.float32), np.zeros((1, 8, 2), np.float32)
    return [
        (lambda: lin(RAGGED), "x"),
        (lambda: emb(RAGGED), "idx"),
        (lambda: lstm(RAGGED), "x"),
        (lambda: lstm(np.zeros((1, 1, 2), np.float32), (RAGGED, RAGGED)), "state[0]"),
        (lambda: losses.mse(RAGGED, f), "pred"),
        (lambda: losses.mse(f, RAGGED), "target"),
        (lambda: losses.mse(f, f, mask=RAGGED), "mask"),
        (lambda: losses.softmax_cross_entropy(f, RAGGED), "targets"),
        (lambda: lstm_ext.onnx_lstm(RAGGED, W, R), "X"),
        (lambda: lstm_ext.onnx_lstm(np.zeros((1, 1, 2), np.float32), W, R, RAGGED), "B"),
        (lambda: convert.reorder_gates(RAGGED, "ifgo", "iofg"), "a"),
        (lambda: convert.torch_to_onnx(RAGGED, R[0]), "W"),
        (lambda: train.stream_chunks(RAGGED, 1, 1), "tokens"),
    ]


def test_a_ragged_list_is_named_by_the_python_functions_too():
    """Where Python code (nn, losses, onnx_lstm, convert, train) makes the
    array, a failed conversion names the argument and keeps NumPy's reason,
    as the compiled functions' do; NumPy's own ValueError named nothing."""
    for call, name in _ragged_calls():
        with pytest.raises(TypeError) as e:
            call()
        assert str(e.value).startswith(f"{name}: expected a NumPy array, got list (ValueError: ")
        assert isinstance(e.value.__cause__, ValueError)


def test_cache_does_not_share_memory_with_array_likes():
    """An object whose __array__ hands out its own buffer: forward must copy it."""

    class Wrap:
        def __init__(self, a):
            self.a = a

        def __array__(self, dtype=None, copy=None):
            return self.a

    a = good()
    wx, wW = Wrap(a["x"].copy()), Wrap(a["W"].copy())
    out = lstm_ext.forward(wx, wW, a["R"])
    g1 = lstm_ext.backward(out.cache, np.ones((T, B, H)))
    wx.a[...] = 7
    wW.a[...] = 7
    g2 = lstm_ext.backward(out.cache, np.ones((T, B, H)))
    for u, v in zip(g1, g2, strict=True):
        np.testing.assert_array_equal(u, v)


@pytest.mark.parametrize(
    "clip, error, match",
    [
        ("a", TypeError, "clip: expected a number > 0 or None, got str"),
        (np.array([1.0, 2.0]), TypeError, "clip: expected a number"),
        (10**400, TypeError, "clip: expected a number"),
        (1e-60, ValueError, r"clip: expected a number > 0 \(at least 1.17.*e-38"),  # 0 in float32
        (0, ValueError, r"clip: expected a number > 0 \(at least 1.17.*e-38 in float32\)"),
        ("1.5", TypeError, "clip: expected a number > 0 or None, got str"),  # float() parses it
        (True, TypeError, "clip: expected a number > 0 or None, got bool"),
        (np.bool_(True), TypeError, "clip: expected a number > 0 or None, got bool"),
    ],
)
def test_clip_of_the_wrong_kind(clip, error, match):
    a = good(np.float32)
    with pytest.raises(error, match=match):
        lstm_ext.forward(a["x"], a["W"], a["R"], clip=clip)


FLAGS = {  # each call's bool keywords
    "forward": ("batch_first", "training", "reverse", "input_forget", "return_cell_states"),
    "step": ("input_forget",),
    "PackedLayer": ("input_forget",),
    "PackedLayer.forward": ("batch_first", "reverse", "return_cell_states"),
}


def call_with(call, **kw):
    a = good(np.float32)
    if call == "forward":
        return lstm_ext.forward(a["x"], a["W"], a["R"], **kw)
    if call == "step":
        return lstm_ext.step(a["x"][0], a["h0"], a["c0"], a["W"], a["R"], **kw)
    if call == "PackedLayer":
        return lstm_ext.PackedLayer(a["W"], a["R"], **kw)
    return lstm_ext.PackedLayer(a["W"], a["R"]).forward(a["x"], **kw)


@pytest.mark.parametrize("call, name", [(c, n) for c, names in FLAGS.items() for n in names])
@pytest.mark.parametrize("value", ["yes", [True], np.array([True, False])])
def test_a_flag_that_is_no_bool_is_named(call, name, value):
    # Had been pybind11's overload message: the whole signature and every
    # argument's repr (2,754 characters for one forward), the flag not named.
    with pytest.raises(TypeError) as e:
        call_with(call, **{name: value})
    assert str(e.value) == f"{name}: expected a bool, got {type(value).__name__}"


@pytest.mark.parametrize(
    "value, means", [(np.bool_(True), True), (np.bool_(False), False), (0, False), (1, True),
                     (np.int64(1), True), (None, False)],
)  # fmt: skip
def test_flags_take_bools_the_integers_0_and_1_and_none(value, means):
    # the one rule of every flag (_checks.check_bool): each of these gives
    # the result of the flag given as the bool it means
    for call, names in FLAGS.items():
        for name in names:
            if call == "forward" and name == "training":
                continue  # its result holds a cache: compared below
            got, want = call_with(call, **{name: value}), call_with(call, **{name: means})
            if call == "PackedLayer":
                got, want = got.forward(good(np.float32)["x"]), want.forward(good(np.float32)["x"])
            for g, w in zip(got, want, strict=True):
                if w is None or not isinstance(w, np.ndarray):  # None, or the cache
                    assert type(g) is type(w)
                else:
                    np.testing.assert_array_equal(g, w)
    assert (call_with("forward", training=value).cache is None) == (not means)


@pytest.mark.parametrize(
    "value, got", [(2, "2"), (-1, "-1"), (0.5, "float"), (np.float64(1.0), "float64")]
)
def test_other_numbers_are_no_flags(value, got):
    with pytest.raises(TypeError, match=f"^reverse: expected a bool, got {got}$"):
        call_with("forward", reverse=value)
    from lstm_ext._checks import check_bool

    with pytest.raises(TypeError, match=f"^reverse: expected a bool, got {got}$"):
        check_bool("reverse", value)


def test_lengths_of_an_empty_batch_may_be_any_empty_array():
    """B = 0: lengths [] as a list (float64) or an empty array of strings had
    failed inside NumPy's comparison (UFuncTypeError)."""
    x = np.zeros((3, 0, 2), np.float32)
    W, R = np.zeros((8, 2), np.float32), np.zeros((8, 2), np.float32)
    for lengths in ([], np.array([], "U3"), np.zeros(0, np.int64)):
        assert lstm_ext.forward(x, W, R, lengths=lengths).y.shape == (3, 0, 2)


def test_lengths_report_the_value_given():
    a = good()
    with pytest.raises(ValueError, match=r"lengths\[0\] = 18446744073709551615 is outside"):
        lstm_ext.forward(a["x"], a["W"], a["R"], lengths=np.array([2**64 - 1, 1], np.uint64))
    out = lstm_ext.forward(np.zeros((T, 0, I)), a["W"], a["R"], lengths=[])  # B = 0
    assert out.y.shape == (T, 0, H)


def test_gemm_dimensions_past_32_bits_are_refused_before_writing():
    x = np.broadcast_to(np.float32(0), (2**16, 2**16, 1))  # T*B = 2^32 rows
    W = R = np.zeros((4, 1), np.float32)
    with pytest.raises(ValueError, match="exceeds the BLAS limit"):
        lstm_ext.forward(x, W, R, training=False)


def test_a_copy_too_large_for_memory_is_a_memory_error():
    """A view whose contiguous copy cannot be allocated (a pebibyte, past any
    address space): NumPy's MemoryError. Before, the failed copy came back as
    no array, and reading it crashed the interpreter. Every x here is a
    pebibyte: a tebibyte can be mapped where the kernel overcommits always
    (vm.overcommit_memory=1, as on a GPU machine this ran on), and filling it
    brings the out-of-memory killer instead of an error."""
    x = np.broadcast_to(np.float32(0), (2**10, 2**10, 2**28))  # [T, B, I], 2^50 bytes
    x_step = np.broadcast_to(np.float32(0), (2**20, 2**28))  # [B, I], 2^50 bytes
    W = np.broadcast_to(np.float32(0), (4, 2**28))
    R, h = np.zeros((4, 1), np.float32), np.zeros((2**20, 1), np.float32)
    for call in (
        lambda: lstm_ext.forward(x, W, R, training=False),
        lambda: lstm_ext.forward(x, W, R),
        lambda: lstm_ext.step(x_step, h, h, W, R),
    ):
        with pytest.raises(MemoryError, match="Unable to allocate"):
            call()


@pytest.mark.parametrize(
    "n, error, match",
    [
        (2**40, ValueError, r"must be in \[1, 1024\], got 1099511627776"),
        (-(2**70), ValueError, r"must be in \[1, 1024\], got -"),
        (0, ValueError, r"must be in \[1, 1024\], got 0"),
        (2.5, TypeError, r"n: expected an integer in \[1, 1024\], got float"),
        (True, TypeError, r"n: expected an integer in \[1, 1024\], got bool"),
        ("2", TypeError, r"got str"),
    ],
)
def test_set_num_threads_rejects(n, error, match):
    before = lstm_ext.get_num_threads()
    with pytest.raises(error, match=match):
        lstm_ext.set_num_threads(n)
    assert lstm_ext.get_num_threads() == before
    lstm_ext.set_num_threads(np.int64(before))  # NumPy's integers are integers
    assert lstm_ext.get_num_threads() == before
