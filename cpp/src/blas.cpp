#include "blas.h"

#include <cblas.h>

#include <algorithm>
#include <climits>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "lstm_ext/runtime.h"
#include "parallel.h"

// The scipy-openblas wheels prefix every symbol (scipy_cblas_sgemm); a plain
// OpenBLAS does not. LSTM_EXT_BLAS_PREFIX is set by CMake.
#ifndef LSTM_EXT_BLAS_PREFIX
#define LSTM_EXT_BLAS_PREFIX
#endif
#define LSTM_EXT_CAT2(a, b) a##b
#define LSTM_EXT_CAT(a, b) LSTM_EXT_CAT2(a, b)
#define LSTM_EXT_BLAS(name) LSTM_EXT_CAT(LSTM_EXT_BLAS_PREFIX, name)

namespace lstm_ext {

int to_blasint(int64_t v, const char* what) {
  if (v > INT_MAX)
    throw std::length_error(std::string("lstm_ext: GEMM dimension ") + what + " = " +
                            std::to_string(v) + " exceeds the BLAS limit of " +
                            std::to_string(INT_MAX));
  return static_cast<int>(v);
}

namespace {

CBLAS_TRANSPOSE cblas_op(Op op) { return op == Op::N ? CblasNoTrans : CblasTrans; }

// Returns false when there is nothing for BLAS to do (after handling K == 0).
template <typename S>
bool prepare(int64_t M, int64_t N, int64_t K, S beta, S* C, int64_t ldc) {
  if (M == 0 || N == 0) return false;
  if (K == 0) {  // C = beta * C
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = 0; n < N; ++n) C[m * ldc + n] = beta == S(0) ? S(0) : beta * C[m * ldc + n];
    return false;
  }
  return true;
}

// Products of at least kSplitWork multiply-adds are cut into an even number
// of blocks of about kBlock rows of C (or columns, whichever side is
// longer), one task each. Each block packs the other operand anew: blocks of
// 1,024 rather than 256 made a (100,64,512,512) forward+backward 5 % faster
// on Zen 5 (dev/perf-notes.md, 17).
// The cut depends on the shape alone, and each block is one single-threaded
// BLAS call, so the result is the same whatever the number of threads.
constexpr int64_t kSplitWork = int64_t(1) << 21;
constexpr int64_t kBlock = 1024, kMinBlock = 16, kGroupBlock = 2048;

// How a product is cut: along its rows or its columns (the longer side), in
// `blocks` of `len` (the last shorter), len a multiple of kMinBlock.
struct Cut {
  bool by_rows;
  int64_t blocks, len;
};

// One block when the product is small, else about along / `block` blocks, an
// even number of at least two when `even` (so that two or four threads get
// equal shares: 7 blocks of 256 for 1,600 rows left one thread 4 of them).
Cut cut(int64_t M, int64_t N, int64_t K, int64_t block, bool even) {
  const bool by_rows = M >= N;
  const int64_t along = by_rows ? M : N;
  // M*N*K can pass 2^63 for sizes the checks allow; compare without forming it.
  if (M * N < (kSplitWork + K - 1) / K || along < 2 * kMinBlock) return {by_rows, 1, along};
  int64_t blocks = (along + block - 1) / block;
  if (even) blocks = std::max<int64_t>(2, (blocks + 1) / 2 * 2);
  const int64_t len = ((along + blocks - 1) / blocks + kMinBlock - 1) / kMinBlock * kMinBlock;
  return {by_rows, (along + len - 1) / len, len};
}

// One row of C (M == 1: a step of one sequence) as a matrix-vector product:
// OpenBLAS's GEMM packs all of B first even then (sgemm_incopy: 30 us of a
// 60 us step at B = 1, H = 128 on Zen 3), its GEMV reads B in place.
//   C[1,N] = alpha a op(B) + beta C,  a = op(A)'s row: A[k] (N) or A[k*lda] (T)
// beta == 0 zeroes C first (GEMV's own scaling would read it).
template <typename S, typename V>
void row_product(V gemv, Op opA, Op opB, int64_t N, int64_t K, S alpha, const S* A, int64_t lda,
                 const S* B, int64_t ldb, S beta, S* C) {
  if (beta == S(0)) std::fill(C, C + N, S(0));
  const int inca = opA == Op::N ? 1 : to_blasint(lda, "lda");
  // op(B) = B^T, B [N,K]: C^T = B a^T;  op(B) = B [K,N]: C^T = B^T a^T
  const bool t = opB == Op::T;
  gemv(CblasRowMajor, t ? CblasNoTrans : CblasTrans, to_blasint(t ? N : K, t ? "N" : "K"),
       to_blasint(t ? K : N, t ? "K" : "N"), alpha, B, to_blasint(ldb, "ldb"), A, inca,
       beta == S(0) ? S(1) : beta, C, 1);
}

// Block k of g cut by c: one single-threaded BLAS call.
template <typename S, typename F>
void gemm_block(F blas, const Gemm<S>& g, const Cut& c, int64_t k) {
  const int64_t along = c.by_rows ? g.M : g.N, at = k * c.len, n = std::min(c.len, along - at);
  const int64_t m0 = c.by_rows ? at : 0, m = c.by_rows ? n : g.M;
  const int64_t n0 = c.by_rows ? 0 : at, nn = c.by_rows ? g.N : n;
  const S* a = g.opA == Op::N ? g.A + m0 * g.lda : g.A + m0;  // rows m0.. of op(A)
  const S* b = g.opB == Op::N ? g.B + n0 : g.B + n0 * g.ldb;  // columns n0.. of op(B)
  blas(CblasRowMajor, cblas_op(g.opA), cblas_op(g.opB), to_blasint(m, "M"), to_blasint(nn, "N"),
       to_blasint(g.K, "K"), g.alpha, a, to_blasint(g.lda, "lda"), b, to_blasint(g.ldb, "ldb"),
       g.beta, g.C + m0 * g.ldc + n0, to_blasint(g.ldc, "ldc"));
}

template <typename S, typename F, typename V>
void gemm_impl(F blas, V gemv, const Gemm<S>& g) {
  if (!prepare(g.M, g.N, g.K, g.beta, g.C, g.ldc)) return;
  if (g.M == 1)
    return row_product(gemv, g.opA, g.opB, g.N, g.K, g.alpha, g.A, g.lda, g.B, g.ldb, g.beta, g.C);
  const Cut c = cut(g.M, g.N, g.K, kBlock, true);
  if (c.blocks == 1) return gemm_block(blas, g, c, 0);
  parallel_for(c.blocks, [&](int64_t k) { gemm_block(blas, g, c, k); });
}

template <typename S, typename F, typename V>
void gemms_impl(F blas, V gemv, std::initializer_list<Gemm<S>> group) {
  std::vector<std::pair<const Gemm<S>*, Cut>> cuts;
  std::vector<std::pair<int64_t, int64_t>> tasks;  // (product, block)
  for (const Gemm<S>& g : group) {
    if (!prepare(g.M, g.N, g.K, g.beta, g.C, g.ldc)) continue;
    if (g.M == 1) {  // a row product runs here, as gemm runs it
      gemm_impl(blas, gemv, g);
      continue;
    }
    cuts.push_back({&g, cut(g.M, g.N, g.K, kGroupBlock, false)});
    for (int64_t k = 0; k < cuts.back().second.blocks; ++k)
      tasks.push_back({int64_t(cuts.size()) - 1, k});
  }
  parallel_for(int64_t(tasks.size()), [&](int64_t t) {
    const auto& [g, c] = cuts[size_t(tasks[size_t(t)].first)];
    gemm_block(blas, *g, c, tasks[size_t(t)].second);
  });
}

}  // namespace

void gemm(Op opA, Op opB, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
          const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  gemm_impl(LSTM_EXT_BLAS(cblas_sgemm), LSTM_EXT_BLAS(cblas_sgemv),
            Gemm<float>{opA, opB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc});
}

void gemm(Op opA, Op opB, int64_t M, int64_t N, int64_t K, double alpha, const double* A,
          int64_t lda, const double* B, int64_t ldb, double beta, double* C, int64_t ldc) {
  gemm_impl(LSTM_EXT_BLAS(cblas_dgemm), LSTM_EXT_BLAS(cblas_dgemv),
            Gemm<double>{opA, opB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc});
}

void gemm(const Gemm<float>& g) {
  gemm_impl(LSTM_EXT_BLAS(cblas_sgemm), LSTM_EXT_BLAS(cblas_sgemv), g);
}

void gemm(const Gemm<double>& g) {
  gemm_impl(LSTM_EXT_BLAS(cblas_dgemm), LSTM_EXT_BLAS(cblas_dgemv), g);
}

void gemms(std::initializer_list<Gemm<float>> group) {
  gemms_impl(LSTM_EXT_BLAS(cblas_sgemm), LSTM_EXT_BLAS(cblas_sgemv), group);
}

void gemms(std::initializer_list<Gemm<double>> group) {
  gemms_impl(LSTM_EXT_BLAS(cblas_dgemm), LSTM_EXT_BLAS(cblas_dgemv), group);
}

std::string blas_config() { return LSTM_EXT_BLAS(openblas_get_config)(); }

int blas_num_threads() { return LSTM_EXT_BLAS(openblas_get_num_threads)(); }

void blas_set_num_threads(int n) { LSTM_EXT_BLAS(openblas_set_num_threads)(n); }

std::string build_description() {
  std::string s;
#if defined(__clang__)
  s = "clang " __clang_version__;
#elif defined(__GNUC__)
  s = "gcc " __VERSION__;
#else
  s = "unknown compiler";
#endif
  s.erase(s.find_last_not_of(' ') + 1);  // Clang's version ends in a space
  s += ", C++ " + std::to_string(__cplusplus);
#ifdef NDEBUG
  s += ", optimised (NDEBUG)";
#else
  s += ", debug";
#endif
  return s;
}

}  // namespace lstm_ext
