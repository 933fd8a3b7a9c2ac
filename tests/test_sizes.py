"""64-bit sizes: element counts past 2^31 are exact, byte counts past 2^63
are refused before anything is allocated, and a call whose arrays hold more
than 2^31 elements computes what the reference does.

- The size queries (lstm_ext._core.forward_workspace_size, ...) against
  lstm.h's formula, at T*B*H = 2^36.
- Sizes whose byte count overflows int64 (from zero-stride broadcast views,
  which take no memory): a ValueError naming the sizes, with tracemalloc's
  peak (NumPy reports its buffers to it) showing nothing was allocated.
- Inference over x with 2^31 + 2^23 elements and over W with 2^31 + 2^26: the
  core's own offsets (a chunk's rows of x, a GEMM block's columns of W) pass
  2^31 there. Both arrays come from np.zeros, whose pages the kernel maps
  only when written: the few columns that are not zero cost ~0.6 GB, the
  calls ~1 s each. Where the machine refuses 9-17 GB of address space, the
  test skips. The binding reads a C-contiguous input in place (a copy would
  write every page); a zero-stride view would be copied, so it cannot serve.
"""

import tracemalloc

import numpy as np
import pytest

import lstm_ext
from helpers import assert_close
from lstm_ext import _core, reference

# ---- the size queries -----------------------------------------------------------


def w_packed(I, H):
    """lstm.h: the workspaces hold W packed too where 4H(I+H) <= 2^21."""
    return 4 * H * (I + H) <= 2**21


def weight_grads_packed(B, I, H):
    """lstm.h: where also 4BHO >= 3 * 32768, backward's dW and dR read x and
    h_{t-1} packed by columns in the workspace."""
    return w_packed(I, H) and 4 * B * H * H >= 3 * 32768


def documented_training_workspace(T, B, H, I):
    """lstm.h: training without lengths or projection takes
    TBI + 6TBH + 7BH + 4H*32*ceil(H/32) elements; where 4H(I+H) <= 2^21,
    4I*32*ceil(H/32) more (W packed) and 4H*32*(ceil(H/32) + ceil(I/32)) (R and
    W packed by columns for backward: training_keeps_weights); where also
    4BHH >= 3 * 32768, TB*32*(ceil(I/32) + ceil(H/32)) + 1 (x and h_{t-1}
    packed by columns, and a flag)."""
    packed = 4 * 32 * -(-H // 32)
    base = T * B * I + 6 * T * B * H + 7 * B * H + packed * H
    if not w_packed(I, H):
        return base
    base += packed * I + 4 * H * 32 * (-(-H // 32) + -(-I // 32))
    if weight_grads_packed(B, I, H):
        base += T * B * 32 * (-(-I // 32) + -(-H // 32)) + 1
    return base


def documented_backward_scratch(T, B, H, I):
    """lstm.h: backward without lengths or projection takes 4TBH + 2BH
    elements, and 4H*32*ceil(H/32) more (R packed by columns) where
    4H(I+H) > 2^21 (smaller weights come packed in the workspace); 4H*272
    more (the gates' gradients transposed, 256 rows at a time) where the
    workspace holds x and h_{t-1} packed."""
    extra = 0 if w_packed(I, H) else 4 * H * 32 * -(-H // 32)
    if weight_grads_packed(B, I, H):
        extra += 4 * H * 272
    return 4 * T * B * H + 2 * B * H + extra


SMALL_AND_LARGE = [(1, 9, 40), (5, 9, 40), (64, 9, 40), (16, 9, 40), (15, 9, 40),
                   (64, 512, 512), (2, 513, 512), (64, 1024, 1024)]  # fmt: skip


@pytest.mark.parametrize("B, I, H", SMALL_AND_LARGE)
def test_workspace_holds_w_packed_where_the_weights_are_small(B, I, H):
    # (64,512,512) is at the bound 4H(I+H) = 2^21, (513,512) and (1024,1024) past it.
    got = _core.forward_workspace_size(7, B, I, H)
    assert got == documented_training_workspace(7, B, H, I)
    base = 7 * B * I + 6 * 7 * B * H + 7 * B * H + 4 * 32 * -(-H // 32) * H
    assert (got > base) == w_packed(I, H)


@pytest.mark.parametrize("B, I, H", SMALL_AND_LARGE)
def test_backward_scratch_is_lstm_h_formula(B, I, H):
    assert _core.backward_scratch_size(7, B, I, H) == documented_backward_scratch(7, B, H, I)


T, B, I, H, P = 2**16, 1024, 8, 1024, 256  # T*B*H = 2^36, T*B = 2^26 (BLAS takes it)


def test_training_workspace_past_2_31_is_lstm_h_formula():
    got = _core.forward_workspace_size(T, B, I, H)
    assert type(got) is int
    assert got == documented_training_workspace(T, B, H, I) == 412_865_265_664


def test_workspace_grows_per_step_by_what_a_step_keeps():
    # Each step keeps x_t BI (copied, or with lengths or in reverse gathered),
    # gates 4BH, c_t BH and h_{t-1} BH (BP with a projection, plus m_t BH).
    # Backward's scratch: dz 4BH (and dL/dh_t BP) a step, dx_t BI gathered.
    def grow(f, *args, **kw):
        return f(T + 1, B, I, H, *args, **kw) - f(T, B, I, H, *args, **kw)

    fws, bss = _core.forward_workspace_size, _core.backward_scratch_size
    assert grow(fws) == grow(fws, ragged=True) == grow(fws, reverse=True) == B * (6 * H + I)
    assert grow(fws, P) == B * (6 * H + P + I)
    assert grow(bss) == 4 * B * H
    assert grow(bss, P) == B * (4 * H + P)
    assert grow(bss, ragged=True) == B * (4 * H + I)


def test_inference_workspace_does_not_grow_with_T():
    # It holds one chunk of inference_chunk(B) steps and the state.
    small = _core.forward_workspace_size(_core.inference_chunk(B), B, I, H, training=False)
    assert _core.forward_workspace_size(T, B, I, H, training=False) == small
    assert _core.forward_workspace_size(16 * T, B, I, H, training=False) == small


def test_inference_chunk_takes_any_batch():
    # B * 16 is not computed: it overflowed int64 for B >= 2^59 (UBSan).
    chunks = [_core.inference_chunk(b) for b in (1, 15, 16, 2**59, 2**63 - 1, -(2**63))]
    assert chunks == [256, 18, 16, 16, 16, 16]


def test_step_scratch_past_2_31():
    B_ = 2**21  # z [B,4H] and c_prev [B,H] (and m [B,H] with a projection)
    assert _core.step_scratch_size(B_, I, H) == B_ * 5 * H == 5 * 2**31
    assert _core.step_scratch_size(B_, I, H, P) == B_ * 6 * H


# ---- byte counts past 2^63 ------------------------------------------------------

HUGE = [
    (2**31, 2**31, 1, 1),  # T*B = 2^62
    (1, 1, 1, 2**40),  # R [4H,H] = 2^82
    (2**62, 1, 1, 1),
    (1, 2**62, 1, 1),
    (1, 1, 2**62, 1),
    (1, 1, 1, 2**62),
    (2**63 - 1, 2**63 - 1, 2**63 - 1, 2**63 - 1),
]


@pytest.mark.parametrize("sizes", HUGE)
def test_size_queries_refuse_byte_counts_past_2_63(sizes):
    letters = " ".join(f"{k}={v}" for k, v in zip("TBIH", sizes, strict=True))
    for query in (_core.forward_workspace_size, _core.backward_scratch_size):
        with pytest.raises(ValueError, match="overflows a 64-bit byte count") as e:
            query(*sizes)
        assert letters in str(e.value)
    if sizes[0] == 1:  # step has no T
        with pytest.raises(ValueError, match="overflows a 64-bit byte count"):
            _core.step_scratch_size(*sizes[1:])


def test_size_queries_refuse_negative_and_out_of_range_sizes():
    with pytest.raises(ValueError, match="sizes must be >= 0"):
        _core.forward_workspace_size(-1, 2, 3, 4)
    with pytest.raises(TypeError):  # not an int64
        _core.forward_workspace_size(2**63, 1, 1, 1)


def peak_of(f):
    """f()'s exception and the peak of memory NumPy and Python allocated meanwhile."""
    tracemalloc.start()
    try:
        with pytest.raises(ValueError) as e:
            f()
        return e.value, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def zeros_view(*shape):
    return np.broadcast_to(np.float32(0), shape)  # no memory


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("training", [True, False])
def test_forward_refuses_before_allocating(batch_first, training):
    # 2^60 elements (NumPy's limit is 2^63 bytes); the gates alone, [T,B,4H],
    # would take 2^64 bytes.
    x = zeros_view(2**30, 2**30, 1)
    W, R = np.zeros((4, 1), np.float32), np.zeros((4, 1), np.float32)
    err, peak = peak_of(
        lambda: lstm_ext.forward(x, W, R, batch_first=batch_first, training=training)
    )
    assert "overflows a 64-bit byte count" in str(err)
    assert "T=1073741824 B=1073741824 I=1 H=1 P=0" in str(err)
    assert peak < 2**20, f"{peak} bytes allocated before the error"


def test_forward_refuses_a_gemm_dimension_past_2_31_before_allocating():
    x = zeros_view(2**16, 2**15, 1)  # T*B = 2^31: no 32-bit BLAS takes it
    W, R = np.zeros((4, 1), np.float32), np.zeros((4, 1), np.float32)
    err, peak = peak_of(lambda: lstm_ext.forward(x, W, R, training=False))
    assert "exceeds the BLAS limit" in str(err) and "T=65536 B=32768" in str(err)
    assert peak < 2**20


@pytest.mark.parametrize(
    "B_, words",
    [(2**40, ["GEMM dimension of 1099511627776", "BLAS limit"]), (2**60, ["overflows"])],
)
def test_step_refuses_before_copying_x(B_, words):
    # x is a view, so the binding would copy it: 4 TB and more. The sizes are
    # refused first.
    x = zeros_view(B_, 1)
    W, R = np.zeros((4, 1), np.float32), np.zeros((4, 1), np.float32)
    err, peak = peak_of(lambda: lstm_ext.step(x, None, None, W, R))
    for w in words:
        assert w in str(err)
    assert f"B={B_} I=1 H=1" in str(err)
    assert peak < 2**20


# ---- a real call past 2^31 elements ------------------------------------------------


def lazy_zeros(*shape):
    try:
        return np.zeros(shape, np.float32)  # calloc: pages mapped when written
    except MemoryError:
        pytest.skip(reason=f"no address space for {np.prod(shape) * 4 / 2**30:.0f} GiB")


def sparse_problem(rng, T_, I_, H_):
    """x [T,1,I] and W [4H,I], zero but for columns `idx` (the first and
    last 8), R [4H,H], b [4H]."""
    idx = np.r_[0:8, I_ - 8 : I_]
    x = lazy_zeros(T_, 1, I_)
    W = lazy_zeros(4 * H_, I_)
    x[:, :, idx] = rng.standard_normal((T_, 1, idx.size))
    W[:, idx] = 0.3 * rng.standard_normal((4 * H_, idx.size))
    R = (0.3 * rng.standard_normal((4 * H_, H_))).astype(np.float32)
    b = (0.3 * rng.standard_normal(4 * H_)).astype(np.float32)
    return x, W, R, b, idx


def check_sparse(rng, T_, I_, H_):
    x, W, R, b, idx = sparse_problem(rng, T_, I_, H_)
    y, h, c, _ = lstm_ext.forward(x, W, R, b, training=False)
    # The reference on the nonzero columns only, in float64: the zeros add
    # nothing. rtol 1e-5: float32 rounding over the T steps.
    f64 = np.float64
    ry, rh, rc, _ = reference.forward(
        x[:, :, idx].astype(f64), W[:, idx].astype(f64), R.astype(f64), b.astype(f64)
    )
    for name, ours, ref in (("y", y, ry), ("h", h, rh), ("c", c, rc)):
        assert_close(name, ours, ref, 1e-5)


def test_forward_over_x_past_2_31_elements(rng):
    # T*I = 257 * 2^23 = 2^31 + 2^23 elements. Inference takes 256 rows a
    # chunk (inference_chunk(1)): the second chunk starts at x[256], element
    # 2^31.
    assert _core.inference_chunk(1) == 256
    check_sparse(rng, 257, 2**23, 1)


def test_forward_over_W_past_2_31_elements(rng):
    # W [260, 2^23]: 2^31 + 2^26 elements. The input product (one row, so a
    # GEMV over all of W) reads rows 256 to 259 past element 2^31.
    check_sparse(rng, 1, 2**23, 65)
