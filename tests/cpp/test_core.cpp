// C++ unit tests of the core (GoogleTest, run by ctest): the functional API
// over caller-owned buffers and lstm_ext::Model. The Python suite checks the
// math against the NumPy reference in depth; these check the C++ contract
// itself: steps agree with whole sequences, gradients with finite
// differences, errors throw, thread counts keep the bits, files are checked.
#include <gtest/gtest.h>
#include <lstm_ext/lstm.h>
#include <lstm_ext/model.h>
#include <lstm_ext/runtime.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

using lstm_ext::Config;

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
  // y [T,B,H] of an inference forward.
  std::vector<S> forward() const {
    const Config& c = cfg;
    std::vector<S> y(size_t(c.T * c.B * c.H)), h(size_t(c.B * c.H)), cc(h.size()),
        ws(size_t(lstm_ext::forward_workspace_size(c, false)));
    lstm_ext::lstm_forward(y.data(), h.data(), cc.data(), nullptr, ws.data(), x.data(), nullptr,
                           nullptr, weights(), c, false);
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

TEST(Core, EmptySizesAreFine) {
  for (auto [T, B] : {std::pair<int64_t, int64_t>{0, 3}, {4, 0}}) {
    Problem<double> p(T, B, 3, 4);
    EXPECT_EQ(p.forward().size(), size_t(T * B * 4));
  }
}

TEST(Core, SameBitsAtAnyThreadCount) {
  Problem<float> p(20, 16, 64, 96, 3);
  const int before = lstm_ext::get_num_threads();
  lstm_ext::set_num_threads(1);
  const std::vector<float> one = p.forward();
  lstm_ext::set_num_threads(3);
  const std::vector<float> three = p.forward();
  lstm_ext::set_num_threads(before);
  ASSERT_EQ(one.size(), three.size());
  EXPECT_EQ(std::memcmp(one.data(), three.data(), one.size() * sizeof(float)), 0);
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

}  // namespace
