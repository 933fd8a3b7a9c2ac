#include "blas.h"

#include "lstm_ext/runtime.h"

#include <cblas.h>

#include <climits>
#include <stdexcept>
#include <string>

// The scipy-openblas wheels prefix every symbol (scipy_cblas_sgemm); a plain
// OpenBLAS does not. LSTM_EXT_BLAS_PREFIX is set by CMake.
#ifndef LSTM_EXT_BLAS_PREFIX
#define LSTM_EXT_BLAS_PREFIX
#endif
#define LSTM_EXT_CAT2(a, b) a##b
#define LSTM_EXT_CAT(a, b) LSTM_EXT_CAT2(a, b)
#define LSTM_EXT_BLAS(name) LSTM_EXT_CAT(LSTM_EXT_BLAS_PREFIX, name)

namespace lstm_ext {
namespace {

int to_blasint(int64_t v, const char* what) {
  if (v > INT_MAX)
    throw std::length_error(std::string("lstm_ext: GEMM dimension ") + what + " = " +
                            std::to_string(v) + " exceeds the BLAS limit of " +
                            std::to_string(INT_MAX));
  return static_cast<int>(v);
}

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

template <typename S, typename F>
void gemm_impl(F blas, Op opA, Op opB, int64_t M, int64_t N, int64_t K, S alpha, const S* A,
               int64_t lda, const S* B, int64_t ldb, S beta, S* C, int64_t ldc) {
  if (!prepare(M, N, K, beta, C, ldc)) return;
  blas(CblasRowMajor, cblas_op(opA), cblas_op(opB), to_blasint(M, "M"), to_blasint(N, "N"),
       to_blasint(K, "K"), alpha, A, to_blasint(lda, "lda"), B, to_blasint(ldb, "ldb"), beta, C,
       to_blasint(ldc, "ldc"));
}

}  // namespace

void gemm(Op opA, Op opB, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
          const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  gemm_impl(LSTM_EXT_BLAS(cblas_sgemm), opA, opB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

void gemm(Op opA, Op opB, int64_t M, int64_t N, int64_t K, double alpha, const double* A,
          int64_t lda, const double* B, int64_t ldb, double beta, double* C, int64_t ldc) {
  gemm_impl(LSTM_EXT_BLAS(cblas_dgemm), opA, opB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

std::string blas_config() { return LSTM_EXT_BLAS(openblas_get_config)(); }

int blas_num_threads() { return LSTM_EXT_BLAS(openblas_get_num_threads)(); }

std::string build_description() {
  std::string s;
#if defined(__clang__)
  s = "clang " __clang_version__;
#elif defined(__GNUC__)
  s = "gcc " __VERSION__;
#else
  s = "unknown compiler";
#endif
  s += ", C++ " + std::to_string(__cplusplus);
#ifdef NDEBUG
  s += ", optimised (NDEBUG)";
#else
  s += ", debug";
#endif
  return s;
}

}  // namespace lstm_ext
