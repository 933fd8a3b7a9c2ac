// LSTM_EXT_CUDA(call): the one check of every CUDA runtime call, cuBLAS call
// and kernel launch (through launch() below). A failure throws
// std::runtime_error with the call, the file, the line and the error's name;
// nothing exits.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

namespace lstm_ext {
namespace cuda {
namespace detail {

[[noreturn]] inline void fail(const char* what, const char* file, int line, const char* name,
                              const char* text) {
  throw std::runtime_error(std::string("lstm_ext CUDA: ") + what + " failed at " + file + ":" +
                           std::to_string(line) + ": " + name + " (" + text + ")");
}

inline void check(cudaError_t e, const char* what, const char* file, int line) {
  if (e != cudaSuccess) fail(what, file, line, cudaGetErrorName(e), cudaGetErrorString(e));
}

inline void check(cublasStatus_t s, const char* what, const char* file, int line) {
  if (s != CUBLAS_STATUS_SUCCESS)
    fail(what, file, line, cublasGetStatusName(s), cublasGetStatusString(s));
}

// kernel<<<grid, block, 0, stream>>>(args...), returning the launch's error.
template <typename... KArgs, typename... Args>
cudaError_t launch(void (*kernel)(KArgs...), unsigned grid, unsigned block, cudaStream_t stream,
                   Args&&... args) {
  if (grid == 0) return cudaSuccess;  // nothing to do (a launch of 0 blocks is an error)
  kernel<<<grid, block, 0, stream>>>(static_cast<KArgs>(args)...);
  return cudaGetLastError();
}

}  // namespace detail
}  // namespace cuda
}  // namespace lstm_ext

#define LSTM_EXT_CUDA(call) ::lstm_ext::cuda::detail::check((call), #call, __FILE__, __LINE__)
