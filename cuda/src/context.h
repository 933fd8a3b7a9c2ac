// What a Context holds (internal).
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "lstm_ext/cuda.h"

namespace lstm_ext {
namespace cuda {

struct Context::Impl {
  int device = 0;
  cudaStream_t stream = nullptr;
  cublasHandle_t blas = nullptr;
};

}  // namespace cuda
}  // namespace lstm_ext
