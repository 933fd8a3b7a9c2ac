// C++ unit tests of the core (GoogleTest, run by ctest): the functional API
// over caller-owned buffers and lstm_ext::Model. The Python suite checks the
// math against the NumPy reference in depth; these check the C++ contract
// itself: steps agree with whole sequences, gradients with finite
// differences, errors throw, thread counts keep the bits, files are checked.
#include <gtest/gtest.h>
#include <lstm_ext/cell_math.h>
#include <lstm_ext/linear.h>
#include <lstm_ext/lstm.h>
#include <lstm_ext/model.h>
#include <lstm_ext/runtime.h>
#include <sched.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "parallel.h"   // cpp/src: cgroup_cpu_limit, tested below
#include "recurrent.h"  // cpp/src: the packed layout, tested below

namespace {

using lstm_ext::Config;

// A pool of `threads` for one test, and the old size back afterwards.
struct PoolOf {
  int before = lstm_ext::get_num_threads();
  explicit PoolOf(int threads) { lstm_ext::set_num_threads(threads); }
  ~PoolOf() { lstm_ext::set_num_threads(before); }
};

template <typename S>
struct Problem {
  Config cfg;
  std::vector<S> x, W, R, b;
  explicit Problem(int64_t T, int64_t B, int64_t I, int64_t H, unsigned seed = 1) {
    cfg.T = T, cfg.B = B, cfg.I = I, cfg.H = H;
    std::mt19937 g(seed);
    std::normal_distribution<double> n(0, 1);
    auto fill = [&](std::vector<S>& v, size_t size, double s) {
      v.resize(size);
      for (auto& e : v) e = S(s * n(g));
    };
    fill(x, size_t(T * B * I), 1);
    fill(W, size_t(4 * H * I), 1 / std::sqrt(double(I)));
    fill(R, size_t(4 * H * H), 1 / std::sqrt(double(H)));
    fill(b, size_t(4 * H), 0.5);
  }
  lstm_ext::Weights<S> weights() const { return {W.data(), R.data(), b.data()}; }
  // y [T,B,H] of an inference forward, or with ws of a training forward
  // (its workspace left in *ws); on pack_weights' buffer `packed` if given.
  std::vector<S> forward(std::vector<S>* ws = nullptr, const S* packed = nullptr) const {
    const Config& c = cfg;
    std::vector<S> y(size_t(c.T * c.B * c.H)), h(size_t(c.B * c.H)), cc(h.size()), own;
    std::vector<S>& work = ws ? *ws : own;
    work.resize(size_t(lstm_ext::forward_workspace_size(c, ws != nullptr)));
    lstm_ext::Weights<S> w = weights();
    w.packed = packed;
    lstm_ext::lstm_forward(y.data(), h.data(), cc.data(), nullptr, work.data(), x.data(), nullptr,
                           nullptr, w, c, ws != nullptr);
    return y;
  }
  // y, dx, dW, dR and db of a training forward and its backward (dy = y),
  // one after another. Backward gets x and the weights, or what is given
  // (bx: x or null; bw: other weights).
  std::vector<S> gradients(const S* const* bx = nullptr,
                           const lstm_ext::Weights<S>* bw = nullptr) const {
    std::vector<S> ws, y = forward(&ws);
    std::vector<S> dx(x.size()), dW(W.size()), dR(R.size()), db(b.size()),
        dh0(size_t(cfg.B * cfg.H)), dc0(dh0.size()),
        scratch(size_t(lstm_ext::backward_scratch_size(cfg)));
    lstm_ext::lstm_backward(dx.data(), dh0.data(), dc0.data(), {dW.data(), dR.data(), db.data()},
                            scratch.data(), ws.data(), bx ? *bx : x.data(), y.data(), nullptr,
                            nullptr, bw ? *bw : weights(), cfg);
    for (const auto* v : {&dx, &dW, &dR, &db}) y.insert(y.end(), v->begin(), v->end());
    return y;
  }
};

template <typename S>
void steps_agree_with_forward(double tol) {
  Problem<S> p(7, 3, 5, 6);
  const std::vector<S> y = p.forward();
  Config one = p.cfg;
  one.T = 1;
  std::vector<S> h(size_t(3 * 6), S(0)), c(h.size(), S(0)),
      scratch(size_t(lstm_ext::step_scratch_size(one)));
  for (int64_t t = 0; t < 7; ++t) {
    lstm_ext::lstm_step(h.data(), c.data(), scratch.data(), p.x.data() + t * 3 * 5, h.data(),
                        c.data(), p.weights(), one);  // in place: h and c alias the outputs
    for (size_t k = 0; k < h.size(); ++k) EXPECT_NEAR(h[k], y[size_t(t) * h.size() + k], tol);
  }
}

TEST(Core, StepsAgreeWithForwardFloat) { steps_agree_with_forward<float>(1e-6); }
TEST(Core, StepsAgreeWithForwardDouble) { steps_agree_with_forward<double>(1e-13); }

// Steps that split over two threads (B <= 8, H >= 64; work enough that the
// pool's worker is woken, kWakeWork), in place (h and c the outputs) and into
// other buffers, on one thread and on two: the same bits. In place, each
// thread's units are written only once both have read all of h (lstm_step's
// in_place): a test with force on the row path (float, B = 1, the AVX-512F
// kernel), where the threads' products and gate passes do not otherwise wait
// for each other.
template <typename S>
void steps_in_place_give_the_same_bits(int64_t B) {
  constexpr int64_t I = 800, H = 256;  // B = 1: 1024 (I + H) multiply-adds, past kWakeWork
  Problem<S> p(6, B, I, H);
  Config one = p.cfg;
  one.T = 1;
  const size_t n = size_t(B * H);
  std::vector<S> scratch(size_t(lstm_ext::step_scratch_size(one)));
  std::vector<std::vector<S>> runs;
  for (int threads : {1, 2})
    for (bool in_place : {false, true}) {
      PoolOf pool(threads);
      std::vector<S> h(n, S(0)), c(n, S(0)), h_out(n), c_out(n), all;
      for (int64_t t = 0; t < 6; ++t) {
        const S* x = p.x.data() + t * B * I;
        if (in_place) {
          lstm_ext::lstm_step(h.data(), c.data(), scratch.data(), x, h.data(), c.data(),
                              p.weights(), one);
        } else {
          lstm_ext::lstm_step(h_out.data(), c_out.data(), scratch.data(), x, h.data(), c.data(),
                              p.weights(), one);
          h = h_out, c = c_out;
        }
        all.insert(all.end(), h.begin(), h.end());
        all.insert(all.end(), c.begin(), c.end());
      }
      runs.push_back(all);
    }
  for (size_t r = 1; r < runs.size(); ++r)
    EXPECT_EQ(std::memcmp(runs[r].data(), runs[0].data(), runs[0].size() * sizeof(S)), 0)
        << "run " << r << " (threads " << 1 + r / 2 << ", in place " << r % 2 << ")";
  // h_out over x's first elements (I > H): x read in full by both threads
  // before either writes there.
  PoolOf pool(2);
  std::vector<S> xs(p.x.begin(), p.x.begin() + B * I), h(n), c(n), over(xs), c2(n);
  lstm_ext::lstm_step(h.data(), c.data(), scratch.data(), xs.data(), nullptr, nullptr, p.weights(),
                      one);
  lstm_ext::lstm_step(over.data(), c2.data(), scratch.data(), over.data(), nullptr, nullptr,
                      p.weights(), one);
  EXPECT_EQ(std::memcmp(over.data(), h.data(), n * sizeof(S)), 0) << "h_out over x";
}

TEST(Core, StepsInPlaceGiveTheSameBits) {
  SCOPED_TRACE(lstm_ext::detail::unpacked_product_enabled() ? "B = 1 float: the row path"
                                                            : "no AVX-512F: the BLAS's path");
  for (int64_t B : {1, 3}) {
    steps_in_place_give_the_same_bits<float>(B);
    steps_in_place_give_the_same_bits<double>(B);
  }
}

TEST(Core, GradientMatchesFiniteDifferences) {
  Problem<double> p(5, 2, 3, 4, 7);
  const Config& c = p.cfg;
  std::vector<double> dy(size_t(c.T * c.B * c.H));
  for (size_t k = 0; k < dy.size(); ++k) dy[k] = std::sin(double(k));
  auto loss = [&] {  // L = sum(y * dy)
    const std::vector<double> y = p.forward();
    double s = 0;
    for (size_t k = 0; k < y.size(); ++k) s += y[k] * dy[k];
    return s;
  };
  std::vector<double> y(dy.size()), h(size_t(c.B * c.H)), cc(h.size()),
      ws(size_t(lstm_ext::forward_workspace_size(c, true)));
  lstm_ext::lstm_forward(y.data(), h.data(), cc.data(), nullptr, ws.data(), p.x.data(), nullptr,
                         nullptr, p.weights(), c, true);
  std::vector<double> dx(p.x.size()), dh0(h.size()), dc0(h.size()), dW(p.W.size()), dR(p.R.size()),
      db(p.b.size()), scratch(size_t(lstm_ext::backward_scratch_size(c)));
  lstm_ext::lstm_backward(dx.data(), dh0.data(), dc0.data(), {dW.data(), dR.data(), db.data()},
                          scratch.data(), ws.data(), p.x.data(), dy.data(), nullptr, nullptr,
                          p.weights(), c);
  const double eps = 1e-6;
  for (size_t k : {size_t(0), size_t(7), p.W.size() - 1}) {
    const double w0 = p.W[k];
    p.W[k] = w0 + eps;
    const double up = loss();
    p.W[k] = w0 - eps;
    const double down = loss();
    p.W[k] = w0;
    EXPECT_NEAR(dW[k], (up - down) / (2 * eps), 1e-7) << "dW[" << k << "]";
  }
}

TEST(Core, BadArgumentsThrow) {
  Problem<float> p(3, 2, 4, 5);
  Config bad = p.cfg;
  bad.H = -1;
  EXPECT_THROW(lstm_ext::forward_workspace_size(bad, true), std::invalid_argument);
  EXPECT_THROW(lstm_ext::training_keeps_weights(bad), std::invalid_argument);
  Config huge = p.cfg;
  huge.T = huge.B = int64_t(1) << 40;
  EXPECT_THROW(lstm_ext::forward_workspace_size(huge, true), std::length_error);
  std::vector<float> y(3 * 2 * 5), h(2 * 5), c(h.size()),
      ws(size_t(lstm_ext::forward_workspace_size(p.cfg, false)));
  const lstm_ext::Weights<float> no_R{p.W.data(), nullptr};
  EXPECT_THROW(lstm_ext::lstm_forward(y.data(), h.data(), c.data(), nullptr, ws.data(), p.x.data(),
                                      nullptr, nullptr, no_R, p.cfg, false),
               std::invalid_argument);
  const int64_t lengths[2] = {3, 4};  // 4 > T
  Config ragged = p.cfg;
  ragged.lengths = lengths;
  EXPECT_THROW(lstm_ext::lstm_forward(y.data(), h.data(), c.data(), nullptr, ws.data(), p.x.data(),
                                      nullptr, nullptr, p.weights(), ragged, false),
               std::invalid_argument);
}

// Empty buffers may be null (an empty std::vector's data() is): no size may
// then reach memcpy with them (undefined even for no bytes; UBSan in .ci/run).
TEST(Core, EmptySizesAreFine) {
  for (auto [T, B, I, H] : {std::array<int64_t, 4>{0, 3, 3, 4},
                            {4, 0, 3, 4},
                            {4, 3, 0, 4},
                            {4, 3, 3, 0},
                            {3, 2, 0, 0}}) {
    Problem<double> p(T, B, I, H);
    EXPECT_EQ(p.forward().size(), size_t(T * B * H));
    EXPECT_EQ(p.gradients().size(), size_t(T * B * (H + I) + 4 * H * (I + H + 1)));
    if (T == 0) continue;  // step reads x's first step
    std::vector<double> h(size_t(B * H)), c(h.size()),
        scratch(size_t(lstm_ext::step_scratch_size(p.cfg)));
    lstm_ext::lstm_step(h.data(), c.data(), scratch.data(), p.x.data(), h.data(), c.data(),
                        p.weights(), p.cfg);
  }
}

// y sharing a float with x is refused; y just before or after x is not.
TEST(Core, OutputOverlappingTheInputIsRefused) {
  Problem<float> p(3, 2, 5, 5);  // y [T,B,H] as large as x
  const ptrdiff_t n = ptrdiff_t(p.x.size());
  std::vector<float> h(2 * 5), c(h.size()),
      ws(size_t(lstm_ext::forward_workspace_size(p.cfg, false))), both(3 * p.x.size());
  float* xin = both.data() + n;
  std::copy(p.x.begin(), p.x.end(), xin);
  const auto forward = [&](float* y) {
    lstm_ext::lstm_forward(y, h.data(), c.data(), nullptr, ws.data(), xin, nullptr, nullptr,
                           p.weights(), p.cfg, false);
  };
  for (const ptrdiff_t shift : {ptrdiff_t(0), ptrdiff_t(4), ptrdiff_t(-4), n - 1, 1 - n})
    EXPECT_THROW(forward(xin + shift), std::invalid_argument) << shift;
  for (const ptrdiff_t shift : {n, -n}) EXPECT_NO_THROW(forward(xin + shift)) << shift;
}

// Training forward keeps the rows of x it used (copied, or with lengths or
// reverse gathered): backward reads no x, which may be null or changed
// after forward, and gives the same bits. The workspace starts as NaN, so a
// row forward left out would show. (9,16,64,64) in float: the team's copy
// after its input products and, in reverse, dx straight into its rows.
template <typename S>
void backward_needs_no_x(Problem<S> p) {
  const std::vector<S> want = p.gradients();
  std::vector<S> ws(size_t(lstm_ext::forward_workspace_size(p.cfg, true)),
                    std::numeric_limits<S>::quiet_NaN());
  std::vector<S> got = p.forward(&ws);
  std::fill(p.x.begin(), p.x.end(), S(7));  // after forward: backward must not see it
  std::vector<S> dx(p.x.size()), dW(p.W.size()), dR(p.R.size()), db(p.b.size()),
      dh0(size_t(p.cfg.B * p.cfg.H)), dc0(dh0.size()),
      scratch(size_t(lstm_ext::backward_scratch_size(p.cfg)));
  lstm_ext::lstm_backward(dx.data(), dh0.data(), dc0.data(), {dW.data(), dR.data(), db.data()},
                          scratch.data(), ws.data(), nullptr, got.data(), nullptr, nullptr,
                          p.weights(), p.cfg);
  for (const auto* v : {&dx, &dW, &dR, &db}) got.insert(got.end(), v->begin(), v->end());
  ASSERT_EQ(got.size(), want.size());
  EXPECT_EQ(std::memcmp(got.data(), want.data(), got.size() * sizeof(S)), 0)
      << p.cfg.T << " " << p.cfg.B << " reverse " << p.cfg.reverse << " lengths "
      << (p.cfg.lengths != nullptr);
}

TEST(Core, BackwardNeedsNoX) {
  const int64_t lengths[3] = {4, 1, 3};
  for (int shape = 0; shape < 3; ++shape) {
    Problem<double> p(4, 3, 2, 5);
    if (shape == 1) p.cfg.lengths = lengths;
    if (shape == 2) p.cfg.reverse = true;
    backward_needs_no_x(p);
  }
  for (const bool reverse : {false, true}) {
    Problem<float> p(9, 16, 64, 64);
    p.cfg.reverse = reverse;
    backward_needs_no_x(p);
  }
}

// Forward (inference) and backward, at 16 rows, at the few rows whose blocks
// each sum from their own columns on (lstm.cpp's kRotateRows; 175 units: a
// partial last block), and at 70 (kWholePassRows: a step's gate pass over a
// thread's units; inference's h read back from y). Under ThreadSanitizer
// (.ci/run) this is also the check of the team's synchronisation from step
// to step.
TEST(Core, SameBitsAtAnyThreadCount) {
  const int before = lstm_ext::get_num_threads();
  // {20,1,64,128}, {37,1,16,32}, {40,4,30,64} and {40,4,30,30}: backward's
  // recurrence on one thread, its chunks (the last a part) and dW's blocks
  // (at G = 120 the last a part) on the other.
  for (auto [T, B, I, H] : {std::array<int64_t, 4>{20, 16, 64, 96},
                            {20, 1, 64, 128},
                            {37, 1, 16, 32},
                            {40, 4, 30, 64},
                            {40, 4, 30, 30},
                            {9, 3, 30, 175},
                            {6, 70, 8, 72}}) {
    Problem<float> p(T, B, I, H, 3);
    lstm_ext::set_num_threads(1);
    const std::vector<float> one = p.forward(), one_g = p.gradients();
    for (int threads : {2, 3}) {
      lstm_ext::set_num_threads(threads);
      const std::vector<float> got = p.forward(), got_g = p.gradients();
      ASSERT_EQ(one.size(), got.size());
      ASSERT_EQ(one_g.size(), got_g.size());
      EXPECT_EQ(std::memcmp(one.data(), got.data(), one.size() * sizeof(float)), 0) << B;
      EXPECT_EQ(std::memcmp(one_g.data(), got_g.data(), one_g.size() * sizeof(float)), 0) << B;
    }
  }
  lstm_ext::set_num_threads(before);
}

// ---- linear.h -------------------------------------------------------------

// y = x W^T + b, dx = dy W, dW += dy^T x, db += column sums of dy, in double
// by loops: the linear layer's results within rounding (a float product of K
// terms errs by about K * 2^-24 of the terms' magnitudes; here K <= 300 and
// terms of order 1, so 1e-4 absolute in float, 1e-12 in double), at sizes
// the BLAS takes whole and sizes gemm cuts into blocks.
template <typename S>
void linear_matches_loops(double tol) {
  std::mt19937 gen(5);
  std::normal_distribution<double> normal;
  for (auto [N, K, M] : {std::array<int64_t, 3>{7, 5, 3}, {1, 9, 4}, {300, 64, 130}}) {
    auto draw = [&](int64_t n) {
      std::vector<S> v(static_cast<size_t>(n));
      for (S& e : v) e = S(normal(gen));
      return v;
    };
    const std::vector<S> x = draw(N * K), W = draw(M * K), b = draw(M), dy = draw(N * M);
    std::vector<S> y(size_t(N * M)), dx(size_t(N * K)), dW = draw(M * K), db = draw(M);
    const std::vector<S> dW0 = dW, db0 = db;
    lstm_ext::linear_forward(y.data(), x.data(), W.data(), b.data(), N, K, M);
    lstm_ext::linear_backward(dx.data(), dW.data(), db.data(), dy.data(), x.data(), W.data(), N, K,
                              M);
    for (int64_t n = 0; n < N; ++n)
      for (int64_t m = 0; m < M; ++m) {
        double want = double(b[size_t(m)]);
        for (int64_t k = 0; k < K; ++k) want += double(x[size_t(n * K + k)]) * W[size_t(m * K + k)];
        EXPECT_NEAR(y[size_t(n * M + m)], want, tol) << N << " y " << n << "," << m;
      }
    for (int64_t n = 0; n < N; ++n)
      for (int64_t k = 0; k < K; ++k) {
        double want = 0;
        for (int64_t m = 0; m < M; ++m)
          want += double(dy[size_t(n * M + m)]) * W[size_t(m * K + k)];
        EXPECT_NEAR(dx[size_t(n * K + k)], want, tol) << N << " dx " << n << "," << k;
      }
    for (int64_t m = 0; m < M; ++m) {
      double want_b = double(db0[size_t(m)]);
      for (int64_t n = 0; n < N; ++n) want_b += double(dy[size_t(n * M + m)]);
      EXPECT_NEAR(db[size_t(m)], want_b, tol) << N << " db " << m;
      for (int64_t k = 0; k < K; ++k) {
        double want = double(dW0[size_t(m * K + k)]);
        for (int64_t n = 0; n < N; ++n)
          want += double(dy[size_t(n * M + m)]) * x[size_t(n * K + k)];
        EXPECT_NEAR(dW[size_t(m * K + k)], want, tol) << N << " dW " << m << "," << k;
      }
    }
  }
}
TEST(Linear, MatchesLoopsFloat) { linear_matches_loops<float>(1e-4); }
TEST(Linear, MatchesLoopsDouble) { linear_matches_loops<double>(1e-12); }

// No bias, no dx; and the same bits at 1, 2 and 3 threads where every
// product is cut into blocks (blas.cpp's cut: y, dx and dW along their 2,100
// rows) and db's columns are several tasks.
TEST(Linear, OptionalOutputsAndSameBitsAtAnyThreadCount) {
  const int before = lstm_ext::get_num_threads();
  const int64_t N = 2100, K = 40, M = 2100;
  std::vector<float> x(size_t(N * K)), W(size_t(M * K)), dy(size_t(N * M));
  for (size_t i = 0; i < x.size(); ++i) x[i] = float(i % 13) / 7.0f - 0.8f;
  for (size_t i = 0; i < W.size(); ++i) W[i] = float(i % 11) / 9.0f - 0.5f;
  for (size_t i = 0; i < dy.size(); ++i) dy[i] = float(i % 7) / 5.0f - 0.6f;
  auto run = [&] {
    std::vector<float> y(static_cast<size_t>(N * M)), dx(static_cast<size_t>(N * K)), dW(W.size()),
        dW2(W.size()), db(static_cast<size_t>(M));
    lstm_ext::linear_forward<float>(y.data(), x.data(), W.data(), nullptr, N, K, M);
    lstm_ext::linear_backward(dx.data(), dW.data(), db.data(), dy.data(), x.data(), W.data(), N, K,
                              M);
    lstm_ext::linear_backward<float>(nullptr, dW2.data(), nullptr, dy.data(), x.data(), nullptr, N,
                                     K, M);
    EXPECT_EQ(dW, dW2);  // dW alone: the same product
    y.insert(y.end(), dx.begin(), dx.end());
    y.insert(y.end(), dW.begin(), dW.end());
    y.insert(y.end(), db.begin(), db.end());
    return y;
  };
  lstm_ext::set_num_threads(1);
  const std::vector<float> one = run();
  for (int threads : {2, 3}) {
    lstm_ext::set_num_threads(threads);
    const std::vector<float> got = run();
    EXPECT_EQ(std::memcmp(one.data(), got.data(), one.size() * sizeof(float)), 0) << threads;
  }
  lstm_ext::set_num_threads(before);
}

TEST(Linear, BadArgumentsThrowAndEmptySizesAreFine) {
  std::vector<double> x(12), W(8), y(6), dx(12), dW(8), db(2), dy(6);
  const double* none = nullptr;
  EXPECT_THROW(lstm_ext::linear_forward(y.data(), x.data(), W.data(), none, -1, 4, 2),
               std::invalid_argument);
  EXPECT_THROW(lstm_ext::linear_forward<double>(nullptr, x.data(), W.data(), none, 3, 4, 2),
               std::invalid_argument);
  EXPECT_THROW(lstm_ext::linear_forward(y.data(), x.data(), none, none, 3, 4, 2),
               std::invalid_argument);
  EXPECT_THROW(lstm_ext::linear_forward(x.data() + 2, x.data(), W.data(), none, 3, 4, 2),
               std::invalid_argument);  // y overlaps x
  EXPECT_THROW(lstm_ext::linear_backward(dx.data(), dW.data(), db.data(), dy.data(), x.data(), none,
                                         3, 4, 2),
               std::invalid_argument);  // dx needs W
  EXPECT_THROW(lstm_ext::linear_backward(dx.data(), dW.data(), dW.data() + 1, dy.data(), x.data(),
                                         W.data(), 3, 4, 2),
               std::invalid_argument);  // db inside dW
  EXPECT_THROW(lstm_ext::linear_backward(dx.data(), x.data(), db.data(), dy.data(), x.data(),
                                         W.data(), 3, 4, 2),
               std::invalid_argument);  // dW is x
  EXPECT_THROW(lstm_ext::linear_backward(dx.data(), dx.data() + 4, db.data(), dy.data(), x.data(),
                                         W.data(), 3, 4, 2),
               std::invalid_argument);  // dW inside dx
  EXPECT_THROW(lstm_ext::linear_backward(dx.data(), dW.data(), dx.data() + 5, dy.data(), x.data(),
                                         W.data(), 3, 4, 2),
               std::invalid_argument);  // db inside dx
  // Past the 32-bit BLAS, or past 2^63 bytes: refused before anything is read.
  const int64_t past_blas = int64_t(INT_MAX) + 1;
  for (auto [N, K, M] : {std::array<int64_t, 3>{past_blas, 1, 1},
                         {1, past_blas, 1},
                         {1, 1, past_blas},
                         {INT_MAX, INT_MAX, INT_MAX}}) {
    EXPECT_THROW(lstm_ext::check_linear_sizes(N, K, M), std::length_error) << N << K << M;
    EXPECT_THROW(lstm_ext::linear_forward(y.data(), x.data(), W.data(), none, N, K, M),
                 std::length_error);
    EXPECT_THROW(lstm_ext::linear_backward(dx.data(), dW.data(), db.data(), dy.data(), x.data(),
                                           W.data(), N, K, M),
                 std::length_error);
  }
  EXPECT_NO_THROW(lstm_ext::check_linear_sizes(INT_MAX, 1, 1));
  // Zero rows, features or outputs: nothing to read, y is b's rows, dW and db stay.
  std::vector<double> b{1.5, -2}, y0(6, 7.0), dW0(8, 3.0), db0(2, 4.0);
  lstm_ext::linear_forward(y0.data(), none, none, b.data(), 3, 0, 2);
  EXPECT_EQ(y0, (std::vector<double>{1.5, -2, 1.5, -2, 1.5, -2}));
  lstm_ext::linear_backward<double>(nullptr, dW0.data(), db0.data(), none, x.data(), W.data(), 0, 4,
                                    2);
  EXPECT_EQ(dW0, std::vector<double>(8, 3.0));
  EXPECT_EQ(db0, std::vector<double>(2, 4.0));
  lstm_ext::linear_forward<double>(nullptr, x.data(), none, none, 3, 4, 0);
}

// The cgroup CPU limit read from a made-up /proc and /sys under a temporary
// root: v2 and v1 layouts, a limit on an ancestor, a container's namespaced
// view, no limit, and files that are missing or do not parse.
class CgroupTree {
 public:
  CgroupTree() {
    char name[] = "/tmp/lstm_ext_cgroup_XXXXXX";
    if (!mkdtemp(name)) throw std::runtime_error("mkdtemp failed");
    root_ = name;
  }
  ~CgroupTree() { std::filesystem::remove_all(root_); }
  void write(const std::string& path, const std::string& text) const {
    const std::filesystem::path p = root_ + path;
    std::filesystem::create_directories(p.parent_path());
    std::ofstream(p) << text;
  }
  int limit() const { return lstm_ext::cgroup_cpu_limit(root_); }

 private:
  std::string root_;
};

constexpr const char* kV2Mount =
    "22 1 0:21 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 "
    "rw,nsdelegate\n";
constexpr const char* kV1Mount =
    "30 25 0:26 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid shared:12 - cgroup cgroup "
    "rw,cpu,cpuacct\n"
    "31 25 0:27 / /sys/fs/cgroup/memory rw,nosuid shared:13 - cgroup cgroup rw,memory\n";

TEST(Threads, CgroupV2LimitIsReadRoundedUp) {
  CgroupTree t;
  t.write("/proc/self/mountinfo", std::string("1 0 8:1 / / rw - ext4 /dev/sda1 rw\n") + kV2Mount);
  t.write("/proc/self/cgroup", "0::/app.slice/job\n");
  EXPECT_EQ(t.limit(), 0);  // no cpu.max anywhere
  t.write("/sys/fs/cgroup/app.slice/job/cpu.max", "max 100000\n");
  EXPECT_EQ(t.limit(), 0);
  t.write("/sys/fs/cgroup/app.slice/job/cpu.max", "150000 100000\n");
  EXPECT_EQ(t.limit(), 2);
  t.write("/sys/fs/cgroup/app.slice/job/cpu.max", "400000 100000\n");
  t.write("/sys/fs/cgroup/app.slice/cpu.max", "300000 100000\n");  // the parent's is smaller
  EXPECT_EQ(t.limit(), 3);
  t.write("/sys/fs/cgroup/app.slice/cpu.max", "50000 100000\n");  // half a core: 1
  EXPECT_EQ(t.limit(), 1);
  t.write("/sys/fs/cgroup/app.slice/cpu.max", "lots 100000\n");
  t.write("/sys/fs/cgroup/app.slice/job/cpu.max", "-1 100000\n");
  EXPECT_EQ(t.limit(), 0);
}

TEST(Threads, CgroupV2InAContainerReadsTheMountsRoot) {
  CgroupTree t;  // cgroup namespace: the container's cgroup is "/" and the mount's root
  t.write("/proc/self/mountinfo", kV2Mount);
  t.write("/proc/self/cgroup", "0::/\n");
  t.write("/sys/fs/cgroup/cpu.max", "200000 100000\n");
  EXPECT_EQ(t.limit(), 2);
  // Mounted from the host's cgroup of the container, seen from outside it.
  t.write("/proc/self/mountinfo", "40 30 0:30 /docker/abc /sys/fs/cgroup ro - cgroup2 cgroup rw\n");
  t.write("/proc/self/cgroup", "0::/docker/abc/worker\n");
  t.write("/sys/fs/cgroup/worker/cpu.max", "700000 100000\n");
  EXPECT_EQ(t.limit(), 2);  // the container's limit, at the mount
  t.write("/sys/fs/cgroup/cpu.max", "max 100000\n");
  EXPECT_EQ(t.limit(), 7);
  t.write("/proc/self/cgroup", "0::/docker/abcdef\n");  // not below the mount's root
  EXPECT_EQ(t.limit(), 0);
}

TEST(Threads, CgroupV1LimitIsRead) {
  CgroupTree t;
  t.write("/proc/self/mountinfo", kV1Mount);
  t.write("/proc/self/cgroup", "5:memory:/user\n4:cpu,cpuacct:/user/job\n0::/\n");
  t.write("/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us", "-1\n");
  t.write("/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us", "100000\n");
  EXPECT_EQ(t.limit(), 0);
  t.write("/sys/fs/cgroup/cpu,cpuacct/user/job/cpu.cfs_quota_us", "250000\n");
  t.write("/sys/fs/cgroup/cpu,cpuacct/user/job/cpu.cfs_period_us", "100000\n");
  EXPECT_EQ(t.limit(), 3);
  t.write("/sys/fs/cgroup/cpu,cpuacct/user/cpu.cfs_quota_us", "100000\n");
  t.write("/sys/fs/cgroup/cpu,cpuacct/user/cpu.cfs_period_us", "100000\n");
  EXPECT_EQ(t.limit(), 1);
}

TEST(Threads, CgroupFilesMissingOrGarbledGiveNoLimit) {
  CgroupTree t;
  EXPECT_EQ(t.limit(), 0);  // nothing at all
  t.write("/proc/self/cgroup", "garbage\n::\n0::\n");
  t.write("/proc/self/mountinfo", "short line\n1 2 3 4 5 - \n- cgroup2\n");
  EXPECT_EQ(t.limit(), 0);
  t.write("/proc/self/mountinfo", kV2Mount);
  t.write("/proc/self/cgroup", "0::/a\n");
  t.write("/sys/fs/cgroup/a/cpu.max", "100000\n");  // one field
  EXPECT_EQ(t.limit(), 0);
  t.write("/sys/fs/cgroup/a/cpu.max", "100000 0\n");  // no period
  EXPECT_EQ(t.limit(), 0);
  // The real files of this machine: a count, never a crash.
  EXPECT_GE(lstm_ext::cgroup_cpu_limit(), 0);
}

// OMP_NUM_THREADS as the default thread count's cap, read as libgomp reads
// it: a list of positive integers, the first counting; any bad element and
// the variable is ignored.
TEST(Threads, OmpNumThreadsIsReadAsOpenMPWritesIt) {
  using lstm_ext::omp_num_threads;
  EXPECT_EQ(omp_num_threads(nullptr), 0);
  EXPECT_EQ(omp_num_threads("1"), 1);
  EXPECT_EQ(omp_num_threads(" 3 "), 3);
  EXPECT_EQ(omp_num_threads("3\n"), 3);
  EXPECT_EQ(omp_num_threads("4,2"), 4);  // one count a level of nesting
  EXPECT_EQ(omp_num_threads("4 , 2"), 4);
  EXPECT_EQ(omp_num_threads("+2"), 2);
  EXPECT_EQ(omp_num_threads("100000"), lstm_ext::kMaxThreads);
  for (const char* bad : {"", " ", "0", "-2", "+-2", "two", "2x", ",2", "1.5", "4,", "4,x", "4,0",
                          "4,,2", "99999999999999999999999"})
    EXPECT_EQ(omp_num_threads(bad), 0) << "'" << bad << "'";
}

// fork() after the pool's threads started: the child makes a pool of its own
// of the parent's size (parallel.cpp); before, its first region waited
// forever for the parent's threads, which fork does not copy.
TEST(Threads, AForkedChildMakesAPoolOfItsOwn) {
#if defined(__SANITIZE_THREAD__)
  GTEST_SKIP() << "ThreadSanitizer does not support threads started in the child of a "
                  "multi-threaded process's fork (tests/test_threads.py forks in the plain build)";
#else
  const int before = lstm_ext::get_num_threads();
  lstm_ext::set_num_threads(2);
  // Squares by parallel_for, and the size of a team of two.
  auto run = [] {
    std::vector<int64_t> v(64);
    lstm_ext::parallel_for(int64_t(v.size()), [&](int64_t i) { v[size_t(i)] = i * i; });
    std::atomic<int> team{0};
    lstm_ext::parallel_team(2, 1e12, [&](int, int n, lstm_ext::Barrier&) { team = n; });
    v.push_back(team);
    return v;
  };
  const std::vector<int64_t> want = run();  // the pool's threads started
  EXPECT_EQ(want.back(), 2);
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    alarm(60);  // a child that hangs is killed by SIGALRM
    _exit(run() == want && lstm_ext::get_num_threads() == 2 ? 0 : 1);
  }
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status)) << "the child hung: killed by signal " << WTERMSIG(status);
  EXPECT_EQ(WEXITSTATUS(status), 0) << "the child's results or thread count differ";
  lstm_ext::set_num_threads(before);
#endif
}

// TeamBackoff's rule on made-up times: two contended calls in a row (or one
// as long as a backoff) halve the team for a while; the first call after
// that is the whole team again, and if it is contended too the next backoff
// is twice as long; a calm call ends the doubling.
TEST(Threads, TeamBackoffHalvesContendedTeamsForAWhile) {
  using lstm_ext::TeamBackoff;
  // Calls of 2 ms on two threads: 0.8 ms off their cores is a fifth.
  constexpr int64_t ms = 1'000'000, fifth = 800'000, calm = 0, busy = 1 * ms;
  TeamBackoff b;
  int64_t now = 0;
  for (int i = 0; i < 5; ++i, now += 2 * ms) {  // a fifth is not over a fifth
    EXPECT_EQ(b.team(2, now), 2);
    b.record(2, fifth, 2 * ms, now);
  }
  b.record(2, busy * 2, 2 * ms, now);  // one contended call: no backoff yet
  b.record(2, calm, 2 * ms, now);
  b.record(2, busy * 2, 2 * ms, now);
  EXPECT_EQ(b.team(2, now), 2);
  EXPECT_EQ(b.backoffs(), 0);
  b.record(2, busy * 2, 2 * ms, now);  // two in a row
  EXPECT_EQ(b.backoffs(), 1);
  EXPECT_EQ(b.team(2, now), 1);
  EXPECT_EQ(b.team(2, now + TeamBackoff::kBackoffNs - 1), 1);
  now += TeamBackoff::kBackoffNs;
  EXPECT_EQ(b.team(2, now), 2);        // over: the whole team again
  b.record(2, busy * 2, 2 * ms, now);  // contended again: at once, twice as long
  EXPECT_EQ(b.backoffs(), 2);
  EXPECT_EQ(b.team(2, now + 2 * TeamBackoff::kBackoffNs - 1), 1);
  now += 2 * TeamBackoff::kBackoffNs;
  EXPECT_EQ(b.team(2, now), 2);
  b.record(2, calm, 2 * ms, now);      // calm: the doubling ends
  b.record(2, busy * 2, 2 * ms, now);  // one contended call is not enough again
  EXPECT_EQ(b.team(2, now), 2);
  b.record(2, busy * 2, 2 * ms, now);
  EXPECT_EQ(b.team(2, now + TeamBackoff::kBackoffNs - 1), 1);
  now += TeamBackoff::kBackoffNs;
  EXPECT_EQ(b.team(2, now), 2);
  // Long after a backoff, one contended call is not enough again.
  now += 64 * TeamBackoff::kBackoffNs + 1;
  EXPECT_EQ(b.team(2, now), 2);
  b.record(2, busy * 2, 2 * ms, now);
  EXPECT_EQ(b.team(2, now), 2);
  EXPECT_EQ(b.backoffs(), 3);

  // One long contended call is enough, and backs off for 8 calls like it;
  // every call gets half the team it wants, rounded up.
  TeamBackoff c;
  const int64_t call = 2 * TeamBackoff::kBackoffNs;
  c.record(8, 8 * call, call, 0);
  EXPECT_EQ(c.team(8, 8 * call - 1), 4);
  EXPECT_EQ(c.team(3, 8 * call - 1), 2);
  EXPECT_EQ(c.team(1, 8 * call - 1), 1);
  c.record(4, 4 * call, call, 0);  // the half contended too: halved again
  EXPECT_EQ(c.team(8, 0), 2);
  EXPECT_EQ(c.team(3, 0), 1);
  // At most 64 kBackoffNs (1.28 s), however long the call.
  TeamBackoff d;
  d.record(2, 2 * 1000 * ms, 1000 * ms, 0);
  EXPECT_EQ(d.team(2, 64 * TeamBackoff::kBackoffNs - 1), 1);
  EXPECT_EQ(d.team(2, 64 * TeamBackoff::kBackoffNs), 2);
}

// The same in a real pool: a team of two on one CPU waits for a member off
// its core at every step, and calls after two of those run alone; the work
// is done all the same.
TEST(Threads, TeamsOnOneCpuBackOff) {
  // This thread on one CPU, and a new pool of two made here, whose threads
  // inherit that; afterwards the CPUs back, then a pool of the old size
  // (made after, so that its threads get them too), whatever the test did.
  struct OneCpu {
    cpu_set_t all{};
    int threads = lstm_ext::get_num_threads();
    OneCpu() {
      if (sched_getaffinity(0, sizeof(all), &all) != 0) throw std::runtime_error("getaffinity");
      cpu_set_t one;
      CPU_ZERO(&one);
      int cpu = 0;
      while (!CPU_ISSET(cpu, &all)) ++cpu;
      CPU_SET(cpu, &one);
      if (sched_setaffinity(0, sizeof(one), &one) != 0) throw std::runtime_error("setaffinity");
      lstm_ext::set_num_threads(2);
    }
    ~OneCpu() {
      sched_setaffinity(0, sizeof(all), &all);
      lstm_ext::set_num_threads(threads);
    }
  };
  std::vector<int> sizes;
  std::atomic<int64_t> steps{0};
  int64_t backoffs = 0;
  {
    OneCpu pinned;
    for (int call = 0; call < 30; ++call)
      lstm_ext::parallel_team(2, 1e12, [&](int t, int n, lstm_ext::Barrier& barrier) {
        if (t == 0) sizes.push_back(n);
        for (int64_t s = 1; s <= 50; ++s) {
          steps.fetch_add(1);
          barrier.finished(t, s);
          barrier.wait_finished(s);
        }
      });
    backoffs = lstm_ext::team_backoffs();
  }
  EXPECT_GE(backoffs, 1) << "two threads on one CPU never backed off in 30 calls";
  EXPECT_EQ(sizes.front(), 2);
  EXPECT_GE(std::count(sizes.begin(), sizes.end(), 1), 1);
  int64_t want = 0;
  for (int n : sizes) want += 50 * n;
  EXPECT_EQ(steps, want);
}

// Nanoseconds each of this process's threads has run, by thread id, from
// /proc/self/task/<tid>/schedstat (empty where it cannot be read).
std::map<std::string, int64_t> threads_cpu_ns() {
  std::map<std::string, int64_t> ns;
  std::error_code err;
  for (const auto& task : std::filesystem::directory_iterator("/proc/self/task", err)) {
    std::ifstream f(task.path() / "schedstat");
    int64_t run = 0;
    if (f >> run) ns[task.path().filename().string()] = run;
  }
  return ns;
}

// Every region runs each of its tasks once, and every team has its size,
// whatever the sizes of the regions before it (each invites its own workers)
// and whether its workers were awake or asleep.
TEST(Threads, RegionsOfEverySizeRunEachTaskOnce) {
  PoolOf four(4);
  for (int it = 0; it < 400; ++it) {
    const int64_t n = 1 + it % 7;
    std::vector<std::atomic<int>> runs(static_cast<size_t>(n));
    lstm_ext::parallel_for(n, [&](int64_t i) { runs[size_t(i)].fetch_add(1); });
    for (int64_t i = 0; i < n; ++i) ASSERT_EQ(runs[size_t(i)], 1) << "region of " << n;
    const int want = int(std::min<int64_t>(n, lstm_ext::get_num_threads()));
    std::vector<std::atomic<int>> members(static_cast<size_t>(want));
    std::vector<std::thread::id> ids(static_cast<size_t>(want));
    std::atomic<int> size{0};
    lstm_ext::parallel_team(want, 1e12, [&](int t, int m, lstm_ext::Barrier& barrier) {
      members[size_t(t)].fetch_add(1);
      ids[size_t(t)] = std::this_thread::get_id();
      size = m;
      barrier.finished(t, 1);
      barrier.wait_finished(1);  // all m at once: on m different threads
    });
    for (int t = 0; t < size; ++t) ASSERT_EQ(members[size_t(t)], 1) << "team of " << size;
    std::sort(ids.begin(), ids.begin() + size);
    ASSERT_EQ(std::unique(ids.begin(), ids.begin() + size) - ids.begin(), size)
        << "team of " << size;
    if (it % 50 == 49) std::this_thread::sleep_for(std::chrono::milliseconds(2));  // asleep
  }
}

// A team task that travels by value (parallel_team_by_value): each member
// runs a copy of its own (the caller the original) on a thread of its own,
// whether the workers were awake or asleep; what a member throws, the caller
// gets, once every member has finished.
struct Member {
  std::atomic<int>* runs;
  const void** copies;
  std::thread::id* ids;
  int throws;  // 0: none; 1: the caller (member 0); 2: the last member
  void operator()(int t, int n, lstm_ext::Barrier&) const {
    runs[t].fetch_add(1);
    copies[t] = this;
    ids[t] = std::this_thread::get_id();
    if ((throws == 1 && t == 0) || (throws == 2 && t == n - 1))
      throw std::runtime_error("member " + std::to_string(t));
  }
};

TEST(Threads, TeamTasksByValueRunOnEveryMemberAndRethrow) {
  PoolOf four(4);
  for (int it = 0; it < 300; ++it) {
    const int want = 1 + it % 4;
    std::array<std::atomic<int>, 4> runs{};
    std::array<const void*, 4> copies{};
    std::array<std::thread::id, 4> ids{};
    const int throws = (it / 4) % 3;
    const Member member{runs.data(), copies.data(), ids.data(), throws};
    if (throws > 0)
      EXPECT_THROW(lstm_ext::parallel_team_by_value(want, 1e12, member), std::runtime_error);
    else
      lstm_ext::parallel_team_by_value(want, 1e12, member);
    int size = 0;
    while (size < 4 && runs[size_t(size)] > 0) ++size;
    // No member waits at the barrier, so nothing backs the team off.
    ASSERT_EQ(size, std::min(want, lstm_ext::get_num_threads()));
    for (int t = 0; t < 4; ++t) ASSERT_EQ(runs[size_t(t)], t < size ? 1 : 0) << "team of " << size;
    EXPECT_EQ(copies[0], &member);
    std::sort(copies.begin(), copies.begin() + size);
    std::sort(ids.begin(), ids.begin() + size);
    ASSERT_EQ(std::unique(copies.begin(), copies.begin() + size) - copies.begin(), size);
    ASSERT_EQ(std::unique(ids.begin(), ids.begin() + size) - ids.begin(), size);
    if (it % 7 == 6) std::this_thread::sleep_for(std::chrono::milliseconds(2));  // asleep
  }
}

// A parallel_for or team from inside a team's member (a BLAS product that
// backward's dW blocks cut, lstm.cpp) runs on that member's thread alone:
// every task once, none elsewhere; the caller's member, which holds the
// pool's region, never tries the lock again.
TEST(Threads, RegionsInsideATeamRunOnTheMembersThread) {
  PoolOf two(2);
  if (lstm_ext::get_num_threads() < 2) GTEST_SKIP() << "the system refused the pool's thread";
  for (int it = 0; it < 50; ++it) {
    std::array<std::array<std::thread::id, 8>, 2> ran{};
    std::array<std::thread::id, 2> member{};
    std::array<int, 2> inner{};
    lstm_ext::parallel_team(2, 1e12, [&](int t, int n, lstm_ext::Barrier&) {
      ASSERT_EQ(n, 2);
      member[size_t(t)] = std::this_thread::get_id();
      lstm_ext::parallel_for(
          8, [&](int64_t i) { ran[size_t(t)][size_t(i)] = std::this_thread::get_id(); });
      lstm_ext::parallel_team(2, 1e12,
                              [&](int, int m, lstm_ext::Barrier&) { inner[size_t(t)] = m; });
    });
    for (int t = 0; t < 2; ++t) {
      for (const std::thread::id& id : ran[size_t(t)]) ASSERT_EQ(id, member[size_t(t)]) << t;
      ASSERT_EQ(inner[size_t(t)], 1) << t;
    }
    ASSERT_NE(member[0], member[1]);
  }
}

// A worker invited to a region it came too late for (asleep when invited,
// the caller running every task before it woke) drops that invitation and
// spins between the team calls that follow, instead of going back to sleep
// after each one's task, which each call would then have to wake it from.
// On a busy machine a caller taken off its core for over 0.1 ms lets the
// worker sleep too: the fewest wakes of three tries (the fault woke it at
// every call: 200).
TEST(Threads, AWorkerThatMissedARegionStaysAwakeForTeams) {
  PoolOf two(2);
  if (lstm_ext::get_num_threads() < 2) GTEST_SKIP() << "the system refused the pool's thread";
  const auto nothing = [](int, int, lstm_ext::Barrier&) {};
  int64_t fewest = INT64_MAX;
  for (int attempt = 0; attempt < 3 && fewest > 20; ++attempt) {
    lstm_ext::parallel_team(2, 1e12, nothing);                  // the worker started
    std::this_thread::sleep_for(std::chrono::milliseconds(2));  // and asleep (kSpinTime: 0.1 ms)
    lstm_ext::parallel_for(2, [](int64_t) {});  // done before a woken worker gets there
    const int64_t before = lstm_ext::team_wakes();
    for (int i = 0; i < 200; ++i) lstm_ext::parallel_team(2, 1e12, nothing);
    fewest = std::min(fewest, lstm_ext::team_wakes() - before);
  }
  EXPECT_LE(fewest, 20) << "team calls that had to wake the worker, of 200";
}

// use_own_pool: two threads, each with a pool of its own of two, run teams
// of two at once (on the process's pool one of them would run alone), and
// each sees its own size; 0 goes back to the process's pool; the pools end
// with their threads. Outside [0, kMaxThreads] it throws.
TEST(Threads, AThreadsOwnPoolRunsItsTeams) {
  PoolOf one(1);
  std::array<int, 2> sizes{}, teams{}, after{};
  std::atomic<int> inside{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < 2; ++i)
    threads.emplace_back([&, i] {
      lstm_ext::use_own_pool(2);
      sizes[size_t(i)] = lstm_ext::get_num_threads();
      lstm_ext::parallel_team(2, 1e12, [&](int t, int n, lstm_ext::Barrier& barrier) {
        if (t == 0) teams[size_t(i)] = n;
        inside.fetch_add(1);
        barrier.finished(t, 1);
        barrier.wait_finished(1);
      });
      lstm_ext::use_own_pool(0);
      after[size_t(i)] = lstm_ext::get_num_threads();
    });
  for (auto& t : threads) t.join();
  EXPECT_EQ(sizes, (std::array<int, 2>{2, 2}));
  EXPECT_EQ(teams, (std::array<int, 2>{2, 2}));
  EXPECT_EQ(inside, 4);
  EXPECT_EQ(after, (std::array<int, 2>{1, 1}));
  EXPECT_THROW(lstm_ext::use_own_pool(-1), std::invalid_argument);
  EXPECT_THROW(lstm_ext::use_own_pool(lstm_ext::kMaxThreads + 1), std::invalid_argument);
  std::thread([] { lstm_ext::use_own_pool(3); }).join();  // its pool ends with it
}

// A child forked by a thread with a pool of its own: the child's calls from
// that thread run on a pool the child makes (the parent's workers are not
// there).
TEST(Threads, AChildForkedFromAThreadWithItsOwnPoolRuns) {
#if defined(__SANITIZE_THREAD__)
  GTEST_SKIP() << "ThreadSanitizer does not support threads started in the child of a "
                  "multi-threaded process's fork";
#else
  int status = -1;
  std::thread([&] {
    lstm_ext::use_own_pool(2);
    std::atomic<int> team{0};
    lstm_ext::parallel_team(2, 1e12, [&](int, int n, lstm_ext::Barrier&) { team = n; });
    if (team != 2) return;
    const pid_t child = fork();
    if (child == 0) {
      alarm(60);  // a child that hangs is killed by SIGALRM
      std::atomic<int> ran{0};
      lstm_ext::parallel_team(2, 1e12, [&](int, int, lstm_ext::Barrier&) { ran.fetch_add(1); });
      std::vector<int64_t> v(8);
      lstm_ext::parallel_for(8, [&](int64_t i) { v[size_t(i)] = i; });
      _exit(ran >= 1 && v[7] == 7 ? 0 : 1);
    }
    if (child > 0) waitpid(child, &status, 0);
  }).join();
  ASSERT_TRUE(WIFEXITED(status)) << "the child hung or did not start: status " << status;
  EXPECT_EQ(WEXITSTATUS(status), 0);
#endif
}

// A team of two in a pool of four wakes one worker: the other two stay
// asleep while calls follow each other, instead of spinning between them on
// cores the team or other programs need (perf-notes, 68). Teams of two are
// called until 4,000 of them ran on two threads (on a busy machine some back
// off to one); then the pool's workers (threads that were not there before
// it) that ran over 0.5 ms are counted: the team's one (the spare ones run
// 0 ns). On the old pool all three ran 5-27 ms each: it failed 6 runs of 6.
TEST(Threads, ATeamWakesOnlyTheWorkersItNeeds) {
  const auto before_pool = threads_cpu_ns();  // (OpenBLAS's server thread among them)
  if (before_pool.empty()) GTEST_SKIP() << "no /proc/self/task/<tid>/schedstat to read";
  PoolOf four(4);
  if (lstm_ext::get_num_threads() < 4) GTEST_SKIP() << "the system refused the pool's threads";
  lstm_ext::parallel_for(64, [](int64_t) {});  // every worker started
  std::this_thread::sleep_for(std::chrono::milliseconds(5));
  const auto before = threads_cpu_ns();
  const auto start = std::chrono::steady_clock::now();
  int64_t calls = 0, pairs = 0;  // team calls, and those run by two threads
  while (pairs < 4000 && std::chrono::steady_clock::now() - start < std::chrono::seconds(5)) {
    ++calls;
    lstm_ext::parallel_team(2, 1e12, [&](int t, int n, lstm_ext::Barrier& barrier) {
      if (t == 0 && n == 2) ++pairs;
      for (int64_t s = 1; s <= 20; ++s) {
        barrier.finished(t, s);
        barrier.wait_finished(s);
      }
    });
  }
  if (pairs < 200)
    GTEST_SKIP() << "the cores were busy: " << pairs << " of " << calls
                 << " calls in 5 s ran on two threads (the others backed off), too few to tell";
  std::string busy;
  int workers = 0;
  for (const auto& [tid, ns] : threads_cpu_ns()) {
    const auto was = before.find(tid);
    if (before_pool.count(tid) || was == before.end()) continue;
    ++workers;
    if (ns - was->second > 500'000) busy += " " + tid + ": " + std::to_string(ns - was->second);
  }
  EXPECT_EQ(workers, 3);
  EXPECT_LE(std::count(busy.begin(), busy.end(), ':'), 1)
      << "workers that ran over 0.5 ms (ns) while " << pairs << " of " << calls
      << " calls of teams of two ran on two threads:" << busy;
}

// Where the training forward keeps W and R (training_keeps_weights), backward
// reads them from the workspace: null W and R, or other values there, give the
// same gradients. Elsewhere backward needs them.
TEST(Core, BackwardReadsTheWeightsTheForwardKept) {
  Problem<double> p(6, 2, 10, 40);
  ASSERT_TRUE(lstm_ext::training_keeps_weights(p.cfg));
  const lstm_ext::Weights<double> no_W_R{nullptr, nullptr, p.b.data()};
  EXPECT_EQ(p.gradients(nullptr, &no_W_R), p.gradients());

  Config projected = p.cfg;
  projected.P = 5;
  EXPECT_FALSE(lstm_ext::training_keeps_weights(projected));
  Problem<float> q(2, 1, 520, 512);  // 4H(I+H) > 2^21
  ASSERT_FALSE(lstm_ext::training_keeps_weights(q.cfg));
  std::vector<float> qws;
  const std::vector<float> qy = q.forward(&qws);
  std::vector<float> qdx(q.x.size()), qdW(q.W.size()), qdR(q.R.size()), qdb(q.b.size()), qdh(512),
      qdc(512), qscratch(size_t(lstm_ext::backward_scratch_size(q.cfg)));
  const lstm_ext::Weights<float> q_no_W_R{nullptr, nullptr, q.b.data()};
  EXPECT_THROW(
      lstm_ext::lstm_backward(qdx.data(), qdh.data(), qdc.data(),
                              {qdW.data(), qdR.data(), qdb.data()}, qscratch.data(), qws.data(),
                              q.x.data(), qy.data(), nullptr, nullptr, q_no_W_R, q.cfg),
      std::invalid_argument);
}

// bf16_weights: the float result on weights rounded to bfloat16 first, bit
// for bit (lstm.h), at 1, 3 and 16 rows (the kernel's code paths), across
// thread counts; refused for training and for double.
float rounded_to_bf16(float v) {  // to nearest, ties to even (finite v)
  uint32_t b;
  std::memcpy(&b, &v, 4);
  b = (b + 0x7FFFu + ((b >> 16) & 1u)) & 0xFFFF0000u;
  std::memcpy(&v, &b, 4);
  return v;
}

TEST(Core, Bf16WeightsAreFloatOnRoundedWeights) {
  for (int64_t B : {1, 3, 16}) {
    Problem<float> p(9, B, 13, 70, unsigned(B));
    Problem<float> q = p;
    for (auto* v : {&q.W, &q.R})
      for (float& e : *v) e = rounded_to_bf16(e);
    p.cfg.bf16_weights = true;
    const int before = lstm_ext::get_num_threads();
    for (int threads : {1, 2}) {
      lstm_ext::set_num_threads(threads);
      const std::vector<float> got = p.forward(), want = q.forward();
      ASSERT_EQ(got.size(), want.size());
      EXPECT_EQ(std::memcmp(got.data(), want.data(), got.size() * sizeof(float)), 0) << B;
    }
    lstm_ext::set_num_threads(before);
  }
  Config c;
  c.T = 2, c.B = 1, c.I = 3, c.H = 4, c.bf16_weights = true;
  EXPECT_THROW(lstm_ext::forward_workspace_size(c, true), std::invalid_argument);
  Problem<double> d(2, 1, 3, 4);
  d.cfg.bf16_weights = true;
  EXPECT_THROW(d.forward(), std::invalid_argument);
}

// pack_weights: forward with w.packed gives the bits of forward without, at
// 1, 3 and 16 rows, partial blocks, I past and under R's width, inference and
// training, 1 and 2 threads; and it reads the packed W and R, not w's, where
// the packed kernel runs (w.W and w.R changed after packing change nothing).
template <typename S>
std::vector<S> pack(const lstm_ext::Weights<S>& w, const Config& c) {
  std::vector<S> packed(size_t(lstm_ext::packed_weights_size(c)));
  lstm_ext::pack_weights(packed.data(), w, c);
  return packed;
}

template <typename S>
void packed_weights_give_the_same_bits() {
  const int before = lstm_ext::get_num_threads();
  for (auto [T, B, I, H] :
       {std::array<int64_t, 4>{9, 1, 13, 70}, {5, 3, 40, 33}, {4, 16, 90, 64}}) {
    Problem<S> p(T, B, I, H, unsigned(B + I));
    for (bool bf16 : {false, true}) {
      if (bf16 && !std::is_same_v<S, float>) continue;
      p.cfg.bf16_weights = bf16;
      const std::vector<S> packed = pack(p.weights(), p.cfg);
      // W and R changed after packing: q's forward reads the packed ones (at
      // these sizes the input products run on the kernel too: team_inputs).
      Problem<S> q = p;
      for (auto* v : {&q.W, &q.R})
        for (S& e : *v) e = S(0.5) * e;
      for (int threads : {1, 2}) {
        lstm_ext::set_num_threads(threads);
        const std::vector<S> want = p.forward();
        EXPECT_EQ(p.forward(nullptr, packed.data()), want) << B << " " << bf16 << " " << threads;
        if (!bf16) {
          std::vector<S> ws, ws_packed;
          EXPECT_EQ(p.forward(&ws_packed, packed.data()), p.forward(&ws)) << B << " " << threads;
        }
        if (lstm_ext::packed_recurrent_enabled())
          EXPECT_EQ(q.forward(nullptr, packed.data()), want) << B << " " << bf16 << " " << threads;
      }
    }
  }
  lstm_ext::set_num_threads(before);
}

TEST(Core, PackedWeightsGiveTheSameBitsFloat) { packed_weights_give_the_same_bits<float>(); }
TEST(Core, PackedWeightsGiveTheSameBitsDouble) { packed_weights_give_the_same_bits<double>(); }

// A buffer pack_weights did not write, or wrote for another shape or type,
// is refused before anything is written; with a projection nothing is packed
// (the header alone) and the forward runs as without.
TEST(Core, PackedWeightsOfAnotherShapeAreRefused) {
  Problem<float> p(3, 2, 6, 20);
  std::vector<float> packed = pack(p.weights(), p.cfg);
  EXPECT_EQ(packed.size(), size_t(lstm_ext::packed_weights_size(p.cfg)));
  Problem<float> other(3, 2, 7, 20);  // another I
  EXPECT_THROW(other.forward(nullptr, packed.data()), std::invalid_argument);
  Problem<float> wider(3, 2, 6, 21);  // another H
  EXPECT_THROW(wider.forward(nullptr, packed.data()), std::invalid_argument);
  Problem<float> rounded = p;
  rounded.cfg.bf16_weights = true;
  EXPECT_THROW(rounded.forward(nullptr, packed.data()), std::invalid_argument);
  std::vector<float> junk(packed.size(), 1.0f);
  EXPECT_THROW(p.forward(nullptr, junk.data()), std::invalid_argument);
  Problem<double> d(3, 2, 6, 20);
  const std::vector<double> packed_d = pack(d.weights(), d.cfg);
  std::vector<float> as_float(packed.size());
  std::memcpy(as_float.data(), packed_d.data(), std::min(packed_d.size() * 8, packed.size() * 4));
  EXPECT_THROW(p.forward(nullptr, as_float.data()), std::invalid_argument);
  EXPECT_THROW(lstm_ext::pack_weights<float>(nullptr, p.weights(), p.cfg), std::invalid_argument);

  // With a projection: only the header, and the same results as without.
  Config c = p.cfg;
  c.P = 4;
  std::vector<float> W_hr(size_t(4 * 20), 0.1f), R(size_t(4 * 20 * 4), 0.05f);
  lstm_ext::Weights<float> w{p.W.data(), R.data(), p.b.data(), W_hr.data()};
  EXPECT_EQ(lstm_ext::packed_weights_size(c), 16);
  const std::vector<float> header = pack(w, c);
  std::vector<float> y(size_t(c.T * c.B * 4)), y2(y.size()), h(size_t(c.B * 4)),
      cc(size_t(c.B * 20));
  std::vector<float> ws(size_t(lstm_ext::forward_workspace_size(c, false)));
  lstm_ext::lstm_forward(y.data(), h.data(), cc.data(), nullptr, ws.data(), p.x.data(), nullptr,
                         nullptr, w, c, false);
  w.packed = header.data();
  lstm_ext::lstm_forward(y2.data(), h.data(), cc.data(), nullptr, ws.data(), p.x.data(), nullptr,
                         nullptr, w, c, false);
  EXPECT_EQ(y, y2);
}

// ---- 64-bit sizes ------------------------------------------------------------------

using lstm_ext::backward_scratch_size;
using lstm_ext::forward_workspace_size;
using lstm_ext::step_scratch_size;

Config sizes(int64_t T, int64_t B, int64_t I, int64_t H, int64_t P = 0) {
  Config c;
  c.T = T, c.B = B, c.I = I, c.H = H, c.P = P;
  return c;
}

// What lstm.h states for training without lengths or projection:
// TBI + 6TBH + 7BH + 4H*32*ceil(H/32) elements; where 4H(I+H) <= 2^21,
// 4I*32*ceil(H/32) more (W packed) and 4H*32*(ceil(H/32) + ceil(I/32)) (R and
// W packed by columns: training_keeps_weights).
int64_t documented_training_workspace(const Config& c) {
  const int64_t packed = 4 * 32 * ((c.H + 31) / 32);
  const int64_t by_columns = 4 * c.H * 32 * ((c.H + 31) / 32 + (c.I + 31) / 32);
  const bool small = 4 * c.H * (c.I + c.H) <= (int64_t(1) << 21);
  EXPECT_EQ(lstm_ext::training_keeps_weights(c), small) << c.I << " " << c.H;
  // Where also 4BHH >= 3 * 32768: x and h_{t-1} packed by columns, and a flag.
  const bool x_and_h = small && 4 * c.B * c.H * c.H >= 3 * 32768;
  const int64_t panels = c.T * c.B * 32 * ((c.I + 31) / 32 + (c.H + 31) / 32) + 1;
  return c.T * c.B * c.I + 6 * c.T * c.B * c.H + 7 * c.B * c.H + packed * c.H +
         (small ? packed * c.I + by_columns : 0) + (x_and_h ? panels : 0);
}

// recurrent.h's layout, Rp[u][g][c/Q][k][c%Q] = R[g*H + u*P + c][k] and 0
// past H, however this CPU packs it (tiles transposed in registers with
// AVX-512 or AVX2, else element by element; Q = P, or P/2 with AVX2), at
// sizes that leave partial tiles of units and of columns.
template <typename S>
void blocks_hold_the_layout() {
  using namespace lstm_ext::detail;
  constexpr int64_t P = kPanel<S>;
  const int64_t Q = packed_row<S>();
  ASSERT_TRUE(Q == P || Q == P / 2) << Q;
  for (int64_t H : {1, 5, 8, 13, 32, 37, 64})
    for (int64_t O : {1, 3, 8, 9, 16, 37}) {
      std::vector<S> R(size_t(4 * H * O));
      for (size_t i = 0; i < R.size(); ++i) R[i] = S(i + 1);
      std::vector<S> Rp(size_t(packed_recurrent_size<S>(H, O)), S(-1));
      const int64_t blocks = recurrent_blocks<S>(H);
      for (int64_t u = 0; u < blocks; ++u) pack_recurrent_block(Rp.data(), R.data(), H, O, u);
      for (int64_t u = 0; u < blocks; ++u)
        for (int64_t g = 0; g < 4; ++g)
          for (int64_t k = 0; k < O; ++k)
            for (int64_t c = 0; c < P; ++c) {
              const int64_t j = u * P + c;
              const S want = j < H ? R[size_t((g * H + j) * O + k)] : S(0);
              ASSERT_EQ(Rp[size_t((u * 4 + g) * O * P + (c / Q) * O * Q + k * Q + c % Q)], want)
                  << "H " << H << " O " << O << " u " << u << " g " << g << " k " << k << " c "
                  << c;
            }
    }
}
TEST(Packing, RecurrentBlocksHoldTheLayoutFloat) { blocks_hold_the_layout<float>(); }
TEST(Packing, RecurrentBlocksHoldTheLayoutDouble) { blocks_hold_the_layout<double>(); }

// The same layout by columns, Bp[p][c/Q][k][c%Q] = B[k][p*P + c] and 0 past
// N, and unpack_columns giving B back, with partial panels and parts.
template <typename S>
void columns_hold_the_layout() {
  using namespace lstm_ext::detail;
  constexpr int64_t P = kPanel<S>;
  const int64_t Q = packed_row<S>();
  for (int64_t K : {1, 7, 16})
    for (int64_t N : {int64_t(1), int64_t(5), Q, Q + 3, P, 2 * P + 9}) {
      std::vector<S> B(size_t(K * N)), back(B.size(), S(-1));
      for (size_t i = 0; i < B.size(); ++i) B[i] = S(i + 1);
      const int64_t panels = (N + P - 1) / P;
      std::vector<S> Bp(size_t(panels * K * P), S(-1));
      for (int64_t p = 0; p < panels; ++p) pack_columns(Bp.data(), B.data(), K, N, p);
      for (int64_t p = 0; p < panels; ++p)
        for (int64_t k = 0; k < K; ++k)
          for (int64_t c = 0; c < P; ++c) {
            const int64_t j = p * P + c;
            const S want = j < N ? B[size_t(k * N + j)] : S(0);
            ASSERT_EQ(Bp[size_t(p * K * P + (c / Q) * K * Q + k * Q + c % Q)], want)
                << "K " << K << " N " << N << " p " << p << " k " << k << " c " << c;
          }
      unpack_columns(back.data(), Bp.data(), K, N);
      ASSERT_EQ(back, B) << "K " << K << " N " << N;
    }
}
TEST(Packing, ColumnPanelsHoldTheLayoutFloat) { columns_hold_the_layout<float>(); }
TEST(Packing, ColumnPanelsHoldTheLayoutDouble) { columns_hold_the_layout<double>(); }

// recurrent_block and column_product with overwrite give the bits of the
// same call on z zeroed first, and leave the rest of z alone: batches that
// take every group shape of both kernels, partial blocks and panels, inner
// sizes past one chunk of k (512), ranges of k that start past 0.
template <typename S>
void overwrite_is_zeroing_first() {
  using namespace lstm_ext::detail;
  if (!lstm_ext::packed_recurrent_enabled())
    GTEST_SKIP() << "this CPU has no packed recurrent kernel (AVX2 and FMA)";
  std::mt19937 gen(7);
  std::uniform_real_distribution<double> dist(-1, 1);
  const auto random = [&](int64_t n) {
    std::vector<S> v(static_cast<size_t>(n));
    for (S& e : v) e = S(dist(gen));
    return v;
  };
  const S nan = std::numeric_limits<S>::quiet_NaN();
  for (int64_t nb : {1, 2, 3, 5, 7, 16})
    for (int64_t H : {13, 40})
      for (int64_t O : {9, 600}) {
        const int64_t G = 4 * H, blocks = recurrent_blocks<S>(H);
        const std::vector<S> R = random(G * O), h = random(nb * O);
        std::vector<S> Rp(size_t(packed_recurrent_size<S>(H, O)));
        for (int64_t u = 0; u < blocks; ++u) pack_recurrent_block(Rp.data(), R.data(), H, O, u);
        for (const int64_t k0 : {int64_t(0), O / 3}) {
          std::vector<S> want(size_t(nb * G), S(0)), got(size_t(nb * G), nan);
          for (int64_t u = 0; u < blocks; ++u) {
            recurrent_block(want.data(), G, h.data(), O, Rp.data(), nb, H, O, u, k0, O, false,
                            false);
            recurrent_block(got.data(), G, h.data(), O, Rp.data(), nb, H, O, u, k0, O, false, true);
          }
          ASSERT_EQ(0, std::memcmp(want.data(), got.data(), want.size() * sizeof(S)))
              << "recurrent_block nb " << nb << " H " << H << " O " << O << " k0 " << k0;
        }
        // dh [nb,O] = dz [nb,G] R [G,O], columns [c0, O) of a z 3 wider.
        const int64_t panels = (O + kPanel<S> - 1) / kPanel<S>, c0 = O > kPanel<S> ? kPanel<S> : 0;
        std::vector<S> Rb(size_t(panels * G * kPanel<S>));
        for (int64_t p = 0; p < panels; ++p) pack_columns(Rb.data(), R.data(), G, O, p);
        const std::vector<S> dz = random(nb * G);
        std::vector<S> want(size_t(nb * (O + 3)), nan), got(want.size(), nan);
        for (int64_t r = 0; r < nb; ++r) std::fill_n(want.begin() + r * (O + 3) + c0, O - c0, S(0));
        column_product(want.data(), O + 3, dz.data(), G, Rb.data(), nb, G, 0, G, c0, O, false,
                       false);
        column_product(got.data(), O + 3, dz.data(), G, Rb.data(), nb, G, 0, G, c0, O, false, true);
        for (size_t i = 0; i < want.size(); ++i)
          ASSERT_TRUE(std::memcmp(&want[i], &got[i], sizeof(S)) == 0 ||
                      (std::isnan(want[i]) && std::isnan(got[i])))
              << "column_product nb " << nb << " H " << H << " O " << O << " at " << i;
      }
}
TEST(Packing, OverwriteIsZeroingFirstFloat) { overwrite_is_zeroing_first<float>(); }
TEST(Packing, OverwriteIsZeroingFirstDouble) { overwrite_is_zeroing_first<double>(); }

// recurrent_block_unpacked, on R as it is, gives recurrent_block's bits on R
// packed, adding to z and overwriting it, and leaves the rest of z alone:
// every row count of one group and of two, partial blocks and tiles (H not a
// multiple of 16, a block's second tile short, ranges of k that are not of
// 16), k ranges that start past 0, end before O (the rotated calls' [a, j1)
// and [0, a)) or are empty (overwriting, zeros), O = 0, h's rows O apart (as
// lstm_forward passes them) and further.
TEST(Packing, UnpackedProductGivesThePackedBits) {
  using namespace lstm_ext::detail;
  if (!unpacked_product_enabled())
    GTEST_SKIP() << "this CPU has no AVX-512F kernel, which the unpacked product needs";
  std::mt19937 gen(11);
  std::uniform_real_distribution<float> dist(-1, 1);
  const auto random = [&](int64_t n) {
    std::vector<float> v(static_cast<size_t>(n));
    for (float& e : v) e = dist(gen);
    return v;
  };
  const float nan = std::numeric_limits<float>::quiet_NaN();
  for (int64_t nb : {1, 2, 3, 4, 5, 11, 12, 13, 25})
    for (int64_t H : {5, 16, 18, 40, 50, 64})
      for (int64_t O : {0, 1, 16, 17, 64, 530}) {
        const int64_t G = 4 * H, blocks = recurrent_blocks<float>(H), ld = O + 2;
        const std::vector<float> R = random(G * O), h = random(nb * ld), z0 = random(nb * G);
        std::vector<float> Rp(size_t(packed_recurrent_size<float>(H, O)));
        for (int64_t u = 0; u < blocks; ++u) pack_recurrent_block(Rp.data(), R.data(), H, O, u);
        const int64_t ranges[][2] = {{0, O}, {O / 3, O}, {O, O}, {0, O / 2}, {O / 3, 2 * O / 3}};
        for (const auto& range : ranges)
          for (const int64_t ldh : {O, ld})
            for (const bool overwrite : {false, true}) {
              const int64_t k0 = range[0], k1 = range[1];
              std::vector<float> want = z0, got = z0;
              if (overwrite) std::fill(got.begin(), got.end(), nan);
              for (int64_t u = 0; u < blocks; ++u) {
                recurrent_block(want.data(), G, h.data(), ldh, Rp.data(), nb, H, O, u, k0, k1,
                                false, overwrite);
                recurrent_block_unpacked(got.data(), G, h.data(), ldh, R.data(), nb, H, O, u, k0,
                                         k1, overwrite);
              }
              ASSERT_EQ(0, std::memcmp(want.data(), got.data(), want.size() * sizeof(float)))
                  << "nb " << nb << " H " << H << " O " << O << " k " << k0 << ".." << k1
                  << " ldh " << ldh << " overwrite " << overwrite;
            }
      }
}

// transpose_columns (backward's dz^T, 256 rows at a time): dst[c][r] =
// src[r][c] for every partial tile of rows and columns, zeros in each row of
// dst up to rows rounded to 16, and nothing written past that.
TEST(Packing, TransposeColumnsHoldsTheLayout) {
  using namespace lstm_ext::detail;
  if (!unpacked_product_enabled())
    GTEST_SKIP() << "this CPU has no AVX-512F kernel, which transpose_columns needs";
  const float nan = std::numeric_limits<float>::quiet_NaN();
  for (int64_t rows : {1, 5, 16, 17, 40})
    for (int64_t cols : {1, 15, 16, 33}) {
      const int64_t lds = cols + 3, tiled = (rows + 15) / 16 * 16, ldd = tiled + 5;
      std::vector<float> src(size_t(rows * lds)), dst(size_t(cols * ldd), nan);
      for (size_t i = 0; i < src.size(); ++i) src[i] = float(i + 1);
      transpose_columns(dst.data(), ldd, src.data(), lds, rows, cols);
      for (int64_t c = 0; c < cols; ++c)
        for (int64_t r = 0; r < ldd; ++r) {
          const float got = dst[size_t(c * ldd + r)];
          if (r < rows)
            ASSERT_EQ(got, src[size_t(r * lds + c)]) << rows << "x" << cols << " " << r << "," << c;
          else if (r < tiled)
            ASSERT_EQ(got, 0.0f) << rows << "x" << cols << " " << r << "," << c;
          else
            ASSERT_TRUE(std::isnan(got)) << rows << "x" << cols << " " << r << "," << c;
        }
    }
}

// row_product_unpacked (step's products at one row): within float32's
// rounding of the sums in double, and the same bits wherever W, R, x and h
// start (each at every float offset from a 64-byte line: the kernel reads
// aligned lines and moves v's lanes instead, then back); rows past n untouched;
// R null adds nothing (with O > 0 too); row counts not of 16, K not of 16, K = 0.
TEST(Packing, RowProductWithinRoundingAndTheSameBitsAtAnyAlignment) {
  using namespace lstm_ext::detail;
  if (!unpacked_product_enabled())
    GTEST_SKIP() << "this CPU has no AVX-512F kernel, which the row product needs";
  std::mt19937 gen(12);
  std::uniform_real_distribution<float> dist(-1, 1);
  for (const auto& [n, I, O] : {std::array<int64_t, 3>{512, 128, 128},
                                {1, 1, 1},
                                {17, 16, 0},
                                {40, 33, 7},
                                {100, 48, 32},
                                {134, 37, 67},
                                {16, 0, 20}}) {
    std::vector<float> W0(static_cast<size_t>(n * I)), R0(static_cast<size_t>(n * O)),
        x0(static_cast<size_t>(I)), h0(static_cast<size_t>(O));
    for (auto* v : {&W0, &R0, &x0, &h0})
      for (float& e : *v) e = dist(gen);
    std::vector<uint32_t> first;
    for (int64_t off = 0; off < 16; ++off) {
      // Each array at `off` floats past a 64-byte line, R and h elsewhere.
      const auto placed = [&](const std::vector<float>& v, int64_t at) {
        std::vector<float> buf(v.size() + 32);
        float* p = buf.data();
        while (reinterpret_cast<uintptr_t>(p) % 64) ++p;
        std::copy(v.begin(), v.end(), p + at);
        return std::make_pair(std::move(buf), (p - buf.data()) + at);
      };
      auto [Wb, wo] = placed(W0, off);
      auto [Rb, ro] = placed(R0, (off * 7) % 16);
      auto [xb, xo] = placed(x0, (off * 3) % 16);
      auto [hb, ho] = placed(h0, (off * 5) % 16);
      std::vector<float> z(static_cast<size_t>(n) + 1, -7.0f);
      row_product_unpacked(z.data(), Wb.data() + wo, I, xb.data() + xo, I,
                           O ? Rb.data() + ro : nullptr, O, hb.data() + ho, O, n);
      EXPECT_EQ(z[size_t(n)], -7.0f) << "past n";
      std::vector<uint32_t> bits(static_cast<size_t>(n));
      std::memcpy(bits.data(), z.data(), size_t(n) * 4);
      if (off == 0) {
        first = bits;
        std::vector<float> zw(static_cast<size_t>(n));  // R null: W's products alone
        row_product_unpacked(zw.data(), Wb.data() + wo, I, xb.data() + xo, I, nullptr, O,
                             hb.data() + ho, O, n);
        for (int64_t j = 0; j < n; ++j) {
          double s = 0, a = 0;
          for (int64_t k = 0; k < I; ++k)
            s += double(W0[j * I + k]) * x0[k], a += std::fabs(double(W0[j * I + k]) * x0[k]);
          EXPECT_LE(std::fabs(zw[size_t(j)] - s), (double(I) + 1) * 0x1p-24 * a + 1e-30)
              << "R null: n " << n << " I " << I << " row " << j;
        }
        for (int64_t j = 0; j < n; ++j) {
          double s = 0, a = 0;
          for (int64_t k = 0; k < I; ++k)
            s += double(W0[j * I + k]) * x0[k], a += std::fabs(double(W0[j * I + k]) * x0[k]);
          for (int64_t k = 0; k < O; ++k)
            s += double(R0[j * O + k]) * h0[k], a += std::fabs(double(R0[j * O + k]) * h0[k]);
          // float32 sums of I + O products: (I + O) * 2^-24 of sum |p| at worst
          EXPECT_LE(std::fabs(z[size_t(j)] - s), (double(I + O) + 1) * 0x1p-24 * a + 1e-30)
              << "n " << n << " I " << I << " O " << O << " row " << j;
        }
      } else {
        EXPECT_EQ(bits, first) << "n " << n << " I " << I << " O " << O << " offset " << off;
      }
    }
  }
}

TEST(Sizes, WorkspaceSizesPast2To31AreExact) {
  const int64_t T = int64_t(1) << 16, B = 1024, I = 8, H = 1024, P = 256;
  const Config c = sizes(T, B, I, H), next = sizes(T + 1, B, I, H);  // T*B*H = 2^36
  EXPECT_EQ(forward_workspace_size(c, true), documented_training_workspace(c));
  EXPECT_EQ(forward_workspace_size(c, true), int64_t(412865265664));  // by hand
  for (const Config& small :
       {sizes(7, 1, 9, 40), sizes(7, 15, 9, 40), sizes(7, 16, 9, 40), sizes(7, 64, 9, 40),
        sizes(7, 64, 512, 512), sizes(7, 2, 513, 512)})
    EXPECT_EQ(forward_workspace_size(small, true), documented_training_workspace(small))
        << small.B << " " << small.I << " " << small.H;
  // Each step more keeps B(6H + I) in training: x_t BI (copied, or with
  // lengths gathered), gates 4BH, c_t BH, h_{t-1} BH; with a projection
  // h_{t-1} is BP and m_t BH more. Backward's scratch: dz 4BH, with a
  // projection dL/dh_t BP.
  EXPECT_EQ(forward_workspace_size(next, true) - forward_workspace_size(c, true), B * (6 * H + I));
  EXPECT_EQ(backward_scratch_size(next) - backward_scratch_size(c), 4 * B * H);
  const Config cp = sizes(T, B, I, H, P), np = sizes(T + 1, B, I, H, P);
  EXPECT_EQ(forward_workspace_size(np, true) - forward_workspace_size(cp, true),
            B * (6 * H + P + I));
  EXPECT_EQ(backward_scratch_size(np) - backward_scratch_size(cp), B * (4 * H + P));
  const int64_t lengths[1] = {0};  // only tested for null by the size queries
  Config ragged = c, ragged_next = next;
  ragged.lengths = ragged_next.lengths = lengths;
  EXPECT_EQ(forward_workspace_size(ragged_next, true) - forward_workspace_size(ragged, true),
            B * (6 * H + I));
  // Inference keeps a chunk of steps, whatever T is.
  EXPECT_EQ(forward_workspace_size(sizes(T * 16, B, I, H), false),
            forward_workspace_size(c, false));
  // step: z [B,4H] and c_prev [B,H], B*5H = 5*2^31 here.
  const int64_t big_B = int64_t(1) << 21;
  EXPECT_EQ(step_scratch_size(sizes(1, big_B, I, H)), big_B * 5 * H);
  EXPECT_EQ(step_scratch_size(sizes(1, big_B, I, H, P)), big_B * 6 * H);
}

// cell_math.h's float exp: relative error below 8.4e-8 on [-86, ln(FLT_MAX)]
// (every float there was checked once: 8.33e-8 at the worst, 7.0e-8 in (88,
// ln(FLT_MAX)], dev/perf-notes.md 31 and 41; with kFma 8.392e-8 at -38.47,
// and 322,720 of the 2.2 billion floats other bits, perf-notes 77), here
// every 61st and the last floats below the bound; +inf from the first float
// past it, NaN for NaN, the variant for x <= 0 the same bits there, and the
// sigmoid and tanh built on it exact at their limits. Both kFma.
template <bool kFma>
void float_exp_within_its_bound() {
  const auto expf = [](float x) { return lstm_ext::cell::host_expf<false, kFma>(x); };
  const auto expf_nonpositive = [](float x) { return lstm_ext::cell::host_expf<true, kFma>(x); };
  double worst = 0;
  const uint32_t top = 0x42B17217u, bottom = 0xC2AC0000u;  // ln(FLT_MAX) rounded down, -86.0f
  auto check = [&](uint32_t bits) {
    float x;
    std::memcpy(&x, &bits, 4);
    const double want = std::exp(double(x));
    worst = std::max(worst, std::fabs(double(expf(x)) - want) / want);
    if (x <= 0) EXPECT_EQ(expf_nonpositive(x), expf(x)) << x;
  };
  for (uint32_t b = 0; b <= top; b += 61) {
    check(b);
    if ((b | 0x80000000u) <= bottom) check(b | 0x80000000u);
  }
  for (uint32_t b = top - 4096; b <= top; ++b) check(b);
  EXPECT_LT(worst, 8.4e-8);
  EXPECT_GT(worst, 5e-8);  // the sweep reached the polynomial's error
  const float inf = std::numeric_limits<float>::infinity();
  EXPECT_EQ(expf(88.72284f), inf);  // 0x42B17218, the first float past ln(FLT_MAX)
  EXPECT_LT(expf(88.72283f), inf);  // 0x42B17217, top
  EXPECT_EQ(expf(88.8f), inf);
  EXPECT_EQ(expf(inf), inf);
  EXPECT_EQ(expf(1e30f), inf);
  EXPECT_TRUE(std::isnan(expf(std::nanf(""))));
  EXPECT_TRUE(std::isnan(expf_nonpositive(std::nanf(""))));
  using lstm_ext::cell::sigmoid;
  using lstm_ext::cell::tanh_;
  EXPECT_EQ((sigmoid<float, kFma>(-inf)), 0.0f);
  EXPECT_EQ((sigmoid<float, kFma>(inf)), 1.0f);
  EXPECT_EQ(tanh_<kFma>(inf), 1.0f);
  EXPECT_EQ(tanh_<kFma>(-inf), -1.0f);
  EXPECT_TRUE(std::signbit(tanh_<kFma>(-0.0f)));
  EXPECT_TRUE(std::isnan(tanh_<kFma>(std::nanf(""))));
}
TEST(CellMath, FloatExpWithinItsBound) { float_exp_within_its_bound<false>(); }
TEST(CellMath, FusedFloatExpWithinItsBound) { float_exp_within_its_bound<true>(); }

// The CPU's gate pass computes what cell_forward of fused_gate_math()'s kFma
// does: a step of one unit (I = H = 1, x = 1, no h or c, no bias, so each
// pre-activation is W's exactly) whose input gate differs between the two
// (the first such from 0.5 on), its candidate at tanh's 1, so c = i.
TEST(CellMath, TheGatePassFusesWhereFusedGateMathSays) {
  float W[4] = {0.5f, 3.0f, 20.0f, 0.75f};
  const auto want = [&](auto fma) {
    lstm_ext::cell::Gates<float> z{W[0], W[1], W[2], W[3]};
    float c = 0, m = 0;
    lstm_ext::cell::cell_forward<false, false, false, decltype(fma)::value>(
        &z, 0.0f, lstm_ext::cell::Peep<float>{0, 0, 0}, 0.0f, &c, &m);
    return std::array<float, 2>{c, m};
  };
  while (want(std::true_type{})[0] == want(std::false_type{})[0] && W[0] < 1.0f)
    W[0] = std::nextafter(W[0], 1.0f);
  const auto fused = want(std::true_type{}), plain = want(std::false_type{});
  ASSERT_NE(fused[0], plain[0]) << "no input gate in [0.5, 1) tells the two apart";
  const float R[4] = {0, 0, 0, 0}, x = 1.0f;
  lstm_ext::Config cfg;
  cfg.T = 1, cfg.B = 1, cfg.I = 1, cfg.H = 1;
  std::vector<float> scratch(size_t(lstm_ext::step_scratch_size(cfg)));
  float h = 0, c = 0;
  lstm_ext::Weights<float> w;
  w.W = W, w.R = R;
  lstm_ext::lstm_step(&h, &c, scratch.data(), &x, nullptr, nullptr, w, cfg);
  const auto& expect = lstm_ext::fused_gate_math() ? fused : plain;
  EXPECT_EQ(c, expect[0]) << W[0];
  EXPECT_EQ(h, expect[1]) << W[0];
}

// kFma changes only the multiply-adds mul_add writes: fused, one rounding.
TEST(CellMath, MulAddRoundsOnceWithKFma) {
  using lstm_ext::cell::mul_add;
  const float a = 1.0f + 0x1p-12f, c = -(1.0f + 0x1p-11f);  // a*a = 1 + 2^-11 + 2^-24
  EXPECT_EQ((mul_add<true>(a, a, c)), 0x1p-24f);
  EXPECT_EQ((mul_add<false>(a, a, c)), 0.0f);  // a*a rounds to 1 + 2^-11 first
  const double d = 1.0 + 0x1p-27, e = -(1.0 + 0x1p-26);
  EXPECT_EQ((mul_add<true>(d, d, e)), 0x1p-54);
  EXPECT_EQ((mul_add<false>(d, d, e)), 0.0);
}

// cell_math.h's double exp and tanh against the C library's long double
// ones (x86's 80-bit format: 11 more bits than double): every 2^-12 of
// [-708, ln(DBL_MAX)] for exp, and for tanh 4,096 points in each binade of
// |x| from 2^-1022 to 2^5, both signs (here at worst 0.98 and 1.44 DBL_EPSILON
// relative; 1.02 and 1.70 over 60 million random points, dev/perf-notes.md
// 49); then their limits and NaN.
TEST(CellMath, DoubleExpAndTanhWithinTheirBounds) {
  using lstm_ext::cell::host_exp;
  using lstm_ext::cell::host_tanh;
  const double eps = std::numeric_limits<double>::epsilon();  // 2^-52
  double worst_exp = 0, worst_tanh = 0;
  const double top = std::log(std::numeric_limits<double>::max());
  const auto exp_error = [&](double x) {
    const long double want = std::exp(static_cast<long double>(x));
    worst_exp = std::max(worst_exp, double(std::fabs((host_exp(x) - want) / want)));
  };
  for (double x = -708.0; x <= top; x += 1.0 / 4096) exp_error(x);
  exp_error(top);
  for (int e = -1022; e <= 5; ++e)
    for (int k = 0; k < 4096; ++k) {
      const double x = std::ldexp(1.0 + k / 4096.0, e);
      for (const double v : {x, -x}) {
        const long double want = std::tanh(static_cast<long double>(v));
        worst_tanh = std::max(worst_tanh, double(std::fabs((host_tanh(v) - want) / want)));
      }
    }
  EXPECT_LT(worst_exp, 1.25 * eps);
  EXPECT_GT(worst_exp, 0.5 * eps);  // the sweep reached the rounding
  EXPECT_LT(worst_tanh, 2 * eps);
  const double inf = std::numeric_limits<double>::infinity(), nan = std::nan("");
  EXPECT_LT(host_exp(top), inf);
  EXPECT_EQ(host_exp(std::nextafter(top, inf)), inf);
  EXPECT_EQ(host_exp(inf), inf);
  EXPECT_TRUE(std::isnan(host_exp(nan)));
  EXPECT_EQ(host_tanh(20.0), 1.0);
  EXPECT_EQ(host_tanh(inf), 1.0);
  EXPECT_EQ(host_tanh(-inf), -1.0);
  EXPECT_EQ(host_tanh(1e-300), 1e-300);
  EXPECT_TRUE(std::signbit(host_tanh(-0.0)));
  EXPECT_TRUE(std::isnan(host_tanh(nan)));
  EXPECT_EQ(lstm_ext::cell::sigmoid(-inf), 0.0);
  EXPECT_EQ(lstm_ext::cell::sigmoid(inf), 1.0);
}

TEST(Sizes, InferenceChunkTakesAnyBatch) {
  EXPECT_EQ(lstm_ext::inference_chunk(1), 256);
  EXPECT_EQ(lstm_ext::inference_chunk(15), 18);
  EXPECT_EQ(lstm_ext::inference_chunk(16), 16);
  // No B * 16 (UBSan's signed-overflow check watches this under ctest).
  EXPECT_EQ(lstm_ext::inference_chunk(std::numeric_limits<int64_t>::max()), 16);
  EXPECT_EQ(lstm_ext::inference_chunk(std::numeric_limits<int64_t>::min()), 16);
}

TEST(Sizes, ByteCountsPast64BitsAreRefusedNamingTheSizes) {
  const int64_t big = int64_t(1) << 31;
  const Config c = sizes(big, big, 1, 1);  // T*B = 2^62 elements
  try {
    forward_workspace_size(c, true);
    ADD_FAILURE() << "no exception";
  } catch (const std::length_error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("T=2147483648 B=2147483648 I=1 H=1 P=0"), std::string::npos) << m;
    EXPECT_NE(m.find("overflows a 64-bit byte count"), std::string::npos) << m;
  }
  const int64_t max = std::numeric_limits<int64_t>::max();
  for (const Config& bad : {c, sizes(1, 1, 1, int64_t(1) << 40), sizes(max, 1, 1, 1),
                            sizes(1, max, 1, 1), sizes(1, 1, max, 1), sizes(1, 1, 1, max),
                            sizes(1, 1, 1, int64_t(1) << 30, int64_t(1) << 40)}) {
    EXPECT_THROW(forward_workspace_size(bad, false), std::length_error) << bad.T << " " << bad.H;
    EXPECT_THROW(backward_scratch_size(bad), std::length_error);
    if (bad.T != max) EXPECT_THROW(step_scratch_size(bad), std::length_error);  // T = 1 there
    EXPECT_THROW(lstm_ext::packed_weights_size(bad), std::length_error);
  }
  // The calls refuse it before looking at a buffer: every one is null here,
  // which a call with valid sizes refuses with std::invalid_argument.
  const lstm_ext::Weights<float> none{};
  EXPECT_THROW(lstm_ext::lstm_forward<float>(nullptr, nullptr, nullptr, nullptr, nullptr, nullptr,
                                             nullptr, nullptr, none, c, true),
               std::length_error);
  EXPECT_THROW(lstm_ext::lstm_backward<float>(nullptr, nullptr, nullptr, {}, nullptr, nullptr,
                                              nullptr, nullptr, nullptr, nullptr, none, c),
               std::length_error);
  EXPECT_THROW(lstm_ext::lstm_step<float>(nullptr, nullptr, nullptr, nullptr, nullptr, nullptr,
                                          none, sizes(1, int64_t(1) << 61, 1, 1)),
               std::length_error);
  EXPECT_THROW(lstm_ext::lstm_forward<float>(nullptr, nullptr, nullptr, nullptr, nullptr, nullptr,
                                             nullptr, nullptr, none, sizes(2, 3, 4, 5), false),
               std::invalid_argument);
}

TEST(Sizes, GemmDimensionsPastBlasRangeAreRefused) {
  // T*B = 2^31: an int64_t count, but no 32-bit BLAS takes it as a dimension.
  try {
    forward_workspace_size(sizes(int64_t(1) << 16, int64_t(1) << 15, 1, 1), true);
    ADD_FAILURE() << "no exception";
  } catch (const std::length_error& e) {
    EXPECT_NE(std::string(e.what()).find("BLAS limit"), std::string::npos) << e.what();
  }
  EXPECT_THROW(forward_workspace_size(sizes(1, 1, int64_t(1) << 31, 1), true), std::length_error);
}

// ---- lstm_ext::Model ----------------------------------------------------------------

void put32(std::vector<unsigned char>& out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<unsigned char>(v >> (8 * i)));
}
void put64(std::vector<unsigned char>& out, uint64_t v) {
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<unsigned char>(v >> (8 * i)));
}
void put_tensor(std::vector<unsigned char>& out, const std::string& name,
                const std::vector<uint64_t>& shape, float value) {
  put32(out, uint32_t(name.size()));
  out.insert(out.end(), name.begin(), name.end());
  put32(out, uint32_t(shape.size()));
  uint64_t n = 1;
  for (uint64_t d : shape) put64(out, d), n *= d;
  for (uint64_t i = 0; i < n; ++i) {
    uint32_t bits;
    const float v = value * float(1 + int(i % 5)) / 5;
    std::memcpy(&bits, &v, 4);
    put32(out, bits);
  }
}

// A one-layer float32 model file, I = 3, H = 4, with bias.
std::vector<unsigned char> model_file(bool bidirectional = false) {
  std::vector<unsigned char> f = {'L', 'S', 'T', 'M', 'E', 'X', 'T', 0};
  for (uint32_t v : {1u, 4u, 3u, 4u, 1u, 0u, bidirectional ? 1u : 0u, 1u}) put32(f, v);
  put32(f, bidirectional ? 8 : 4);
  for (const char* s : {"", "_reverse"}) {
    if (*s && !bidirectional) break;
    put_tensor(f, std::string("weight_ih_l0") + s, {16, 3}, 0.3f);
    put_tensor(f, std::string("weight_hh_l0") + s, {16, 4}, -0.2f);
    put_tensor(f, std::string("bias_ih_l0") + s, {16}, 0.1f);
    put_tensor(f, std::string("bias_hh_l0") + s, {16}, 0.05f);
  }
  return f;
}

TEST(Model, StepAgreesWithRun) {
  const auto f = model_file();
  lstm_ext::Model a = lstm_ext::Model::from_bytes(f.data(), f.size()), b = a;
  EXPECT_EQ(a.config().hidden_size, 4);
  const std::vector<float> x = {0.5f, -1, 2, 0.25f, 0.75f, -0.5f, 1, 1, 1};  // T = 3, B = 1
  std::vector<float> ys(12), y(4);
  a.run(x.data(), 3, 1, ys.data());
  b.reset(1);
  for (int t = 0; t < 3; ++t) {
    b.step(x.data() + 3 * t, y.data());
    for (int k = 0; k < 4; ++k) EXPECT_FLOAT_EQ(y[size_t(k)], ys[size_t(4 * t + k)]);
  }
  // In chunks (the later ones on the weights the first packed): the same bits.
  lstm_ext::Model c = lstm_ext::Model::from_bytes(f.data(), f.size());
  std::vector<float> chunks(12);
  c.run(x.data(), 1, 1, chunks.data());
  c.run(x.data() + 3, 2, 1, chunks.data() + 4);
  EXPECT_EQ(chunks, ys);
}

TEST(Model, EveryTruncationIsRefused) {
  const auto f = model_file();
  for (size_t n = 0; n < f.size(); ++n)
    EXPECT_THROW(lstm_ext::Model::from_bytes(f.data(), n), lstm_ext::FormatError) << n;
  auto longer = f;
  longer.push_back(0);
  EXPECT_THROW(lstm_ext::Model::from_bytes(longer.data(), longer.size()), lstm_ext::FormatError);
}

TEST(Model, BidirectionalRunsButDoesNotStream) {
  const auto f = model_file(true);
  lstm_ext::Model m = lstm_ext::Model::from_bytes(f.data(), f.size());
  std::vector<float> x(2 * 3, 0.5f), y(2 * 8, std::numeric_limits<float>::quiet_NaN());
  m.run(x.data(), 2, 1, y.data());
  for (float v : y) EXPECT_TRUE(std::isfinite(v));
  m.reset(1);
  EXPECT_THROW(m.step(x.data(), y.data()), std::logic_error);
}

// A null or overlapping buffer is refused before anything runs, and the
// streaming state stays as it was (a run of another batch size had reset it).
TEST(Model, BadBuffersAreRefusedAndKeepTheState) {
  const auto f = model_file();
  lstm_ext::Model a = lstm_ext::Model::from_bytes(f.data(), f.size()), b = a;
  const std::vector<float> x = {0.5f, -1, 2};
  std::vector<float> ya(4), yb(4), big(4 * 4);
  a.reset(1);
  b.reset(1);
  a.step(x.data(), ya.data());
  b.step(x.data(), yb.data());
  EXPECT_THROW(a.run(nullptr, 1, 4, big.data()), std::invalid_argument);
  EXPECT_THROW(a.run(x.data(), 1, 1, nullptr), std::invalid_argument);
  std::vector<float> io = {0.5f, -1, 2, 0};  // x [1,1,3] and y [1,1,4] sharing floats
  EXPECT_THROW(a.run(io.data(), 1, 1, io.data()), std::invalid_argument);
  a.step(x.data(), ya.data());  // the state a had, carried on
  b.step(x.data(), yb.data());
  EXPECT_EQ(ya, yb);

  const auto f2 = model_file(true);
  lstm_ext::Model bi = lstm_ext::Model::from_bytes(f2.data(), f2.size());
  EXPECT_THROW(bi.run(x.data(), 1, 1, nullptr), std::invalid_argument);
}

// Only a regular file is read: a directory or /dev/zero throws FormatError
// (it had thrown std::ios_base::failure, and read /dev/zero until memory ran out).
TEST(Model, LoadReadsRegularFilesOnly) {
  EXPECT_THROW(lstm_ext::Model::load(std::filesystem::temp_directory_path().string()),
               lstm_ext::FormatError);
  if (std::filesystem::exists("/dev/zero"))
    EXPECT_THROW(lstm_ext::Model::load("/dev/zero"), lstm_ext::FormatError);
  EXPECT_THROW(lstm_ext::Model::load("/no/such/model.lstmx"), lstm_ext::FormatError);
  const auto f = model_file();
  const std::string path = (std::filesystem::temp_directory_path() /
                            ("lstm_ext_test_" + std::to_string(getpid()) + ".lstmx"))
                               .string();
  std::ofstream(path, std::ios::binary)
      .write(reinterpret_cast<const char*>(f.data()), std::streamsize(f.size()));
  EXPECT_EQ(lstm_ext::Model::load(path).config().hidden_size, 4);
  std::filesystem::remove(path);
}

TEST(Model, HugeSizesAreRefusedBeforeAllocatingAndKeepTheState) {
  const auto f = model_file();
  lstm_ext::Model a = lstm_ext::Model::from_bytes(f.data(), f.size()), b = a;
  const std::vector<float> x = {0.5f, -1, 2};
  std::vector<float> ya(4), yb(4);
  a.reset(1);
  b.reset(1);
  a.step(x.data(), ya.data());
  b.step(x.data(), yb.data());
  // x is never read: the sizes are refused first.
  EXPECT_THROW(a.reset(int64_t(1) << 62), std::length_error);
  EXPECT_THROW(a.run(x.data(), int64_t(1) << 40, int64_t(1) << 30, ya.data()), std::length_error);
  EXPECT_THROW(a.run(x.data(), int64_t(1) << 20, int64_t(1) << 12, ya.data()),
               std::length_error);  // T*B = 2^32: past BLAS's range
  a.step(x.data(), ya.data());      // the state a had, carried on
  b.step(x.data(), yb.data());
  for (int k = 0; k < 4; ++k) EXPECT_EQ(ya[size_t(k)], yb[size_t(k)]);
}

}  // namespace
