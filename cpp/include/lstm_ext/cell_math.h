// The pointwise LSTM math, one hidden unit at a time: gate non-linearities,
// the cell update, and their derivatives. Written once for every path: the
// CPU loops call these functions, and so will the CUDA kernels (hence
// LSTM_EXT_HD), so the arithmetic a GPU runs is the arithmetic the CPU tests
// check.
//
// Features are compile-time switches, so the hot loops carry no branches:
//   kPeep     peepholes: z_i += p_i*c_{t-1}, z_f += p_f*c_{t-1}, z_o += p_o*c_t
//   kClip     every pre-activation clamped to [-clip, clip] before its
//             non-linearity; its gradient passes where -clip <= z <= clip
//   kCoupled  coupled input-forget gate: f = 1 - i (z_f is ignored)
// Derivatives are taken from outputs: dsigmoid(y) = y*(1-y), dtanh(y) = 1-y*y.
#pragma once

#include <cmath>

#if defined(__CUDACC__)
#define LSTM_EXT_HD __host__ __device__ __forceinline__
#else
#define LSTM_EXT_HD inline
#endif

namespace lstm_ext {
namespace cell {

LSTM_EXT_HD float exp_(float x) { return ::expf(x); }
LSTM_EXT_HD double exp_(double x) { return ::exp(x); }
LSTM_EXT_HD float tanh_(float x) { return ::tanhf(x); }
LSTM_EXT_HD double tanh_(double x) { return ::tanh(x); }

// 1/(1+e^-x). For x -> -inf, e^-x overflows to +inf and the quotient is an
// exact 0: no NaN, no trap.
template <typename S>
LSTM_EXT_HD S sigmoid(S x) {
  return S(1) / (S(1) + exp_(-x));
}
template <typename S>
LSTM_EXT_HD S dsigmoid(S y) {
  return y * (S(1) - y);
}
template <typename S>
LSTM_EXT_HD S dtanh(S y) {
  return S(1) - y * y;
}

// Clamp to [-clip, clip] when kClip; NaN passes through unchanged.
template <bool kClip, typename S>
LSTM_EXT_HD S clamp(S z, S clip) {
  if (!kClip) return z;
  return z < -clip ? -clip : (z > clip ? clip : z);
}
// Whether the gradient passes the clamp: inside the inclusive bounds (as
// np.clip's), and for NaN, so that a NaN keeps propagating.
template <bool kClip, typename S>
LSTM_EXT_HD bool passes(S z, S clip) {
  return !kClip || !(z < -clip || z > clip);
}

// The four gates of one hidden unit: pre-activations, activations or their
// gradients, by context.
template <typename S>
struct Gates {
  S i, f, g, o;
};

// Peephole weights of one unit (ONNX order in memory: i, o, f).
template <typename S>
struct Peep {
  S i, o, f;
};

// Activations of the (final) pre-activations z.
template <bool kClip, bool kCoupled, typename S>
LSTM_EXT_HD Gates<S> activate(const Gates<S>& z, S clip) {
  Gates<S> a;
  a.i = sigmoid(clamp<kClip>(z.i, clip));
  a.f = kCoupled ? S(1) - a.i : sigmoid(clamp<kClip>(z.f, clip));
  a.g = tanh_(clamp<kClip>(z.g, clip));
  a.o = sigmoid(clamp<kClip>(z.o, clip));
  return a;
}

// Forward for one unit.
//   z      in: x W^T + h R^T + b;  out: the final pre-activations (peephole
//          terms added, not clamped)
//   c      out: c_t = f*c_{t-1} + i*g
//   m      out: o*tanh(c_t), the cell output before any projection
// Returns the activated gates.
template <bool kPeep, bool kClip, bool kCoupled, typename S>
LSTM_EXT_HD Gates<S> cell_forward(Gates<S>* z, S c_prev, Peep<S> p, S clip, S* c, S* m) {
  if (kPeep) {
    z->i += p.i * c_prev;
    if (!kCoupled) z->f += p.f * c_prev;
  }
  Gates<S> a;
  a.i = sigmoid(clamp<kClip>(z->i, clip));
  a.f = kCoupled ? S(1) - a.i : sigmoid(clamp<kClip>(z->f, clip));
  a.g = tanh_(clamp<kClip>(z->g, clip));
  *c = a.f * c_prev + a.i * a.g;
  if (kPeep) z->o += p.o * *c;  // o sees the new cell
  a.o = sigmoid(clamp<kClip>(z->o, clip));
  *m = a.o * tanh_(*c);
  return a;
}

// Backward for one unit at one step.
//   a, z   the activated gates and the final pre-activations (z is read only
//          when kClip, for the clamp's gradient)
//   c_prev c_{t-1};  c  c_t
//   dm     dL/dm_t (from y_t, from step t+1, through any projection)
//   dc     in: dL/dc_t arriving from step t+1;  out: dL/dc_{t-1}
// Returns dL/dz for the four pre-activations (dz_f = 0 when kCoupled).
template <bool kPeep, bool kClip, bool kCoupled, typename S>
LSTM_EXT_HD Gates<S> cell_backward(const Gates<S>& a, const Gates<S>& z, S c_prev, S c, S dm,
                                   Peep<S> p, S clip, S* dc) {
  const S tc = tanh_(c);
  Gates<S> dz;
  dz.o = passes<kClip>(z.o, clip) ? dm * tc * dsigmoid(a.o) : S(0);
  S dct = *dc + dm * a.o * dtanh(tc);  // total dL/dc_t
  if (kPeep) dct += dz.o * p.o;
  dz.g = passes<kClip>(z.g, clip) ? dct * a.i * dtanh(a.g) : S(0);
  if (kCoupled) {  // f = 1 - i: dL/di = dct*(g - c_{t-1})
    dz.i = passes<kClip>(z.i, clip) ? dct * (a.g - c_prev) * dsigmoid(a.i) : S(0);
    dz.f = S(0);
  } else {
    dz.i = passes<kClip>(z.i, clip) ? dct * a.g * dsigmoid(a.i) : S(0);
    dz.f = passes<kClip>(z.f, clip) ? dct * c_prev * dsigmoid(a.f) : S(0);
  }
  *dc = dct * a.f;
  if (kPeep) *dc += dz.i * p.i + dz.f * p.f;
  return dz;
}

}  // namespace cell
}  // namespace lstm_ext
