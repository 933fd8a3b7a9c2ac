#include "recurrent.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "common.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define LSTM_EXT_HAVE_X86_KERNELS 1
#define LSTM_EXT_AVX512 __attribute__((target("avx512f"), always_inline)) inline
#define LSTM_EXT_AVX512_FN __attribute__((target("avx512f")))
#define LSTM_EXT_AVX2 __attribute__((target("avx2,fma"), always_inline)) inline
#define LSTM_EXT_AVX2_FN __attribute__((target("avx2,fma")))
#endif

namespace lstm_ext {
namespace detail {
namespace {

// Which kernel this CPU runs: AVX-512F, else AVX2 with FMA, else none (the
// BLAS path). Both kernels do the same FMAs in the same order: the same bits.
// LSTM_EXT_PACKED_KERNEL=avx2 (read once) runs the AVX2 kernel on a CPU with
// AVX-512F, so that a test can compare the two on one machine.
enum class Isa { kNone, kAvx2, kAvx512 };

Isa cpu_isa() {
#ifdef LSTM_EXT_HAVE_X86_KERNELS
  static const Isa isa = [] {
    __builtin_cpu_init();  // where called before the runtime's constructor ran
    const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    const char* env = std::getenv("LSTM_EXT_PACKED_KERNEL");
    if (__builtin_cpu_supports("avx512f") && !(env && std::strcmp(env, "avx2") == 0))
      return Isa::kAvx512;
    return avx2 ? Isa::kAvx2 : Isa::kNone;
  }();
  return isa;
#else
  return Isa::kNone;
#endif
}

// cpu_isa() where a packed kernel must run: std::logic_error where none can
// (never on packed_on(), which another thread may turn off while a call runs).
[[maybe_unused]] Isa need_kernel() {  // unused where the kernels are not compiled in
  const Isa isa = cpu_isa();
  if (isa == Isa::kNone)
    throw std::logic_error("lstm_ext: this CPU has no packed recurrent kernel (AVX2 and FMA)");
  return isa;
}

// An AVX-512F CPU, which `what` needs: std::logic_error where it is not. The
// CPU, not the on switch: another thread may turn the kernels off while a
// call that chose `what` runs (as need_kernel).
[[maybe_unused]] void need_avx512(const char* what) {
  if (cpu_isa() != Isa::kAvx512)
    throw std::logic_error(std::string("lstm_ext: ") + what + " needs the AVX-512F kernel");
}

// On where the CPU can, unless LSTM_EXT_PACKED_RECURRENT=0.
std::atomic<bool>& packed_on() {
  static std::atomic<bool> on{[] {
    const char* env = std::getenv("LSTM_EXT_PACKED_RECURRENT");
    return cpu_isa() != Isa::kNone && !(env && std::strcmp(env, "0") == 0);
  }()};
  return on;
}

#ifdef LSTM_EXT_HAVE_X86_KERNELS

// GCC 12 warns of an uninitialised variable inside its own avx512fintrin.h
// (the undefined source operand of the shift and unpack intrinsics): a false
// positive, silenced for the kernels.
#if !defined(__clang__)  // Clang has no such warning
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

// Asks the cache for rows [0, nr) of z, bytes from each row's start: the
// accumulators of the kernel's next group of rows or panel, fetched while the
// current one computes. Where the input products wrote z long before (the
// BLAS's chunks of up to 32 MiB, or all T*B rows in training), its rows come
// from memory, and each group's FMAs waited for them: +13 % on a step's panel
// (dev/perf-notes.md, 38). A prefetch neither faults nor changes the result.
template <typename S>
inline void prefetch_rows(const S* z, int64_t ldz, int64_t nr, int64_t bytes) {
  for (int64_t r = 0; r < nr; ++r) {
    const uintptr_t p = reinterpret_cast<uintptr_t>(z + r * ldz);
    for (uintptr_t line = p & ~uintptr_t(63); line < p + bytes; line += 64)
      _mm_prefetch(reinterpret_cast<const char*>(line), _MM_HINT_T0);
  }
}

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

// One k-row of a panel, two vectors of S: as stored, or from bfloat16 (the
// layout of recurrent.h: 32-bit lane i holds unit i in its low half and unit
// 16 + i in its high half, so each vector is one shift or one mask away).
template <typename S>
LSTM_EXT_AVX512 void panel_row(const S* p, typename Vec<S>::V& b0, typename Vec<S>::V& b1) {
  b0 = Vec<S>::load(p);
  b1 = Vec<S>::load(p + Vec<S>::kLanes);
}
LSTM_EXT_AVX512 void panel_row(const uint16_t* p, __m512& b0, __m512& b1) {
  const __m512i v = _mm512_loadu_si512(p);
  b0 = _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
  b1 = _mm512_castsi512_ps(_mm512_and_si512(v, _mm512_set1_epi32(int(0xFFFF0000u))));
}

// NR rows of z, NG panels at once, each panel two vectors wide:
//   z[r][g*zs + c] += sum_k a[r][k] * bp[g*ps + k*P + c]     (c where panel g's mask is set)
// (ps: the panels' stride, k < K: one chunk of their rows).
// l0, l1: the lanes read as the accumulators' start (m0, m1; none where the
// product overwrites z: a masked load of no lanes gives 0, and z is not read).
// NR*NG*2 accumulators, each an independent chain over k. Few rows take
// several panels at once, so that enough chains hide the FMA latency.
// bp's elements: S, or bfloat16 (B = uint16_t, S = float).
// kFetch: along the way, ask for the lines [0, fetch_lines) from fetch on,
// one every K / fetch_lines steps of k (at most one a step).
template <typename S, int NR, int NG, typename B, bool kFetch = false>
LSTM_EXT_AVX512_FN void panel_rows(S* z, int64_t ldz, int64_t zs, const S* a, int64_t lda,
                                   const B* bp, int64_t ps, int64_t K,
                                   const typename Vec<S>::Mask* m0, const typename Vec<S>::Mask* m1,
                                   const typename Vec<S>::Mask* l0, const typename Vec<S>::Mask* l1,
                                   const char* fetch = nullptr, int64_t fetch_lines = 0) {
  using X = Vec<S>;
  constexpr int64_t L = X::kLanes, P = 2 * L;
  const int64_t every = kFetch && fetch_lines > 0 ? std::max<int64_t>(1, K / fetch_lines) : K;
  const char* const fetch_end = kFetch ? fetch + 64 * std::min(fetch_lines, K) : nullptr;
  typename X::V acc[NR][NG][2];
#pragma GCC unroll 16
  for (int r = 0; r < NR; ++r)
#pragma GCC unroll 4
    for (int g = 0; g < NG; ++g) {
      acc[r][g][0] = X::load(l0[g], z + r * ldz + g * zs);
      acc[r][g][1] = X::load(l1[g], z + r * ldz + g * zs + L);
    }
  // k unrolled by 8 (the same chains, so the same bits): 0.95-0.97x the
  // time of a forward at B = 1, 16 and 64 (dev/perf-notes.md, 78).
#pragma GCC unroll 8
  for (int64_t k = 0, next = 0; k < K; ++k) {
    if constexpr (kFetch)
      if (k == next) {
        if (fetch < fetch_end) _mm_prefetch(fetch, _MM_HINT_T0), fetch += 64;
        next += every;
      }
#pragma GCC unroll 4
    for (int g = 0; g < NG; ++g) {
      typename X::V b0, b1;
      panel_row(bp + g * ps + k * P, b0, b1);
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

template <typename S, typename B>
using RowsFn = void (*)(S*, int64_t, int64_t, const S*, int64_t, const B*, int64_t, int64_t, int,
                        const typename Vec<S>::Mask*, const typename Vec<S>::Mask*,
                        const typename Vec<S>::Mask*, const typename Vec<S>::Mask*);

// Fewer than 4 rows: all ng panels at once.
template <typename S, int NR, typename B>
LSTM_EXT_AVX512_FN void few_rows(S* z, int64_t ldz, int64_t zs, const S* a, int64_t lda,
                                 const B* bp, int64_t ps, int64_t K, int ng,
                                 const typename Vec<S>::Mask* m0, const typename Vec<S>::Mask* m1,
                                 const typename Vec<S>::Mask* l0, const typename Vec<S>::Mask* l1) {
  switch (ng) {
    case 1:
      return panel_rows<S, NR, 1, B>(z, ldz, zs, a, lda, bp, ps, K, m0, m1, l0, l1);
    case 2:
      return panel_rows<S, NR, 2, B>(z, ldz, zs, a, lda, bp, ps, K, m0, m1, l0, l1);
    case 3:
      return panel_rows<S, NR, 3, B>(z, ldz, zs, a, lda, bp, ps, K, m0, m1, l0, l1);
    default:
      return panel_rows<S, NR, 4, B>(z, ldz, zs, a, lda, bp, ps, K, m0, m1, l0, l1);
  }
}

// 4 to 12 rows: one panel at a time, each fetching the next one's rows of z.
template <typename S, int NR, typename B>
LSTM_EXT_AVX512_FN void many_rows(S* z, int64_t ldz, int64_t zs, const S* a, int64_t lda,
                                  const B* bp, int64_t ps, int64_t K, int ng,
                                  const typename Vec<S>::Mask* m0,
                                  const typename Vec<S>::Mask* m1,
                                  const typename Vec<S>::Mask* l0,
                                  const typename Vec<S>::Mask* l1) {
  for (int g = 0; g < ng; ++g) {
    if (g + 1 < ng) prefetch_rows(z + (g + 1) * zs, ldz, NR, 2 * Vec<S>::kLanes * sizeof(S));
    panel_rows<S, NR, 1, B>(z + g * zs, ldz, zs, a, lda, bp + g * ps, ps, K, m0 + g, m1 + g, l0 + g,
                            l1 + g);
  }
}

// nb rows in groups as even as possible (at most 12 rows each with AVX-512, 64
// rows: 11,11,11,11,10,10 rather than 12,12,12,12,12,4, whose last group
// keeps few FMAs in flight): group q's rows.
inline int64_t group_rows(int64_t nb, int64_t groups, int64_t q) {
  return nb / groups + (q < nb % groups ? 1 : 0);
}

// 4 rows or more, panel by panel, the groups of rows in turn over each: while
// they pass over panel g, each fetches its share of the next one
// (panel g + 1, or after the last next, the caller's next panel chunk, or
// none where null), and the next group's rows of z.
template <typename S, typename B>
LSTM_EXT_AVX512_FN void panels_fetching(S* z, int64_t ldz, int64_t zs, const S* a, int64_t lda,
                                        const B* bp, int64_t ps, int64_t nb, int64_t K, int ng,
                                        const typename Vec<S>::Mask* m0,
                                        const typename Vec<S>::Mask* m1,
                                        const typename Vec<S>::Mask* l0,
                                        const typename Vec<S>::Mask* l1, const B* next) {
  using Mask = typename Vec<S>::Mask;
  using Fn = void (*)(S*, int64_t, int64_t, const S*, int64_t, const B*, int64_t, int64_t,
                      const Mask*, const Mask*, const Mask*, const Mask*, const char*, int64_t);
  static constexpr Fn kRows[] = {nullptr,
                                 nullptr,
                                 nullptr,
                                 nullptr,
                                 panel_rows<S, 4, 1, B, true>,
                                 panel_rows<S, 5, 1, B, true>,
                                 panel_rows<S, 6, 1, B, true>,
                                 panel_rows<S, 7, 1, B, true>,
                                 panel_rows<S, 8, 1, B, true>,
                                 panel_rows<S, 9, 1, B, true>,
                                 panel_rows<S, 10, 1, B, true>,
                                 panel_rows<S, 11, 1, B, true>,
                                 panel_rows<S, 12, 1, B, true>};
  constexpr int64_t zbytes = 2 * Vec<S>::kLanes * sizeof(S);  // a row's accumulators
  const int64_t groups = (nb + 11) / 12;
  const int64_t lines = K * 2 * Vec<S>::kLanes * int64_t(sizeof(B)) / 64;  // a panel chunk's
  const int64_t share = (lines + groups - 1) / groups;
  for (int g = 0; g < ng; ++g) {
    const char* fetch = reinterpret_cast<const char*>(g + 1 < ng ? bp + (g + 1) * ps : next);
    for (int64_t q = 0, n0 = 0; q < groups; ++q) {
      const int64_t nr = group_rows(nb, groups, q);
      if (q + 1 < groups)
        prefetch_rows(z + g * zs + (n0 + nr) * ldz, ldz, group_rows(nb, groups, q + 1), zbytes);
      else if (g + 1 < ng)
        prefetch_rows(z + (g + 1) * zs, ldz, group_rows(nb, groups, 0), zbytes);
      const int64_t own = fetch ? std::max<int64_t>(0, std::min(share, lines - q * share)) : 0;
      kRows[nr](z + g * zs + n0 * ldz, ldz, zs, a + n0 * lda, lda, bp + g * ps, ps, K, m0 + g,
                m1 + g, l0 + g, l1 + g, own > 0 ? fetch + q * share * 64 : nullptr, own);
      n0 += nr;
    }
  }
}

// fetch_ahead: 4 rows or more go panel by panel, fetching each next one
// (panels_fetching; next as there). Otherwise group by group, each over all
// ng panels, fetching the next group's rows of z: where the panels stay in
// L2, fetching them costs 2-3 % (dev/perf-notes.md, 38). overwrite: the
// accumulators start from 0, z's entry values unread.
template <typename S, typename B = S>
LSTM_EXT_AVX512_FN void panels_avx512(S* z, int64_t ldz, int64_t zs, const S* a, int64_t lda,
                                      const B* bp, int64_t ps, int64_t nb, int64_t K, int ng,
                                      const int64_t* width, bool fetch_ahead, const B* next,
                                      bool overwrite) {
  using X = Vec<S>;
  using Mask = typename X::Mask;
  constexpr int64_t L = X::kLanes;
  const auto lanes = [](int64_t n) {
    return n >= L ? Mask(~Mask(0)) : n <= 0 ? Mask(0) : Mask((Mask(1) << n) - 1);
  };
  Mask m0[4], m1[4], l0[4], l1[4];
  for (int g = 0; g < ng; ++g) {
    m0[g] = lanes(width[g]), m1[g] = lanes(width[g] - L);
    l0[g] = overwrite ? Mask(0) : m0[g], l1[g] = overwrite ? Mask(0) : m1[g];
  }
  if (fetch_ahead && nb >= 4)
    return panels_fetching(z, ldz, zs, a, lda, bp, ps, nb, K, ng, m0, m1, l0, l1, next);
  static constexpr RowsFn<S, B> kRows[] = {nullptr,
                                           few_rows<S, 1, B>,
                                           few_rows<S, 2, B>,
                                           few_rows<S, 3, B>,
                                           many_rows<S, 4, B>,
                                           many_rows<S, 5, B>,
                                           many_rows<S, 6, B>,
                                           many_rows<S, 7, B>,
                                           many_rows<S, 8, B>,
                                           many_rows<S, 9, B>,
                                           many_rows<S, 10, B>,
                                           many_rows<S, 11, B>,
                                           many_rows<S, 12, B>};
  const int64_t groups = (nb + 11) / 12;
  for (int64_t q = 0, n0 = 0; q < groups; ++q) {
    const int64_t nr = group_rows(nb, groups, q);
    if (q + 1 < groups)
      prefetch_rows(z + (n0 + nr) * ldz, ldz, group_rows(nb, groups, q + 1), 2 * L * sizeof(S));
    kRows[nr](z + n0 * ldz, ldz, zs, a + n0 * lda, lda, bp, ps, K, ng, m0, m1, l0, l1);
    n0 += nr;
  }
}

// The same product with 256-bit vectors (AVX2 and FMA): 16 registers, so
// fewer accumulators. A panel is four vectors here, stored in two halves of
// two; the kernel takes a strip of NV of the 4*ng vectors of a row (NV 2, 4
// or 8, the strip starting at a multiple of NV) for NR rows: NR*NV
// accumulators, the strip's NV vectors of bp and one broadcast of a, at most
// 15 registers.
template <typename S>
struct Vec2;

template <>
struct Vec2<float> {
  using V = __m256;
  static constexpr int kLanes = 8;
  static LSTM_EXT_AVX2 V load(const float* p) { return _mm256_loadu_ps(p); }
  static LSTM_EXT_AVX2 V load(__m256i m, const float* p) { return _mm256_maskload_ps(p, m); }
  static LSTM_EXT_AVX2 void store(float* p, __m256i m, V v) { _mm256_maskstore_ps(p, m, v); }
  static LSTM_EXT_AVX2 void store(float* p, V v) { _mm256_storeu_ps(p, v); }
  static LSTM_EXT_AVX2 V bcast(float s) { return _mm256_set1_ps(s); }
  static LSTM_EXT_AVX2 V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  // Lanes below n set.
  static LSTM_EXT_AVX2 __m256i lanes(int64_t n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(int(std::clamp<int64_t>(n, 0, kLanes))),
                              _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
};

template <>
struct Vec2<double> {
  using V = __m256d;
  static constexpr int kLanes = 4;
  static LSTM_EXT_AVX2 V load(const double* p) { return _mm256_loadu_pd(p); }
  static LSTM_EXT_AVX2 V load(__m256i m, const double* p) { return _mm256_maskload_pd(p, m); }
  static LSTM_EXT_AVX2 void store(double* p, __m256i m, V v) { _mm256_maskstore_pd(p, m, v); }
  static LSTM_EXT_AVX2 void store(double* p, V v) { _mm256_storeu_pd(p, v); }
  static LSTM_EXT_AVX2 V bcast(double s) { return _mm256_set1_pd(s); }
  static LSTM_EXT_AVX2 V fma(V a, V b, V c) { return _mm256_fmadd_pd(a, b, c); }
  static LSTM_EXT_AVX2 __m256i lanes(int64_t n) {
    return _mm256_cmpgt_epi64(_mm256_set1_epi64x(std::clamp<int64_t>(n, 0, kLanes)),
                              _mm256_setr_epi64x(0, 1, 2, 3));
  }
};

// One k-row of a panel's half, two vectors of S: as stored, or from bfloat16
// (recurrent.h: 32-bit lane i holds unit i of the half in its low half and
// unit 8 + i in its high half, so each vector is one shift or one mask away).
template <typename S>
LSTM_EXT_AVX2 void panel_row2(const S* p, typename Vec2<S>::V& b0, typename Vec2<S>::V& b1) {
  b0 = Vec2<S>::load(p);
  b1 = Vec2<S>::load(p + Vec2<S>::kLanes);
}
LSTM_EXT_AVX2 void panel_row2(const uint16_t* p, __m256& b0, __m256& b1) {
  const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  b0 = _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
  b1 = _mm256_castsi256_ps(_mm256_and_si256(v, _mm256_set1_epi32(int(0xFFFF0000u))));
}

// Each vector's lanes in z: stored, and read as the accumulators' start
// (none where the product overwrites z: a masked load of no lanes gives 0).
struct StripMasks {
  __m256i store[16], load[16];
};

// z[r][.] += sum_k a[r][k] * bp[.] over vectors v0 .. v0+NV-1 (v0 and NV
// even), rows r < NR; m their lanes. With AVX2 a panel is stored in two
// halves of two vectors (recurrent.h, packed_row): vectors v and v + 1 (v
// even) are half (v%4)/2 of panel v/4, their K rows 2L apart from
// bp + (v/4)*ps + ((v%4)/2)*ps/2. A strip of two vectors then reads K
// consecutive 64-byte lines (32-byte ones of bfloat16), spread over all of
// L1's sets. bp's elements: S, or bfloat16 (B = uint16_t, S = float).
template <typename S, typename B, int NR, int NV>
LSTM_EXT_AVX2_FN void strip_rows(S* z, int64_t ldz, int64_t zs, const S* a, int64_t lda,
                                 const B* bp, int64_t ps, int64_t K, int v0, const StripMasks& m) {
  using X = Vec2<S>;
  constexpr int64_t L = X::kLanes, Q = 2 * L;
  constexpr int NH = NV / 2;  // halves of panels read
  S* zp[NH];
  const B* bq[NH];
  for (int h = 0; h < NH; ++h) {
    const int64_t v = v0 + 2 * h;
    zp[h] = z + (v / 4) * zs + (v % 4) * L;
    bq[h] = bp + (v / 4) * ps + ((v % 4) / 2) * (ps / 2);
  }
  typename X::V acc[NR][NH][2];
#pragma GCC unroll 8
  for (int r = 0; r < NR; ++r)
#pragma GCC unroll 4
    for (int h = 0; h < NH; ++h)
#pragma GCC unroll 2
      for (int j = 0; j < 2; ++j)
        acc[r][h][j] = X::load(m.load[v0 + 2 * h + j], zp[h] + r * ldz + j * L);
  // k unrolled by 8, as panel_rows (dev/perf-notes.md, 78).
#pragma GCC unroll 8
  for (int64_t k = 0; k < K; ++k) {
    typename X::V b[NH][2];
#pragma GCC unroll 4
    for (int h = 0; h < NH; ++h) panel_row2(bq[h] + k * Q, b[h][0], b[h][1]);
#pragma GCC unroll 8
    for (int r = 0; r < NR; ++r) {
      const typename X::V ak = X::bcast(a[r * lda + k]);
#pragma GCC unroll 4
      for (int h = 0; h < NH; ++h)
#pragma GCC unroll 2
        for (int j = 0; j < 2; ++j) acc[r][h][j] = X::fma(ak, b[h][j], acc[r][h][j]);
    }
  }
  // Vectors whose lanes are all in z are stored whole: a masked store
  // (vmaskmovps) took 4.5-5.3 ns against 0.4 on the AMD development machine
  // (Zen 3), and at B = 1 a thread's step stores about 80 vectors
  // (dev/perf-notes.md, 45). Masked loads cost about what plain ones do.
#pragma GCC unroll 8
  for (int r = 0; r < NR; ++r)
#pragma GCC unroll 4
    for (int h = 0; h < NH; ++h)
#pragma GCC unroll 2
      for (int j = 0; j < 2; ++j) {
        const __m256i lanes = m.store[v0 + 2 * h + j];
        S* zr = zp[h] + r * ldz + j * L;
        if (_mm256_movemask_epi8(lanes) == -1)
          X::store(zr, acc[r][h][j]);
        else
          X::store(zr, lanes, acc[r][h][j]);
      }
}

// NR rows over all 4*ng vectors: strips of 8 vectors for one row, 4 for two,
// 2 for three to six (8, 8 and 6 to 12 accumulators).
template <typename S, typename B, int NR>
LSTM_EXT_AVX2_FN void strips(S* z, int64_t ldz, int64_t zs, const S* a, int64_t lda, const B* bp,
                             int64_t ps, int64_t K, int ng, const StripMasks& m) {
  constexpr int NV = NR == 1 ? 8 : NR == 2 ? 4 : 2;
  int v = 0;
  for (; v + NV <= 4 * ng; v += NV) strip_rows<S, B, NR, NV>(z, ldz, zs, a, lda, bp, ps, K, v, m);
  if constexpr (NV == 8)  // ng odd: the last panel
    if (v < 4 * ng) strip_rows<S, B, NR, 4>(z, ldz, zs, a, lda, bp, ps, K, v, m);
}

template <typename S, typename B = S>
LSTM_EXT_AVX2_FN void panels_avx2(S* z, int64_t ldz, int64_t zs, const S* a, int64_t lda,
                                  const B* bp, int64_t ps, int64_t nb, int64_t K, int ng,
                                  const int64_t* width, bool overwrite) {
  using X = Vec2<S>;
  constexpr int64_t L = X::kLanes;
  StripMasks m;
  for (int v = 0; v < 4 * ng; ++v) {
    m.store[v] = X::lanes(width[v / 4] - (v % 4) * L);
    m.load[v] = overwrite ? X::lanes(0) : m.store[v];
  }
  using Fn = void (*)(S*, int64_t, int64_t, const S*, int64_t, const B*, int64_t, int64_t, int,
                      const StripMasks&);
  if (nb < 3) {  // one group, wider strips
    static constexpr Fn kRows[] = {nullptr, strips<S, B, 1>, strips<S, B, 2>};
    return kRows[nb](z, ldz, zs, a, lda, bp, ps, K, ng, m);
  }
  // Groups of 3 to 6 rows (as even as possible), strips of two vectors. Strip
  // outer: its slice of the panels (K*64 bytes) stays in L1 while the groups
  // pass over it, and only the groups' rows of a come from L2 again.
  static constexpr Fn kStrip[] = {nullptr,
                                  nullptr,
                                  nullptr,
                                  strip_rows<S, B, 3, 2>,
                                  strip_rows<S, B, 4, 2>,
                                  strip_rows<S, B, 5, 2>,
                                  strip_rows<S, B, 6, 2>};
  // Each call fetches the next one's rows of z (the next group's, or the next
  // strip's first group's).
  const int64_t groups = (nb + 5) / 6;
  const auto strip_z = [&](int v) { return z + (v / 4) * zs + (v % 4) * L; };
  for (int v = 0; v < 4 * ng; v += 2)
    for (int64_t q = 0, n0 = 0; q < groups; ++q) {
      const int64_t nr = group_rows(nb, groups, q);
      if (q + 1 < groups)
        prefetch_rows(strip_z(v) + (n0 + nr) * ldz, ldz, group_rows(nb, groups, q + 1),
                      2 * L * sizeof(S));
      else if (v + 2 < 4 * ng)
        prefetch_rows(strip_z(v + 2), ldz, group_rows(nb, groups, 0), 2 * L * sizeof(S));
      kStrip[nr](z + n0 * ldz, ldz, zs, a + n0 * lda, lda, bp, ps, K, v, m);
      n0 += nr;
    }
}

// A tile of n <= 16 rows and m <= 16 columns of src (rows ld apart),
// transposed in registers: r[q] holds the tile's column kCol[q], its rows in
// order, the rows past n (and columns past m) zeros (with n = 0, src is not
// read, nor needed).
constexpr int kCol[16] = {0, 2, 1, 3, 4, 6, 5, 7, 8, 10, 9, 11, 12, 14, 13, 15};
// The first n of 16 lanes (0 <= n; all from 16 on).
inline __mmask16 first_lanes(int64_t n) {
  return n >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << n) - 1);
}
LSTM_EXT_AVX512 void transpose16(__m512 (&r)[16], const float* src, int64_t ld, int64_t n,
                                 int64_t m) {
  const __mmask16 cols = first_lanes(m);
  for (int i = 0; i < 16; ++i)
    r[i] = i < n ? _mm512_maskz_loadu_ps(cols, src + i * ld) : _mm512_setzero_ps();
  // Four rounds of pairwise interleaving (32-bit, 64-bit, 128-bit, 256-bit).
  __m512 t[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4)
    for (int j = 0; j < 2; ++j) {
      const __m512d a = _mm512_castps_pd(t[i + j]), b = _mm512_castps_pd(t[i + j + 2]);
      r[i + j] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, b));
      r[i + j + 2] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, b));
    }
  for (int i = 0; i < 16; i += 8)
    for (int j = 0; j < 4; ++j) {
      t[i + j] = _mm512_shuffle_f32x4(r[i + j], r[i + j + 4], 0x88);
      t[i + j + 4] = _mm512_shuffle_f32x4(r[i + j], r[i + j + 4], 0xDD);
    }
  for (int j = 0; j < 8; ++j) {
    r[j] = _mm512_shuffle_f32x4(t[j], t[j + 8], 0x88);
    r[j + 8] = _mm512_shuffle_f32x4(t[j], t[j + 8], 0xDD);
  }
}

// Transposes such a tile into dst, whose row k gets src's column k (rows P
// apart).
LSTM_EXT_AVX512_FN void transpose_tile(float* dst, int64_t P, const float* src, int64_t ld,
                                       int64_t n, int64_t m) {
  __m512 r[16];
  transpose16(r, src, ld, n, m);
  for (int q = 0; q < 16; ++q)
    if (kCol[q] < m) _mm512_storeu_ps(dst + kCol[q] * P, r[q]);
}

// z[r][c] += sum_{k0 <= k < k1} a[r][k] M[c][k] for r < NR and the w <= 16
// rows c of M (ldm apart), in k's order, from 0 with overwrite: what
// panel_rows computes on these rows packed, lane by lane (each lane the same
// chain of FMAs), so the same bits, with each tile of M transposed in
// registers instead of packed to memory first. For a product that reads M
// once (a forward of one step: recurrent_block_unpacked).
template <int NR>
LSTM_EXT_AVX512_FN void rows_unpacked(float* z, int64_t ldz, const float* a, int64_t lda,
                                      const float* M, int64_t ldm, int64_t w, int64_t k0,
                                      int64_t k1, bool overwrite) {
  const __mmask16 lanes = first_lanes(w);
  __m512 acc[NR];
#pragma GCC unroll 16
  for (int r = 0; r < NR; ++r) acc[r] = _mm512_maskz_loadu_ps(overwrite ? 0 : lanes, z + r * ldz);
  for (int64_t kt = k0; kt < k1; kt += 16) {
    const int64_t m = std::min<int64_t>(16, k1 - kt);
    __m512 col[16];
    transpose16(col, M + kt, ldm, w, m);
#pragma GCC unroll 16
    for (int k = 0; k < 16; ++k) {
      if (k >= m) break;
      const __m512 b = col[kCol[k]];  // kCol is its own inverse
#pragma GCC unroll 16
      for (int r = 0; r < NR; ++r)
        acc[r] = _mm512_fmadd_ps(_mm512_set1_ps(a[r * lda + kt + k]), b, acc[r]);
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < NR; ++r) _mm512_mask_storeu_ps(z + r * ldz, lanes, acc[r]);
}

// Blocks 0 and 1 of a and of b added to their blocks 2 and 3: (a0 + a2,
// a1 + a3, b0 + b2, b1 + b3), blocks of 128 bits.
LSTM_EXT_AVX512 __m512 add_halves(__m512 a, __m512 b) {
  return _mm512_add_ps(_mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(1, 0, 1, 0)),
                       _mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(3, 2, 3, 2)));
}

// The sums of v[r]'s 16 lanes, in lane r (r < 16): pairs of rows
// interleaved and added within 128-bit blocks, then pairs of pairs, then the
// blocks (each lane's sum in a fixed order).
LSTM_EXT_AVX512 __m512 lane_sums16(const __m512 (&v)[16]) {
  __m512 s8[8], s4[4];
  for (int i = 0; i < 8; ++i)  // block b of s8[i]: rows 2i, 2i+1 (lanes 0+2, 1+3 of b)
    s8[i] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]),
                          _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]));
  for (int i = 0; i < 4; ++i) {  // block b of s4[i]: rows 4i .. 4i+3, block b's sums
    const __m512d p = _mm512_castps_pd(s8[2 * i]), q = _mm512_castps_pd(s8[2 * i + 1]);
    s4[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(p, q)),
                          _mm512_castpd_ps(_mm512_unpackhi_pd(p, q)));
  }
  const __m512 t01 = add_halves(s4[0], s4[1]), t23 = add_halves(s4[2], s4[3]);
  return _mm512_add_ps(_mm512_shuffle_f32x4(t01, t23, _MM_SHUFFLE(2, 0, 2, 0)),
                       _mm512_shuffle_f32x4(t01, t23, _MM_SHUFFLE(3, 1, 3, 1)));
}

// acc[r]'s lanes moved from frame f to frame o, where frame f holds element
// k of a row in lane (k + f) % 16: lane l gets lane (l + f - o) % 16. f = -1:
// acc is all zero, in any frame.
LSTM_EXT_AVX512 void to_frame(__m512 (&acc)[16], int64_t& f, int64_t o) {
  if (f >= 0 && f != o) {
    const __m512i idx = _mm512_and_si512(
        _mm512_add_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                         _mm512_set1_epi32(int(16 + f - o))),
        _mm512_set1_epi32(15));
    for (int r = 0; r < 16; ++r) acc[r] = _mm512_permutexvar_ps(idx, acc[r]);
  }
  f = o;
}

// acc[r] += row[r][k + j] v[k + j] in lane j, for the lanes of m (the other
// lanes left as they are).
LSTM_EXT_AVX512 void dot_line16(__m512 (&acc)[16], const float* const (&row)[16], const float* v,
                                int64_t k, __mmask16 m) {
  const bool whole = m == 0xFFFF;
  const __m512 vk = whole ? _mm512_loadu_ps(v + k) : _mm512_maskz_loadu_ps(m, v + k);
#pragma GCC unroll 16
  for (int r = 0; r < 16; ++r)
    acc[r] = whole ? _mm512_fmadd_ps(_mm512_loadu_ps(row[r] + k), vk, acc[r])
                   : _mm512_mask3_fmadd_ps(_mm512_maskz_loadu_ps(m, row[r] + k), vk, acc[r], m);
}

// p moved back by n floats, as an address (p - n may lie before p's array).
inline const float* floats_before(const float* p, int64_t n) {
  return reinterpret_cast<const float*>(reinterpret_cast<uintptr_t>(p) - uintptr_t(n) * 4);
}

// acc[r] += a's row r times v over k < K (rows ld apart; past nr, row nr - 1
// again, read and unused), in frame f (to_frame): each lane sums its
// elements in the order of k. Where the rows start o floats past a 64-byte
// line (the same o for all: ld a multiple of 16), they are read in whole
// aligned lines, so in frame o, with v's lanes read to match; the lines'
// lanes outside the row are left alone: the same bits wherever the arrays
// lie (dev/perf-notes.md, 79).
LSTM_EXT_AVX512 void dot_rows16(__m512 (&acc)[16], int64_t& f, const float* a, int64_t ld, int nr,
                                const float* v, int64_t K) {
  const int64_t o = ld % 16 == 0 ? int64_t(reinterpret_cast<uintptr_t>(a) % 64) / 4 : 0;
  const float* row[16];  // each o floats before its row: the line it starts in
  for (int r = 0; r < 16; ++r) row[r] = floats_before(a + std::min(r, nr - 1) * ld, o);
  const float* const vo = floats_before(v, o);
  to_frame(acc, f, o);
  const int64_t lines = (K + o + 15) / 16;
  const auto partial = [&](int64_t c) {  // the lanes of line c in [0, K)
    return __mmask16(first_lanes(K + o - 16 * c) & ~first_lanes(c == 0 ? o : 0));
  };
  if (lines > 0) dot_line16(acc, row, vo, 0, partial(0));
  for (int64_t c = 1; c + 1 < lines; ++c) dot_line16(acc, row, vo, 16 * c, 0xFFFF);
  if (lines > 1) dot_line16(acc, row, vo, 16 * (lines - 1), partial(lines - 1));
}

LSTM_EXT_AVX512_FN void row_product16(float* z, const float* W, int64_t ldw, const float* x,
                                      int64_t I, const float* R, int64_t ldr, const float* h,
                                      int64_t O, int64_t n) {
  for (int64_t j = 0; j < n; j += 16) {
    const int nr = int(std::min<int64_t>(16, n - j));
    __m512 acc[16];
    for (int r = 0; r < 16; ++r) acc[r] = _mm512_setzero_ps();
    int64_t f = -1;
    dot_rows16(acc, f, W + j * ldw, ldw, nr, x, I);
    if (R) dot_rows16(acc, f, R + j * ldr, ldr, nr, h, O);
    to_frame(acc, f, 0);
    _mm512_mask_storeu_ps(z + j, first_lanes(nr), lane_sums16(acc));
  }
}

// transpose_tile with 256-bit vectors: n <= 8 rows and m <= 8 columns.
LSTM_EXT_AVX2_FN void transpose_tile8(float* dst, int64_t P, const float* src, int64_t ld,
                                      int64_t n, int64_t m) {
  const __m256i cols = Vec2<float>::lanes(m);
  __m256 r[8];
  for (int i = 0; i < 8; ++i)
    r[i] = i < n ? _mm256_maskload_ps(src + i * ld, cols) : _mm256_setzero_ps();
  // Pairs of rows interleaved, then pairs of pairs: q[j] holds column j of
  // rows 0-3 in its low half and column j + 4 in its high half (rows 4-7 in
  // q[4 + j]); the 128-bit halves are then paired into whole columns.
  __m256 t[8], q[8];
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int h = 0; h < 8; h += 4)
    for (int j = 0; j < 2; ++j) {
      q[h + 2 * j] = _mm256_shuffle_ps(t[h + j], t[h + j + 2], _MM_SHUFFLE(1, 0, 1, 0));
      q[h + 2 * j + 1] = _mm256_shuffle_ps(t[h + j], t[h + j + 2], _MM_SHUFFLE(3, 2, 3, 2));
    }
  for (int j = 0; j < 4; ++j) {
    if (j < m) _mm256_storeu_ps(dst + j * P, _mm256_permute2f128_ps(q[j], q[4 + j], 0x20));
    if (j + 4 < m)
      _mm256_storeu_ps(dst + (j + 4) * P, _mm256_permute2f128_ps(q[j], q[4 + j], 0x31));
  }
}

// v rounded to bfloat16 (to nearest, ties to even; a NaN stays a quiet NaN),
// its 16 bits in the high half of each 32-bit lane, the low half zero.
LSTM_EXT_AVX512 __m512i bf16_high(__m512 v) {
  const __m512i b = _mm512_castps_si512(v), one = _mm512_set1_epi32(1);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(b, 16), one);
  __m512i r = _mm512_add_epi32(b, _mm512_add_epi32(_mm512_set1_epi32(0x7FFF), lsb));
  r = _mm512_mask_or_epi32(r, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), b,
                           _mm512_set1_epi32(0x00400000));  // NaN: b with its quiet bit
  return _mm512_and_si512(r, _mm512_set1_epi32(int(0xFFFF0000u)));
}

// Rows [k0, k0 + m) of block u's panel for gate g as bfloat16: the 32 units'
// rows of R transposed in two tiles, then each k-row's two halves rounded and
// merged into one 64-byte row (units c and 16 + c in lane c).
LSTM_EXT_AVX512_FN void pack_bf16_rows(uint16_t* rows, const float* R, int64_t O, int64_t w,
                                       int64_t k0, int64_t m) {
  alignas(64) float tile[16 * 32];  // [k,32 units]
  transpose_tile(tile, 32, R + k0, O, w, m);
  transpose_tile(tile + 16, 32, w > 16 ? R + 16 * O + k0 : nullptr, O, w - 16, m);
  for (int64_t k = 0; k < m; ++k) {
    const __m512i lo = bf16_high(_mm512_load_ps(tile + k * 32)),
                  hi = bf16_high(_mm512_load_ps(tile + k * 32 + 16));
    _mm512_storeu_si512(rows + (k0 + k) * 32, _mm512_or_si512(_mm512_srli_epi32(lo, 16), hi));
  }
}

// dst[i] = src[i] rounded to bfloat16, i < n.
LSTM_EXT_AVX512_FN void round_avx512(float* dst, const float* src, int64_t n) {
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = first_lanes(n - i);
    const __m512i r = bf16_high(_mm512_maskz_loadu_ps(m, src + i));
    _mm512_mask_storeu_ps(dst + i, m, _mm512_castsi512_ps(r));
  }
}

// bf16_high with 256-bit vectors.
LSTM_EXT_AVX2 __m256i bf16_high8(__m256 v) {
  const __m256i b = _mm256_castps_si256(v), one = _mm256_set1_epi32(1);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(b, 16), one);
  const __m256i r = _mm256_add_epi32(b, _mm256_add_epi32(_mm256_set1_epi32(0x7FFF), lsb));
  const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
  const __m256i q = _mm256_or_si256(b, _mm256_set1_epi32(0x00400000));  // NaN: quiet
  return _mm256_and_si256(_mm256_blendv_epi8(r, q, nan), _mm256_set1_epi32(int(0xFFFF0000u)));
}

// pack_bf16_rows for the AVX2 kernel: rows [k0, k0 + m) (m <= 8) of both
// halves of block u's panel for gate g, each half [O,16] with units c and
// 8 + c in lane c; w units in the block.
LSTM_EXT_AVX2_FN void pack_bf16_rows8(uint16_t* panel, const float* R, int64_t O, int64_t w,
                                      int64_t k0, int64_t m) {
  alignas(32) float tile[8 * 16];  // [k,16 units of a half]
  for (int64_t c0 = 0; c0 < 32; c0 += 16) {
    for (int64_t t = 0; t < 16; t += 8) {
      const int64_t n = std::clamp<int64_t>(w - c0 - t, 0, 8);
      transpose_tile8(tile + t, 16, n > 0 ? R + (c0 + t) * O + k0 : nullptr, O, n, m);
    }
    uint16_t* rows = panel + (c0 / 16) * O * 16;
    for (int64_t k = 0; k < m; ++k) {
      const __m256i lo = bf16_high8(_mm256_load_ps(tile + k * 16)),
                    hi = bf16_high8(_mm256_load_ps(tile + k * 16 + 8));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(rows + (k0 + k) * 16),
                          _mm256_or_si256(_mm256_srli_epi32(lo, 16), hi));
    }
  }
}

// round_avx512 with 256-bit vectors.
LSTM_EXT_AVX2_FN void round_avx2(float* dst, const float* src, int64_t n) {
  for (int64_t i = 0; i < n; i += 8) {
    const __m256i m = Vec2<float>::lanes(n - i);
    const __m256i r = bf16_high8(_mm256_maskload_ps(src + i, m));
    _mm256_maskstore_ps(dst + i, m, _mm256_castsi256_ps(r));
  }
}

#if !defined(__clang__)
#pragma GCC diagnostic pop
#endif
#endif  // LSTM_EXT_HAVE_X86_KERNELS

}  // namespace

template <typename S>
int64_t packed_recurrent_size(int64_t H, int64_t O) {
  return mul(mul(recurrent_blocks<S>(H), 4 * kPanel<S>), O);
}

template <typename S>
int64_t packed_row() {
  return cpu_isa() == Isa::kAvx2 ? kPanel<S> / 2 : kPanel<S>;
}

template <typename S>
void pack_recurrent_block(S* Rp, const S* R, int64_t H, int64_t O, int64_t u) {
  constexpr int64_t P = kPanel<S>;
  const int64_t Q = packed_row<S>();
  S* block = Rp + u * 4 * O * P;
  // Element (k, c) of gate g's panel, its k-rows Q apart.
  const auto at = [&](int64_t g, int64_t k, int64_t c) {
    return block + g * O * P + (c / Q) * O * Q + k * Q + c % Q;
  };
#ifdef LSTM_EXT_HAVE_X86_KERNELS
  // float: square tiles of units by columns transposed in registers, 16 on
  // AVX-512 and 8 on AVX2 (a tile's side divides Q). The element loop below
  // (double's) packed H = O = 128 in 18 us on a Zen 5 core, 16-tiles in 4.6
  // (dev/perf-notes.md, 23); on the AMD machine's Zen 3 core 23 us, 8-tiles
  // in 11.3 (46).
  if constexpr (std::is_same_v<S, float>)
    if (cpu_isa() != Isa::kNone) {
      const bool wide = cpu_isa() == Isa::kAvx512;
      const int64_t side = wide ? 16 : 8;
      const int64_t w = std::min(P, H - u * P);  // units of this block
      for (int64_t g = 0; g < 4; ++g)
        for (int64_t c0 = 0; c0 < P; c0 += side)
          for (int64_t k0 = 0; k0 < O; k0 += side) {
            const float* rows = w > c0 ? R + (g * H + u * P + c0) * O + k0 : nullptr;
            (wide ? transpose_tile : transpose_tile8)(at(g, k0, c0), Q, rows, O, w - c0,
                                                      std::min(side, O - k0));
          }
      return;
    }
#endif
  for (int64_t g = 0; g < 4; ++g)
    for (int64_t c = 0; c < P; ++c) {
      const int64_t j = u * P + c;
      S* col = at(g, 0, c);
      if (j < H)
        for (int64_t k = 0; k < O; ++k) col[k * Q] = R[(g * H + j) * O + k];
      else
        for (int64_t k = 0; k < O; ++k) col[k * Q] = S(0);
    }
}

// Panel p's columns [c0 + h, c0 + h + Q) are its part h / Q, [K,Q] (packed_row).
template <typename S>
void pack_columns(S* Bp, const S* B, int64_t K, int64_t N, int64_t p) {
  constexpr int64_t P = kPanel<S>;
  pack_column_rows(Bp, K, 0, B, N, K, p * P, std::min(N, (p + 1) * P));
}

template <typename S>
void pack_column_rows(S* Bp, int64_t K, int64_t r, const S* src, int64_t lds, int64_t n,
                      int64_t c0, int64_t c1) {
  constexpr int64_t P = kPanel<S>;
  const int64_t Q = packed_row<S>();
  for (int64_t c = c0; c < c1; c += P)
    for (int64_t h = 0; h < P; h += Q) {
      const int64_t w = std::clamp<int64_t>(c1 - c - h, 0, Q);
      S* part = Bp + (c / P) * K * P + h * K + r * Q;  // [n,Q] of panel c / P
      // Element by element: std::copy and std::fill called memmove and
      // memset for every row of Q, 1.5 % of a training forward's time
      // (dev/perf-notes.md, 84).
      for (int64_t j = 0; j < n; ++j) {
        const S* from = src + j * lds + c + h;  // w elements, then zeros
        if (w == Q)
          for (int64_t q = 0; q < Q; ++q) part[j * Q + q] = from[q];
        else
          for (int64_t q = 0; q < Q; ++q) part[j * Q + q] = q < w ? from[q] : S(0);
      }
    }
}

template <typename S>
void unpack_columns(S* B, const S* Bp, int64_t K, int64_t N) {
  constexpr int64_t P = kPanel<S>;
  const int64_t Q = packed_row<S>();
  for (int64_t c0 = 0; c0 < N; c0 += P) {
    const S* panel = Bp + (c0 / P) * K * P;
    for (int64_t h = 0; h < P && c0 + h < N; h += Q) {
      const int64_t w = std::min(Q, N - c0 - h);
      for (int64_t k = 0; k < K; ++k)
        std::copy(panel + h * K + k * Q, panel + h * K + k * Q + w, B + k * N + c0 + h);
    }
  }
}

// z += a[:, k0:k1] Bp[:, k0:k1, :] over ng panels of K rows each (z = with
// overwrite). Bp's elements: S, or bfloat16 (B = uint16_t, S = float;
// AVX-512 only). fetch_ahead: the AVX-512 kernel fetches each next panel
// while it computes one (recurrent.h).
template <typename S, typename B = S>
void panel_product(S* z, int64_t ldz, int64_t zs, const S* a, int64_t lda, const B* Bp, int64_t nb,
                   int64_t K, int64_t k0, int64_t k1, int ng, const int64_t* width,
                   bool fetch_ahead, bool overwrite) {
#ifdef LSTM_EXT_HAVE_X86_KERNELS
  // In chunks of kChunk along k, so that the chunk of the panels (256 KiB,
  // half of a Zen 3 core's L2) stays in L2 while every group of rows passes
  // over it. Each chunk adds to z what the one before left there: the same
  // FMAs in the same order. Overwriting, both kernels start the first
  // chunk's accumulators at 0 instead of reading z (the AVX-512 kernel had
  // zeroed z first, a pass over it: 3-4 % of a B = 16 or 64 forward on an
  // Intel AVX-512 core, dev/perf-notes.md 75): the same bits either way.
  constexpr int64_t P = kPanel<S>, kChunk = 512;
  const Isa isa = need_kernel();
  if (overwrite && k0 == k1)
    for (int64_t r = 0; r < nb; ++r)
      for (int g = 0; g < ng; ++g) std::fill_n(z + r * ldz + g * zs, width[g], S(0));
  for (int64_t c = k0; c < k1; c += kChunk) {
    const int64_t kc = std::min(kChunk, k1 - c);
    if (isa == Isa::kAvx512)
      panels_avx512(z, ldz, zs, a + c, lda, Bp + c * P, K * P, nb, kc, ng, width, fetch_ahead,
                    fetch_ahead && c + kc < k1 ? Bp + (c + kc) * P : nullptr, overwrite && c == k0);
    else
      panels_avx2(z, ldz, zs, a + c, lda, Bp + c * (P / 2), K * P, nb, kc, ng, width,
                  overwrite && c == k0);
  }
#else
  (void)z, (void)ldz, (void)zs, (void)a, (void)lda, (void)Bp, (void)nb, (void)K, (void)k0, (void)k1,
      (void)ng, (void)width, (void)fetch_ahead, (void)overwrite;
  throw std::logic_error("lstm_ext: the packed recurrent kernel is not compiled in");
#endif
}

template <typename S>
void recurrent_block(S* z, int64_t ldz, const S* h, int64_t ldh, const S* Rp, int64_t nb, int64_t H,
                     int64_t O, int64_t u, int64_t k0, int64_t k1, bool fetch_ahead,
                     bool overwrite) {
  constexpr int64_t P = kPanel<S>;
  const int64_t w = std::min(P, H - u * P), width[4] = {w, w, w, w};
  panel_product(z + u * P, ldz, H, h, ldh, Rp + u * 4 * O * P, nb, O, k0, k1, 4, width, fetch_ahead,
                overwrite);
}

template <typename S>
void column_product(S* z, int64_t ldz, const S* a, int64_t lda, const S* Bp, int64_t nb, int64_t K,
                    int64_t k0, int64_t k1, int64_t c0, int64_t c1, bool fetch_ahead,
                    bool overwrite) {
  constexpr int64_t P = kPanel<S>;
  for (int64_t c = c0; c < c1; c += 4 * P) {
    int64_t width[4];
    int ng = 0;
    for (; ng < 4 && c + ng * P < c1; ++ng) width[ng] = std::min(P, c1 - c - ng * P);
    panel_product(z + c, ldz, P, a, lda, Bp + (c / P) * K * P, nb, K, k0, k1, ng, width,
                  fetch_ahead, overwrite);
  }
}

namespace {
// v rounded to bfloat16 (to nearest, ties to even; a NaN stays a quiet NaN).
uint16_t to_bf16(float v) {
  uint32_t b;
  std::memcpy(&b, &v, 4);
  if ((b & 0x7FFFFFFFu) > 0x7F800000u) return uint16_t((b | 0x00400000u) >> 16);  // quiet NaN
  return uint16_t((b + 0x7FFFu + ((b >> 16) & 1u)) >> 16);
}
}  // namespace

void round_to_bf16(float* dst, const float* src, int64_t n) {
#ifdef LSTM_EXT_HAVE_X86_KERNELS
  if (cpu_isa() == Isa::kAvx512) return round_avx512(dst, src, n);
  if (cpu_isa() == Isa::kAvx2) return round_avx2(dst, src, n);
#endif
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t b = uint32_t(to_bf16(src[i])) << 16;
    std::memcpy(dst + i, &b, 4);
  }
}

bool packed_bf16_enabled() { return packed_on().load(); }

int64_t packed_recurrent_bf16_size(int64_t H, int64_t O) {
  return packed_recurrent_size<float>(H, O);  // uint16_t elements: the float layout's count
}

void pack_recurrent_block_bf16(uint16_t* Rq, const float* R, int64_t H, int64_t O, int64_t u) {
#ifdef LSTM_EXT_HAVE_X86_KERNELS
  constexpr int64_t P = kPanel<float>;
  const Isa isa = need_kernel();
  const int64_t w = std::min(P, H - u * P);  // units of this block
  const int64_t side = isa == Isa::kAvx512 ? 16 : 8;
  for (int64_t g = 0; g < 4; ++g) {
    uint16_t* panel = Rq + (u * 4 + g) * O * P;
    const float* rows = R + (g * H + u * P) * O;  // gate g's rows of the block's units
    for (int64_t k0 = 0; k0 < O; k0 += side) {
      const int64_t m = std::min(side, O - k0);
      if (isa == Isa::kAvx512)
        pack_bf16_rows(panel, rows, O, w, k0, m);
      else
        pack_bf16_rows8(panel, rows, O, w, k0, m);
    }
  }
#else
  (void)Rq, (void)R, (void)H, (void)O, (void)u;
  throw std::logic_error("lstm_ext: the packed recurrent kernel is not compiled in");
#endif
}

void recurrent_block_bf16(float* z, int64_t ldz, const float* h, int64_t ldh, const uint16_t* Rq,
                          int64_t nb, int64_t H, int64_t O, int64_t u, int64_t k0, int64_t k1,
                          bool fetch_ahead, bool overwrite) {
  constexpr int64_t P = kPanel<float>;
  const int64_t w = std::min(P, H - u * P), width[4] = {w, w, w, w};
  panel_product(z + u * P, ldz, H, h, ldh, Rq + u * 4 * O * P, nb, O, k0, k1, 4, width, fetch_ahead,
                overwrite);
}

bool unpacked_product_enabled() {
#ifdef LSTM_EXT_HAVE_X86_KERNELS
  return packed_on().load(std::memory_order_relaxed) && cpu_isa() == Isa::kAvx512;
#else
  return false;
#endif
}

void recurrent_block_unpacked(float* z, int64_t ldz, const float* h, int64_t ldh, const float* R,
                              int64_t nb, int64_t H, int64_t O, int64_t u, int64_t k0, int64_t k1,
                              bool overwrite) {
#ifdef LSTM_EXT_HAVE_X86_KERNELS
  need_avx512("recurrent_block_unpacked");
  using Fn = void (*)(float*, int64_t, const float*, int64_t, const float*, int64_t, int64_t,
                      int64_t, int64_t, bool);
  static constexpr Fn kRows[] = {nullptr,           rows_unpacked<1>,  rows_unpacked<2>,
                                 rows_unpacked<3>,  rows_unpacked<4>,  rows_unpacked<5>,
                                 rows_unpacked<6>,  rows_unpacked<7>,  rows_unpacked<8>,
                                 rows_unpacked<9>,  rows_unpacked<10>, rows_unpacked<11>,
                                 rows_unpacked<12>};
  constexpr int64_t P = kPanel<float>;
  const int64_t w = std::min(P, H - u * P), groups = (nb + 11) / 12;
  for (int64_t g = 0; g < 4; ++g)
    for (int64_t c = 0; c < w; c += 16) {  // the block's two halves, 16 units (rows of R) each
      const int64_t j = g * H + u * P + c;
      for (int64_t q = 0, n0 = 0; q < groups; ++q) {
        const int64_t nr = group_rows(nb, groups, q);
        kRows[nr](z + n0 * ldz + j, ldz, h + n0 * ldh, ldh, R + j * O, O,
                  std::min<int64_t>(16, w - c), k0, k1, overwrite);
        n0 += nr;
      }
    }
#else
  (void)z, (void)ldz, (void)h, (void)ldh, (void)R, (void)nb, (void)H, (void)O, (void)u, (void)k0,
      (void)k1, (void)overwrite;
  throw std::logic_error("lstm_ext: the packed recurrent kernel is not compiled in");
#endif
}

void transpose_columns(float* dst, int64_t ldd, const float* src, int64_t lds, int64_t rows,
                       int64_t cols) {
#ifdef LSTM_EXT_HAVE_X86_KERNELS
  need_avx512("transpose_columns");
  for (int64_t r = 0; r < rows; r += 16)
    for (int64_t c = 0; c < cols; c += 16)
      transpose_tile(dst + c * ldd + r, ldd, src + r * lds + c, lds,
                     std::min<int64_t>(16, rows - r), std::min<int64_t>(16, cols - c));
#else
  (void)dst, (void)ldd, (void)src, (void)lds, (void)rows, (void)cols;
  throw std::logic_error("lstm_ext: the packed recurrent kernel is not compiled in");
#endif
}

void row_product_unpacked(float* z, const float* W, int64_t ldw, const float* x, int64_t I,
                          const float* R, int64_t ldr, const float* h, int64_t O, int64_t n) {
#ifdef LSTM_EXT_HAVE_X86_KERNELS
  need_avx512("row_product_unpacked");
  row_product16(z, W, ldw, x, I, R, ldr, h, O, n);
#else
  (void)z, (void)W, (void)ldw, (void)x, (void)I, (void)R, (void)ldr, (void)h, (void)O, (void)n;
  throw std::logic_error("lstm_ext: the packed recurrent kernel is not compiled in");
#endif
}

#define LSTM_EXT_INSTANTIATE(S)                                                                \
  template int64_t packed_recurrent_size<S>(int64_t, int64_t);                                 \
  template int64_t packed_row<S>();                                                            \
  template void pack_recurrent_block<S>(S*, const S*, int64_t, int64_t, int64_t);              \
  template void recurrent_block<S>(S*, int64_t, const S*, int64_t, const S*, int64_t, int64_t, \
                                   int64_t, int64_t, int64_t, int64_t, bool, bool);            \
  template void pack_columns<S>(S*, const S*, int64_t, int64_t, int64_t);                      \
  template void pack_column_rows<S>(S*, int64_t, int64_t, const S*, int64_t, int64_t, int64_t,  \
                                    int64_t);                                                  \
  template void unpack_columns<S>(S*, const S*, int64_t, int64_t);                             \
  template void column_product<S>(S*, int64_t, const S*, int64_t, const S*, int64_t, int64_t,  \
                                  int64_t, int64_t, int64_t, int64_t, bool, bool);
LSTM_EXT_INSTANTIATE(float)
LSTM_EXT_INSTANTIATE(double)

}  // namespace detail

bool packed_recurrent_enabled() { return detail::packed_on().load(std::memory_order_relaxed); }

std::string packed_recurrent_kernel() {
  switch (detail::cpu_isa()) {
    case detail::Isa::kAvx512:
      return "avx512f";
    case detail::Isa::kAvx2:
      return "avx2";
    case detail::Isa::kNone:
      break;
  }
  return "none";
}

bool set_packed_recurrent(bool on) {
  return detail::packed_on().exchange(on && detail::cpu_isa() != detail::Isa::kNone);
}

}  // namespace lstm_ext
