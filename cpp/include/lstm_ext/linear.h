// A fully connected layer, forward and backward, float and double: the
// products a model puts around its LSTM (the head that turns h into logits),
// on lstm_ext's threads with the single-threaded BLAS lstm_ext links.
//
// Why here rather than in the caller's BLAS: a multithreaded BLAS (NumPy's
// OpenBLAS among them) keeps its threads spinning for about 0.1 s after each
// product, and on a machine with as many threads as cores they take cores
// from lstm_ext's next call, whose threads meet at every step: a training step
// that ran its head through NumPy took twice as long (dev/perf-notes.md, 64).
//
// Letters: N rows (T*B for a sequence), K input features, M outputs.
//   y [N,M] = x [N,K] W^T + b,   W [M,K], b [M]
// Row-major and dense, as lstm.h's arrays. Memory belongs to the caller; no
// output may overlap an input or another output. Each product is cut into
// blocks by its shape alone, one single-threaded BLAS call each, so the
// results are bit-identical at any thread count. Calls on different buffers
// may run on different threads at once (a call adds into dW and db: two
// calls adding into the same ones at once race, as any two writers do).
// Errors, before anything is written: sizes < 0, a null pointer for an array
// of nonzero size, or overlapping buffers throw std::invalid_argument; any of
// N, K, M past the BLAS's 32-bit range (2^31 - 1), or an array whose byte
// count would pass 2^63, std::length_error (check_linear_sizes).
#pragma once

#include <cstdint>

namespace lstm_ext {

// Throws as linear_forward and linear_backward do for sizes they refuse: for
// a caller that allocates the outputs first.
void check_linear_sizes(int64_t N, int64_t K, int64_t M);

// y = x W^T + b (b may be null: no bias). y is written.
template <typename S>
void linear_forward(S* y, const S* x, const S* W, const S* b, int64_t N, int64_t K, int64_t M);

// Given dy = dL/dy [N,M]:
//   dx [N,K] = dy W           written (may be null: not wanted; W is read
//                             only for dx, and may then be null too)
//   dW [M,K] += dy^T x        accumulated
//   db [M]   += sum over rows of dy   accumulated (may be null: no bias)
template <typename S>
void linear_backward(S* dx, S* dW, S* db, const S* dy, const S* x, const S* W, int64_t N, int64_t K,
                     int64_t M);

}  // namespace lstm_ext
