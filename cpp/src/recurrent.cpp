#include "recurrent.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <stdexcept>

#include "common.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define LSTM_EXT_HAVE_AVX512_KERNEL 1
#define LSTM_EXT_AVX512 __attribute__((target("avx512f"), always_inline)) inline
#define LSTM_EXT_AVX512_FN __attribute__((target("avx512f")))
#endif

namespace lstm_ext {
namespace detail {
namespace {

bool cpu_has_avx512f() {
#ifdef LSTM_EXT_HAVE_AVX512_KERNEL
  return __builtin_cpu_supports("avx512f");
#else
  return false;
#endif
}

// On where the CPU can, unless LSTM_EXT_PACKED_RECURRENT=0.
std::atomic<bool>& packed_on() {
  static std::atomic<bool> on{[] {
    const char* env = std::getenv("LSTM_EXT_PACKED_RECURRENT");
    return cpu_has_avx512f() && !(env && env[0] == '0');
  }()};
  return on;
}

#ifdef LSTM_EXT_HAVE_AVX512_KERNEL

// One 512-bit vector of S, and what the kernel does with it.
template <typename S>
struct Vec;

template <>
struct Vec<float> {
  using V = __m512;
  using Mask = __mmask16;
  static constexpr int kLanes = 16;
  static LSTM_EXT_AVX512 V load(const float* p) { return _mm512_loadu_ps(p); }
  static LSTM_EXT_AVX512 V load(Mask m, const float* p) { return _mm512_maskz_loadu_ps(m, p); }
  static LSTM_EXT_AVX512 void store(float* p, Mask m, V v) { _mm512_mask_storeu_ps(p, m, v); }
  static LSTM_EXT_AVX512 V bcast(float s) { return _mm512_set1_ps(s); }
  static LSTM_EXT_AVX512 V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
};

template <>
struct Vec<double> {
  using V = __m512d;
  using Mask = __mmask8;
  static constexpr int kLanes = 8;
  static LSTM_EXT_AVX512 V load(const double* p) { return _mm512_loadu_pd(p); }
  static LSTM_EXT_AVX512 V load(Mask m, const double* p) { return _mm512_maskz_loadu_pd(m, p); }
  static LSTM_EXT_AVX512 void store(double* p, Mask m, V v) { _mm512_mask_storeu_pd(p, m, v); }
  static LSTM_EXT_AVX512 V bcast(double s) { return _mm512_set1_pd(s); }
  static LSTM_EXT_AVX512 V fma(V a, V b, V c) { return _mm512_fmadd_pd(a, b, c); }
};

// NR rows of z, NG panels at once, each panel two vectors wide:
//   z[r][g*zs + c] += sum_k a[r][k] * bp[g][k][c]     (c where panel g's mask is set)
// NR*NG*2 accumulators, each an independent chain over k. Few rows take
// several panels at once, so that enough chains hide the FMA latency.
template <typename S, int NR, int NG>
LSTM_EXT_AVX512_FN void panel_rows(S* z, int64_t ldz, int64_t zs, const S* a, int64_t lda,
                                   const S* bp, int64_t K, const typename Vec<S>::Mask* m0,
                                   const typename Vec<S>::Mask* m1) {
  using X = Vec<S>;
  constexpr int64_t L = X::kLanes, P = 2 * L;
  typename X::V acc[NR][NG][2];
#pragma GCC unroll 16
  for (int r = 0; r < NR; ++r)
#pragma GCC unroll 4
    for (int g = 0; g < NG; ++g) {
      acc[r][g][0] = X::load(m0[g], z + r * ldz + g * zs);
      acc[r][g][1] = X::load(m1[g], z + r * ldz + g * zs + L);
    }
  for (int64_t k = 0; k < K; ++k) {
#pragma GCC unroll 4
    for (int g = 0; g < NG; ++g) {
      const typename X::V b0 = X::load(bp + (g * K + k) * P),
                          b1 = X::load(bp + (g * K + k) * P + L);
#pragma GCC unroll 16
      for (int r = 0; r < NR; ++r) {
        const typename X::V ak = X::bcast(a[r * lda + k]);
        acc[r][g][0] = X::fma(ak, b0, acc[r][g][0]);
        acc[r][g][1] = X::fma(ak, b1, acc[r][g][1]);
      }
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < NR; ++r)
#pragma GCC unroll 4
    for (int g = 0; g < NG; ++g) {
      X::store(z + r * ldz + g * zs, m0[g], acc[r][g][0]);
      X::store(z + r * ldz + g * zs + L, m1[g], acc[r][g][1]);
    }
}

template <typename S>
using RowsFn = void (*)(S*, int64_t, int64_t, const S*, int64_t, const S*, int64_t, int,
                        const typename Vec<S>::Mask*, const typename Vec<S>::Mask*);

// Fewer than 4 rows: all ng panels at once.
template <typename S, int NR>
LSTM_EXT_AVX512_FN void few_rows(S* z, int64_t ldz, int64_t zs, const S* a, int64_t lda,
                                 const S* bp, int64_t K, int ng, const typename Vec<S>::Mask* m0,
                                 const typename Vec<S>::Mask* m1) {
  switch (ng) {
    case 1:
      return panel_rows<S, NR, 1>(z, ldz, zs, a, lda, bp, K, m0, m1);
    case 2:
      return panel_rows<S, NR, 2>(z, ldz, zs, a, lda, bp, K, m0, m1);
    case 3:
      return panel_rows<S, NR, 3>(z, ldz, zs, a, lda, bp, K, m0, m1);
    default:
      return panel_rows<S, NR, 4>(z, ldz, zs, a, lda, bp, K, m0, m1);
  }
}

// 4 to 12 rows: one panel at a time.
template <typename S, int NR>
LSTM_EXT_AVX512_FN void many_rows(S* z, int64_t ldz, int64_t zs, const S* a, int64_t lda,
                                  const S* bp, int64_t K, int ng, const typename Vec<S>::Mask* m0,
                                  const typename Vec<S>::Mask* m1) {
  constexpr int64_t P = 2 * Vec<S>::kLanes;
  for (int g = 0; g < ng; ++g)
    panel_rows<S, NR, 1>(z + g * zs, ldz, zs, a, lda, bp + g * K * P, K, m0 + g, m1 + g);
}

template <typename S>
LSTM_EXT_AVX512_FN void panels_avx512(S* z, int64_t ldz, int64_t zs, const S* a, int64_t lda,
                                      const S* bp, int64_t nb, int64_t K, int ng,
                                      const int64_t* width) {
  using X = Vec<S>;
  using Mask = typename X::Mask;
  constexpr int64_t L = X::kLanes;
  const auto lanes = [](int64_t n) {
    return n >= L ? Mask(~Mask(0)) : n <= 0 ? Mask(0) : Mask((Mask(1) << n) - 1);
  };
  Mask m0[4], m1[4];
  for (int g = 0; g < ng; ++g) m0[g] = lanes(width[g]), m1[g] = lanes(width[g] - L);
  static constexpr RowsFn<S> kRows[] = {
      nullptr,          few_rows<S, 1>,   few_rows<S, 2>,  few_rows<S, 3>,  many_rows<S, 4>,
      many_rows<S, 5>,  many_rows<S, 6>,  many_rows<S, 7>, many_rows<S, 8>, many_rows<S, 9>,
      many_rows<S, 10>, many_rows<S, 11>, many_rows<S, 12>};
  // Groups of at most 12 rows, as even as possible (64 rows: 11,11,11,11,10,10
  // rather than 12,12,12,12,12,4, whose last group keeps few FMAs in flight).
  const int64_t groups = (nb + 11) / 12;
  for (int64_t q = 0, n0 = 0; q < groups; ++q) {
    const int64_t nr = nb / groups + (q < nb % groups ? 1 : 0);
    kRows[nr](z + n0 * ldz, ldz, zs, a + n0 * lda, lda, bp, K, ng, m0, m1);
    n0 += nr;
  }
}

#endif  // LSTM_EXT_HAVE_AVX512_KERNEL

}  // namespace

template <typename S>
int64_t packed_recurrent_size(int64_t H, int64_t O) {
  return mul(mul(recurrent_blocks<S>(H), 4 * kPanel<S>), O);
}

template <typename S>
void pack_recurrent_block(S* Rp, const S* R, int64_t H, int64_t O, int64_t u) {
  constexpr int64_t P = kPanel<S>;
  S* block = Rp + u * 4 * O * P;
  for (int64_t g = 0; g < 4; ++g)
    for (int64_t c = 0; c < P; ++c) {
      const int64_t j = u * P + c;
      S* col = block + g * O * P + c;
      if (j < H)
        for (int64_t k = 0; k < O; ++k) col[k * P] = R[(g * H + j) * O + k];
      else
        for (int64_t k = 0; k < O; ++k) col[k * P] = S(0);
    }
}

template <typename S>
void pack_columns(S* Bp, const S* B, int64_t K, int64_t N, int64_t p) {
  constexpr int64_t P = kPanel<S>;
  S* panel = Bp + p * K * P;
  const int64_t c0 = p * P, w = std::min(P, N - c0);
  for (int64_t k = 0; k < K; ++k) {
    std::copy(B + k * N + c0, B + k * N + c0 + w, panel + k * P);
    std::fill(panel + k * P + w, panel + (k + 1) * P, S(0));
  }
}

template <typename S>
void panel_product(S* z, int64_t ldz, int64_t zs, const S* a, int64_t lda, const S* Bp, int64_t nb,
                   int64_t K, int ng, const int64_t* width) {
#ifdef LSTM_EXT_HAVE_AVX512_KERNEL
  panels_avx512(z, ldz, zs, a, lda, Bp, nb, K, ng, width);
#else
  (void)z, (void)ldz, (void)zs, (void)a, (void)lda, (void)Bp, (void)nb, (void)K, (void)ng,
      (void)width;
  throw std::logic_error("lstm_ext: the packed recurrent kernel is not compiled in");
#endif
}

template <typename S>
void recurrent_block(S* z, int64_t ldz, const S* h, int64_t ldh, const S* Rp, int64_t nb, int64_t H,
                     int64_t O, int64_t u) {
  constexpr int64_t P = kPanel<S>;
  const int64_t w = std::min(P, H - u * P), width[4] = {w, w, w, w};
  panel_product(z + u * P, ldz, H, h, ldh, Rp + u * 4 * O * P, nb, O, 4, width);
}

template <typename S>
void column_product(S* z, int64_t ldz, const S* a, int64_t lda, const S* Bp, int64_t nb, int64_t K,
                    int64_t c0, int64_t c1) {
  constexpr int64_t P = kPanel<S>;
  for (int64_t c = c0; c < c1; c += 4 * P) {
    int64_t width[4];
    int ng = 0;
    for (; ng < 4 && c + ng * P < c1; ++ng) width[ng] = std::min(P, c1 - c - ng * P);
    panel_product(z + c, ldz, P, a, lda, Bp + (c / P) * K * P, nb, K, ng, width);
  }
}

#define LSTM_EXT_INSTANTIATE(S)                                                                \
  template int64_t packed_recurrent_size<S>(int64_t, int64_t);                                 \
  template void pack_recurrent_block<S>(S*, const S*, int64_t, int64_t, int64_t);              \
  template void recurrent_block<S>(S*, int64_t, const S*, int64_t, const S*, int64_t, int64_t, \
                                   int64_t, int64_t);                                          \
  template void pack_columns<S>(S*, const S*, int64_t, int64_t, int64_t);                      \
  template void column_product<S>(S*, int64_t, const S*, int64_t, const S*, int64_t, int64_t,  \
                                  int64_t, int64_t);
LSTM_EXT_INSTANTIATE(float)
LSTM_EXT_INSTANTIATE(double)

}  // namespace detail

bool packed_recurrent_enabled() { return detail::packed_on().load(std::memory_order_relaxed); }

bool set_packed_recurrent(bool on) {
  return detail::packed_on().exchange(on && detail::cpu_has_avx512f());
}

}  // namespace lstm_ext
