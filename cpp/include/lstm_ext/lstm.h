// lstm_ext: one LSTM layer in one direction over a whole (possibly ragged)
// batch of sequences, forward and backpropagation through time, float and
// double. Stacks and bidirectional layers are built from these calls.
//
// Letters, used the same way in every function and comment of the project:
//   T  time steps        B  batch          I  input features
//   H  hidden units      P  projection size (0: none)
//   O  the size of h: P if P > 0, else H
//   4H the gate axis, ordered i, f, g, o (PyTorch's)
// Arrays are dense, row-major, last index fastest: x[T,B,I] holds x[t][b][i]
// at ((t*B)+b)*I+i.
//
// The math (sigma: logistic sigmoid; products elementwise but the GEMMs):
//   z_t = x_t W^T + h_{t-1} R^T + b                  [B,4H]
//   (peepholes)  z_i += p_i*c_{t-1}   z_f += p_f*c_{t-1}
//   (clip)       every z clamped to [-clip, clip] before its non-linearity
//   i = sigma(z_i)  f = sigma(z_f) (or 1 - i, coupled)  g = tanh(z_g)
//   c_t = f*c_{t-1} + i*g
//   (peepholes)  z_o += p_o*c_t
//   o = sigma(z_o)
//   m_t = o*tanh(c_t)
//   h_t = m_t W_hr^T (projection, [B,P]) or m_t;   y_t = h_t
//
// Ragged batches: lengths[b] in [0,T] valid steps for sequence b. Steps at or
// past it give y = 0 and leave that sequence's state alone; its final state
// is the one after its last valid step; in reverse, it starts at its own last
// valid step. The work done scales with the sum of the lengths.
//
// Memory belongs to the caller. Forward in training mode leaves what backward
// needs in a workspace of forward_workspace_size() elements; backward needs a
// scratch of backward_scratch_size() elements. Nothing is kept between calls
// and nothing is allocated in the step loops (a ragged batch's schedule,
// O(B+T) integers, is allocated once per call). Calls on different buffers
// may run on different threads at once. The same inputs give bit-identical
// results on every run.
//
// Errors (bad sizes or lengths, a needed buffer that is null, a size whose
// byte count overflows, a GEMM dimension past BLAS's 32-bit range) throw
// std::invalid_argument or std::length_error before anything is written.
// Nothing exits or aborts. NaN and Inf in inputs propagate as IEEE
// arithmetic does.
#pragma once

#include <cstdint>

namespace lstm_ext {

// The shape and switches of one layer-direction call.
struct Config {
  int64_t T = 0, B = 0, I = 0, H = 0;
  int64_t P = 0;                     // projection size; 0: none
  bool reverse = false;              // run from the last step to the first
  bool input_forget = false;         // coupled gates: f = 1 - i
  double clip = 0;                   // > 0: clamp pre-activations to [-clip, clip]
  const int64_t* lengths = nullptr;  // [B], each in [0,T]; nullptr: all T
  // Inference with W, R and W_hr rounded to bfloat16 (to nearest, ties to
  // even), float32 only: the products read R as bfloat16 (half the bytes a
  // step; with the packed kernel, AVX-512F or AVX2, else float32 copies of
  // the rounded weights) and accumulate in float32; bias, peepholes, inputs and states stay
  // float32. The results are those of the same call in float32 with the
  // weights rounded first, bit for bit. forward_workspace_size and
  // lstm_forward refuse it with training = true, lstm_forward with double.
  bool bf16_weights = false;
  int64_t O() const { return P > 0 ? P : H; }
};

// The functions below exist for S = float and S = double. S is deduced from
// the required outputs; In<S> (an input) and MaybeOut<S> (an optional
// output) do not take part, so nullptr may be passed for them.
template <typename S>
struct NonDeduced {
  using in = const S*;
  using out = S*;
};
template <typename S>
using In = typename NonDeduced<S>::in;
template <typename S>
using MaybeOut = typename NonDeduced<S>::out;

template <typename S>
struct Weights {
  In<S> W = nullptr;         // [4H,I]
  In<S> R = nullptr;         // [4H,O]
  In<S> b = nullptr;         // [4H]; nullptr: zeros
  In<S> W_hr = nullptr;      // [P,H]; required when P > 0
  In<S> peephole = nullptr;  // [3H] in ONNX order (i, o, f); nullptr: none
  // [packed_weights_size(cfg)] from pack_weights(packed, *this, cfg), or
  // nullptr: lstm_forward packs R and W in its workspace each call.
  In<S> packed = nullptr;
};

// Parameter gradients, each overwritten (not accumulated) and shaped as its
// weight. dW_hr is required when P > 0; dpeephole when the forward call had
// peepholes.
template <typename S>
struct Grads {
  S* dW = nullptr;
  S* dR = nullptr;
  S* db = nullptr;
  S* dW_hr = nullptr;
  S* dpeephole = nullptr;
};

// Elements (not bytes) of the workspace forward needs. Training keeps the
// gates, cell states and inputs of every step (O(T*B*(I+H+O))); inference
// keeps the input projection of a chunk of inference_chunk(B) steps (at least
// kInferenceChunk, and enough for kInferenceChunkRows rows, so that a small
// batch's projection is one GEMM of a useful size) and the state, O(B*H)
// whatever T is. Both hold R packed for the recurrent product when P = 0,
// and where 4H(I+O) <= 2^21 W packed the same way (the input products use it,
// but for the forward only up to 2^20 where a core's L2 is under 1 MiB: the
// room is there either way).
// Training without lengths or projection takes TBI + 6TBH + 7BH +
// 4H*32*ceil(H/32) elements: x [T,B,I] (backward reads it there), gates
// [T,B,4H], cell states [T+1,B,H], h_{t-1} [T,B,H], h [2,B,H], the
// gate-major product [4H,B] and the packed R; where 4H(I+O) <=
// 2^21 add 4I*32*ceil(H/32), the packed W, and in training
// 4H*32*(ceil(H/32) + ceil(I/32)), R and W packed by columns for backward
// (training_keeps_weights). Where also 4BHO >= 3 * 32768 (the multiply-adds
// of a step's recurrent product), training adds TB*32*(ceil(I/32) +
// ceil(O/32)) + 1: x and h_{t-1} packed by columns, from which backward
// computes dW and dR by the packed kernel (float on a CPU with AVX-512F; the
// room is there for any type and CPU), and a flag that says whether the
// forward wrote them; where it did, it wrote no other copy of x or h_{t-1}
// (their room above stays, unused). With bf16_weights inference adds the
// rounded W, R and W_hr (4H(I+O) + PH elements); where the CPU has AVX-512F
// the packed R and W hold bfloat16 panels (in the first half of their room).
// Throws std::length_error, naming T, B, I, H and P, where a count's byte
// count would pass 2^63 (or a GEMM dimension BLAS's 2^31-1).
constexpr int64_t kInferenceChunk = 16, kInferenceChunkRows = 256;
inline int64_t inference_chunk(int64_t B) {
  // B * kInferenceChunk >= kInferenceChunkRows, without the product (any B)
  constexpr int64_t kFullFrom = (kInferenceChunkRows + kInferenceChunk - 1) / kInferenceChunk;
  return B <= 0 || B >= kFullFrom ? kInferenceChunk : (kInferenceChunkRows + B - 1) / B;
}
int64_t forward_workspace_size(const Config& cfg, bool training);

// Elements of the scratch backward needs. Without lengths or projection,
// 4TBH + 2BH: the gates' gradients [T,B,4H], dL/dh and dL/dc [B,H]; where
// 4H(I+O) > 2^21 add 4H*32*ceil(H/32), R packed by columns (smaller weights
// come packed in the workspace); where the workspace has room for x and
// h_{t-1} packed (forward_workspace_size) add 4H*272, the gradients of the
// gates transposed, 256 rows at a time.
int64_t backward_scratch_size(const Config& cfg);

// Whether a training forward keeps R and W in its workspace, packed by
// columns as backward's products read them: without a projection (P = 0)
// and where 4H(I+O) <= 2^21. Backward then reads neither w.R nor w.W (they
// may be null) and computes the gradient at the weights the forward used,
// whatever happened to w's arrays since. Depends on the shape alone.
bool training_keeps_weights(const Config& cfg);

// R and W packed once, for many forward calls with the same weights (a model
// run in chunks, an inference server): lstm_forward packs them in its workspace
// otherwise, more than half of a (1,1,128,128) inference call on the 2-core VM
// and a third at T = 10 (dev/perf-notes.md, 53). pack_weights writes
// packed_weights_size(cfg) elements: a header naming the shape, then the panels
// the products read. A forward call with w.packed reads its panels instead of
// packing R and W, and gives the same bits. The caller promises that w.R and
// w.W still hold what was packed (they are still read: with a projection
// nothing is packed, and where the input product goes to the BLAS); the buffer
// is only read, so calls on several threads may share it. Only cfg's I, H, P
// and bf16_weights matter (T, B, lengths and reverse may differ from call to
// call), in this process: where the packing would differ (another CPU's kernel,
// the packed kernel switched off since, set_packed_recurrent), lstm_forward
// packs in its workspace as without. lstm_forward throws std::invalid_argument
// where w.packed's header is not pack_weights' or names another shape. The
// workspace's size is the same either way. The CUDA path ignores w.packed.
int64_t packed_weights_size(const Config& cfg);
template <typename S>
void pack_weights(S* packed, const Weights<S>& w, const Config& cfg);

// Elements of the scratch step() needs.
int64_t step_scratch_size(const Config& cfg);

// Forward over the whole sequence.
//   y            out [T,B,O]
//   hT           out [B,O]   state after each sequence's last valid step
//   cT           out [B,H]
//   cell_states  out [T,B,H] c_t of every step (0 past a sequence's end), or nullptr
//   workspace    out [forward_workspace_size(cfg, training)]
//   x            in  [T,B,I]
//   h0           in  [B,O]   nullptr: zeros
//   c0           in  [B,H]   nullptr: zeros
// No output may alias an input or another output (y overlapping x:
// std::invalid_argument).
template <typename S>
void lstm_forward(S* y, S* hT, S* cT, MaybeOut<S> cell_states, S* workspace,  //
                  In<S> x, In<S> h0, In<S> c0,                                //
                  const Weights<S>& w, const Config& cfg, bool training);

// Backward through time, from the workspace of lstm_forward(training=true)
// with the same w and cfg (where training_keeps_weights(cfg), w.W and w.R
// are not read: the workspace holds them, as it holds x). The workspace is
// only read, so one forward can serve several backward calls. It is for
// this process: where the forward packed x and h_{t-1} for the AVX-512F
// kernel (forward_workspace_size), backward on a CPU without AVX-512F throws
// std::logic_error.
//   dx        out [T,B,I]   (0 at steps past a sequence's end)
//   dh0       out [B,O]
//   dc0       out [B,H]
//   g         out the parameter gradients
//   scratch   out [backward_scratch_size(cfg)]
//   workspace in
//   x         not read: forward kept the rows of x it used (may be null)
//   dy        in  [T,B,O]   dL/dy; nullptr: zeros. Ignored past a sequence's end.
//   dhT       in  [B,O]     dL/dh_T; nullptr: zeros
//   dcT       in  [B,H]     dL/dc_T; nullptr: zeros
// No output may alias an input or another output.
template <typename S>
void lstm_backward(S* dx, S* dh0, S* dc0, const Grads<S>& g, S* scratch,      //
                   In<S> workspace, In<S> x, In<S> dy, In<S> dhT, In<S> dcT,  //
                   const Weights<S>& w, const Config& cfg);

// One step, for streaming inference (cfg.T, reverse and lengths are ignored).
//   h_out    out [B,O]   may alias h: the step can update in place
//   c_out    out [B,H]   may alias c
//   scratch  out [step_scratch_size(cfg)]
//   x        in  [B,I]
//   h        in  [B,O]   nullptr: zeros
//   c        in  [B,H]   nullptr: zeros
template <typename S>
void lstm_step(S* h_out, S* c_out, S* scratch,  //
               In<S> x, In<S> h, In<S> c, const Weights<S>& w, const Config& cfg);

}  // namespace lstm_ext
