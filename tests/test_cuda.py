"""The CUDA path against the CPU path and the reference.

The first tests run everywhere: the device argument and what it says where
the GPU cannot be used. The rest need a visible GPU and skip, saying why,
where there is none (``lstm_ext.cuda_status()``).

On the GPU every output and workspace buffer starts as NaN (``_set_poison``),
so an element the GPU leaves unwritten fails the comparison.

Tolerances: float64 1e-12 (as test_core: O(T) rounding steps of 1e-16);
float32 against the float64 reference 2e-5, twice the CPU's 1e-5: the GPU
runs CUDA's expf and tanhf (up to 2 ulp, against the CPU's 1) and contracts
multiply-adds into FMA, and cuBLAS sums in its own order; the same form as
helpers.assert_close. GPU against CPU in float32: the sum of both bounds.
"""

import zlib

import numpy as np
import pytest
from test_features import CASES, features_problem

import lstm_ext
from helpers import assert_close, make_problem
from lstm_ext import nn
from lstm_ext import reference as ref

RTOL = {np.float32: 2e-5, np.float64: 1e-12}
DTYPES = [np.float32, np.float64]


# ---- the device argument, everywhere ------------------------------------------------


def test_cpu_always_works():
    p = make_problem(np.random.default_rng(0), 3, 2, 4, 5)
    a = lstm_ext.forward(p["x"], p["W"], p["R"], device="cpu")
    b = lstm_ext.forward(p["x"], p["W"], p["R"])
    np.testing.assert_array_equal(a.y, b.y)


def test_auto_runs_somewhere():
    p = make_problem(np.random.default_rng(1), 3, 2, 4, 5)
    a = lstm_ext.forward(p["x"], p["W"], p["R"], device="auto")
    assert a.y.shape == (3, 2, 5)
    assert lstm_ext.step(p["x"][0], None, None, p["W"], p["R"], device="auto").h.shape == (2, 5)


@pytest.mark.parametrize(
    ("device", "error"), [("gpu", ValueError), (0, TypeError), (None, TypeError)]
)
def test_bad_device(device, error):
    p = make_problem(np.random.default_rng(2), 2, 1, 3, 4)
    with pytest.raises(error, match="device: expected one of"):
        lstm_ext.forward(p["x"], p["W"], p["R"], device=device)
    with pytest.raises(error, match="device: expected one of"):
        nn.LSTM(3, 4, device=device)


def test_status_is_one_line():
    s = lstm_ext.cuda_status()
    assert isinstance(s, str) and s and "\n" not in s
    assert isinstance(lstm_ext.cuda_available(), bool)


@pytest.mark.skipif(lstm_ext.cuda_available(), reason="a GPU is usable here")
def test_cuda_without_gpu_says_what_is_missing():
    p = make_problem(np.random.default_rng(3), 2, 1, 3, 4)
    with pytest.raises(RuntimeError, match="device='cuda': the CUDA path is") as e:
        lstm_ext.forward(p["x"], p["W"], p["R"], device="cuda")
    assert ("not compiled" in str(e.value)) or ("found" in str(e.value)) or ("load" in str(e.value))


class FakeGpuArray:
    """Any object with __cuda_array_interface__ counts as a GPU array."""

    @property
    def __cuda_array_interface__(self):
        return {"shape": (2, 1, 3), "typestr": "<f8", "data": (0, False), "version": 3}


def test_gpu_array_on_cpu_is_a_type_error():
    p = make_problem(np.random.default_rng(4), 2, 1, 3, 4)
    with pytest.raises(TypeError, match=r"x: a GPU array .*device='cpu'"):
        lstm_ext.forward(FakeGpuArray(), p["W"], p["R"])
    with pytest.raises(TypeError, match=r"x: a GPU array .*nn\.LSTM takes those with device"):
        nn.LSTM(3, 4)(FakeGpuArray())


# ---- on a GPU ------------------------------------------------------------------------------

gpu = pytest.mark.skipif(not lstm_ext.cuda_available(), reason=lstm_ext.cuda_status())


@pytest.fixture(autouse=True)
def poison():
    if lstm_ext.cuda_available():
        from lstm_ext import _cuda

        _cuda._set_poison(True)
        yield
        _cuda._set_poison(False)
    else:
        yield


def run(p, kw, device, batch_first=False):
    """Every output and gradient of one forward/backward pair, by name."""
    args = [p[k] for k in ("x", "W", "R", "b", "h0", "c0")]
    f = lstm_ext.forward(
        *args, batch_first=batch_first, return_cell_states=True, device=device, **kw
    )
    g = lstm_ext.backward(f.cache, p["dy"], p["dh"], p["dc"])
    out = dict(y=f.y, h=f.h, c=f.c, cell_states=f.cell_states)
    out.update(zip(("dx", "dh0", "dc0", "dW", "dR", "db"), g[:6], strict=True))
    if len(g) > 6:
        out["dW_hr"], out["dpeephole"] = g.dW_hr, g.dpeephole
    return out


def run_reference(p, kw, batch_first=False):
    q = [np.asarray(p[k], np.float64) for k in ("x", "W", "R", "b", "h0", "c0")]
    kw64 = {k: np.asarray(v, np.float64) if k in ("W_hr", "peephole") else v for k, v in kw.items()}
    f = ref.forward(*q, batch_first=batch_first, return_cell_states=True, **kw64)
    g = ref.backward(f[3], *(np.asarray(p[k], np.float64) for k in ("dy", "dh", "dc")))
    out = dict(y=f[0], h=f[1], c=f[2], cell_states=f[4])
    out.update(zip(("dx", "dh0", "dc0", "dW", "dR", "db", "dW_hr", "dpeephole"), g, strict=False))
    return out


def compare(gpu_out, cpu_out, want, dtype):
    for name, w in want.items():
        if w is None:
            assert gpu_out.get(name) is None, name
            continue
        a = gpu_out[name]
        assert a.dtype == dtype, name
        assert np.isfinite(a).all(), f"{name}: NaN left (an element the GPU did not write?)"
        assert_close(f"{name} (GPU vs reference)", a, w, RTOL[dtype])
        cpu_rtol = RTOL[dtype] + (1e-5 if dtype == np.float32 else 1e-12)
        assert_close(f"{name} (GPU vs CPU)", a, cpu_out[name], cpu_rtol)


@gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", sorted(CASES))
def test_every_feature(case, dtype):
    rng = np.random.default_rng(zlib.crc32(case.encode()))
    opts = dict(CASES[case])
    p, kw = features_problem(rng, 7, 6, 5, 9, dtype, **opts)
    compare(run(p, kw, "cuda"), run(p, kw, "cpu"), run_reference(p, kw), dtype)


# (T, B, I, H): odd sizes, B = 1, H not a multiple of 32, T = 1, a long T,
# sizes past one thread block.
SHAPES = [(1, 1, 1, 1), (1, 3, 7, 33), (5, 1, 3, 31), (13, 2, 17, 65), (200, 3, 4, 7),
          (9, 37, 50, 100), (4, 64, 128, 257), (3, 130, 9, 300)]  # fmt: skip


@gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_shapes(shape, dtype):
    T, B, I, H = shape
    rng = np.random.default_rng(T * 1000 + B)
    p, kw = features_problem(rng, T, B, I, H, dtype)
    compare(run(p, kw, "cuda"), run(p, kw, "cpu"), run_reference(p, kw), dtype)


def clip_off_the_edge(p, kw, batch_first):
    """kw with its clip moved (by 1 % at a time) until no pre-activation lies
    at a hair's breadth from ±clip. There the gradient jumps (the clamp
    passes it or not), so a rounding difference between two correct
    implementations flips a whole term: case 1 below had one gate within
    7e-7 (relative) of its clip, and the reference's dx moved by 0.02 for a
    1e-6 change of clip. Stable means: ±1e-4 of clip moves no output by more
    than 1e-3·max(|output|, 1)."""
    while kw.get("clip"):
        lo = run_reference(p, dict(kw, clip=kw["clip"] * (1 - 1e-4)), batch_first)
        hi = run_reference(p, dict(kw, clip=kw["clip"] * (1 + 1e-4)), batch_first)
        if all(
            np.abs(lo[k] - hi[k]).max(initial=0) <= 1e-3 * max(np.abs(lo[k]).max(initial=0), 1)
            for k in lo
            if lo[k] is not None
        ):
            return kw
        kw = dict(kw, clip=kw["clip"] * 1.01)
    return kw


@gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_random_problems(dtype):
    """Many random shapes with random features, ragged and reversed included;
    every failing problem is reported, not only the first."""
    rng = np.random.default_rng(7)
    failures = []
    for case in range(25):
        T, B, I = (int(v) for v in rng.integers(1, 12, 3))
        H = int(rng.integers(1, 70))
        opts = dict(
            reverse=bool(rng.integers(2)),
            peephole=bool(rng.integers(2)),
            input_forget=bool(rng.integers(2)),
        )
        if rng.integers(2):
            opts["P"] = int(rng.integers(1, H + 1)) if H > 1 else 0
        if rng.integers(2):
            opts["clip"] = float(rng.uniform(0.3, 3))
        if rng.integers(2):
            opts["lengths"] = rng.integers(0, T + 1, B)
        p, kw = features_problem(rng, T, B, I, H, dtype, **opts)
        bf = bool(rng.integers(2))
        if bf:
            p["x"] = np.ascontiguousarray(p["x"].swapaxes(0, 1))
            p["dy"] = np.ascontiguousarray(p["dy"].swapaxes(0, 1))
        kw = clip_off_the_edge(p, kw, bf)
        try:
            compare(run(p, kw, "cuda", bf), run(p, kw, "cpu", bf), run_reference(p, kw, bf), dtype)
        except AssertionError as e:
            failures.append(f"case {case} {(T, B, I, H)} {opts} batch_first={bf}: {e}")
    assert not failures, "\n".join(failures)


@gpu
def test_long_sequence_float32():
    rng = np.random.default_rng(11)
    p, kw = features_problem(rng, 1000, 4, 8, 16, np.float32)
    compare(run(p, kw, "cuda"), run(p, kw, "cpu"), run_reference(p, kw), np.float32)


@gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_step_matches_forward(dtype):
    rng = np.random.default_rng(5)
    p, kw = features_problem(rng, 6, 3, 4, 10, dtype, P=4, peephole=True, clip=1.5)
    f = lstm_ext.forward(p["x"], p["W"], p["R"], p["b"], p["h0"], p["c0"], training=False, **kw)
    h, c = p["h0"], p["c0"]
    for t in range(6):
        h, c = lstm_ext.step(p["x"][t], h, c, p["W"], p["R"], p["b"], device="cuda", **kw)
        assert_close("step h", h, f.y[t], RTOL[dtype] * 2)
    assert_close("step c", c, f.c, RTOL[dtype] * 2)


@gpu
def test_inference_matches_training():
    rng = np.random.default_rng(6)
    p, kw = features_problem(rng, 20, 5, 6, 40, np.float32, lengths=[20, 3, 0, 19, 7])
    args = [p[k] for k in ("x", "W", "R", "b", "h0", "c0")]
    a = lstm_ext.forward(*args, training=False, device="cuda", **kw)
    b = lstm_ext.forward(*args, training=True, device="cuda", **kw)
    for u, v in zip(a[:3], b[:3], strict=True):
        np.testing.assert_array_equal(u, v)
    assert a.cache is None and b.cache.device == "cuda"


@gpu
def test_same_bits_every_run():
    rng = np.random.default_rng(8)
    p, kw = features_problem(rng, 30, 16, 32, 64, np.float32, lengths=rng.integers(0, 31, 16))
    first = run(p, kw, "cuda")
    for _ in range(3):
        again = run(p, kw, "cuda")
        for name, v in first.items():
            np.testing.assert_array_equal(again[name], v, err_msg=name)


@gpu
def test_cache_is_private_and_reusable():
    rng = np.random.default_rng(9)
    p, _ = features_problem(rng, 5, 3, 4, 6, np.float64)
    f = lstm_ext.forward(*(p[k] for k in ("x", "W", "R", "b", "h0", "c0")), device="cuda")
    g1 = lstm_ext.backward(f.cache, p["dy"])
    p["x"][:] = 0  # forward's cache holds its own copy on the GPU
    p["W"][:] = 0
    g2 = lstm_ext.backward(f.cache, p["dy"])
    for a, b in zip(g1, g2, strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(TypeError, match=r"cache returned by lstm_ext\.forward"):
        lstm_ext._core.backward(f.cache, p["dy"])


@gpu
def test_bad_input_on_gpu_names_the_argument():
    rng = np.random.default_rng(10)
    p = make_problem(rng, 3, 2, 4, 5)
    with pytest.raises(ValueError, match=r"R: expected shape \[4H,H\]"):
        lstm_ext.forward(p["x"], p["W"], p["R"][:, :3], device="cuda")
    with pytest.raises(TypeError, match="W: expected dtype float64"):
        lstm_ext.forward(p["x"], p["W"].astype(np.float32), p["R"], device="cuda")
    with pytest.raises(ValueError, match=r"lengths\[1\] = 9 is outside \[0, 3\]"):
        lstm_ext.forward(p["x"], p["W"], p["R"], lengths=[1, 9], device="cuda")
    f = lstm_ext.forward(p["x"], p["W"], p["R"], device="cuda")
    with pytest.raises(ValueError, match="dy: expected shape"):
        lstm_ext.backward(f.cache, p["dy"][:2])


@gpu
@pytest.mark.parametrize("bidirectional", [False, True])
def test_nn_lstm_on_gpu(bidirectional):
    rng = np.random.default_rng(12)
    kw = dict(num_layers=2, bidirectional=bidirectional, proj_size=3, dtype=np.float64, seed=4)
    cpu, gpu_ = nn.LSTM(5, 8, **kw), nn.LSTM(5, 8, device="cuda", **kw)
    assert gpu_.device == "cuda"
    x = rng.standard_normal((7, 4, 5))
    lengths = [7, 2, 0, 5]
    out_c, (h_c, c_c) = cpu(x, lengths=lengths)
    out_g, (h_g, c_g) = gpu_(x, lengths=lengths)
    for name, a, b in (("out", out_g, out_c), ("h", h_g, h_c), ("c", c_g, c_c)):
        assert_close(name, a, b, 1e-12)
    dy = rng.standard_normal(out_c.shape)
    assert_close("dx", gpu_.backward(dy), cpu.backward(dy), 1e-12)
    for name in cpu.grads:  # CuPy arrays where CuPy is installed
        assert_close(name, lstm_ext._device.host(gpu_.grads[name]), cpu.grads[name], 1e-12)


# ---- GPU arrays in place ------------------------------------------------------------------


def gpu_library(name):
    """The module, or a skip saying why it cannot hold GPU arrays here."""
    if not lstm_ext.cuda_available():
        pytest.skip(reason=lstm_ext.cuda_status())
    lib = pytest.importorskip(name, reason=f"{name} is not installed")
    if name == "torch" and not lib.cuda.is_available():
        pytest.skip(reason="this torch has no CUDA")
    return lib


def to_lib(lib, a):
    return lib.asarray(a) if lib.__name__ == "cupy" else lib.as_tensor(a, device="cuda")


def to_host(a):
    return a.get() if hasattr(a, "get") else a.cpu().numpy()


@pytest.mark.parametrize("name", ["cupy", "torch"])
@pytest.mark.parametrize("batch_first", [False, True])
def test_gpu_arrays_in_place(name, batch_first):
    """GPU arrays in, GPU arrays of the same library out, the same numbers as
    NumPy in and out (the same kernels on the same values: the same bits)."""
    lib = gpu_library(name)
    rng = np.random.default_rng(13)
    p, kw = features_problem(rng, 9, 3, 5, 12, np.float32, peephole=True, lengths=[9, 0, 4])
    if batch_first:
        p["x"] = np.ascontiguousarray(p["x"].swapaxes(0, 1))
        p["dy"] = np.ascontiguousarray(p["dy"].swapaxes(0, 1))
    names = ("x", "W", "R", "b", "h0", "c0")
    want_f = lstm_ext.forward(*(p[k] for k in names), batch_first=batch_first, device="cuda", **kw)
    want_b = lstm_ext.backward(want_f.cache, p["dy"], p["dh"], p["dc"])
    kw_gpu = dict(kw, peephole=to_lib(lib, kw["peephole"]))
    got_f = lstm_ext.forward(*(to_lib(lib, p[k]) for k in names), batch_first=batch_first,
                             device="cuda", **kw_gpu)  # fmt: skip
    got_b = lstm_ext.backward(got_f.cache, to_lib(lib, p["dy"]), to_lib(lib, p["dh"]), None)
    want_b2 = lstm_ext.backward(want_f.cache, p["dy"], p["dh"], None)
    for name_, a, b in zip(("y", "h", "c"), got_f[:3], want_f[:3], strict=True):
        assert type(a).__module__.split(".")[0] == name, name_
        np.testing.assert_array_equal(to_host(a), b, err_msg=name_)
    for a, b in zip(got_b, want_b2, strict=True):
        if b is None:  # dW_hr without a projection
            assert a is None
            continue
        assert type(a).__module__.split(".")[0] == name
        np.testing.assert_array_equal(to_host(a), b)
    assert want_b.dW.shape == got_b.dW.shape
    x0 = to_lib(lib, p["x"][:, 0] if batch_first else p["x"][0])
    weights = (to_lib(lib, p[k]) for k in ("W", "R", "b"))
    h, c = lstm_ext.step(x0, None, None, *weights, device="cuda")
    assert type(h).__module__.split(".")[0] == name and tuple(c.shape) == (3, 12)


def test_gpu_arrays_not_contiguous_and_device_arrays():
    cupy = gpu_library("cupy")
    from lstm_ext import _cuda

    rng = np.random.default_rng(14)
    p = make_problem(rng, 6, 4, 10, 8, np.float64)
    want = lstm_ext.forward(p["x"][:, :, ::2], p["W"][:, ::2], p["R"], device="cuda").y
    x = cupy.asarray(p["x"])[:, :, ::2]  # a strided view: lstm_ext.forward copies it once
    got = lstm_ext.forward(x, cupy.asarray(p["W"])[:, ::2], cupy.asarray(p["R"]), device="cuda").y
    np.testing.assert_array_equal(got.get(), want)
    W = _cuda.to_device(np.ascontiguousarray(p["W"][:, ::2]))  # weights put on the GPU once
    got = lstm_ext.forward(p["x"][:, :, ::2], W, _cuda.to_device(p["R"]), device="cuda").y
    assert isinstance(got, np.ndarray)  # x was on the host
    np.testing.assert_array_equal(got, want)
    with pytest.raises(TypeError, match="lengths: expected integers on the host"):
        lstm_ext.forward(x, W, _cuda.to_device(p["R"]), lengths=cupy.asarray([1, 2, 3, 4]),
                         device="cuda")  # fmt: skip
    with pytest.raises(TypeError, match="R: expected dtype float64"):
        lstm_ext.forward(x, W, cupy.asarray(p["R"], dtype=cupy.float32), device="cuda")


def test_dlpack_gpu_arrays_go_through_cupy():
    """JAX arrays speak DLPack, not __cuda_array_interface__."""
    import os

    gpu_library("cupy")
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # leave the GPU's memory
    jax = pytest.importorskip("jax", reason="jax is not installed")
    if not any(d.platform == "gpu" for d in jax.devices()):
        pytest.skip(reason="this jax has no GPU")
    rng = np.random.default_rng(15)
    p = make_problem(rng, 5, 2, 3, 6, np.float32)
    want = lstm_ext.forward(p["x"], p["W"], p["R"], device="cuda").y
    got = lstm_ext.forward(*(jax.numpy.asarray(p[k]) for k in ("x", "W", "R")), device="cuda").y
    np.testing.assert_array_equal(to_host(got), want)


def test_nn_lstm_trains_on_the_gpu_with_cupy(tmp_path):
    """With CuPy, nn.LSTM(device='cuda') keeps parameters, gradients and the
    optimiser's state on the GPU; training matches the CPU's, step for step."""
    cupy = gpu_library("cupy")
    from lstm_ext import checkpoint, optim

    kw = dict(num_layers=2, bidirectional=True, dtype=np.float64, seed=3, dropout=0.3)
    cpu, gpu_ = nn.LSTM(5, 8, **kw), nn.LSTM(5, 8, device="cuda", **kw)
    assert all(isinstance(p, cupy.ndarray) for p in gpu_.params.values())
    opt_cpu, opt_gpu = optim.Adam(cpu, lr=1e-2), optim.Adam(gpu_, lr=1e-2)
    rng = np.random.default_rng(16)
    for _ in range(3):
        x, dy = rng.standard_normal((7, 4, 5)), rng.standard_normal((7, 4, 16))
        for model, opt in ((cpu, opt_cpu), (gpu_, opt_gpu)):
            opt.zero_grad()
            out, _ = model(x, lengths=[7, 3, 0, 5])
            assert isinstance(out, np.ndarray)  # NumPy in, NumPy out
            assert isinstance(model.backward(dy), np.ndarray)
            optim.clip_grad_norm(model, 1.0)
            opt.step()
    assert all(isinstance(g, cupy.ndarray) for g in gpu_.grads.values())
    for name, p in cpu.params.items():
        assert_close(name, gpu_.params[name].get(), p, 1e-10)
    state = gpu_.state_dict()
    assert all(isinstance(v, np.ndarray) for v in state.values())
    checkpoint.save(tmp_path / "m.npz", gpu_, opt_gpu)
    back = checkpoint.load(tmp_path / "m.npz")
    for name, p in back.model.params.items():
        np.testing.assert_array_equal(p, state[name])
    out, (h, _) = gpu_(cupy.asarray(x))  # GPU arrays in: the results stay there
    assert isinstance(out, cupy.ndarray) and isinstance(h, cupy.ndarray)
    assert isinstance(gpu_.backward(cupy.asarray(dy)), cupy.ndarray)
