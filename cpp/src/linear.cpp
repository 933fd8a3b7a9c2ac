// linear.h: the fully connected layer's products by blas.h's gemm (cut by
// shape, one single-threaded BLAS call a block, on lstm_ext's threads).
#include "lstm_ext/linear.h"

#include <algorithm>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "blas.h"
#include "common.h"
#include "parallel.h"

namespace lstm_ext {
namespace {

using namespace detail;  // NOLINT: checked sizes, require

// Columns of db per task: the sums' order (row 0, 1, ...) is the same for
// any cut, the cut only spreads the columns over the threads.
constexpr int64_t kBiasColumns = 256;

}  // namespace

void check_linear_sizes(int64_t N, int64_t K, int64_t M) {
  if (N < 0 || K < 0 || M < 0)
    throw std::invalid_argument("lstm_ext: linear sizes must be >= 0, got N=" + std::to_string(N) +
                                " K=" + std::to_string(K) + " M=" + std::to_string(M));
  for (const auto& [v, name] : {std::pair{N, "N"}, {K, "K"}, {M, "M"}})
    to_blasint(v, name);  // each is a BLAS argument (a size or a leading dimension) somewhere
  for (const auto& [a, b] : {std::pair{N, K}, {N, M}, {M, K}})
    mul(a, b);  // each array's element count fits
}

template <typename S>
void linear_forward(S* y, const S* x, const S* W, const S* b, int64_t N, int64_t K, int64_t M) {
  check_linear_sizes(N, K, M);
  require(y, "y", N * M);
  require(x, "x", N * K);
  require(W, "W", M * K);
  require_apart(y, N * M, "y", x, N * K, "x");
  require_apart(y, N * M, "y", W, M * K, "W");
  if (b) require_apart(y, N * M, "y", b, M, "b");
  use_serial_blas();
  if (b)
    for (int64_t n = 0; n < N; ++n) std::copy(b, b + M, y + n * M);  // [N,M] rows of b
  gemm(Op::N, Op::T, N, M, K, S(1), x, K, W, K, b ? S(1) : S(0), y, M);
}

template <typename S>
void linear_backward(S* dx, S* dW, S* db, const S* dy, const S* x, const S* W, int64_t N, int64_t K,
                     int64_t M) {
  check_linear_sizes(N, K, M);
  require(dW, "dW", M * K);
  require(dy, "dy", N * M);
  require(x, "x", N * K);
  if (dx) require(W, "W", M * K);
  auto apart = [&](const S* out, int64_t n, const char* name) {  // out apart from the inputs
    if (!out) return;
    require_apart(out, n, name, dy, N * M, "dy");
    require_apart(out, n, name, x, N * K, "x");
    require_apart(out, n, name, W, M * K, "W");
  };
  apart(dx, N * K, "dx"), apart(dW, M * K, "dW"), apart(db, M, "db");
  if (db) require_apart(db, M, "db", dW, M * K, "dW");  // and apart from each other
  if (dx) require_apart(dx, N * K, "dx", dW, M * K, "dW");
  if (dx && db) require_apart(dx, N * K, "dx", db, M, "db");
  use_serial_blas();
  // dW [M,K] += dy^T x and dx [N,K] = dy W: independent, one parallel region
  // (each cut as gemms cuts it alone: dW's bits do not depend on dx's presence).
  const Gemm<S> dW_product{Op::T, Op::N, M, K, N, S(1), dy, M, x, K, S(1), dW, K};
  if (dx)
    gemms({dW_product, Gemm<S>{Op::N, Op::N, N, K, M, S(1), dy, M, W, K, S(0), dx, K}});
  else
    gemms({dW_product});
  if (!db) return;
  // db [M] += the column sums of dy, each summed over rows 0, 1, ... first.
  const int64_t tasks = (M + kBiasColumns - 1) / kBiasColumns;
  parallel_for(tasks, [&](int64_t t) {
    const int64_t m0 = t * kBiasColumns, m1 = std::min(M, m0 + kBiasColumns);
    std::vector<S> sum(size_t(m1 - m0), S(0));
    for (int64_t n = 0; n < N; ++n)
      for (int64_t m = m0; m < m1; ++m) sum[size_t(m - m0)] += dy[n * M + m];
    for (int64_t m = m0; m < m1; ++m) db[m] += sum[size_t(m - m0)];
  });
}

template void linear_forward<float>(float*, const float*, const float*, const float*, int64_t,
                                    int64_t, int64_t);
template void linear_forward<double>(double*, const double*, const double*, const double*, int64_t,
                                     int64_t, int64_t);
template void linear_backward<float>(float*, float*, float*, const float*, const float*,
                                     const float*, int64_t, int64_t, int64_t);
template void linear_backward<double>(double*, double*, double*, const double*, const double*,
                                      const double*, int64_t, int64_t, int64_t);

}  // namespace lstm_ext
