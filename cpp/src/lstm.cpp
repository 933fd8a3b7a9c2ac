// CPU forward and backward. One GEMM projects the inputs of all steps, one
// GEMM per step adds the recurrent term, and one fused pass per step applies
// the gate non-linearities and the cell update (cell_math.h). Backward runs a
// fused pass and one GEMM per step, then dx, dW, dR and db as whole-sequence
// products.
#include "lstm_ext/lstm.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>

#include "blas.h"
#include "lstm_ext/cell_math.h"

namespace lstm_ext {
namespace {

// a*b, refusing results past what a byte count of S can hold.
int64_t mul(int64_t a, int64_t b) {
  constexpr int64_t kMax = std::numeric_limits<int64_t>::max() / 8;  // bytes of a double
  if (a != 0 && b > kMax / a)
    throw std::length_error("lstm_ext: size " + std::to_string(a) + " x " + std::to_string(b) +
                            " overflows a 64-bit byte count");
  return a * b;
}

int64_t add(int64_t a, int64_t b) {
  if (b > std::numeric_limits<int64_t>::max() / 8 - a)
    throw std::length_error("lstm_ext: size overflows a 64-bit byte count");
  return a + b;
}

void check_dims(const Dims& d) {
  if (d.T < 0 || d.B < 0 || d.I < 0 || d.H < 0)
    throw std::invalid_argument("lstm_ext: sizes must be >= 0, got T=" + std::to_string(d.T) +
                                " B=" + std::to_string(d.B) + " I=" + std::to_string(d.I) +
                                " H=" + std::to_string(d.H));
  // Every product used below, checked once: T*B*4H, T*B*I, 4H*(I+H).
  mul(mul(add(d.T, 1), d.B), mul(4, d.H));
  mul(mul(d.T, d.B), d.I);
  mul(mul(4, d.H), add(d.I, d.H));
}

void require(const void* p, const char* name, int64_t size) {
  if (p == nullptr && size > 0)
    throw std::invalid_argument(std::string("lstm_ext: buffer ") + name + " is null");
}

// Pointers into a training workspace.
template <typename S>
struct Saved {
  S* z;  // [T,B,4H] activated gates
  S* h;  // [T+1,B,H], h[0] = h0
  S* c;  // [T+1,B,H], c[0] = c0
};

template <typename S>
Saved<S> saved(S* ws, const Dims& d) {
  const int64_t BH = d.B * d.H;
  S* h = ws + d.T * d.B * 4 * d.H;
  return {ws, h, h + (d.T + 1) * BH};
}

template <typename S>
void copy_or_zero(S* dst, const S* src, int64_t n) {
  if (n == 0) return;
  if (src)
    std::memcpy(dst, src, sizeof(S) * n);
  else
    std::fill(dst, dst + n, S(0));
}

// The fused forward pass of one step. z[B,4H] holds x W^T + h R^T on entry;
// with kSave it holds the activated gates on exit. c_out may alias c_prev.
template <bool kSave, typename S>
void cell_forward_step(S* h_out, S* c_out, S* y_out, S* z, const S* c_prev, const S* b, int64_t B,
                       int64_t H) {
  for (int64_t n = 0; n < B; ++n) {
    S* zn = z + n * 4 * H;  // [4H]
    for (int64_t j = 0; j < H; ++j) {
      const S bi = b ? b[j] : S(0), bf = b ? b[H + j] : S(0);
      const S bg = b ? b[2 * H + j] : S(0), bo = b ? b[3 * H + j] : S(0);
      S h;
      const auto a =
          cell::cell_forward(zn[j] + bi, zn[H + j] + bf, zn[2 * H + j] + bg, zn[3 * H + j] + bo,
                             c_prev[n * H + j], &c_out[n * H + j], &h);
      h_out[n * H + j] = h;
      if (y_out) y_out[n * H + j] = h;
      if (kSave) {
        zn[j] = a.i;
        zn[H + j] = a.f;
        zn[2 * H + j] = a.g;
        zn[3 * H + j] = a.o;
      }
    }
  }
}

// The fused backward pass of one step.
//   dz   out [B,4H]  dL/dz_t
//   dc   in/out [B,H]  dL/dc_t from step t+1 -> dL/dc_{t-1}
//   dh   in [B,H]  dL/dh_t from step t+1;  dy in [B,H] or nullptr
//   a    in [B,4H] activated gates;  c_prev, c in [B,H]
template <typename S>
void cell_backward_step(S* dz, S* dc, const S* dh, const S* dy, const S* a, const S* c_prev,
                        const S* c, int64_t B, int64_t H) {
  for (int64_t n = 0; n < B; ++n) {
    const S* an = a + n * 4 * H;
    S* dzn = dz + n * 4 * H;
    for (int64_t j = 0; j < H; ++j) {
      const int64_t k = n * H + j;
      const cell::Gates<S> g{an[j], an[H + j], an[2 * H + j], an[3 * H + j]};
      const S dht = dh[k] + (dy ? dy[k] : S(0));
      const auto d = cell::cell_backward(g, c_prev[k], c[k], dht, &dc[k]);
      dzn[j] = d.i;
      dzn[H + j] = d.f;
      dzn[2 * H + j] = d.g;
      dzn[3 * H + j] = d.o;
    }
  }
}

}  // namespace

int64_t forward_workspace_size(const Dims& d, bool training) {
  check_dims(d);
  if (training) return add(mul(mul(d.T, d.B), 4 * d.H), mul(mul(2 * (d.T + 1), d.B), d.H));
  return mul(mul(std::min(d.T, kInferenceChunk), d.B), 4 * d.H);
}

int64_t backward_scratch_size(const Dims& d) {
  check_dims(d);
  return mul(mul(d.T, d.B), 4 * d.H);
}

int64_t step_scratch_size(const Dims& d) {
  check_dims(Dims{0, d.B, d.I, d.H});
  return mul(d.B, 4 * d.H);
}

template <typename S>
void lstm_forward(S* y, S* hT, S* cT, S* ws, In<S> x, In<S> h0, In<S> c0, In<S> W, In<S> R, In<S> b,
                  const Dims& d, bool training) {
  check_dims(d);
  const int64_t T = d.T, B = d.B, I = d.I, H = d.H, BH = B * H, G = 4 * H;
  require(y, "y", T * BH);
  require(hT, "hT", BH);
  require(cT, "cT", BH);
  require(ws, "workspace", forward_workspace_size(d, training));
  require(x, "x", T * B * I);
  require(W, "W", G * I);
  require(R, "R", G * H);

  if (training) {
    const Saved<S> s = saved(ws, d);
    copy_or_zero(s.h, h0, BH);
    copy_or_zero(s.c, c0, BH);
    gemm(Op::N, Op::T, T * B, G, I, S(1), x, I, W, I, S(0), s.z, G);  // [T*B,4H]
    for (int64_t t = 0; t < T; ++t) {
      S* z = s.z + t * B * G;  // [B,4H]
      gemm(Op::N, Op::T, B, G, H, S(1), s.h + t * BH, H, R, H, S(1), z, G);
      cell_forward_step<true>(s.h + (t + 1) * BH, s.c + (t + 1) * BH, y + t * BH, z, s.c + t * BH,
                              b, B, H);
    }
    copy_or_zero(hT, s.h + T * BH, BH);
    copy_or_zero(cT, s.c + T * BH, BH);
    return;
  }

  // Inference: the state lives in y (h) and cT (c); the input projection is
  // done kInferenceChunk steps at a time into ws.
  copy_or_zero(cT, c0, BH);
  for (int64_t t0 = 0; t0 < T; t0 += kInferenceChunk) {
    const int64_t steps = std::min(kInferenceChunk, T - t0);
    gemm(Op::N, Op::T, steps * B, G, I, S(1), x + t0 * B * I, I, W, I, S(0), ws, G);
    for (int64_t t = t0; t < t0 + steps; ++t) {
      S* z = ws + (t - t0) * B * G;  // [B,4H]
      const S* h_prev = t == 0 ? h0 : y + (t - 1) * BH;
      if (h_prev) gemm(Op::N, Op::T, B, G, H, S(1), h_prev, H, R, H, S(1), z, G);
      cell_forward_step<false>(y + t * BH, cT, static_cast<S*>(nullptr), z, cT, b, B, H);
    }
  }
  copy_or_zero(hT, T == 0 ? h0 : y + (T - 1) * BH, BH);
}

template <typename S>
void lstm_backward(S* dx, S* dh0, S* dc0, S* dW, S* dR, S* db, S* dz_all, In<S> ws, In<S> x,
                   In<S> W, In<S> R, In<S> dy, In<S> dhT, In<S> dcT, const Dims& d) {
  check_dims(d);
  const int64_t T = d.T, B = d.B, I = d.I, H = d.H, BH = B * H, G = 4 * H;
  require(dx, "dx", T * B * I);
  require(dh0, "dh0", BH);
  require(dc0, "dc0", BH);
  require(dW, "dW", G * I);
  require(dR, "dR", G * H);
  require(db, "db", G);
  require(dz_all, "scratch", backward_scratch_size(d));
  require(ws, "workspace", forward_workspace_size(d, true));
  require(x, "x", T * B * I);
  require(W, "W", G * I);
  require(R, "R", G * H);

  // dh0 and dc0 carry the running dL/dh and dL/dc back through the steps.
  const Saved<S> s = saved(const_cast<S*>(ws), d);
  copy_or_zero(dh0, dhT, BH);
  copy_or_zero(dc0, dcT, BH);
  for (int64_t t = T - 1; t >= 0; --t) {
    S* dz = dz_all + t * B * G;  // [B,4H]
    cell_backward_step(dz, dc0, dh0, dy ? dy + t * BH : nullptr, s.z + t * B * G, s.c + t * BH,
                       s.c + (t + 1) * BH, B, H);
    gemm(Op::N, Op::N, B, H, G, S(1), dz, G, R, H, S(0), dh0, H);  // dL/dh_{t-1} [B,H]
  }

  gemm(Op::N, Op::N, T * B, I, G, S(1), dz_all, G, W, I, S(0), dx, I);    // [T*B,I]
  gemm(Op::T, Op::N, G, I, T * B, S(1), dz_all, G, x, I, S(0), dW, I);    // [4H,I]
  gemm(Op::T, Op::N, G, H, T * B, S(1), dz_all, G, s.h, H, S(0), dR, H);  // [4H,H], h[0..T-1]
  std::fill(db, db + G, S(0));
  for (int64_t r = 0; r < T * B; ++r)
    for (int64_t k = 0; k < G; ++k) db[k] += dz_all[r * G + k];
}

template <typename S>
void lstm_step(S* h_out, S* c_out, S* z, In<S> x, In<S> h, In<S> c, In<S> W, In<S> R, In<S> b,
               const Dims& d) {
  const int64_t B = d.B, I = d.I, H = d.H, G = 4 * H;
  require(z, "scratch", step_scratch_size(d));
  require(h_out, "h_out", B * H);
  require(c_out, "c_out", B * H);
  require(x, "x", B * I);
  require(W, "W", G * I);
  require(R, "R", G * H);
  gemm(Op::N, Op::T, B, G, I, S(1), x, I, W, I, S(0), z, G);  // [B,4H]
  // h is read in full here, before h_out (which may alias it) is written.
  if (h) gemm(Op::N, Op::T, B, G, H, S(1), h, H, R, H, S(1), z, G);
  if (!c) std::fill(c_out, c_out + B * H, S(0));
  cell_forward_step<false>(h_out, c_out, static_cast<S*>(nullptr), z, c ? c : c_out, b, B, H);
}

#define LSTM_EXT_INSTANTIATE(S)                                                                 \
  template void lstm_forward<S>(S*, S*, S*, S*, In<S>, In<S>, In<S>, In<S>, In<S>, In<S>,       \
                                const Dims&, bool);                                             \
  template void lstm_backward<S>(S*, S*, S*, S*, S*, S*, S*, In<S>, In<S>, In<S>, In<S>, In<S>, \
                                 In<S>, In<S>, const Dims&);                                    \
  template void lstm_step<S>(S*, S*, S*, In<S>, In<S>, In<S>, In<S>, In<S>, In<S>, const Dims&);
LSTM_EXT_INSTANTIATE(float)
LSTM_EXT_INSTANTIATE(double)

}  // namespace lstm_ext
