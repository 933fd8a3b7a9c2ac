// The pointwise LSTM math, one element at a time: gate non-linearities, the
// cell update, and their derivatives. Written once for every path: the CPU
// loops call these functions, and so will the CUDA kernels (hence
// LSTM_EXT_HD), so the arithmetic a GPU runs is the arithmetic the CPU tests
// check.
//
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

// The four gates of one hidden unit, after their non-linearity.
template <typename S>
struct Gates {
  S i, f, g, o;
};

// Forward for one unit. z*: pre-activations (x W^T + h R^T + b).
// Returns the activated gates; writes c = f*c_prev + i*g and h = o*tanh(c).
template <typename S>
LSTM_EXT_HD Gates<S> cell_forward(S zi, S zf, S zg, S zo, S c_prev, S* c, S* h) {
  Gates<S> a{sigmoid(zi), sigmoid(zf), tanh_(zg), sigmoid(zo)};
  *c = a.f * c_prev + a.i * a.g;
  *h = a.o * tanh_(*c);
  return a;
}

// Backward for one unit at one step.
//   a      the activated gates saved by forward
//   c_prev c_{t-1};  c  c_t
//   dh     dL/dh_t (from y_t and from step t+1)
//   dc     in: dL/dc_t arriving from step t+1;  out: dL/dc_{t-1}
// Returns dL/dz for the four gate pre-activations.
template <typename S>
LSTM_EXT_HD Gates<S> cell_backward(const Gates<S>& a, S c_prev, S c, S dh, S* dc) {
  const S tc = tanh_(c);
  const S dct = *dc + dh * a.o * dtanh(tc);  // total dL/dc_t
  Gates<S> dz{dct * a.g * dsigmoid(a.i),     //
              dct * c_prev * dsigmoid(a.f),  //
              dct * a.i * dtanh(a.g),        //
              dh * tc * dsigmoid(a.o)};
  *dc = dct * a.f;
  return dz;
}

}  // namespace cell
}  // namespace lstm_ext
