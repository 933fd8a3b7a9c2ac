// What the CPU and CUDA paths share: checked size arithmetic, the check of a
// Config, and the packed schedule of a ragged or reversed batch (lstm.cpp's
// header comment explains it). Internal: not installed.
#pragma once

#include <algorithm>
#include <cstdint>
#include <functional>
#include <limits>
#include <numeric>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "lstm_ext/lstm.h"

namespace lstm_ext {
namespace detail {

// ---- sizes ----------------------------------------------------------------

// Sizes are element counts in int64_t. mul and add refuse (std::length_error,
// naming the operands) any result past 2^63/8, so that a byte count of
// elements up to 8 bytes (double) fits an int64_t too. The operands are
// sizes, >= 0 (check_config refuses negative ones first).
constexpr int64_t kMaxElements = std::numeric_limits<int64_t>::max() / 8;

inline int64_t mul(int64_t a, int64_t b) {
  if (a != 0 && b > kMaxElements / a)
    throw std::length_error("lstm_ext: size " + std::to_string(a) + " x " + std::to_string(b) +
                            " overflows a 64-bit byte count");
  return a * b;
}

inline int64_t add(int64_t a, int64_t b) {
  if (b > kMaxElements - a)
    throw std::length_error("lstm_ext: size " + std::to_string(a) + " + " + std::to_string(b) +
                            " overflows a 64-bit byte count");
  return a + b;
}

inline std::string str(const Config& c) {
  return "T=" + std::to_string(c.T) + " B=" + std::to_string(c.B) + " I=" + std::to_string(c.I) +
         " H=" + std::to_string(c.H) + " P=" + std::to_string(c.P);
}

inline void check_config(const Config& c) {
  if (c.T < 0 || c.B < 0 || c.I < 0 || c.H < 0 || c.P < 0)
    throw std::invalid_argument("lstm_ext: sizes must be >= 0, got " + str(c));
  if (!(c.clip >= 0))
    throw std::invalid_argument("lstm_ext: clip must be >= 0 (0: no clipping), got " +
                                std::to_string(c.clip));
  const int64_t O = c.O();
  try {
    // One bound on all the buffers the CPU and CUDA paths carve from a
    // workspace or scratch (rows <= T*B; the packed R pads H and O to 32;
    // the schedule's indices; CUDA's alignment), and on the weights. Within
    // it, every size and offset computed after this check fits an int64_t:
    //   (T+3) B (I + 8H + 2O) + 4 (H+32)(O+32) + 8 (T+B) + 4096,   4H (I+O),   P H
    const int64_t per_row = add(add(c.I, mul(8, c.H)), mul(2, O));
    add(add(mul(mul(add(c.T, 3), c.B), per_row), mul(mul(4, add(c.H, 32)), add(O, 32))),
        add(mul(8, add(c.T, c.B)), 4096));
    mul(mul(4, c.H), add(c.I, O));
    mul(c.P, c.H);
  } catch (const std::length_error& e) {
    std::string what = e.what();  // "lstm_ext: size a x b overflows a 64-bit byte count"
    if (what.rfind("lstm_ext: ", 0) == 0) what.erase(0, 10);
    throw std::length_error("lstm_ext: sizes " + str(c) + " refused: " + what);
  }
  // BLAS takes 32-bit dimensions: refuse what no GEMM below could take,
  // before anything is written.
  const int64_t gemm_dims[] = {c.T * c.B, 4 * c.H, c.I, O};
  for (int64_t v : gemm_dims)
    if (v > std::numeric_limits<int>::max())
      throw std::length_error("lstm_ext: a GEMM dimension of " + std::to_string(v) + " (" + str(c) +
                              ") exceeds the BLAS limit of 2^31-1");
}

inline bool gathers(const Config& c) { return c.lengths != nullptr || c.reverse; }

// Consecutive buffers carved from one: take(n) gives the offset of the next n
// elements.
struct Carve {
  int64_t used = 0;
  int64_t operator()(int64_t n) {
    const int64_t start = used;
    used = add(used, n);
    return start;
  }
};

// ---- the packed schedule --------------------------------------------------

struct Schedule {
  int64_t K = 0;  // processing steps
  bool reverse = false;
  std::vector<int64_t> perm;    // [B] row j holds sequence perm[j]
  std::vector<int64_t> len;     // [B] its length; non-increasing in j
  std::vector<int64_t> batch;   // [K] rows still running at step k
  std::vector<int64_t> offset;  // [K+1] packed index of row (k, 0)

  int64_t N() const { return offset[K]; }
  // The [T*B] row of packed row (k, j).
  int64_t row(int64_t k, int64_t j, int64_t B) const {
    return (reverse ? len[j] - 1 - k : k) * B + perm[j];
  }
};

inline Schedule make_schedule(const Config& c) {
  Schedule s;
  s.reverse = c.reverse;
  s.perm.resize(c.B);
  std::iota(s.perm.begin(), s.perm.end(), int64_t(0));
  s.len.assign(c.B, c.T);
  if (c.lengths) {
    for (int64_t b = 0; b < c.B; ++b)
      if (c.lengths[b] < 0 || c.lengths[b] > c.T)
        throw std::invalid_argument("lstm_ext: lengths[" + std::to_string(b) +
                                    "] = " + std::to_string(c.lengths[b]) + " is outside [0, " +
                                    std::to_string(c.T) + "]");
    // Longest first, ties in batch order: std::stable_sort's order, without
    // its temporary buffer (deprecated in C++17, which Clang 19 warns about
    // inside libstdc++ 12's stable_sort).
    std::sort(s.perm.begin(), s.perm.end(), [&](int64_t a, int64_t b) {
      return c.lengths[a] != c.lengths[b] ? c.lengths[a] > c.lengths[b] : a < b;
    });
    for (int64_t j = 0; j < c.B; ++j) s.len[j] = c.lengths[s.perm[j]];
  }
  s.K = c.B > 0 ? s.len[0] : 0;
  s.batch.resize(s.K);
  s.offset.assign(s.K + 1, 0);
  int64_t active = c.B;
  for (int64_t k = 0; k < s.K; ++k) {
    while (active > 0 && s.len[active - 1] <= k) --active;
    s.batch[k] = active;
    s.offset[k + 1] = s.offset[k] + active;
  }
  return s;
}

inline void require(const void* p, const char* name, int64_t size) {
  if (p == nullptr && size > 0)
    throw std::invalid_argument(std::string("lstm_ext: buffer ") + name + " is null");
}

template <typename S>
void require_weights(const Weights<S>& w, const Config& c) {
  require(w.W, "W", 4 * c.H * c.I);
  require(w.R, "R", 4 * c.H * c.O());
  if (c.P > 0) require(w.W_hr, "W_hr", c.P * c.H);
}

// Buffers a (na elements) and b (nb) share no element: std::invalid_argument
// otherwise. (std::less orders any two pointers, where < may not.)
template <typename S>
void require_apart(const S* a, int64_t na, const char* a_name, const S* b, int64_t nb,
                   const char* b_name) {
  if (na <= 0 || nb <= 0) return;
  const std::less<const S*> before;
  if (before(a, b + nb) && before(b, a + na))
    throw std::invalid_argument(std::string("lstm_ext: buffers ") + a_name + " and " + b_name +
                                " overlap; an output may not alias an input");
}

// Every buffer lstm_forward needs, present (workspace: ws_size elements), and
// y apart from x.
template <typename S>
void require_forward(const S* y, const S* hT, const S* cT, const S* ws, int64_t ws_size, const S* x,
                     const Weights<S>& w, const Config& c) {
  const int64_t T = c.T, B = c.B, O = c.O();
  require(y, "y", T * B * O);
  require(hT, "hT", B * O);
  require(cT, "cT", B * c.H);
  require(ws, "workspace", ws_size);
  require(x, "x", T * B * c.I);
  require_weights(w, c);
  require_apart(y, T * B * O, "y", x, T * B * c.I, "x");
}

// Every buffer lstm_backward needs, present; weights_kept: the workspace
// holds W and R (the CPU's training_keeps_weights), so w's may be null; x is
// needed where x_read (the workspace does not hold the rows of x it used).
template <typename S>
void require_backward(const S* dx, const S* dh0, const S* dc0, const Grads<S>& g, const S* scr,
                      int64_t scr_size, const S* ws, int64_t ws_size, const S* x,
                      const Weights<S>& w, const Config& c, bool weights_kept, bool x_read) {
  const int64_t T = c.T, B = c.B, I = c.I, H = c.H, P = c.P, O = c.O(), G = 4 * H;
  require(dx, "dx", T * B * I);
  require(dh0, "dh0", B * O);
  require(dc0, "dc0", B * H);
  require(g.dW, "dW", G * I);
  require(g.dR, "dR", G * O);
  require(g.db, "db", G);
  if (P > 0) require(g.dW_hr, "dW_hr", P * H);
  if (w.peephole) require(g.dpeephole, "dpeephole", 3 * H);
  require(scr, "scratch", scr_size);
  require(ws, "workspace", ws_size);
  require(x, "x", x_read ? T * B * I : 0);
  if (!weights_kept) require_weights(w, c);
}

// Calls f(std::bool_constant<v0>{}, std::bool_constant<v1>{}, ...) for the
// run-time flags v0, v1, ...: features become template parameters.
template <bool... kDone, typename F>
void dispatch(F&& f) {
  f(std::bool_constant<kDone>{}...);
}
template <bool... kDone, typename F, typename... Rest>
void dispatch(F&& f, bool v, Rest... rest) {
  if (v)
    dispatch<kDone..., true>(f, rest...);
  else
    dispatch<kDone..., false>(f, rest...);
}

}  // namespace detail
}  // namespace lstm_ext
