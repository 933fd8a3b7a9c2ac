// lstm_ext on NVIDIA GPUs: the same calls as lstm.h, on device memory.
//
// Everything lstm.h says holds here, with these differences:
//   - Every S* and In<S> argument is a device pointer (cudaMalloc'd, or a
//     Buffer's data()); Config::lengths stays a host pointer (the schedule of
//     a ragged batch is made on the host and uploaded into the workspace).
//   - Work is queued on the Context's stream and the call returns before it
//     is done: Context::synchronize() (or a Buffer::download on that context)
//     waits for it. A context, and the buffers passed with it, serve one
//     thread at a time.
//   - The workspace and scratch sizes are these functions' own (the GPU
//     keeps every step's cell state, in inference too: O(T*B*H)).
//   - cuBLAS does the matrix products (one for the input projection of all
//     steps, one per step for the recurrence, whole-sequence products for dx,
//     dW, dR in backward) and one fused kernel per step does the pointwise
//     math of cell_math.h, the functions the CPU path runs.
//   - Results are the same bits from run to run on one GPU and cuBLAS
//     version (no atomics); they differ from the CPU's by rounding (GEMM
//     summation order, the GPU's expf and tanhf).
//
// Errors: CUDA and cuBLAS failures throw std::runtime_error naming the call,
// the file, the line and the error; bad sizes and null buffers throw what
// lstm.h's functions throw. Nothing exits.
//
// This header needs no CUDA header: a program that includes it compiles with
// any C++17 compiler and links lstm_ext::cuda.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "lstm_ext/lstm.h"

namespace lstm_ext {
namespace cuda {

// GPUs this process can use; 0 where there is none or no driver (never throws).
int device_count() noexcept;

// One line on the GPU, the driver, the runtime and cuBLAS, or why no GPU is usable.
std::string describe();

// The device that holds the memory at p, or -1 for host memory (or memory
// CUDA does not know). Never throws.
int device_of(const void* p) noexcept;

// Waits for all work queued on the current device, on any stream: before a
// call reads arrays another library wrote on its own stream.
void synchronize_device();

// A cuBLAS handle and a stream on one device. Create one per thread.
class Context {
 public:
  explicit Context(int device = 0);  // throws where the device cannot be used
  ~Context();
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;
  void synchronize();  // wait for the work queued so far; throws its error
  int device() const;
  struct Impl;
  Impl& impl() const { return *impl_; }

 private:
  std::unique_ptr<Impl> impl_;
};

// Device memory owned by the caller: bytes on one device, freed on destruction.
class Buffer {
 public:
  Buffer() = default;
  explicit Buffer(int64_t bytes);  // on the current device; throws on failure
  ~Buffer();
  Buffer(Buffer&& o) noexcept;
  Buffer& operator=(Buffer&& o) noexcept;
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  void* data() const { return data_; }
  int64_t bytes() const { return bytes_; }
  template <typename S>
  S* as() const {
    return static_cast<S*>(data_);
  }
  // Host to device and back, through ctx's stream (download waits for it).
  void upload(Context& ctx, const void* host, int64_t bytes);
  void download(Context& ctx, void* host, int64_t bytes) const;
  // The first `bytes` bytes from device memory at src (a copy on the GPU).
  void copy_from(Context& ctx, const void* src, int64_t bytes);
  // Every byte set to `byte`, through ctx's stream (0xFF: NaN in float and
  // double, which tests use to catch elements a call leaves unwritten).
  void fill(Context& ctx, unsigned char byte);

 private:
  void* data_ = nullptr;
  int64_t bytes_ = 0;
};

// Milliseconds that each of `reps` calls of fn() takes on ctx's stream, read
// from CUDA events around each call, after `warmup` untimed calls. fn queues
// work on ctx (e.g. lstm_forward); the host does not wait between calls.
std::vector<double> time_on_stream(Context& ctx, const std::function<void()>& fn, int warmup,
                                   int reps);

// dst[b][a][:] = src[a][b][:] for src [A,B,W] (the batch_first transpose),
// on ctx's stream. dst must not overlap src.
template <typename S>
void swap01(Context& ctx, S* dst, In<S> src, int64_t A, int64_t B, int64_t W);

// Elements of S (not bytes) of the buffers the calls below need.
template <typename S>
int64_t forward_workspace_size(const Config& cfg, bool training);
template <typename S>
int64_t backward_scratch_size(const Config& cfg);
int64_t step_scratch_size(const Config& cfg);

// As lstm.h's functions of the same names, on ctx's device and stream;
// lstm_backward here reads x [T,B,I] without lengths and reverse (with them
// forward kept the rows it used, and x may be null).
template <typename S>
void lstm_forward(Context& ctx, S* y, S* hT, S* cT, MaybeOut<S> cell_states, S* workspace,  //
                  In<S> x, In<S> h0, In<S> c0,                                              //
                  const Weights<S>& w, const Config& cfg, bool training);

template <typename S>
void lstm_backward(Context& ctx, S* dx, S* dh0, S* dc0, const Grads<S>& g, S* scratch,  //
                   In<S> workspace, In<S> x, In<S> dy, In<S> dhT, In<S> dcT,            //
                   const Weights<S>& w, const Config& cfg);

// h_out and c_out may alias h and c.
template <typename S>
void lstm_step(Context& ctx, S* h_out, S* c_out, S* scratch,  //
               In<S> x, In<S> h, In<S> c, const Weights<S>& w, const Config& cfg);

}  // namespace cuda
}  // namespace lstm_ext
