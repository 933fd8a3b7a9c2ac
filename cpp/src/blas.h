// GEMM glue: row-major C[M,N] = alpha * op(A)[M,K] * op(B)[K,N] + beta * C,
// with the BLAS's 32-bit argument range checked and zero-sized products
// handled here (BLAS rejects a leading dimension of 0).
#pragma once

#include <cstdint>
#include <initializer_list>

namespace lstm_ext {

enum class Op { N, T };

// v as the BLAS's 32-bit int, or std::length_error naming `what` ("GEMM
// dimension K = ... exceeds the BLAS limit of 2147483647").
int to_blasint(int64_t v, const char* what);

void gemm(Op opA, Op opB, int64_t M, int64_t N, int64_t K,                        //
          float alpha, const float* A, int64_t lda, const float* B, int64_t ldb,  //
          float beta, float* C, int64_t ldc);
void gemm(Op opA, Op opB, int64_t M, int64_t N, int64_t K,  //
          double alpha, const double* A, int64_t lda, const double* B, int64_t ldb, double beta,
          double* C, int64_t ldc);

// One product of a group for gemms(): C = alpha op(A) op(B) + beta C, as gemm's.
template <typename S>
struct Gemm {
  Op opA, opB;
  int64_t M, N, K;
  S alpha;
  const S* A;
  int64_t lda;
  const S* B;
  int64_t ldb;
  S beta;
  S* C;
  int64_t ldc;
};

void gemm(const Gemm<float>& g);
void gemm(const Gemm<double>& g);

// Independent products side by side: each cut into blocks of about
// kGroupBlock (2,048) along its longer side by its shape alone, so possibly
// whole, and every block of every product one task of a single parallel
// region. For products of equal cost: backward's dW and dR (I = O) took 3.65-
// 3.80 ms as two whole products at (100,16,256,256) on two Zen 5 cores, 3.96-
// 4.15 as gemm cuts each, in halves that both pack all of op(B)
// (dev/perf-notes.md, 29).
void gemms(std::initializer_list<Gemm<float>> group);
void gemms(std::initializer_list<Gemm<double>> group);

}  // namespace lstm_ext
