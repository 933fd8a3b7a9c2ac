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
//
// The library compiles these without FMA contraction (-ffp-contract=off):
// every multiply-add is written out, fused (kFma: one rounding, mul_add) or
// not, so the same kFma gives the same bits on every ISA. The CPU passes take
// kFma where the CPU has FMA (dev/perf-notes.md, 77). Code including this
// header gets the library's bits where it does the same (GCC's default
// -std=gnu++17 and Clang's default contract into FMA where the target has it).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

// Always inlined: the fused loops vectorise only when every call in them is
// (GCC otherwise keeps some out of line in the target_clones versions).
#if defined(__CUDACC__)
#define LSTM_EXT_HD __host__ __device__ __forceinline__
#define LSTM_EXT_INLINE __forceinline__
#elif defined(__GNUC__)
#define LSTM_EXT_HD inline __attribute__((always_inline))
#define LSTM_EXT_INLINE inline __attribute__((always_inline))
#else
#define LSTM_EXT_HD inline
#define LSTM_EXT_INLINE inline
#endif

namespace lstm_ext {
namespace cell {

// a*b + c: with kFma in one rounding (a fused multiply-add: one instruction
// where the code is compiled for a CPU with FMA, else the C library's fma,
// exact and slow), without in two.
template <bool kFma, typename S>
LSTM_EXT_HD S mul_add(S a, S b, S c) {
  if (!kFma) return a * b + c;
#if defined(__CUDA_ARCH__)
  if constexpr (sizeof(S) == sizeof(float))
    return fmaf(a, b, c);
  else
    return ::fma(a, b, c);
#elif defined(__GNUC__)
  if constexpr (sizeof(S) == sizeof(float))
    return __builtin_fmaf(a, b, c);
  else
    return __builtin_fma(a, b, c);
#else
  return std::fma(a, b, c);
#endif
}

// float on the CPU: e^x by range reduction and a polynomial (Cephes's expf
// coefficients), in plain arithmetic so that loops over it vectorise. Its
// relative error is below 8.4e-8 (0.7 ulp) on [-86, ln(FLT_MAX)] (the
// largest over every float there, against double's exp: 8.33e-8, at 70.37);
// x is clamped to [-86, 89] first (so that n stays in [-124, 128]), and the
// result is p 2^(n-1) 2: two exact products, the second overflowing to +inf
// just where IEEE's expf does (so that sigmoid(-inf) is an exact 0). A NaN
// passes through every operation, so NaN comes back as NaN, with no select
// at the end (dev/perf-notes.md, 41). kNonPositive: the caller promises x <=
// 0 or NaN (tanh's e^{-2|x|}), so the upper clamp is left out. Every
// operation is IEEE (no contraction), so scalar and vector code give the
// same bits; kFma fuses eight of the multiply-adds (20 operations where 28:
// the gate pass 1.3x faster alone), with the same error bound.
template <bool kNonPositive = false, bool kFma = false>
LSTM_EXT_INLINE float host_expf(float x) {
  float xc = x < -86.0f ? -86.0f : x;
  if (!kNonPositive) xc = xc > 89.0f ? 89.0f : xc;
  const float magic = 12582912.0f;  // 1.5*2^23: adding it rounds to an integer
  const float t = mul_add<kFma>(xc, 1.44269504088896341f, magic);
  const float n = t - magic;  // round(x / ln 2)
  float r = mul_add<kFma>(n, -0.693359375f, xc);  // (n times it is exact)
  r = mul_add<kFma>(n, 2.12194440e-4f, r);        // r = x - n ln 2, |r| <= ln2 / 2
  // e^r = 1 + r + r^2 q(r), q of degree 5, by Estrin's scheme: three pairs
  // a r + b joined by r^2 and r^4 (short chains instead of one of twelve
  // operations: the gate pass, five exps a unit, is bound by their latency;
  // dev/perf-notes.md, 31).
  const float r2 = r * r, r4 = r2 * r2;
  const float q54 = mul_add<kFma>(1.9875691500e-4f, r, 1.3981999507e-3f);
  const float q32 = mul_add<kFma>(8.3334519073e-3f, r, 4.1665795894e-2f);
  const float q10 = mul_add<kFma>(1.6666665459e-1f, r, 5.0000001201e-1f);
  float p = mul_add<kFma>(mul_add<kFma>(q54, r2, q32), r4, q10 * r2);  // r^2 q(r)
  p = (p + r) + 1.0f;                          // e^r
  // 2^(n-1) from its exponent field n - 1 + 127; the low bits of t hold n.
  uint32_t tb;
  std::memcpy(&tb, &t, 4);
  const uint32_t sb = (tb - (0x4B400000u - 126u)) << 23;
  float s;
  std::memcpy(&s, &sb, 4);
  return (p * s) * 2.0f;
}

// double on the CPU, in plain arithmetic for the same reason (the C
// library's exp and tanh, one element at a time, took a third of a float64
// forward: dev/perf-notes.md, 49). x = n ln2 + r with |r| <= ln2/2 (ln2 in
// two parts, the first with 21 bits, so that n times it is exact), and
// e^r - 1 = r + r^2 q(r), q the Taylor series' terms 1/2! to 1/13! by
// Estrin's scheme: the first term left out is below 2^-56 of the sum there.
// Every operation is IEEE, so scalar and vector code give the same bits.
LSTM_EXT_INLINE double host_expm1_reduced(double r) {
  const double r2 = r * r, r4 = r2 * r2, r8 = r4 * r4;
  const double a = 1.0 / 2 + r * (1.0 / 6), b = 1.0 / 24 + r * (1.0 / 120);
  const double c = 1.0 / 720 + r * (1.0 / 5040), d = 1.0 / 40320 + r * (1.0 / 362880);
  const double e = 1.0 / 3628800 + r * (1.0 / 39916800);
  const double f = 1.0 / 479001600 + r * (1.0 / 6227020800);
  return r + r2 * ((a + r2 * b) + r4 * (c + r2 * d) + r8 * (e + r2 * f));
}
// r for x = n ln2 + r; the bits of 1.5*2^52 + n in *t, whose low bits hold n.
LSTM_EXT_INLINE double host_reduce(double x, uint64_t* t) {
  const double magic = 6755399441055744.0;  // 1.5*2^52: adding it rounds to an integer
  const double tx = x * 1.4426950408889634 + magic;
  const double n = tx - magic;  // round(x / ln 2)
  std::memcpy(t, &tx, 8);
  return (x - n * 0.693145751953125) - n * 1.42860682030941723212e-6;
}
// 2^(n + k) from host_reduce's t, for n + k + 1023 in [1, 2046].
LSTM_EXT_INLINE double host_pow2(uint64_t t, int k) {
  const uint64_t b = (t - uint64_t{0x4338000000000000} + static_cast<uint64_t>(1023 + k)) << 52;
  double s;
  std::memcpy(&s, &b, 8);
  return s;
}
// e^x, relative error about 1 DBL_EPSILON at worst on [-708, ln(DBL_MAX)]
// (1.02 over 60 million random points; tests/cpp: CellMath) (x is clamped
// to [-708, 710] first, so that n stays in [-1021, 1024]); +inf past
// ln(DBL_MAX), as IEEE's exp, by the same two products as host_expf; NaN for
// NaN. Below -708 it gives e^-708, not 0: only sigmoid and tanh use it, where
// that changes nothing.
LSTM_EXT_INLINE double host_exp(double x) {
  double xc = x < -708.0 ? -708.0 : x;
  xc = xc > 710.0 ? 710.0 : xc;
  uint64_t t;
  const double r = host_reduce(xc, &t);
  return ((host_expm1_reduced(r) + 1.0) * host_pow2(t, -1)) * 2.0;
}
// tanh(|x|) = E / (E + 2) with E = e^{2|x|} - 1 = 2^n (e^r - 1) + (2^n - 1):
// no cancellation, so the relative error stays below 2 DBL_EPSILON (1.70 at
// worst over 60 million points) however small x is; |x| past 20 gives 1, as
// the exact value rounds to.
LSTM_EXT_INLINE double host_tanh(double x) {
  double u = 2.0 * std::fabs(x);
  u = u > 40.0 ? 40.0 : u;
  uint64_t t;
  const double r = host_reduce(u, &t);
  const double s = host_pow2(t, 0);
  const double E = s * host_expm1_reduced(r) + (s - 1.0);
  return std::copysign(E / (E + 2.0), x);
}

// kFma: host_expf's (the GPU's and double's own functions are the same either way).
#if defined(__CUDA_ARCH__)
// (float's value converted to double and back: exact.)
template <bool kFma = false, typename S>
LSTM_EXT_HD S exp_(S x) {
  return S(sizeof(S) == sizeof(float) ? ::expf(float(x)) : ::exp(double(x)));
}
template <bool kFma = false, typename S>
LSTM_EXT_HD S tanh_(S x) {
  return S(sizeof(S) == sizeof(float) ? ::tanhf(float(x)) : ::tanh(double(x)));
}
#else
template <bool kFma = false>
LSTM_EXT_INLINE float exp_(float x) {
  return host_expf<false, kFma>(x);
}
// tanh(x) = sign(x) (1 - e^{-2|x|}) / (1 + e^{-2|x|}): absolute error below
// 2e-7 (relative error grows as |x| -> 0, where tanh(x) -> x). fabs and
// copysign are bit operations, where x < 0 ? -t : t took a compare and a
// blend (and gave tanh(-0) = +0).
template <bool kFma = false>
LSTM_EXT_INLINE float tanh_(float x) {
  const float e = host_expf<true, kFma>(-2.0f * std::fabs(x));
  return std::copysign((1.0f - e) / (1.0f + e), x);
}
template <bool kFma = false>
LSTM_EXT_INLINE double exp_(double x) {
  return host_exp(x);
}
template <bool kFma = false>
LSTM_EXT_INLINE double tanh_(double x) {
  return host_tanh(x);
}
#endif

// 1/(1+e^-x). For x -> -inf, e^-x overflows to +inf and the quotient is an
// exact 0: no NaN, no trap.
template <typename S, bool kFma = false>
LSTM_EXT_HD S sigmoid(S x) {
  return S(1) / (S(1) + exp_<kFma>(-x));
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

// The four gates of unit j in a row laid out [4H] (i, f, g, o blocks), and back.
template <typename S>
LSTM_EXT_HD Gates<S> load_gates(const S* row, int64_t j, int64_t H) {
  return {row[j], row[H + j], row[2 * H + j], row[3 * H + j]};
}
template <typename S>
LSTM_EXT_HD void store_gates(S* row, int64_t j, int64_t H, const Gates<S>& g) {
  row[j] = g.i;
  row[H + j] = g.f;
  row[2 * H + j] = g.g;
  row[3 * H + j] = g.o;
}

// Unit j's peephole weights from p [3H] (ONNX order i, o, f) with kPeep (p
// then not null), zeros without: no branch inside the caller's loop, which
// would keep it from being vectorised.
template <bool kPeep, typename S>
LSTM_EXT_HD Peep<S> peep_of(const S* p, int64_t j, int64_t H) {
  if (!kPeep) return Peep<S>{S(0), S(0), S(0)};
  return Peep<S>{p[j], p[H + j], p[2 * H + j]};
}

// Activations of the (final) pre-activations z.
template <bool kClip, bool kCoupled, bool kFma = false, typename S>
LSTM_EXT_HD Gates<S> activate(const Gates<S>& z, S clip) {
  Gates<S> a;
  a.i = sigmoid<S, kFma>(clamp<kClip>(z.i, clip));
  a.f = kCoupled ? S(1) - a.i : sigmoid<S, kFma>(clamp<kClip>(z.f, clip));
  a.g = tanh_<kFma>(clamp<kClip>(z.g, clip));
  a.o = sigmoid<S, kFma>(clamp<kClip>(z.o, clip));
  return a;
}

// Forward for one unit.
//   z      in: x W^T + h R^T + b;  out: the final pre-activations (peephole
//          terms added, not clamped)
//   c      out: c_t = f*c_{t-1} + i*g
//   m      out: o*tanh(c_t), the cell output before any projection
// Returns the activated gates.
// kFma: the exps' multiply-adds and c_t's first product fused (mul_add).
template <bool kPeep, bool kClip, bool kCoupled, bool kFma = false, typename S>
LSTM_EXT_HD Gates<S> cell_forward(Gates<S>* z, S c_prev, Peep<S> p, S clip, S* c, S* m) {
  if (kPeep) {
    z->i += p.i * c_prev;
    if (!kCoupled) z->f += p.f * c_prev;
  }
  Gates<S> a;
  a.i = sigmoid<S, kFma>(clamp<kClip>(z->i, clip));
  a.f = kCoupled ? S(1) - a.i : sigmoid<S, kFma>(clamp<kClip>(z->f, clip));
  a.g = tanh_<kFma>(clamp<kClip>(z->g, clip));
  *c = mul_add<kFma>(a.f, c_prev, a.i * a.g);
  if (kPeep) z->o += p.o * *c;  // o sees the new cell
  a.o = sigmoid<S, kFma>(clamp<kClip>(z->o, clip));
  *m = a.o * tanh_<kFma>(*c);
  return a;
}

// Backward for one unit at one step.
//   a, z   the activated gates and the final pre-activations (z is read only
//          when kClip, for the clamp's gradient)
//   c_prev c_{t-1};  c  c_t
//   dm     dL/dm_t (from y_t, from step t+1, through any projection)
//   dc     in: dL/dc_t arriving from step t+1;  out: dL/dc_{t-1}
// Returns dL/dz for the four pre-activations (dz_f = 0 when kCoupled).
// kFma: tanh(c_t) as the forward of the same kFma computed it.
template <bool kPeep, bool kClip, bool kCoupled, bool kFma = false, typename S>
LSTM_EXT_HD Gates<S> cell_backward(const Gates<S>& a, const Gates<S>& z, S c_prev, S c, S dm,
                                   Peep<S> p, S clip, S* dc) {
  const S tc = tanh_<kFma>(c);
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
