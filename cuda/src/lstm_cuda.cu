// GPU forward and backward: lstm.cpp's algorithm with cuBLAS for the matrix
// products and one fused kernel per step for the pointwise math, which is
// cell_math.h's, the functions the CPU path runs.
//
// Ragged and reversed batches use the CPU's packed schedule (common.h), made
// on the host; its index arrays are uploaded into the workspace, where
// backward finds them again:
//   perm [B]   packed row j holds sequence perm[j]
//   len  [B]   its length, non-increasing in j
//   off  [T+1] packed index of step k's first row (rows of step k are a prefix)
//   row  [N]   the [T*B] row of each packed row (only where the batch is gathered)
// Packed h_k is written straight into y when nothing is gathered, else into a
// packed copy that is scattered into y at the end.
#include <cooperative_groups.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <array>
#include <climits>
#include <cstdint>
#include <cstdlib>
#include <vector>

#include "check.h"
#include "common.h"
#include "context.h"
#include "lstm_ext/cell_math.h"
#include "lstm_ext/cuda.h"

namespace lstm_ext {
namespace cuda {
namespace {

namespace core = ::lstm_ext::detail;
using detail::launch;

// ---- cuBLAS in row-major terms ----------------------------------------------

enum class Op { N, T };

cublasStatus_t gemm_call(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n,
                         int k, const float* alpha, const float* A, int lda, const float* B,
                         int ldb, const float* beta, float* C, int ldc) {
  return cublasSgemm(h, ta, tb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc);
}
cublasStatus_t gemm_call(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n,
                         int k, const double* alpha, const double* A, int lda, const double* B,
                         int ldb, const double* beta, double* C, int ldc) {
  return cublasDgemm(h, ta, tb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc);
}
cublasStatus_t axpy_call(cublasHandle_t h, int n, const float* a, const float* x, float* y) {
  return cublasSaxpy(h, n, a, x, 1, y, 1);
}
cublasStatus_t axpy_call(cublasHandle_t h, int n, const double* a, const double* x, double* y) {
  return cublasDaxpy(h, n, a, x, 1, y, 1);
}

// C[m,n] = alpha op(A)[m,k] op(B)[k,n] + beta C[m,n], all row-major with
// leading dimensions lda, ldb, ldc (ldc == n). cuBLAS is column-major, so it
// computes C^T = op(B)^T op(A)^T. Dimensions fit in int (check_config).
template <typename S>
void gemm(const Context::Impl& cx, Op ta, Op tb, int64_t m, int64_t n, int64_t k, S alpha,
          const S* A, int64_t lda, const S* B, int64_t ldb, S beta, S* C, int64_t ldc) {
  if (m == 0 || n == 0) return;
  if (k == 0) {  // cuBLAS refuses a leading dimension of 0; C = beta*C, beta is 0 or 1 here
    if (beta == S(0)) LSTM_EXT_CUDA(cudaMemsetAsync(C, 0, sizeof(S) * size_t(m * ldc), cx.stream));
    return;
  }
  auto op = [](Op o) { return o == Op::N ? CUBLAS_OP_N : CUBLAS_OP_T; };
  LSTM_EXT_CUDA(gemm_call(cx.blas, op(tb), op(ta), int(n), int(m), int(k), &alpha, B, int(ldb), A,
                          int(lda), &beta, C, int(ldc)));
}

template <typename S>
void copy(const Context::Impl& cx, S* dst, const S* src, int64_t n) {
  if (n > 0)
    LSTM_EXT_CUDA(
        cudaMemcpyAsync(dst, src, sizeof(S) * size_t(n), cudaMemcpyDeviceToDevice, cx.stream));
}

template <typename S>
void zero(const Context::Impl& cx, S* dst, int64_t n) {
  if (n > 0) LSTM_EXT_CUDA(cudaMemsetAsync(dst, 0, sizeof(S) * size_t(n), cx.stream));
}

// ---- kernels --------------------------------------------------------------------

constexpr int kThreads = 256;

unsigned blocks(int64_t n) {
  constexpr int64_t kMaxBlocks = 1 << 20;  // the grid-stride loops cover the rest
  return unsigned(std::min<int64_t>((n + kThreads - 1) / kThreads, kMaxBlocks));
}

#define LSTM_EXT_GRID_LOOP(i, n)                                            \
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < (n); \
       i += int64_t(gridDim.x) * blockDim.x)

// One thread per (row n, unit j) of step k's nb rows.
//   z [nb,4H]  in: x W^T + h R^T;  out: the activated gates (or, with kClip,
//              the final pre-activations) that backward reads
//   c [nb,H] out;  m [nb,H] out (h_k itself without a projection)
//   h_next     where m also goes (the next step's row block of the saved
//              h_{k}), for its first nb_next rows; null: nowhere
template <bool kPeep, bool kClip, bool kCoupled, typename S>
__global__ void forward_cells(S* z, S* c, S* m, const S* c_prev, const S* b, const S* peep, S clip,
                              int64_t nb, int64_t H, S* h_next, int64_t nb_next) {
  LSTM_EXT_GRID_LOOP(idx, nb * H) {
    const int64_t n = idx / H, j = idx - n * H;
    S* zn = z + n * 4 * H;
    cell::Gates<S> zz = cell::load_gates(zn, j, H);
    if (b) zz = {zz.i + b[j], zz.f + b[H + j], zz.g + b[2 * H + j], zz.o + b[3 * H + j]};
    S mv;
    const auto a = cell::cell_forward<kPeep, kClip, kCoupled>(
        &zz, c_prev[idx], cell::peep_of<kPeep>(peep, j, H), clip, &c[idx], &mv);
    m[idx] = mv;
    if (h_next && n < nb_next) h_next[idx] = mv;
    cell::store_gates(zn, j, H, kClip ? zz : a);
  }
}

// One thread per (row n, unit j): dz [nb,4H] out, dc [nb,H] dL/dc_t in,
// dL/dc_{t-1} out; saved [nb,4H] what forward_cells kept.
template <bool kPeep, bool kClip, bool kCoupled, typename S>
__global__ void backward_cells(S* dz, S* dc, const S* saved, const S* c_prev, const S* c,
                               const S* dm, const S* peep, S clip, int64_t nb, int64_t H) {
  LSTM_EXT_GRID_LOOP(idx, nb * H) {
    const int64_t n = idx / H, j = idx - n * H;
    const S* sn = saved + n * 4 * H;
    const cell::Gates<S> kept = cell::load_gates(sn, j, H);
    const cell::Gates<S> a = kClip ? cell::activate<kClip, kCoupled>(kept, clip) : kept;
    S dcv = dc[idx];
    const auto d = cell::cell_backward<kPeep, kClip, kCoupled>(
        a, kept, c_prev[idx], c[idx], dm[idx], cell::peep_of<kPeep>(peep, j, H), clip, &dcv);
    dc[idx] = dcv;
    cell::store_gates(dz + n * 4 * H, j, H, d);
  }
}

// dst[r] = src[row[r]] for n rows of `width`.
template <typename S>
__global__ void gather_rows(S* dst, const S* src, const int64_t* row, int64_t n, int64_t width) {
  LSTM_EXT_GRID_LOOP(i, n * width) {
    const int64_t r = i / width;
    dst[i] = src[row[r] * width + (i - r * width)];
  }
}

// dst[row[r]] = src[r] (row: a [T*B] row per packed row, or perm for states).
template <typename S>
__global__ void scatter_rows(S* dst, const S* src, const int64_t* row, int64_t n, int64_t width) {
  LSTM_EXT_GRID_LOOP(i, n * width) {
    const int64_t r = i / width;
    dst[row[r] * width + (i - r * width)] = src[i];
  }
}

// dst[r] += src[row[r]]: dy of step k into the running dL/dh.
template <typename S>
__global__ void add_rows(S* dst, const S* src, const int64_t* row, int64_t n, int64_t width) {
  LSTM_EXT_GRID_LOOP(i, n * width) {
    const int64_t r = i / width;
    dst[i] += src[row[r] * width + (i - r * width)];
  }
}

// dst[b][a][:] = src[a][b][:], src [A,B,W].
template <typename S>
__global__ void swap01_kernel(S* dst, const S* src, int64_t A, int64_t B, int64_t W) {
  LSTM_EXT_GRID_LOOP(i, A * B * W) {
    const int64_t row = i / W, a = row / B, b = row - a * B;
    dst[(b * A + a) * W + (i - row * W)] = src[i];
  }
}

// dst[j] = src[perm[j]] (zeros for a null src), n rows of `width`.
template <typename S>
__global__ void gather_state(S* dst, const S* src, const int64_t* perm, int64_t n, int64_t width) {
  LSTM_EXT_GRID_LOOP(i, n * width) {
    const int64_t j = i / width;
    dst[i] = src ? src[perm[j] * width + (i - j * width)] : S(0);
  }
}

// Each sequence's state after its last valid step (its initial state if it
// has none). Y: packed h rows; C: [B + N, H], c0 then packed c rows.
template <typename S>
__global__ void final_state(S* hT, S* cT, const S* Y, const S* C, const S* h0p, const int64_t* perm,
                            const int64_t* len, const int64_t* off, int64_t B, int64_t H,
                            int64_t O) {
  LSTM_EXT_GRID_LOOP(i, B * (O + H)) {
    const int64_t j = i / (O + H), u = i - j * (O + H);
    const int64_t L = len[j], r = L > 0 ? off[L - 1] + j : -1;
    if (u < O)
      hT[perm[j] * O + u] = r >= 0 ? Y[r * O + u] : h0p[j * O + u];
    else
      cT[perm[j] * H + u - O] = C[(r >= 0 ? B + r : j) * H + u - O];
  }
}

// db[q] = sum over rows of dZ[r,q]: one thread per column, in row order
// (deterministic, no atomics).
template <typename S>
__global__ void column_sums(S* db, const S* dZ, int64_t N, int64_t G) {
  LSTM_EXT_GRID_LOOP(q, G) {
    S s = 0;
    for (int64_t r = 0; r < N; ++r) s += dZ[r * G + q];
    db[q] = s;
  }
}

// dpeephole (ONNX order i, o, f) = sums over packed rows of dz_i c_{t-1},
// dz_o c_t, dz_f c_{t-1}: one thread per unit.
template <typename S>
__global__ void peephole_grads(S* dp, const S* dZ, const S* C, const int64_t* off, int64_t K,
                               int64_t B, int64_t H) {
  LSTM_EXT_GRID_LOOP(j, H) {
    S si = 0, so = 0, sf = 0;
    for (int64_t k = 0; k < K; ++k)
      for (int64_t n = 0; n < off[k + 1] - off[k]; ++n) {
        const int64_t r = off[k] + n;
        const S cp = C[(k == 0 ? n : B + off[k - 1] + n) * H + j], cc = C[(B + r) * H + j];
        const S* d = dZ + r * 4 * H;
        si += d[j] * cp;
        so += d[3 * H + j] * cc;
        sf += d[H + j] * cp;
      }
    dp[j] = si;
    dp[H + j] = so;
    dp[2 * H + j] = sf;
  }
}

// ---- the persistent recurrence for small batches ------------------------------------
//
// At a batch of a few rows each step is a sliver of work, and launching a
// GEMM and a kernel per step leaves the GPU idle between launches. Here one
// cooperative launch runs every step (Diamos et al., ICML 2016): block b owns
// hidden units [b*U, b*U+U) and keeps, for the whole sequence, the 4U rows of
// R for them in shared memory and their cell state. Per step it reads h_{k-1}
// (all rows), computes its gates' recurrent products (KS lanes of a warp
// share each row's dot product and add up with shuffles), applies the cell
// (cell_math.h), writes its slice of h_k and waits at a grid barrier for the
// other blocks' slices. The input projection of every step comes from one
// GEMM before. Projection (P > 0) uses the per-step path. Sums run in a
// fixed order: the same bits on every run.
namespace cg = cooperative_groups;

struct Persistent {
  int units = 0, ksplit = 0, blocks = 0, threads = 0, nb_max = 0;
  size_t smem = 0;
};

// Shared memory: R slice [4U][H], h tile [NB][H], z [NB][4U], c [NB][U].
template <typename S>
size_t persistent_smem(int64_t H, int U, int NB) {
  return sizeof(S) * size_t(4 * U * H + NB * H + NB * 4 * U + NB * U);
}

// acc[n] = sum over q < len of w[q] * tile[n*len + q], for rows n < nb: the
// KS consecutive lanes ks = 0..KS-1 of a warp take q = ks, ks+KS, ... and
// add up with shuffles (KS a power of two <= 32); lane ks == 0 holds the sums.
template <int NB, typename S>
__device__ __forceinline__ void split_dot(S (&acc)[NB], const S* w, const S* tile, int64_t len,
                                          int64_t nb, int ks, int KS) {
#pragma unroll
  for (int n = 0; n < NB; ++n) acc[n] = S(0);
  for (int64_t q = ks; q < len; q += KS) {
    const S wq = w[q];
#pragma unroll
    for (int n = 0; n < NB; ++n)
      if (n < nb) acc[n] += wq * tile[n * len + q];
  }
#pragma unroll
  for (int n = 0; n < NB; ++n)
    for (int o = KS / 2; o > 0; o /= 2) acc[n] += __shfl_down_sync(0xffffffffu, acc[n], o, KS);
}

template <int NB, bool kPeep, bool kClip, bool kCoupled, typename S>
__global__ void __launch_bounds__(256)
    persistent_forward(S* Z, S* C, S* Y, S* Hp, const S* h0p, const S* R, const S* b, const S* peep,
                       S clip, const int64_t* off, int64_t K, int64_t B, int64_t H, int U, int KS) {
  extern __shared__ unsigned char smem_raw[];
  const int rows = 4 * U, tid = threadIdx.x;
  S* Rs = reinterpret_cast<S*>(smem_raw);  // [4U][H]
  S* hs = Rs + rows * H;                   // [NB][H]
  S* zs = hs + NB * H;                     // [NB][4U]
  S* cs = zs + NB * rows;                  // [NB][U]
  const int64_t j0 = int64_t(blockIdx.x) * U, G = 4 * H;
  auto grid = cg::this_grid();

  // Local row r is gate r / U of unit j0 + r % U; rows past H are zeros.
  for (int64_t i = tid; i < rows * H; i += blockDim.x) {
    const int r = int(i / H), u = r % U;
    Rs[i] = j0 + u < H ? R[(int64_t(r / U) * H + j0 + u) * H + (i - int64_t(r) * H)] : S(0);
  }
  const int64_t nb0 = K > 0 ? off[1] - off[0] : 0;
  for (int i = tid; i < nb0 * U; i += blockDim.x) {
    const int n = i / U, u = i - n * U;
    if (j0 + u < H) cs[i] = C[n * H + j0 + u];  // c0, gathered
  }
  const int ks = tid % KS, r = tid / KS;  // KS consecutive lanes share row r
  const int64_t q_glob = int64_t(r / U) * H + j0 + r % U;
  const bool row_valid = j0 + r % U < H;

  for (int64_t k = 0; k < K; ++k) {
    const int64_t nb = off[k + 1] - off[k], nb_next = k + 1 < K ? off[k + 2] - off[k + 1] : 0;
    S* z = Z + off[k] * G;
    S zx[NB];  // x W^T of this row, loaded early to hide its latency
#pragma unroll
    for (int n = 0; n < NB; ++n) zx[n] = ks == 0 && row_valid && n < nb ? z[n * G + q_glob] : S(0);
    const S* h_prev = k == 0 ? h0p : Y + off[k - 1] * H;
    for (int64_t i = tid; i < nb * H; i += blockDim.x) hs[i] = __ldcg(h_prev + i);
    __syncthreads();
    S acc[NB];
    split_dot(acc, Rs + int64_t(r) * H, hs, H, nb, ks, KS);
    if (ks == 0)
#pragma unroll
      for (int n = 0; n < NB; ++n)
        if (n < nb) zs[n * rows + r] = zx[n] + acc[n];
    __syncthreads();
    for (int i = tid; i < nb * U; i += blockDim.x) {
      const int n = i / U, u = i - n * U;
      const int64_t j = j0 + u;
      if (j >= H) continue;
      const S* zn = zs + n * rows;
      cell::Gates<S> zz{zn[u], zn[U + u], zn[2 * U + u], zn[3 * U + u]};
      if (b) zz = {zz.i + b[j], zz.f + b[H + j], zz.g + b[2 * H + j], zz.o + b[3 * H + j]};
      S cv, mv;
      const auto a = cell::cell_forward<kPeep, kClip, kCoupled>(
          &zz, cs[i], cell::peep_of<kPeep>(peep, j, H), clip, &cv, &mv);
      cs[i] = cv;
      C[(B + off[k] + n) * H + j] = cv;
      Y[(off[k] + n) * H + j] = mv;
      if (Hp && n < nb_next) Hp[(off[k + 1] + n) * H + j] = mv;
      cell::store_gates(z + n * G, j, H, kClip ? zz : a);
    }
    grid.sync();  // h_k complete in every block before step k+1 reads it
  }
}

// Backward through time in one cooperative launch, the mirror of
// persistent_forward: block b owns units [b*U, b*U+U) and keeps the 4H x U
// columns of R that map dz to their dL/dh, and their running dL/dh and
// dL/dc. Per step it computes dL/dh_k of its units from dz_{k+1} of all
// units (a grid barrier apart), adds dy, runs the cell backward and writes
// its dz_k. dh and dc are the packed running states (in: dL/dh_T, dL/dc_T
// gathered; out: dL/dh_0, dL/dc_0).
template <int NB, bool kPeep, bool kClip, bool kCoupled, typename S>
__global__ void __launch_bounds__(256)
    persistent_backward(S* dZ, S* dh, S* dc, const S* Z, const S* C, const S* R, const S* peep,
                        S clip, const S* dy, const int64_t* row, const int64_t* off, int64_t K,
                        int64_t B, int64_t H, int U, int KS) {
  extern __shared__ unsigned char smem_raw[];
  const int64_t G = 4 * H, j0 = int64_t(blockIdx.x) * U;
  const int tid = threadIdx.x;
  S* Rs = reinterpret_cast<S*>(smem_raw);  // [U][4H]: R[q][j0+u] at u*4H + q
  S* dzs = Rs + U * G;                     // [NB][4H]
  S* dhs = dzs + NB * G;                   // [NB][U]
  S* dcs = dhs + NB * U;                   // [NB][U]
  auto grid = cg::this_grid();
  for (int64_t i = tid; i < U * G; i += blockDim.x) {
    const int u = int(i / G);
    Rs[i] = j0 + u < H ? R[(i - u * G) * H + j0 + u] : S(0);
  }
  const int64_t nb0 = K > 0 ? off[1] - off[0] : 0;
  for (int i = tid; i < nb0 * U; i += blockDim.x) {
    const int n = i / U, u = i - n * U;
    if (j0 + u < H) {
      dhs[i] = dh[n * H + j0 + u];
      dcs[i] = dc[n * H + j0 + u];
    }
  }
  const int ks = tid % KS, uo = tid / KS;  // KS consecutive lanes share unit uo's sum
  for (int64_t k = K - 1; k >= -1; --k) {
    if (k + 1 < K) {  // dL/dh_k = dz_{k+1} R, for the rows step k+1 had
      const int64_t nb1 = off[k + 2] - off[k + 1];
      const S* dz1 = dZ + off[k + 1] * G;
      for (int64_t i = tid; i < nb1 * G; i += blockDim.x) dzs[i] = __ldcg(dz1 + i);
      __syncthreads();
      S acc[NB];
      split_dot(acc, Rs + int64_t(uo) * G, dzs, G, nb1, ks, KS);
      if (ks == 0)
#pragma unroll
        for (int n = 0; n < NB; ++n)
          if (n < nb1) dhs[n * U + uo] = acc[n];
      __syncthreads();
    }
    if (k < 0) break;
    const int64_t nb = off[k + 1] - off[k];
    for (int i = tid; i < nb * U; i += blockDim.x) {
      const int n = i / U, u = i - n * U;
      const int64_t j = j0 + u, r = off[k] + n;
      if (j >= H) continue;
      S dm = dhs[i];
      if (dy) dm += dy[(row ? row[r] : r) * H + j];
      const S* sn = Z + r * G;
      const cell::Gates<S> kept = cell::load_gates(sn, j, H);
      const cell::Gates<S> a = kClip ? cell::activate<kClip, kCoupled>(kept, clip) : kept;
      const S c_prev = C[(k == 0 ? n : B + off[k - 1] + n) * H + j], c = C[(B + r) * H + j];
      S dcv = dcs[i];
      const auto d = cell::cell_backward<kPeep, kClip, kCoupled>(
          a, kept, c_prev, c, dm, cell::peep_of<kPeep>(peep, j, H), clip, &dcv);
      dcs[i] = dcv;
      cell::store_gates(dZ + r * G, j, H, d);
    }
    grid.sync();  // dz_k complete in every block before dL/dh_{k-1} reads it
  }
  for (int i = tid; i < nb0 * U; i += blockDim.x) {
    const int n = i / U, u = i - n * U;
    if (j0 + u < H) {
      dh[n * H + j0 + u] = dhs[i];
      dc[n * H + j0 + u] = dcs[i];
    }
  }
}

// The largest batch the persistent kernel takes (its NB template values).
constexpr int kPersistentMaxB = 16;

// Blocks the persistent kernels aim for: one per multiprocessor (fewer make
// the grid barrier cheaper but leave each block more of the products; on an
// H100, one per multiprocessor was fastest at H = 128 to 512).
// LSTM_EXT_CUDA_BLOCKS overrides, for benchmarks.
int persistent_target_blocks(int sms) {
  if (const char* e = std::getenv("LSTM_EXT_CUDA_BLOCKS")) {
    char* end = nullptr;
    const long v = std::strtol(e, &end, 10);
    if (end != e && *end == '\0' && v > 0 && v <= INT_MAX) return int(std::min<long>(v, sms));
  }
  return sms;
}

// The launch shape of persistent_forward (or _backward), or blocks == 0
// where the per-step path runs: a projection, a batch past 16 rows (past 4
// in backward, or at H > 512: the per-step GEMMs win there), or R's slices
// not fitting in shared memory.
template <typename S>
Persistent plan_persistent(const Config& c, int64_t nb_max, bool backward) {
  Persistent p;
  if (c.P > 0 || nb_max < 1 || nb_max > kPersistentMaxB || c.H < 1) return p;
  if (c.H > 512 && nb_max > 4) return p;
  // Backward re-reads every unit's dz in every block each step; past 4 rows
  // that costs more than the per-step GEMMs save (H100: 4.8 ms against
  // 2.4 ms at T=100, B=8, H=256).
  if (backward && nb_max > 4) return p;
  int dev = 0, sms = 0, coop = 0, smem_max = 0;
  LSTM_EXT_CUDA(cudaGetDevice(&dev));
  LSTM_EXT_CUDA(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  LSTM_EXT_CUDA(cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, dev));
  LSTM_EXT_CUDA(cudaDeviceGetAttribute(&smem_max, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  if (!coop) return p;
  const int NB = nb_max <= 4 ? 4 : 16;
  int U = 1;  // units per block: a power of two giving at most the target blocks
  while ((c.H + U - 1) / U > persistent_target_blocks(sms)) U *= 2;
  if (U > 32) return p;
  const int64_t H = c.H;
  const size_t smem = backward ? sizeof(S) * size_t(U * 4 * H + NB * 4 * H + 2 * NB * U)
                               : persistent_smem<S>(H, U, NB);
  if (smem > size_t(smem_max)) return p;
  const int outputs = backward ? U : 4 * U;  // sums per step, KS lanes each
  const int threads = std::min(256, outputs * 32);
  p = {U, threads / outputs, int((H + U - 1) / U), threads, NB, smem};
  return p;
}

template <typename S, typename Kernel>
bool fits_on_device(Kernel kernel, const Persistent& p) {
  LSTM_EXT_CUDA(
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(p.smem)));
  int dev = 0, sms = 0, per_sm = 0;
  LSTM_EXT_CUDA(cudaGetDevice(&dev));
  LSTM_EXT_CUDA(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  LSTM_EXT_CUDA(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, p.threads, p.smem));
  return int64_t(per_sm) * sms >= p.blocks;  // a grid barrier needs every block resident
}

using core::dispatch;

// Launches kernel<NB, peep, clip, coupled, S> cooperatively with `args`
// where the plan and the device allow; false: use the per-step path.
template <template <int, bool, bool, bool, typename> class Kernel, typename S, typename Args>
bool launch_persistent(const Context::Impl& cx, const Config& cfg, const Persistent& p,
                       bool peephole, Args& args) {
  if (p.blocks == 0) return false;
  bool launched = false;
  dispatch(
      [&](auto peep, auto clipped, auto coupled) {
        auto go = [&](auto nb_tag) {
          auto kernel = Kernel<decltype(nb_tag)::value, decltype(peep)::value,
                               decltype(clipped)::value, decltype(coupled)::value, S>::fn;
          if (!fits_on_device<S>(kernel, p)) return;
          LSTM_EXT_CUDA(cudaLaunchCooperativeKernel(reinterpret_cast<void*>(kernel), p.blocks,
                                                    p.threads, args.data(), p.smem, cx.stream));
          launched = true;
        };
        if (p.nb_max == 4)
          go(std::integral_constant<int, 4>{});
        else
          go(std::integral_constant<int, 16>{});
      },
      peephole, cfg.clip > 0, cfg.input_forget);
  return launched;
}

// The kernels as class templates, for launch_persistent.
template <int NB, bool kPeep, bool kClip, bool kCoupled, typename S>
struct PersistentForward {
  static constexpr auto fn = persistent_forward<NB, kPeep, kClip, kCoupled, S>;
};
template <int NB, bool kPeep, bool kClip, bool kCoupled, typename S>
struct PersistentBackward {
  static constexpr auto fn = persistent_backward<NB, kPeep, kClip, kCoupled, S>;
};

// The whole recurrence of lstm_forward in one launch (see persistent_forward).
template <typename S>
bool run_persistent_forward(const Context::Impl& cx, const Config& cfg, int64_t nb_max, S* Z, S* C,
                            S* Y, S* Hp, const S* h0p, const Weights<S>& w, const int64_t* off,
                            int64_t K) {
  const Persistent p = plan_persistent<S>(cfg, nb_max, false);
  S clip = S(cfg.clip);
  int64_t B = cfg.B, H = cfg.H;
  int U = p.units, KS = p.ksplit;
  const S *R = w.R, *b = w.b, *pp = w.peephole;
  std::array<void*, 15> args{&Z,        &C,        &Y,         &Hp,   (void*)&h0p,
                             (void*)&R, (void*)&b, (void*)&pp, &clip, (void*)&off,
                             &K,        &B,        &H,         &U,    &KS};
  return launch_persistent<PersistentForward, S>(cx, cfg, p, w.peephole != nullptr, args);
}

// The step loop of lstm_backward in one launch (see persistent_backward).
template <typename S>
bool run_persistent_backward(const Context::Impl& cx, const Config& cfg, int64_t nb_max, S* dZ,
                             S* dh, S* dc, const S* Z, const S* C, const Weights<S>& w, const S* dy,
                             const int64_t* row, const int64_t* off, int64_t K) {
  const Persistent p = plan_persistent<S>(cfg, nb_max, true);
  S clip = S(cfg.clip);
  int64_t B = cfg.B, H = cfg.H;
  int U = p.units, KS = p.ksplit;
  const S *R = w.R, *pp = w.peephole;
  std::array<void*, 16> args{&dZ,        &dh,   &dc,        (void*)&Z,   (void*)&C,   (void*)&R,
                             (void*)&pp, &clip, (void*)&dy, (void*)&row, (void*)&off, &K,
                             &B,         &H,    &U,         &KS};
  return launch_persistent<PersistentBackward, S>(cx, cfg, p, w.peephole != nullptr, args);
}

// ---- workspace layouts ------------------------------------------------------------

// Regions start on 256-byte boundaries (cudaMalloc's alignment).
template <typename S>
struct Carve256 {
  int64_t used = 0;
  int64_t operator()(int64_t n) {
    constexpr int64_t kAlign = 256 / sizeof(S);
    const int64_t start = used;
    used = core::add(used, core::mul((n + kAlign - 1) / kAlign, kAlign));
    return start;
  }
};

struct ForwardLayout {
  int64_t idx, xp, z, c, hp, m, h0, yp, total;
};

template <typename S>
ForwardLayout forward_layout(const Config& c, bool training) {
  const int64_t rows = core::mul(c.T, c.B), g = core::gathers(c);
  const int64_t indices = core::add(core::add(2 * c.B, c.T + 1), g ? rows : 0);
  ForwardLayout L{};
  Carve256<S> take;
  L.idx = take(core::mul(indices, int64_t(sizeof(int64_t) / sizeof(S))));
  L.xp = take(g ? core::mul(rows, c.I) : 0);           // [N,I] gathered x
  L.z = take(core::mul(rows, 4 * c.H));                // [N,4H]
  L.c = take(core::mul(core::add(rows, c.B), c.H));    // [B+N,H] c0, then c_k
  L.hp = take(training ? core::mul(rows, c.O()) : 0);  // [N,O] h_{k-1}
  L.m = take(c.P > 0 ? core::mul(rows, c.H) : 0);      // [N,H] o*tanh(c)
  L.h0 = take(core::mul(c.B, c.O()));                  // [B,O] gathered h0
  L.yp = take(g ? core::mul(rows, c.O()) : 0);         // [N,O] packed h_k
  L.total = take.used;
  return L;
}

struct BackwardLayout {
  int64_t dz, dh_all, dm, dh, dc, dxp, total;
};

template <typename S>
BackwardLayout backward_layout(const Config& c) {
  const int64_t rows = core::mul(c.T, c.B);
  BackwardLayout L{};
  Carve256<S> take;
  L.dz = take(core::mul(rows, 4 * c.H));                      // [N,4H]
  L.dh_all = take(c.P > 0 ? core::mul(rows, c.P) : 0);        // [N,P]
  L.dm = take(c.P > 0 ? core::mul(c.B, c.H) : 0);             // [B,H]
  L.dh = take(core::mul(c.B, c.O()));                         // [B,O] running dL/dh
  L.dc = take(core::mul(c.B, c.H));                           // [B,H] running dL/dc
  L.dxp = take(core::gathers(c) ? core::mul(rows, c.I) : 0);  // [N,I]
  L.total = take.used;
  return L;
}

// The schedule's index arrays on the device (see the header comment).
struct Indices {
  const int64_t *perm, *len, *off, *row;
};

Indices indices_at(const void* ws, const Config& c) {
  const int64_t* p = static_cast<const int64_t*>(ws);
  return {p, p + c.B, p + 2 * c.B, p + 2 * c.B + c.T + 1};
}

void upload_schedule(const Context::Impl& cx, void* ws, const core::Schedule& s, const Config& c) {
  std::vector<int64_t> h(2 * c.B + c.T + 1 + (core::gathers(c) ? s.N() : 0), 0);
  std::copy(s.perm.begin(), s.perm.end(), h.begin());
  std::copy(s.len.begin(), s.len.end(), h.begin() + c.B);
  std::copy(s.offset.begin(), s.offset.end(), h.begin() + 2 * c.B);
  if (core::gathers(c))
    for (int64_t k = 0; k < s.K; ++k)
      for (int64_t j = 0; j < s.batch[k]; ++j)
        h[2 * c.B + c.T + 1 + s.offset[k] + j] = s.row(k, j, c.B);
  // From pageable memory: the copy has read h when this returns.
  LSTM_EXT_CUDA(
      cudaMemcpyAsync(ws, h.data(), sizeof(int64_t) * h.size(), cudaMemcpyHostToDevice, cx.stream));
}

// Makes ctx's device current for the call.
const Context::Impl& enter(Context& ctx) {
  LSTM_EXT_CUDA(cudaSetDevice(ctx.device()));
  return ctx.impl();
}

// Config::bf16_weights is the CPU's (lstm.h).
void no_bf16(const Config& c) {
  if (c.bf16_weights)
    throw std::invalid_argument("lstm_ext: the CUDA path has no bf16_weights (the CPU's has)");
}

}  // namespace

template <typename S>
int64_t forward_workspace_size(const Config& c, bool training) {
  core::check_config(c);
  no_bf16(c);
  return forward_layout<S>(c, training).total;
}

template <typename S>
int64_t backward_scratch_size(const Config& c) {
  core::check_config(c);
  return backward_layout<S>(c).total;
}

int64_t step_scratch_size(const Config& c) {
  Config one = c;
  one.T = 1;
  core::check_config(one);
  return core::add(core::mul(c.B, 4 * c.H), core::mul(c.P > 0 ? 2 : 1, core::mul(c.B, c.H)));
}

template <typename S>
void lstm_forward(Context& ctx, S* y, S* hT, S* cT, MaybeOut<S> cell_states, S* ws, In<S> x,
                  In<S> h0, In<S> c0, const Weights<S>& w, const Config& cfg, bool training) {
  core::check_config(cfg);
  no_bf16(cfg);
  const int64_t T = cfg.T, B = cfg.B, I = cfg.I, H = cfg.H, P = cfg.P, O = cfg.O(), G = 4 * H;
  const ForwardLayout L = forward_layout<S>(cfg, training);
  core::require_forward<S>(y, hT, cT, ws, L.total, x, w, cfg);
  const core::Schedule s = core::make_schedule(cfg);
  const Context::Impl& cx = enter(ctx);
  const bool g = core::gathers(cfg);
  const int64_t N = s.N();
  const S clip = S(cfg.clip);
  cudaStream_t st = cx.stream;

  upload_schedule(cx, ws + L.idx, s, cfg);
  const Indices ix = indices_at(ws + L.idx, cfg);
  S *Xp = ws + L.xp, *Z = ws + L.z, *C = ws + L.c, *Hp = ws + L.hp, *M = ws + L.m, *h0p = ws + L.h0,
    *Y = g ? ws + L.yp : y;
  LSTM_EXT_CUDA(launch(gather_state<S>, blocks(B * O), kThreads, st, h0p, h0, ix.perm, B, O));
  LSTM_EXT_CUDA(launch(gather_state<S>, blocks(B * H), kThreads, st, C, c0, ix.perm, B, H));
  const S* xin = x;
  if (g) {
    LSTM_EXT_CUDA(launch(gather_rows<S>, blocks(N * I), kThreads, st, Xp, x, ix.row, N, I));
    xin = Xp;
  }
  gemm(cx, Op::N, Op::T, N, G, I, S(1), xin, I, w.W, I, S(0), Z, G);  // [N,4H]
  if (training && s.K > 0) copy(cx, Hp, h0p, s.batch[0] * O);

  const bool persistent =
      s.K > 0 && run_persistent_forward<S>(cx, cfg, s.batch[0], Z, C, Y, training ? Hp : nullptr,
                                           h0p, w, ix.off, s.K);
  for (int64_t k = 0; k < (persistent ? 0 : s.K); ++k) {
    const int64_t nb = s.batch[k], nb_next = k + 1 < s.K ? s.batch[k + 1] : 0;
    S* z = Z + s.offset[k] * G;
    const S* h_prev = k == 0 ? h0p : Y + s.offset[k - 1] * O;
    gemm(cx, Op::N, Op::T, nb, G, O, S(1), h_prev, O, w.R, O, S(1), z, G);
    S* c = C + (B + s.offset[k]) * H;
    const S* c_prev = k == 0 ? C : C + (B + s.offset[k - 1]) * H;
    S* m = P > 0 ? M + s.offset[k] * H : Y + s.offset[k] * O;
    S* h_next = training && P == 0 && nb_next > 0 ? Hp + s.offset[k + 1] * O : nullptr;
    dispatch(
        [&](auto peep, auto clipped, auto coupled) {
          LSTM_EXT_CUDA(launch(forward_cells<decltype(peep)::value, decltype(clipped)::value,
                                             decltype(coupled)::value, S>,
                               blocks(nb * H), kThreads, st, z, c, m, c_prev, w.b, w.peephole, clip,
                               nb, H, h_next, nb_next));
        },
        w.peephole != nullptr, cfg.clip > 0, cfg.input_forget);
    if (P > 0) {
      gemm(cx, Op::N, Op::T, nb, P, H, S(1), m, H, w.W_hr, H, S(0), Y + s.offset[k] * O, P);
      if (training && nb_next > 0)
        copy(cx, Hp + s.offset[k + 1] * O, Y + s.offset[k] * O, nb_next * O);
    }
  }

  if (g) {
    zero(cx, y, T * B * O);
    LSTM_EXT_CUDA(launch(scatter_rows<S>, blocks(N * O), kThreads, st, y, Y, ix.row, N, O));
  }
  if (cell_states) {
    if (g) {
      zero(cx, cell_states, T * B * H);
      LSTM_EXT_CUDA(launch(scatter_rows<S>, blocks(N * H), kThreads, st, cell_states, C + B * H,
                           ix.row, N, H));
    } else {
      copy(cx, cell_states, C + B * H, T * B * H);
    }
  }
  LSTM_EXT_CUDA(launch(final_state<S>, blocks(B * (O + H)), kThreads, st, hT, cT, Y, C, h0p,
                       ix.perm, ix.len, ix.off, B, H, O));
}

template <typename S>
void lstm_backward(Context& ctx, S* dx, S* dh0, S* dc0, const Grads<S>& gr, S* scr, In<S> ws,
                   In<S> x, In<S> dy, In<S> dhT, In<S> dcT, const Weights<S>& w,
                   const Config& cfg) {
  core::check_config(cfg);
  no_bf16(cfg);
  const int64_t T = cfg.T, B = cfg.B, I = cfg.I, H = cfg.H, P = cfg.P, O = cfg.O(), G = 4 * H;
  const ForwardLayout L = forward_layout<S>(cfg, true);
  const BackwardLayout BL = backward_layout<S>(cfg);
  core::require_backward<S>(dx, dh0, dc0, gr, scr, BL.total, ws, L.total, x, w, cfg, false,
                            !core::gathers(cfg));
  const core::Schedule s = core::make_schedule(cfg);
  const Context::Impl& cx = enter(ctx);
  const bool g = core::gathers(cfg);
  const int64_t N = s.N();
  const S clip = S(cfg.clip);
  cudaStream_t st = cx.stream;

  const Indices ix = indices_at(ws + L.idx, cfg);  // forward left them there
  const S *Xp = g ? ws + L.xp : x, *Z = ws + L.z, *C = ws + L.c, *Hp = ws + L.hp, *M = ws + L.m;
  S *dZ = scr + BL.dz, *DH = scr + BL.dh_all, *dm = scr + BL.dm, *dh = scr + BL.dh,
    *dc = scr + BL.dc, *dXp = g ? scr + BL.dxp : dx;
  LSTM_EXT_CUDA(launch(gather_state<S>, blocks(B * O), kThreads, st, dh, dhT, ix.perm, B, O));
  LSTM_EXT_CUDA(launch(gather_state<S>, blocks(B * H), kThreads, st, dc, dcT, ix.perm, B, H));

  const bool persistent =
      s.K > 0 && run_persistent_backward<S>(cx, cfg, s.batch[0], dZ, dh, dc, Z, C, w, dy,
                                            g ? ix.row : nullptr, ix.off, s.K);
  for (int64_t k = persistent ? -1 : s.K - 1; k >= 0; --k) {
    const int64_t nb = s.batch[k];
    if (dy && g) {
      LSTM_EXT_CUDA(
          launch(add_rows<S>, blocks(nb * O), kThreads, st, dh, dy, ix.row + s.offset[k], nb, O));
    } else if (dy && nb * O > 0) {
      const S one = 1;
      LSTM_EXT_CUDA(axpy_call(cx.blas, int(nb * O), &one, dy + k * B * O, dh));
    }
    const S* dmk = dh;
    if (P > 0) {
      copy(cx, DH + s.offset[k] * P, dh, nb * P);
      gemm(cx, Op::N, Op::N, nb, H, P, S(1), dh, P, w.W_hr, H, S(0), dm, H);  // [nb,H]
      dmk = dm;
    }
    S* dz = dZ + s.offset[k] * G;
    const S* c_prev = k == 0 ? C : C + (B + s.offset[k - 1]) * H;
    dispatch(
        [&](auto peep, auto clipped, auto coupled) {
          LSTM_EXT_CUDA(launch(backward_cells<decltype(peep)::value, decltype(clipped)::value,
                                              decltype(coupled)::value, S>,
                               blocks(nb * H), kThreads, st, dz, dc, Z + s.offset[k] * G, c_prev,
                               C + (B + s.offset[k]) * H, dmk, w.peephole, clip, nb, H));
        },
        w.peephole != nullptr, cfg.clip > 0, cfg.input_forget);
    gemm(cx, Op::N, Op::N, nb, O, G, S(1), dz, G, w.R, O, S(0), dh, O);  // dL/dh_{k-1}
  }

  gemm(cx, Op::N, Op::N, N, I, G, S(1), dZ, G, w.W, I, S(0), dXp, I);  // [N,I]
  if (g) {
    zero(cx, dx, T * B * I);
    LSTM_EXT_CUDA(launch(scatter_rows<S>, blocks(N * I), kThreads, st, dx, dXp, ix.row, N, I));
  }
  gemm(cx, Op::T, Op::N, G, I, N, S(1), dZ, G, Xp, I, S(0), gr.dW, I);  // [4H,I]
  gemm(cx, Op::T, Op::N, G, O, N, S(1), dZ, G, Hp, O, S(0), gr.dR, O);  // [4H,O]
  LSTM_EXT_CUDA(launch(column_sums<S>, blocks(G), kThreads, st, gr.db, dZ, N, G));
  if (P > 0) gemm(cx, Op::T, Op::N, P, H, N, S(1), DH, P, M, H, S(0), gr.dW_hr, H);  // [P,H]
  if (w.peephole)
    LSTM_EXT_CUDA(
        launch(peephole_grads<S>, blocks(H), kThreads, st, gr.dpeephole, dZ, C, ix.off, s.K, B, H));
  LSTM_EXT_CUDA(launch(scatter_rows<S>, blocks(B * O), kThreads, st, dh0, dh, ix.perm, B, O));
  LSTM_EXT_CUDA(launch(scatter_rows<S>, blocks(B * H), kThreads, st, dc0, dc, ix.perm, B, H));
}

template <typename S>
void swap01(Context& ctx, S* dst, In<S> src, int64_t A, int64_t B, int64_t W) {
  if (A < 0 || B < 0 || W < 0)
    throw std::invalid_argument("lstm_ext CUDA: swap01 of negative sizes");
  const Context::Impl& cx = enter(ctx);
  LSTM_EXT_CUDA(
      launch(swap01_kernel<S>, blocks(A * B * W), kThreads, cx.stream, dst, src, A, B, W));
}

template <typename S>
void lstm_step(Context& ctx, S* h_out, S* c_out, S* scr, In<S> x, In<S> h, In<S> c,
               const Weights<S>& w, const Config& cfg) {
  no_bf16(cfg);
  const int64_t B = cfg.B, I = cfg.I, H = cfg.H, P = cfg.P, O = cfg.O(), G = 4 * H;
  core::require(scr, "scratch", cuda::step_scratch_size(cfg));
  core::require(h_out, "h_out", B * O);
  core::require(c_out, "c_out", B * H);
  core::require(x, "x", B * I);
  core::require_weights(w, cfg);
  const Context::Impl& cx = enter(ctx);
  S* z = scr;  // [B,4H]
  gemm(cx, Op::N, Op::T, B, G, I, S(1), x, I, w.W, I, S(0), z, G);
  // The queue orders these: h is read in full before h_out (maybe h) is written.
  if (h) gemm(cx, Op::N, Op::T, B, G, O, S(1), h, O, w.R, O, S(1), z, G);
  S* c_prev = scr + B * G;  // [B,H]: c_out may alias c
  if (c)
    copy(cx, c_prev, c, B * H);
  else
    zero(cx, c_prev, B * H);
  S* m = P > 0 ? c_prev + B * H : h_out;
  dispatch(
      [&](auto peep, auto clipped, auto coupled) {
        LSTM_EXT_CUDA(launch(forward_cells<decltype(peep)::value, decltype(clipped)::value,
                                           decltype(coupled)::value, S>,
                             blocks(B * H), kThreads, cx.stream, z, c_out, m, c_prev, w.b,
                             w.peephole, S(cfg.clip), B, H, static_cast<S*>(nullptr), int64_t(0)));
      },
      w.peephole != nullptr, cfg.clip > 0, cfg.input_forget);
  if (P > 0) gemm(cx, Op::N, Op::T, B, P, H, S(1), m, H, w.W_hr, H, S(0), h_out, P);
}

#define LSTM_EXT_INSTANTIATE(S)                                                                  \
  template int64_t forward_workspace_size<S>(const Config&, bool);                               \
  template int64_t backward_scratch_size<S>(const Config&);                                      \
  template void lstm_forward<S>(Context&, S*, S*, S*, MaybeOut<S>, S*, In<S>, In<S>, In<S>,      \
                                const Weights<S>&, const Config&, bool);                         \
  template void lstm_backward<S>(Context&, S*, S*, S*, const Grads<S>&, S*, In<S>, In<S>, In<S>, \
                                 In<S>, In<S>, const Weights<S>&, const Config&);                \
  template void lstm_step<S>(Context&, S*, S*, S*, In<S>, In<S>, In<S>, const Weights<S>&,       \
                             const Config&);                                                     \
  template void swap01<S>(Context&, S*, In<S>, int64_t, int64_t, int64_t);
LSTM_EXT_INSTANTIATE(float)
LSTM_EXT_INSTANTIATE(double)

}  // namespace cuda
}  // namespace lstm_ext
