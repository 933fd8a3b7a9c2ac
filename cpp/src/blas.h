// GEMM glue: row-major C[M,N] = alpha * op(A)[M,K] * op(B)[K,N] + beta * C,
// with the BLAS's 32-bit argument range checked and zero-sized products
// handled here (BLAS rejects a leading dimension of 0).
#pragma once

#include <cstdint>

namespace lstm_ext {

enum class Op { N, T };

void gemm(Op opA, Op opB, int64_t M, int64_t N, int64_t K,                        //
          float alpha, const float* A, int64_t lda, const float* B, int64_t ldb,  //
          float beta, float* C, int64_t ldc);
void gemm(Op opA, Op opB, int64_t M, int64_t N, int64_t K,  //
          double alpha, const double* A, int64_t lda, const double* B, int64_t ldb, double beta,
          double* C, int64_t ldc);

}  // namespace lstm_ext
