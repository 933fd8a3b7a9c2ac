"""lstm_ext.onnx.onnx_lstm against onnxruntime's LSTM operator, and its argument checks.

The comparisons build a model of one ONNX LSTM node (opset 14, float32: the
only type onnxruntime 1.32's LSTM kernel takes) and run it with onnxruntime's
CPU provider; they skip, with the reason, where onnx or onnxruntime is not
installed. The argument checks need neither and run everywhere.

onnxruntime refuses layout=1 ("Batchwise recurrent operations (layout == 1)
are not supported"), so a layout-1 call of ours is compared with onnxruntime
run on the same arrays transposed to layout 0, its outputs transposed back.

A sequence of length 0: onnxruntime accepts it and returns Y_h = Y_c = 0
for it (whatever initial_h, initial_c are); onnx_lstm returns the initial
state, the state after zero steps, as lstm_ext.forward does. The ONNX spec
leaves the case open (onnx/onnx#1674). Those entries are checked against the
initial state; everything else against onnxruntime.

Tolerance, per tensor, |ours - theirs| <= atol + rtol*|theirs| with atol =
ATOL*max(1, max|theirs|) as in test_peers.py. Worst seen over every case and
shape below, both layouts, 200 seeds each (onnxruntime 1.32, float32; |Y|,
|Y_h| < 1, |Y_c| up to 12 with peepholes): Y 1.4e-6, Y_h 4.8e-7, Y_c 5.7e-6
absolute (Y_c 5e-7 of max|Y_c|), at most 0.12 of a 1e-5 bound. Unit roundoff
is 6e-8; onnxruntime sums in another order and uses its own vectorised
sigmoid and tanh, and the recurrence carries the difference on. RTOL = ATOL
= 2e-5 leaves a margin of about 16; a wrong gate order, bias or direction
errs by O(0.1).
"""

import numpy as np
import pytest

from lstm_ext.onnx import onnx_lstm

RTOL = ATOL = 2e-5
SHAPES = [(7, 3, 5, 3), (16, 3, 12, 24)]  # (T, B, I, H); I != H; B = 3 for the lengths
NAMES = ["Y", "Y_h", "Y_c"]
INPUTS = ["X", "W", "R", "B", "sequence_lens", "initial_h", "initial_c", "P"]


def make_node_inputs(rng, T, B, I, H, D, *, bias=True, state=True, peephole=False, lengths=None):
    """The inputs of an LSTM node in ONNX's layout 0, float32; None where left out.

    Weights as in helpers.make_problem (standard deviation 1/√fan_in), which
    keeps most gates out of saturation; lengths, if given, are [B] in [0,T].
    """

    def r(*shape, s=1.0):
        return (s * rng.standard_normal(shape)).astype(np.float32)

    return dict(
        X=r(T, B, I),
        W=r(D, 4 * H, I, s=1 / I**0.5),
        R=r(D, 4 * H, H, s=1 / H**0.5),
        B=r(D, 8 * H, s=0.5) if bias else None,
        sequence_lens=None if lengths is None else np.array(lengths, np.int32),
        initial_h=r(D, B, H, s=0.5) if state else None,
        initial_c=r(D, B, H) if state else None,
        P=r(D, 3 * H, s=0.5) if peephole else None,
    )


def to_layout1(f):
    """Layout-0 node inputs with X [B,T,I] and initial_h, initial_c [B,D,H] instead."""
    f = dict(f)
    for k in ("X", "initial_h", "initial_c"):
        if f[k] is not None:
            f[k] = f[k].swapaxes(0, 1).copy()
    return f


@pytest.fixture(scope="module")
def ort():
    pytest.importorskip("onnx", reason="onnx not installed: no onnxruntime LSTM check")
    return pytest.importorskip("onnxruntime", reason="onnxruntime not installed: no LSTM check")


def ort_lstm(ort, f, **attrs):
    """Y, Y_h, Y_c of one LSTM node (opset 14, layout 0) run by onnxruntime's CPU provider.

    f: the node's inputs (None for one left out), attrs: its attributes.
    """
    import onnx
    from onnx import helper

    T, B, _ = f["X"].shape
    D, H = f["R"].shape[0], f["R"].shape[2]
    names = [k if f[k] is not None else "" for k in INPUTS]  # "" skips an optional input
    while not names[-1]:
        names.pop()
    inputs = [
        helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(f[k].dtype), f[k].shape)
        for k in names
        if k
    ]
    out = dict(Y=[T, D, B, H], Y_h=[D, B, H], Y_c=[D, B, H])
    outputs = [helper.make_tensor_value_info(k, onnx.TensorProto.FLOAT, s) for k, s in out.items()]
    node = helper.make_node("LSTM", names, list(out), hidden_size=H, **attrs)
    graph = helper.make_graph([node], "lstm", inputs, outputs)
    # IR version 8 (onnx 1.10's) reads opset 14; make_model's default follows
    # the installed onnx, which can be newer than what onnxruntime reads (onnx
    # 1.23 writes IR 14, onnxruntime 1.30 reads up to 13).
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)], ir_version=8)
    onnx.checker.check_model(model)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {k: f[k] for k in names if k})


def check(ours, theirs):
    for name, a, t in zip(NAMES, ours, theirs, strict=True):
        assert a.dtype == np.float32, name
        atol = ATOL * max(1.0, np.abs(t).max(initial=0.0))
        np.testing.assert_allclose(a, t, rtol=RTOL, atol=atol, err_msg=name)


CASES = {  # name: (make_node_inputs options, node attributes)
    "forward": ({}, {}),
    "reverse": ({}, dict(direction="reverse")),
    "bidirectional": ({}, dict(direction="bidirectional")),
    "no-optional-inputs": (dict(bias=False, state=False), dict(direction="bidirectional")),
    "peephole": (dict(peephole=True), {}),
    "peephole-bidirectional": (dict(peephole=True), dict(direction="bidirectional")),
    "clip": ({}, dict(clip=0.5)),
    "clip-reverse": ({}, dict(clip=0.5, direction="reverse")),
    "input_forget": ({}, dict(input_forget=1)),
    "input_forget-bidirectional": ({}, dict(input_forget=1, direction="bidirectional")),
    "ragged": (dict(lengths=[5, 1, 7]), {}),  # T = 16: steps past every length too
    "ragged-reverse": (dict(lengths=[5, 1, 7]), dict(direction="reverse")),
    "ragged-bidirectional": (dict(lengths=[7, 2, 6]), dict(direction="bidirectional")),
    "ragged-zero": (dict(lengths=[6, 0, 3]), dict(direction="bidirectional")),
    "all": (
        dict(peephole=True, lengths=[7, 0, 4]),
        dict(direction="bidirectional", clip=0.5, input_forget=1),
    ),
}


@pytest.mark.parametrize("layout", [0, 1])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("case", list(CASES))
def test_matches_onnxruntime(ort, rng, case, shape, layout):
    options, attrs = CASES[case]
    T, B, I, H = shape
    D = 2 if attrs.get("direction") == "bidirectional" else 1
    f = make_node_inputs(rng, T, B, I, H, D, **options)
    Y, Y_h, Y_c = ort_lstm(ort, f, **attrs)
    if layout:
        ours = onnx_lstm(**to_layout1(f), layout=1, **attrs)
        ours = ours[0].transpose(1, 2, 0, 3), ours[1].swapaxes(0, 1), ours[2].swapaxes(0, 1)
    else:
        ours = onnx_lstm(**f, **attrs)
    if f["sequence_lens"] is not None:  # ours keeps the initial state where the length is 0
        empty = f["sequence_lens"] == 0
        for theirs, ours_t, init in ((Y_h, ours[1], "initial_h"), (Y_c, ours[2], "initial_c")):
            np.testing.assert_array_equal(ours_t[:, empty], f[init][:, empty])
            theirs[:, empty] = ours_t[:, empty]
    check(ours, (Y, Y_h, Y_c))


def test_clip_changes_the_result(rng):
    # The clip cases above are no test of clip unless it clamps something.
    f = make_node_inputs(rng, 7, 4, 5, 3, 1)
    assert np.abs(onnx_lstm(**f, clip=0.5)[0] - onnx_lstm(**f)[0]).max() > 1e-2


# Argument checks: no onnxruntime needed.


def node_inputs(D=1, layout=0):
    f = make_node_inputs(np.random.default_rng(0), 6, 3, 5, 4, D, peephole=True, lengths=[6, 0, 2])
    return to_layout1(f) if layout else f


@pytest.mark.parametrize("layout", [0, 1])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
def test_shapes_and_zero_length(direction, layout):
    D = 2 if direction == "bidirectional" else 1
    f = node_inputs(D, layout)
    Y, Y_h, Y_c = onnx_lstm(**f, direction=direction, layout=layout)
    T, B, H = 6, 3, 4
    assert Y.shape == ((B, T, D, H) if layout else (T, D, B, H))
    assert Y_h.shape == Y_c.shape == ((B, D, H) if layout else (D, B, H))
    # Sequence 1 has length 0: Y is 0, Y_h and Y_c are the initial state.
    np.testing.assert_array_equal(Y[1] if layout else Y[:, :, 1], 0)
    b = 1 if layout else (slice(None), 1)
    np.testing.assert_array_equal(Y_h[b], f["initial_h"][b])
    np.testing.assert_array_equal(Y_c[b], f["initial_c"][b])


def test_float64(rng):
    f = make_node_inputs(rng, 7, 4, 5, 3, 2, peephole=True, lengths=[7, 0, 4, 1])
    f64 = {
        k: v if v is None or k == "sequence_lens" else v.astype(np.float64) for k, v in f.items()
    }
    ours32 = onnx_lstm(**f, direction="bidirectional")
    ours64 = onnx_lstm(**f64, direction="bidirectional")
    for name, a, b in zip(NAMES, ours32, ours64, strict=True):
        assert b.dtype == np.float64, name
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5, err_msg=name)


def test_default_activations_accepted():
    f = node_inputs(2)
    want = onnx_lstm(**f, direction="bidirectional")
    got = onnx_lstm(**f, direction="bidirectional", activations=["sigmoid", "TANH", "Tanh"] * 2)
    for a, b in zip(want, got, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(activations=["Relu", "Tanh", "Tanh"]), "activations: only the defaults"),
        (dict(activations=["Sigmoid", "Tanh", "Relu"]), "activations: only the defaults"),
        (dict(activation_alpha=[1.0]), "activation_alpha"),
        (dict(activation_beta=[1.0]), "activation_beta"),
    ],
)
def test_unsupported_activations(kwargs, match):
    with pytest.raises(NotImplementedError, match=match):
        onnx_lstm(**node_inputs(), **kwargs)


def test_activations_need_three_names_a_direction():
    with pytest.raises(ValueError, match=r"activations: expected 6 names"):
        onnx_lstm(
            **node_inputs(2), direction="bidirectional", activations=["Sigmoid", "Tanh", "Tanh"]
        )


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(direction="backward"), r"direction: expected one of .*'backward'"),
        (dict(direction="Forward"), "direction"),
        (dict(layout=2), "layout: expected 0 or 1, got 2"),
        (dict(input_forget=2), "input_forget: expected 0 or 1, got 2"),
        (dict(hidden_size=5), r"hidden_size: expected 4 .*got 5"),
        # Each had raised something else, or a message that did not say what
        (dict(hidden_size="4"), r"hidden_size: expected 4 .*got '4'"),
        (dict(direction=["forward"]), r"direction: expected one of .*\['forward'\]"),
        (dict(input_forget=np.array([1, 0])), r"input_forget: expected 0 or 1, got array"),
        (dict(activations=5), r"activations: expected 3 names .*got 5"),
        (dict(X=np.zeros((6, 3), np.float32)), r"X: expected shape \[T,B,I\], got \(6, 3\)"),
        (dict(W=np.zeros((1, 16, 4), np.float32)), r"W: expected shape \[D,4H,I\] = \(1, 16, 5\)"),
        (dict(R=np.zeros((1, 16, 5), np.float32)), r"R: expected shape \[D,4H,H\]"),
        (dict(R=np.zeros((2, 16, 4), np.float32)), r"R: expected .*D = 1, got \(2, 16, 4\)"),
        (dict(B=np.zeros((1, 16), np.float32)), r"B: expected shape \[D,8H\] = \(1, 32\)"),
        (dict(P=np.zeros((1, 16), np.float32)), r"P: expected shape \[D,3H\] = \(1, 12\)"),
        (dict(sequence_lens=np.array([6, 6], np.int32)), r"sequence_lens: .*\(3,\), got \(2,\)"),
        (dict(initial_h=np.zeros((3, 4), np.float32)), r"initial_h: .*\[D,B,H\] = \(1, 3, 4\)"),
        (dict(initial_c=np.zeros((1, 3, 5), np.float32)), r"initial_c: .*\(1, 3, 4\), got"),
        # X [T,B,I] read as [B,T,I]: B = 6
        (dict(layout=1, sequence_lens=None), r"initial_h: expected shape \[B,D,H\] = \(6, 1, 4\)"),
    ],
)
def test_bad_arguments(change, match):
    with pytest.raises(ValueError, match=match):
        onnx_lstm(**{**node_inputs(), **change})


@pytest.mark.parametrize(
    "change, error, match",
    [
        # Each had named lstm_ext.forward's argument (b, peephole, h0, c0, lengths, x)
        (dict(B=np.zeros((1, 32))), TypeError, "B: expected dtype float32 to match X, got float64"),
        (dict(P=np.zeros((1, 12))), TypeError, "P: expected dtype float32 to match X, got float64"),
        (dict(initial_h=np.zeros((1, 3, 4))), TypeError, "initial_h: expected dtype float32 to"),
        (dict(initial_c=np.zeros((1, 3, 4))), TypeError, "initial_c: expected dtype float32 to"),
        (dict(W=np.zeros((1, 16, 5))), TypeError, "W: expected dtype float32 to match X, got"),
        (dict(R=np.zeros((1, 16, 4))), TypeError, "R: expected dtype float32 to match X, got"),
        (dict(B=np.full((1, 32), "a")), TypeError, "B: expected dtype float32 to match X, got <U1"),
        (dict(X=np.zeros((6, 3, 5), np.int32)), TypeError, "X: expected dtype float32 or float64"),
        (dict(X=np.zeros((6, 3, 5)).tolist()), TypeError,
         r"W: expected dtype float64 to match X \(a list, read as float64\), got float32"),
        (dict(sequence_lens=np.array([6.0, 0, 2])), TypeError,
         "sequence_lens: expected an integer array, got dtype float64"),
        (dict(sequence_lens=np.array([6, 0, 7])), ValueError,
         r"sequence_lens: expected integers in \[0, 6\], got 7 at \[2\]"),
        (dict(sequence_lens=np.array([-1, 0, 2])), ValueError, r"sequence_lens: .*got -1 at \[0\]"),
    ],
)  # fmt: skip
def test_errors_name_the_onnx_inputs(change, error, match):
    with pytest.raises(error, match=match):
        onnx_lstm(**{**node_inputs(), **change})


def test_bad_arguments_bidirectional():
    f = node_inputs(1)  # D = 1 arrays
    with pytest.raises(ValueError, match=r"R: expected .*D = 2, got \(1, 16, 4\)"):
        onnx_lstm(**f, direction="bidirectional")
