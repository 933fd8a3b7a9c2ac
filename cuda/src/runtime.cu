// The Context (a device, a stream, a cuBLAS handle), device Buffers, and the
// description of what was found.
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <string>
#include <utility>

#include "check.h"
#include "context.h"
#include "lstm_ext/cuda.h"

namespace lstm_ext {
namespace cuda {

int device_count() noexcept {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the error the failed query left
    return 0;
  }
  return n;
}

std::string describe() {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  int driver = 0, runtime = 0;
  cudaDriverGetVersion(&driver);
  cudaRuntimeGetVersion(&runtime);
  auto ver = [](int v) { return std::to_string(v / 1000) + "." + std::to_string(v % 1000 / 10); };
  const std::string versions = "runtime " + ver(runtime) + ", cuBLAS " +
                               std::to_string(CUBLAS_VER_MAJOR) + "." +
                               std::to_string(CUBLAS_VER_MINOR) + " (built against)";
  if (e != cudaSuccess) {
    cudaGetLastError();
    return std::string("no usable GPU: ") + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) +
           "); driver " + (driver ? ver(driver) : std::string("absent")) + ", " + versions;
  }
  if (n == 0) return "no GPU visible; driver " + ver(driver) + ", " + versions;
  cudaDeviceProp p{};
  LSTM_EXT_CUDA(cudaGetDeviceProperties(&p, 0));
  return std::to_string(n) + " GPU(s); 0: " + p.name + " (sm_" + std::to_string(p.major) +
         std::to_string(p.minor) + ", " + std::to_string(p.multiProcessorCount) + " SMs, " +
         std::to_string(p.totalGlobalMem >> 20) + " MiB); driver " + ver(driver) + ", " + versions;
}

int device_of(const void* p) noexcept {
  cudaPointerAttributes a{};
  if (cudaPointerGetAttributes(&a, p) != cudaSuccess) {
    cudaGetLastError();
    return -1;
  }
  return a.type == cudaMemoryTypeDevice || a.type == cudaMemoryTypeManaged ? a.device : -1;
}

void synchronize_device() { LSTM_EXT_CUDA(cudaDeviceSynchronize()); }

Context::Context(int device) : impl_(new Impl) {
  const int n = device_count();
  if (device < 0 || device >= n)
    throw std::runtime_error("lstm_ext CUDA: device " + std::to_string(device) +
                             " requested, but " + std::to_string(n) + " GPU(s) are visible");
  impl_->device = device;
  LSTM_EXT_CUDA(cudaSetDevice(device));
  LSTM_EXT_CUDA(cudaStreamCreateWithFlags(&impl_->stream, cudaStreamNonBlocking));
  try {
    LSTM_EXT_CUDA(cublasCreate(&impl_->blas));
    LSTM_EXT_CUDA(cublasSetStream(impl_->blas, impl_->stream));
    // Plain float32 products (no TF32), so results match the CPU's to float rounding.
    LSTM_EXT_CUDA(cublasSetMathMode(impl_->blas, CUBLAS_DEFAULT_MATH));
  } catch (...) {
    if (impl_->blas) cublasDestroy(impl_->blas);
    cudaStreamDestroy(impl_->stream);
    throw;
  }
}

Context::~Context() {
  if (!impl_) return;
  cudaSetDevice(impl_->device);
  cudaStreamSynchronize(impl_->stream);  // errors here are reported by the next call
  cublasDestroy(impl_->blas);
  cudaStreamDestroy(impl_->stream);
}

void Context::synchronize() {
  LSTM_EXT_CUDA(cudaStreamSynchronize(impl_->stream));
  LSTM_EXT_CUDA(cudaGetLastError());
}

int Context::device() const { return impl_->device; }

Buffer::Buffer(int64_t bytes) : bytes_(bytes) {
  if (bytes < 0) throw std::invalid_argument("lstm_ext CUDA: negative buffer size");
  if (bytes > 0) LSTM_EXT_CUDA(cudaMalloc(&data_, size_t(bytes)));
}

Buffer::~Buffer() {
  if (data_) cudaFree(data_);
}

Buffer::Buffer(Buffer&& o) noexcept
    : data_(std::exchange(o.data_, nullptr)), bytes_(std::exchange(o.bytes_, 0)) {}

Buffer& Buffer::operator=(Buffer&& o) noexcept {
  if (this != &o) {
    if (data_) cudaFree(data_);
    data_ = std::exchange(o.data_, nullptr);
    bytes_ = std::exchange(o.bytes_, 0);
  }
  return *this;
}

void Buffer::upload(Context& ctx, const void* host, int64_t bytes) {
  if (bytes > bytes_) throw std::invalid_argument("lstm_ext CUDA: upload past the buffer's end");
  if (bytes > 0)
    LSTM_EXT_CUDA(
        cudaMemcpyAsync(data_, host, size_t(bytes), cudaMemcpyHostToDevice, ctx.impl().stream));
}

void Buffer::download(Context& ctx, void* host, int64_t bytes) const {
  if (bytes > bytes_) throw std::invalid_argument("lstm_ext CUDA: download past the buffer's end");
  if (bytes > 0)
    LSTM_EXT_CUDA(
        cudaMemcpyAsync(host, data_, size_t(bytes), cudaMemcpyDeviceToHost, ctx.impl().stream));
  ctx.synchronize();
}

std::vector<double> time_on_stream(Context& ctx, const std::function<void()>& fn, int warmup,
                                   int reps) {
  for (int r = 0; r < warmup; ++r) fn();
  std::vector<cudaEvent_t> ev(size_t(reps) + 1, nullptr);
  std::vector<double> ms(size_t(reps), 0.0);
  try {
    for (auto& e : ev) LSTM_EXT_CUDA(cudaEventCreate(&e));
    LSTM_EXT_CUDA(cudaEventRecord(ev[0], ctx.impl().stream));
    for (int r = 0; r < reps; ++r) {
      fn();
      LSTM_EXT_CUDA(cudaEventRecord(ev[size_t(r) + 1], ctx.impl().stream));
    }
    ctx.synchronize();
    for (int r = 0; r < reps; ++r) {
      float t = 0;
      LSTM_EXT_CUDA(cudaEventElapsedTime(&t, ev[size_t(r)], ev[size_t(r) + 1]));
      ms[size_t(r)] = t;
    }
  } catch (...) {
    for (auto e : ev)
      if (e) cudaEventDestroy(e);
    throw;
  }
  for (auto e : ev) cudaEventDestroy(e);
  return ms;
}

void Buffer::copy_from(Context& ctx, const void* src, int64_t bytes) {
  if (bytes > bytes_) throw std::invalid_argument("lstm_ext CUDA: copy past the buffer's end");
  if (bytes > 0)
    LSTM_EXT_CUDA(
        cudaMemcpyAsync(data_, src, size_t(bytes), cudaMemcpyDeviceToDevice, ctx.impl().stream));
}

void Buffer::fill(Context& ctx, unsigned char byte) {
  if (bytes_ > 0) LSTM_EXT_CUDA(cudaMemsetAsync(data_, byte, size_t(bytes_), ctx.impl().stream));
}

}  // namespace cuda
}  // namespace lstm_ext
