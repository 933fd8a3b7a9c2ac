"""The two CPU paths of the recurrent product against lstm_ext.reference.

Where the CPU has AVX-512F, or AVX2 and FMA, the core multiplies by R packed
once per call, in blocks of 32 (float32) or 16 (float64) hidden units with a
hand-written kernel (cpp/src/recurrent.cpp; both kernels give the same
bits); elsewhere, and with set_packed_recurrent(False), each step calls the
BLAS. Where W and R are small (4H(I+H) <= 2^21) the input products x W^T
take the same kernel on W packed the same way, a few steps at a time (at
least 64 rows); larger weights take them from the BLAS, and the kernel then
fetches each next panel of R into L2 ahead (the same bits). Where also
4BHH >= 3 * 32768, a float32 training forward on an AVX-512F CPU packs x and
h_{t-1} by columns and backward computes dW and dR from them by the kernel
(other bits than the BLAS's, within rounding). The rest of the
suite runs whichever this machine uses; this file runs both on the same
problems. The shapes cover every row
count the kernels have their own code for (1 to 12 rows at a time and the rest),
hidden sizes that are not a multiple of the block (masked edges), blocks
split over threads, ragged and reversed batches, peepholes and clipping.
Tolerances as in test_features (RTOL 1e-12 float64, 1e-5 float32): both
paths add the same O(H) products per step, in a different order.
"""

import itertools
import os
import subprocess
import sys
import threading

import numpy as np
import pytest
from test_features import check, features_problem, run_both

import lstm_ext
from helpers import assert_close
from lstm_ext import _core

_before = _core.set_packed_recurrent(True)
HAS_PACKED = _core.packed_recurrent_enabled()  # it stays off where the CPU cannot
_core.set_packed_recurrent(_before)


def test_kernel_named():
    # The kernel follows the CPU: avx512f, else avx2 (with FMA), else none.
    kernel = _core.packed_recurrent_kernel()
    assert kernel in ("avx512f", "avx2", "none")
    assert (kernel != "none") == HAS_PACKED


SHAPES = [  # (T, B, I, H)
    (3, 1, 5, 1),
    (4, 2, 7, 17),
    (5, 3, 3, 33),
    (3, 4, 6, 40),
    (2, 5, 4, 64),
    (3, 11, 9, 31),
    (2, 12, 8, 16),
    (3, 13, 5, 47),
    (2, 25, 3, 70),
    (9, 2, 16, 130),
    (70, 4, 300, 37),  # x W^T in the team: chunks of 64 steps, I past OpenBLAS's K block
    (5, 1, 600, 40),  # I past the kernel's 512-row chunk
    (260, 1, 3, 20),  # a second chunk of 256 steps
    (3, 2, 40, 40),  # I = H: dW and dR side by side (blas.h's gemms)
    (3, 1, 520, 520),  # ... each cut in two blocks (4H > 2,048)
    (2, 14, 520, 520),  # past 2^21 with two groups of rows: panel by panel, fetching ahead
    (3, 70, 6, 70),  # 64 rows or more: a step's gate pass over all of a thread's units
    # 4BHH >= 3 * 32768: backward's dW and dR by the kernel on x and h_{t-1}
    # packed by the forward (float32, AVX-512F), over dz^T's chunks of 256
    # rows (a partial one last); H and I not of 32 (masked panels), and B = 1.
    (40, 16, 20, 40),
    (4, 1, 30, 160),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_path_matches_reference(rng, path, shape, dtype):
    T, B, I, H = shape
    p, kw = features_problem(rng, T, B, I, H, dtype)
    check(*run_both(p, kw, dtype), dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "options",
    [
        dict(reverse=True),
        dict(ragged=True),
        dict(ragged=True, reverse=True, peephole=True),
        dict(clip=0.7, input_forget=True),
    ],
    ids=["reverse", "ragged", "ragged-reverse-peephole", "clip-coupled"],
)
def test_path_features(rng, path, options, dtype):
    T, B, I, H = 7, 14, 6, 45
    opts = dict(options)
    lengths = rng.integers(0, T + 1, B) if opts.pop("ragged", False) else None
    p, kw = features_problem(rng, T, B, I, H, dtype, lengths=lengths, **opts)
    check(*run_both(p, kw, dtype), dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_path_batch_shrinking_past_64_rows(rng, path, dtype):
    # Steps of 64 rows or more run the gate pass once over a thread's units,
    # fewer block by block (kWholePassRows): a ragged batch of 70 crosses it.
    T, B = 6, 70
    lengths = np.where(np.arange(B) < 60, T, rng.integers(0, T, B))
    opts = dict(lengths=lengths, peephole=True, clip=0.7)
    p, kw = features_problem(rng, T, B, 6, 70, dtype, reverse=True, **opts)
    check(*run_both(p, kw, dtype), dtype)
    args = [p[k] for k in ("x", "W", "R", "b", "h0", "c0")]
    train, infer = (lstm_ext.forward(*args, training=t, **kw) for t in (True, False))
    for a, b in zip(train[:3], infer[:3], strict=True):
        np.testing.assert_array_equal(a, b)  # inference keeps no cache: the same bits


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("B, I, H, P", [(3, 5, 40, 0), (70, 6, 40, 0), (4, 5, 24, 7)])
def test_inference_writes_each_step_s_h_into_y_and_reads_it_back(rng, path, B, I, H, P, dtype):
    # In inference, without lengths or reverse, step k's h goes straight into
    # y's rows of step k and step k + 1 reads it there (no ring of two
    # buffers, no copy): over inference chunks, the bits of training, which
    # keeps the ring.
    T = _core.inference_chunk(B) + 3
    p, kw = features_problem(rng, T, B, I, H, dtype, P=P)
    args = [p[k] for k in ("x", "W", "R", "b", "h0", "c0")]
    train, infer = (lstm_ext.forward(*args, training=t, **kw) for t in (True, False))
    for a, b in zip(train[:3], infer[:3], strict=True):
        np.testing.assert_array_equal(a, b)
    check(*run_both(p, kw, dtype), dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_path_small_ragged_batch(rng, path, dtype):
    # x W^T in the team (22 steps at a time at B = 3), over inference chunks
    # of 86 steps, while the batch shrinks.
    T = 2 * _core.inference_chunk(3) + 5
    lengths = [T, _core.inference_chunk(3) + 3, 0]
    p, kw = features_problem(rng, T, 3, 5, 40, dtype, lengths=lengths, reverse=True, peephole=True)
    check(*run_both(p, kw, dtype), dtype)


@pytest.mark.parametrize("B, I, H", [(3, 4, 37), (5, 4, 37), (2, 300, 37), (20, 300, 37),
                                     (5, 4, 520)])  # fmt: skip
def test_inference_matches_training_on_both_paths(rng, path, B, I, H):
    # Inference runs the input projection in chunks; the recurrence must give
    # the same bits as training's, which keeps every step. Where x W^T is the
    # BLAS's (the BLAS path, and 4H(I+H) > 2^21 as at H = 520 on either), I
    # is small: OpenBLAS's blocking of I depends on the number of rows (I =
    # 300 gave other bits for a chunk than for all steps). The kernel's order
    # is fixed (small weights on the packed path): any I.
    if not path and I > 4:
        I = 4
    T = 3 * _core.inference_chunk(B) + 1
    p, _ = features_problem(rng, T, B, I, H, np.float32)
    args = [p[k] for k in ("x", "W", "R", "b", "h0", "c0")]
    a = lstm_ext.forward(*args, training=False)
    b = lstm_ext.forward(*args, training=True)
    for u, v in zip(a[:3], b[:3], strict=True):
        np.testing.assert_array_equal(u, v)


@pytest.mark.parametrize("I, H", [(5, 17), (33, 40), (64, 64), (520, 520)])
@pytest.mark.parametrize("B", [1, 2, 3, 4, 7, 12, 13, 24, 25])
def test_one_step_inference_gives_the_bits_of_training_and_packed_layer(rng, B, I, H):
    # A forward of one step in inference, of up to 12 rows (24 where W and R
    # hold 2^18 elements or more: 520 here), takes W and R as
    # they are where the CPU has AVX-512F (recurrent_block_unpacked: each tile
    # transposed in registers, not packed first); the same FMAs in the same
    # order, so the bits of training's forward (which packs) and of a
    # PackedLayer's. Row counts below and past the bound, rotated ones (B < 4),
    # blocks and tiles cut short (H = 17, 40), weights past 2^21 elements
    # (520: x W^T by the BLAS, R unpacked), ragged rows (length 0), reverse,
    # the options the gate pass reads, and 1 to 3 threads (the rotated rows
    # split over a team).
    optionss = ({}, {"lengths": rng.integers(0, 2, B), "reverse": True},
                {"clip": 0.5, "input_forget": True})  # fmt: skip
    threads = lstm_ext.get_num_threads()
    try:
        for n, options in itertools.product((1, 2, 3), optionss):
            lstm_ext.set_num_threads(n)
            peephole = "clip" in options
            p, kw = features_problem(rng, 1, B, I, H, np.float32, peephole=peephole, **options)
            args = [p[k] for k in ("x", "W", "R", "b", "h0", "c0")]
            a = lstm_ext.forward(*args, training=False, return_cell_states=True, **kw)
            b = lstm_ext.forward(*args, training=True, return_cell_states=True, **kw)
            layer_kw = {k: v for k, v in kw.items() if k not in ("lengths", "reverse")}
            layer = lstm_ext.PackedLayer(p["W"], p["R"], p["b"], **layer_kw)
            order = {k: kw[k] for k in ("lengths", "reverse") if k in kw}
            c = layer.forward(p["x"], p["h0"], p["c0"], return_cell_states=True, **order)
            for name in ("y", "h", "c", "cell_states"):
                u, v, w = (getattr(r, name) for r in (a, b, c))
                where = f"{name}, {n} threads, {sorted(options)}"
                np.testing.assert_array_equal(u, v, err_msg=f"{where}: inference against training")
                np.testing.assert_array_equal(u, w, err_msg=f"{where}: against PackedLayer")
    finally:
        lstm_ext.set_num_threads(threads)


def test_one_step_inference_runs_while_another_thread_turns_the_kernel_off(rng):
    # A call decides on its products once; set_packed_recurrent from another
    # thread meanwhile must not make a product it chose refuse to run (the
    # one-step product had checked the switch itself: a RuntimeError in most
    # calls here). The result is either path's, which agree to rounding (the
    # module's float32 tolerance).
    p, _ = features_problem(rng, 1, 3, 30, 70, np.float32)
    args = [p[k] for k in ("x", "W", "R", "b", "h0", "c0")]
    want = lstm_ext.forward(*args, training=False).y
    stop = threading.Event()

    def flip():
        while not stop.is_set():
            _core.set_packed_recurrent(False)
            _core.set_packed_recurrent(True)

    before = _core.set_packed_recurrent(True)
    flipper = threading.Thread(target=flip)
    flipper.start()
    try:
        for _ in range(300):
            assert_close("y", lstm_ext.forward(*args, training=False).y, want, 1e-5)
    finally:
        stop.set()
        flipper.join()
        _core.set_packed_recurrent(before)


@pytest.mark.parametrize("forward_on, backward_on", [(True, False), (False, True)])
def test_the_kernel_switched_between_forward_and_backward(rng, forward_on, backward_on):
    # Where backward computes dW and dR by the kernel, it reads x and h_{t-1}
    # packed by the forward, which says in the workspace whether it packed
    # them: a forward on one path and a backward on the other give the
    # reference's gradients either way (the module's float32 tolerance).
    if not HAS_PACKED:
        pytest.skip(reason="this CPU has neither AVX-512F nor AVX2+FMA: only the BLAS path here")
    p, kw = features_problem(rng, 9, 16, 20, 40, np.float32, lengths=[9, 3] * 8)
    names, _, want = run_both(p, kw, np.float32)
    args = [p[k] for k in ("x", "W", "R", "b", "h0", "c0")]
    before = _core.set_packed_recurrent(forward_on)
    try:
        f = lstm_ext.forward(*args, return_cell_states=True, **kw)
        _core.set_packed_recurrent(backward_on)
        g = lstm_ext.backward(f.cache, p["dy"], p["dh"], p["dc"])
    finally:
        _core.set_packed_recurrent(before)
    check(names, [f.y, f.h, f.c, f.cell_states, *g[:6]], want, np.float32)


def test_paths_agree(rng):
    if not HAS_PACKED:
        pytest.skip(reason="this CPU has neither AVX-512F nor AVX2+FMA: only the BLAS path here")
    p, _ = features_problem(rng, 20, 9, 24, 96, np.float64)
    args = [p[k] for k in ("x", "W", "R", "b", "h0", "c0")]
    outs = {}
    for on in (True, False):
        before = _core.set_packed_recurrent(on)
        try:
            f = lstm_ext.forward(*args)
            outs[on] = [*f[:3], *lstm_ext.backward(f.cache, p["dy"], p["dh"], p["dc"])[:6]]
        finally:
            _core.set_packed_recurrent(before)
    for a, b in zip(outs[True], outs[False], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("I, H", [(24, 96), (520, 512)])  # W and R kept in the workspace, or not
def test_backward_on_the_other_path(rng, I, H):
    """Where a training forward keeps W and R packed (lstm.h's
    training_keeps_weights), the BLAS path's backward reads them unpacked: the
    path may change between forward and backward (set_packed_recurrent)."""
    if not HAS_PACKED:
        pytest.skip(reason="this CPU has neither AVX-512F nor AVX2+FMA: only the BLAS path here")
    p, _ = features_problem(rng, 3, 2, I, H, np.float64)
    args = [p[k] for k in ("x", "W", "R", "b", "h0", "c0")]
    grads = {}
    for fwd_on, bwd_on in [(True, True), (True, False), (False, True), (False, False)]:
        before = _core.set_packed_recurrent(fwd_on)
        try:
            f = lstm_ext.forward(*args)
            _core.set_packed_recurrent(bwd_on)
            grads[fwd_on, bwd_on] = lstm_ext.backward(f.cache, p["dy"], p["dh"], p["dc"])[:6]
        finally:
            _core.set_packed_recurrent(before)
    for key, got in grads.items():
        for name, a, b in zip(lstm_ext.GradResult._fields, grads[True, True], got, strict=False):
            np.testing.assert_allclose(b, a, rtol=1e-11, atol=1e-12, err_msg=f"{name} {key}")


# The AVX-512F and AVX2 kernels promise the same bits (recurrent.h), and
# bfloat16 weights the float32 result on rounded weights with either (each
# reads bfloat16 panels of its own layout). LSTM_EXT_PACKED_KERNEL=avx2 runs the AVX2
# kernel on a CPU with AVX-512F, in a process of its own (it is read once).
KERNEL_SCRIPT = r"""
import hashlib
import numpy as np
import lstm_ext
from lstm_ext import _core

h = hashlib.sha256()
rng = np.random.default_rng(0)
for dt in (np.float32, np.float64):
    # (3, 14, 520, 520): past 2^21, the AVX-512 kernel's panel-by-panel order
    # that fetches each next panel (two groups of 7 rows, I = 520 in two chunks).
    shapes = [(9, 1, 7, 40), (5, 3, 300, 70), (4, 13, 9, 100), (3, 2, 520, 520), (3, 14, 520, 520)]
    for T, B, I, H in shapes:
        x = rng.standard_normal((T, B, I)).astype(dt)
        W, R = (0.1 * rng.standard_normal((2, 4 * H, max(I, H)))).astype(dt)
        W, R = W[:, :I].copy(), R[:, :H].copy()
        lengths = rng.integers(0, T + 1, B)
        for kw in ({}, {"lengths": lengths, "reverse": True}):
            out = lstm_ext.forward(x, W, R, **kw)
            g = lstm_ext.backward(out.cache, np.ones_like(out.y))
            for a in (*out[:3], *g, *lstm_ext.forward(x, W, R, training=False, **kw)[:3]):
                h.update(np.ascontiguousarray(a).tobytes())
            if dt == np.float32:
                b16 = lstm_ext.forward(x, W, R, training=False, weight_dtype="bfloat16", **kw)
                rW, rR = lstm_ext.round_bfloat16(W), lstm_ext.round_bfloat16(R)
                f32 = lstm_ext.forward(x, rW, rR, training=False, **kw)
                for a, b in zip(b16[:3], f32[:3]):
                    assert np.array_equal(a, b), "bfloat16 is not float32 on rounded weights"
                    h.update(a.tobytes())
print(_core.packed_recurrent_kernel(), h.hexdigest())
"""


def test_avx2_kernel_gives_the_avx512_bits():
    if _core.packed_recurrent_kernel() != "avx512f":
        pytest.skip(reason="this CPU has no AVX-512F: the two kernels cannot be compared on it")

    def run(**env):
        out = subprocess.run(
            [sys.executable, "-c", KERNEL_SCRIPT],
            env=dict(os.environ, **env),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert out.returncode == 0, out.stderr
        return out.stdout.split()

    avx512, avx2 = run(), run(LSTM_EXT_PACKED_KERNEL="avx2")
    assert (avx512[0], avx2[0]) == ("avx512f", "avx2")
    assert avx512[1] == avx2[1]
