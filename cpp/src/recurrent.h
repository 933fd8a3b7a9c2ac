// The recurrent product z[nb,4H] += h[nb,O] R^T of one step, on R packed once
// per call, in blocks of hidden units that a thread keeps in its cache from
// step to step (the DeepCPU layout; dev/perf-notes.md, change 6).
//
// Block u holds units [u*kPanel, (u+1)*kPanel) of all four gates: four panels
// of [O,kPanel] (k-major, so one k is two 512-bit or four 256-bit vectors),
// zero past H. Each panel is stored in parts of Q = packed_row<S>() columns:
//   Rp [blocks,4,kPanel/Q,O,Q],  Rp[u][g][c/Q][k][c%Q] = R[g*H + u*kPanel + c][k]
// Q is kPanel (one part, k-rows of 128 bytes) with AVX-512, kPanel/2 with
// AVX2: the AVX2 kernel's strips of two vectors then read consecutive
// 64-byte lines, where from 128-byte rows they filled half of L1's sets and
// evicted each other (dev/perf-notes.md, 51).
// A call sums over the columns [k0, k1) of h: every element of z becomes its
// entry value plus h[n][k] * R[q][k] for k = k0, k0 + 1, ..., k1 - 1, one
// fused multiply-add at a time in that order, whatever the batch, the block
// or the thread: the same bits at any thread count, and with the AVX-512F
// kernel or the AVX2+FMA one (whichever the CPU has). A caller sums in
// another order by calls over consecutive ranges, as the team's step does
// (lstm.cpp: each block from its own columns on).
// Internal: not installed.
#pragma once

#include <cstdint>

#include "lstm_ext/runtime.h"  // packed_recurrent_enabled

namespace lstm_ext {
namespace detail {

// Units per block: two 512-bit vectors of S (four 256-bit ones).
template <typename S>
constexpr int64_t kPanel = int64_t(128 / sizeof(S));

template <typename S>
int64_t recurrent_blocks(int64_t H) {
  return (H + kPanel<S> - 1) / kPanel<S>;
}

// Elements of Rp for H units and O columns of R.
template <typename S>
int64_t packed_recurrent_size(int64_t H, int64_t O);

// Columns of a panel's part as stored (Q above): this CPU's, fixed for the
// process.
template <typename S>
int64_t packed_row();

// Rp's block u from R [4H,O].
template <typename S>
void pack_recurrent_block(S* Rp, const S* R, int64_t H, int64_t O, int64_t u);

// z[n][g*H + j] += sum_k h[n][k] R[g*H + j][k] for n < nb, k in [k0, k1), the
// four gates g and the units j of block u. z [nb,ldz] (ldz >= 4H), h [nb,ldh]
// (ldh >= O), 0 <= k0 <= k1 <= O.
// Needs packed_recurrent_enabled() (throws std::logic_error where it is not
// compiled in).
// fetch_ahead, for panels that come from L3 or memory (weights too large to
// stay in the cores' caches from step to step): while the groups of rows
// pass over a panel, they fetch the next one (AVX-512, 4 rows or more;
// the result is the same either way). Where the panels stay in L2 the fetches
// cost 2-3 % (dev/perf-notes.md, 38).
// overwrite: z's elements start from 0 instead of their entry values (which
// are not read): the bits of zeroing z first, without the pass over it.
template <typename S>
void recurrent_block(S* z, int64_t ldz, const S* h, int64_t ldh, const S* Rp, int64_t nb, int64_t H,
                     int64_t O, int64_t u, int64_t k0, int64_t k1, bool fetch_ahead,
                     bool overwrite);

// recurrent_block on R as it is ([4H,O], not packed): the same FMAs in the
// same order, so the same bits, each 16x16 tile of R transposed in registers
// where recurrent_block reads it packed (once for each group of up to 12 rows
// of h). Where R is read once by few rows (a forward of one step) this saves
// packing it, which took most of such a call (I = H = 512, B = 1: 0.49 ms
// against onnxruntime's 0.17; dev/perf-notes.md 75). float only. A caller
// chooses it where unpacked_product_enabled() (the AVX-512F kernel, on); the
// call itself needs an AVX-512F CPU only (std::logic_error otherwise), so a
// call that chose it runs on while another thread turns the kernels off.
bool unpacked_product_enabled();
void recurrent_block_unpacked(float* z, int64_t ldz, const float* h, int64_t ldh, const float* R,
                              int64_t nb, int64_t H, int64_t O, int64_t u, int64_t k0, int64_t k1,
                              bool overwrite);

// dst[c][r] = src[r][c] for r < rows, c < cols: dst [cols,ldd], src
// [rows,lds], by 16x16 tiles transposed in registers (as
// recurrent_block_unpacked's). Each row of dst is written in whole tiles:
// rows rounded up to 16, zeros past rows (ldd at least that). float only;
// needs an AVX-512F CPU (std::logic_error otherwise), chosen where
// unpacked_product_enabled(). For backward's dz^T (lstm.cpp, kWeightChunk).
void transpose_columns(float* dst, int64_t ldd, const float* src, int64_t lds, int64_t rows,
                       int64_t cols);

// One row of z from W and R as they are, for `step` at one row:
//   z[j] = sum_k W[j][k] x[k] + sum_k R[j][k] h[k]     (j < n; R and h may be null)
// W [n,ldw], R [n,ldr] row-major, x [I], h [O]. Sixteen rows at a time,
// each row's products summed in the 16 lanes of one vector (k in order, 16
// apart, W's then R's), then the 16 lanes by one tree of shuffles: the same
// bits at any thread count and wherever W, R, x and h lie (other bits than
// the BLAS's). OpenBLAS's sgemv read the weights from L2 at about 71-83 GB/s
// where a core reads 182 (dev/perf-notes.md, 79). float only;
// needs an AVX-512F CPU (std::logic_error otherwise), chosen where
// unpacked_product_enabled().
void row_product_unpacked(float* z, const float* W, int64_t ldw, const float* x, int64_t I,
                          const float* R, int64_t ldr, const float* h, int64_t O, int64_t n);

// The same kernel for a product with a long inner dimension, as backward's
// dL/dh = dz R ([nb,4H] x [4H,O]): B [K,N] packed in panels of kPanel columns,
// in parts of Q = packed_row<S>() as Rp's,
//   Bp [ceil(N/kPanel),kPanel/Q,K,Q],  Bp[p][c/Q][k][c%Q] = B[k][p*kPanel + c]  (0 past N)
// pack_columns fills panel p (p < ceil(N/kPanel)). column_product computes columns [c0, c1) of
//   z[nb,ldz] += a[:, k0:k1] B[k0:k1, :],   c0 a multiple of kPanel,
// summing over k = k0, ..., k1 - 1 in order (fetch_ahead and overwrite as
// for recurrent_block).
template <typename S>
void pack_columns(S* Bp, const S* B, int64_t K, int64_t N, int64_t p);
// Rows [r, r + n) of Bp's panels from the columns [c0, c1) of src [n,lds]
// (c0 a multiple of kPanel; zeros past c1 in its last panel): B's rows as
// they come, a few at a time (the training forward's x and h_{t-1},
// lstm.cpp). pack_columns is this for all K rows of one panel.
template <typename S>
void pack_column_rows(S* Bp, int64_t K, int64_t r, const S* src, int64_t lds, int64_t n,
                      int64_t c0, int64_t c1);
// B [K,N] back from all its panels.
template <typename S>
void unpack_columns(S* B, const S* Bp, int64_t K, int64_t N);
template <typename S>
void column_product(S* z, int64_t ldz, const S* a, int64_t lda, const S* Bp, int64_t nb, int64_t K,
                    int64_t k0, int64_t k1, int64_t c0, int64_t c1, bool fetch_ahead,
                    bool overwrite);

// bfloat16 weights (Config::bf16_weights). round_to_bf16: dst[i] = src[i]
// rounded to bfloat16 (to nearest, ties to even; a NaN stays a quiet NaN), as
// floats (dst may be src).
void round_to_bf16(float* dst, const float* src, int64_t n);

// R packed as Rp is for float, each k-row of a panel's 32 units as 32
// bfloat16 (64 bytes) in the order the AVX-512 kernel widens them: 32-bit
// word c holds unit c in its low half and unit 16 + c in its high half. For
// the AVX2 kernel each half of a panel (packed_row) is [O,16] the same way:
// word c holds units c and 8 + c of the half (32 bytes a k-row).
//   Rq [blocks,4,O,32] of uint16_t
// recurrent_block_bf16 is recurrent_block on Rq: each product of an element
// of h and a (bfloat16) weight is exact in float, so z gets the bits
// recurrent_block gives on R rounded to bfloat16. Both need
// packed_bf16_enabled() (a packed kernel, on): std::logic_error otherwise.
bool packed_bf16_enabled();
int64_t packed_recurrent_bf16_size(int64_t H, int64_t O);  // uint16_t elements
void pack_recurrent_block_bf16(uint16_t* Rq, const float* R, int64_t H, int64_t O, int64_t u);
void recurrent_block_bf16(float* z, int64_t ldz, const float* h, int64_t ldh, const uint16_t* Rq,
                          int64_t nb, int64_t H, int64_t O, int64_t u, int64_t k0, int64_t k1,
                          bool fetch_ahead, bool overwrite);

}  // namespace detail
}  // namespace lstm_ext
