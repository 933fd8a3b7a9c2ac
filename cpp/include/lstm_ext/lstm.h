// lstm_ext: a single-layer, single-direction LSTM over a whole sequence,
// forward and backpropagation through time, float and double.
//
// Letters, used the same way in every function and comment of the project:
//   T  time steps        B  batch          I  input features
//   H  hidden units      G = 4H, the gate axis, ordered i, f, g, o (PyTorch's)
// Arrays are dense, row-major, last index fastest: x[T,B,I] holds x[t][b][i]
// at ((t*B)+b)*I+i.
//
// The math (sigma: logistic sigmoid; all products elementwise but the GEMMs):
//   z_t = x_t W^T + h_{t-1} R^T + b                  [B,4H]
//   i = sigma(z_i)  f = sigma(z_f)  g = tanh(z_g)  o = sigma(z_o)
//   c_t = f*c_{t-1} + i*g
//   h_t = o*tanh(c_t),   y_t = h_t
//
// Memory belongs to the caller. Forward in training mode leaves what backward
// needs in a workspace of forward_workspace_size() elements; backward needs a
// scratch of backward_scratch_size() elements. Nothing is allocated inside,
// nothing is kept between calls, and calls on different buffers may run on
// different threads at once.
//
// Errors (bad sizes, a null buffer that is needed, a size whose byte count
// overflows, a GEMM dimension past BLAS's 32-bit range) throw std::invalid_argument
// or std::length_error before anything is written. Nothing exits or aborts.
// NaN and Inf in inputs propagate as IEEE arithmetic does.
#pragma once

#include <cstdint>

namespace lstm_ext {

struct Dims {
  int64_t T = 0, B = 0, I = 0, H = 0;
};

// The functions below exist for S = float and S = double. S is deduced from
// the first argument alone (In<S> does not take part), so nullptr may be
// passed for the optional inputs.
template <typename S>
struct InputOf {
  using type = const S*;
};
template <typename S>
using In = typename InputOf<S>::type;

// Elements (not bytes) of the workspace forward needs.
//   training: gates[T,B,4H] (activated), h[T+1,B,H] (h[0] = h0), c[T+1,B,H] (c[0] = c0)
//   inference: the input projection of a chunk of at most kInferenceChunk
//              steps, [min(T,kInferenceChunk),B,4H]: O(B*H), whatever T is.
// Throws std::length_error where the count would overflow.
constexpr int64_t kInferenceChunk = 16;
int64_t forward_workspace_size(const Dims& d, bool training);

// Elements of the scratch backward needs: dz[T,B,4H], the gradient of every
// step's gate pre-activations.
int64_t backward_scratch_size(const Dims& d);

// Elements of the scratch step() needs: z[B,4H].
int64_t step_scratch_size(const Dims& d);

// Forward over the whole sequence.
//   y          out [T,B,H]
//   hT, cT     out [B,H]   the state after the last step
//   workspace  out [forward_workspace_size(d, training)]
//              training: kept for backward; inference: scratch
//   x          in  [T,B,I]
//   h0, c0     in  [B,H]   nullptr means zeros
//   W          in  [4H,I]
//   R          in  [4H,H]
//   b          in  [4H]    nullptr means zeros
// No output may alias an input or another output.
template <typename S>
void lstm_forward(S* y, S* hT, S* cT, S* workspace,  //
                  In<S> x, In<S> h0, In<S> c0,       //
                  In<S> W, In<S> R, In<S> b,         //
                  const Dims& d, bool training);

// Backward through time, from a workspace that lstm_forward(training=true)
// filled with the same x, W, R and d. The workspace is only read, so one
// forward can serve several backward calls.
//   dx        out [T,B,I]
//   dh0, dc0  out [B,H]
//   dW        out [4H,I]     overwritten, not accumulated
//   dR        out [4H,H]     overwritten
//   db        out [4H]       overwritten
//   scratch   out [backward_scratch_size(d)]
//   workspace in  [forward_workspace_size(d, true)]
//   x         in  [T,B,I]
//   W, R      in  as in forward
//   dy        in  [T,B,H]    dL/dy; nullptr means zeros
//   dhT, dcT  in  [B,H]      dL/dh_T, dL/dc_T; nullptr means zeros
// No output may alias an input or another output.
template <typename S>
void lstm_backward(S* dx, S* dh0, S* dc0, S* dW, S* dR, S* db, S* scratch,  //
                   In<S> workspace, In<S> x, In<S> W, In<S> R,              //
                   In<S> dy, In<S> dhT, In<S> dcT,                          //
                   const Dims& d);

// One step, for streaming inference (d.T is ignored).
//   h_out, c_out out [B,H]   may alias h and c: the step updates in place
//   scratch      out [step_scratch_size(d)]
//   x            in  [B,I]
//   h, c         in  [B,H]   nullptr means zeros
//   W, R, b      as in forward (b may be nullptr)
template <typename S>
void lstm_step(S* h_out, S* c_out, S* scratch,  //
               In<S> x, In<S> h, In<S> c, In<S> W, In<S> R, In<S> b, const Dims& d);

}  // namespace lstm_ext
