// lstm_ext._cuda: the GPU twin of _core, built only with the CUDA path. The
// same functions with the same argument checks (bind_args.h); arrays go to
// the GPU, the call runs there, results come back as NumPy arrays. A forward
// cache keeps x, the weights and the workspace on the GPU, so backward sends
// only dy across. The module is separate from _core so that a CPU-only
// machine imports _core without the CUDA libraries.
#include <pybind11/stl.h>

#include <algorithm>
#include <cmath>
#include <memory>

#include "bind_args.h"
#include "lstm_ext/cuda.h"

namespace {

using namespace lstm_ext_bind;  // NOLINT: the shared argument checks
namespace lc = lstm_ext::cuda;

// One context (stream and cuBLAS handle) per thread, on GPU 0 (choose the GPU
// with CUDA_VISIBLE_DEVICES).
lc::Context& context() {
  thread_local std::unique_ptr<lc::Context> ctx;
  if (!ctx) ctx = std::make_unique<lc::Context>(0);
  return *ctx;
}

template <typename S>
lc::Buffer upload(lc::Context& ctx, const carray<S>& a) {
  lc::Buffer b(a.nbytes());
  b.upload(ctx, a.data(), a.nbytes());
  return b;
}

template <typename S>
lc::Buffer upload(lc::Context& ctx, const opt_carray<S>& a) {
  return a ? upload<S>(ctx, *a) : lc::Buffer();
}

// When set (tests only: _cuda._set_poison), every output and workspace
// buffer starts as NaN, so an element a call leaves unwritten shows.
bool g_poison = false;

template <typename S>
lc::Buffer device_array(int64_t elements) {
  lc::Buffer b(elements * int64_t(sizeof(S)));
  if (g_poison) b.fill(context(), 0xFF);
  return b;
}

template <typename S>
carray<S> download(lc::Context& ctx, const lc::Buffer& b, const std::vector<int64_t>& shape) {
  carray<S> a = empty<S>(shape);
  b.download(ctx, a.mutable_data(), a.nbytes());
  return a;
}

// One layer's weights on the GPU (an empty Buffer reads as absent).
struct DeviceLayer {
  lc::Buffer W, R, b, W_hr, peephole;
  bool has_peephole = false;
  template <typename S>
  lstm_ext::Weights<S> weights() const {
    return {W.as<S>(), R.as<S>(), b.as<S>(), W_hr.as<S>(), peephole.as<S>()};
  }
};

template <typename S>
DeviceLayer upload_layer(lc::Context& ctx, const LayerArgs& l) {
  const LayerArrays<S> w = layer_arrays<S>(l, false);
  return {upload<S>(ctx, w.W), upload<S>(ctx, w.R), upload<S>(ctx, w.b),
          upload<S>(ctx, w.W_hr), upload<S>(ctx, w.peephole), l.peephole.given()};
}

// What forward keeps for backward, on the GPU.
struct Cache {
  Config cfg;  // cfg.lengths is re-pointed at `lengths` for each call
  bool batch_first;
  int size;
  DeviceLayer w;
  lc::Buffer x, workspace;
  std::optional<py::array_t<int64_t>> lengths;
  int64_t nbytes() const {
    int64_t n = x.bytes() + workspace.bytes();
    for (const lc::Buffer* b : {&w.W, &w.R, &w.b, &w.W_hr, &w.peephole}) n += b->bytes();
    return n;
  }
};

template <typename S>
py::tuple forward_impl(ForwardArgs& f, bool batch_first, bool training, bool return_cell_states) {
  Config cfg = f.cfg;
  if (f.lengths) cfg.lengths = f.lengths->data();
  const int64_t T = cfg.T, B = cfg.B, H = cfg.H, O = cfg.O();
  const int64_t ws_size = lc::forward_workspace_size<S>(cfg, training);  // throws on overflow
  lc::Context& ctx = context();
  lc::Buffer x = upload<S>(ctx, contiguous<S>(f.x_tb));
  DeviceLayer w = upload_layer<S>(ctx, f.l);
  const lc::Buffer h0 = upload<S>(ctx, opt_contiguous<S>(f.h0)),
                   c0 = upload<S>(ctx, opt_contiguous<S>(f.c0));
  lc::Buffer y = device_array<S>(T * B * O), hT = device_array<S>(B * O),
             cT = device_array<S>(B * H), ws = device_array<S>(ws_size), cs;
  if (return_cell_states) cs = device_array<S>(T * B * H);
  {
    py::gil_scoped_release nogil;
    lc::lstm_forward<S>(ctx, y.as<S>(), hT.as<S>(), cT.as<S>(), cs.as<S>(), ws.as<S>(), x.as<S>(),
                        h0.as<S>(), c0.as<S>(), w.weights<S>(), cfg, training);
    ctx.synchronize();
  }
  auto tb = [&](const py::array& a) { return batch_first ? swap01(a) : a; };
  py::object cache = py::none();
  if (training)
    cache = py::cast(Cache{cfg, batch_first, int(sizeof(S)), std::move(w), std::move(x),
                           std::move(ws), f.lengths});
  py::object cells = py::none();
  if (return_cell_states) cells = tb(download<S>(ctx, cs, {T, B, H}));
  return py::make_tuple(tb(download<S>(ctx, y, {T, B, O})), download<S>(ctx, hT, {B, O}),
                        download<S>(ctx, cT, {B, H}), cache, cells);
}

py::tuple forward(const py::object& x, const py::object& W, const py::object& R,
                  const py::object& b, const py::object& h0, const py::object& c0,
                  bool batch_first, bool training, bool reverse, const py::object& lengths,
                  const py::object& W_hr, const py::object& peephole, const py::object& clip,
                  bool input_forget, bool return_cell_states) {
  ForwardArgs f = check_forward(x, W, R, b, h0, c0, batch_first, reverse, lengths, W_hr, peephole,
                                clip, input_forget);
  return f.size == 4 ? forward_impl<float>(f, batch_first, training, return_cell_states)
                     : forward_impl<double>(f, batch_first, training, return_cell_states);
}

template <typename S>
py::tuple backward_impl(const Cache& cache, const Arg& dy_arg, const Arg& dh_arg,
                        const Arg& dc_arg) {
  Config cfg = cache.cfg;
  if (cache.lengths) cfg.lengths = cache.lengths->data();
  const int64_t T = cfg.T, B = cfg.B, I = cfg.I, H = cfg.H, P = cfg.P, O = cfg.O(), G = 4 * H;
  lc::Context& ctx = context();
  lc::Buffer dy;
  if (dy_arg.given())
    dy = upload<S>(ctx, contiguous<S>(cache.batch_first ? swap01(dy_arg.a) : dy_arg.a));
  const lc::Buffer dh = upload<S>(ctx, opt_contiguous<S>(dh_arg)),
                   dc = upload<S>(ctx, opt_contiguous<S>(dc_arg));
  lc::Buffer dx = device_array<S>(T * B * I), dh0 = device_array<S>(B * O),
             dc0 = device_array<S>(B * H), dW = device_array<S>(G * I),
             dR = device_array<S>(G * O), db = device_array<S>(G),
             dW_hr = device_array<S>(P * H), dpeep = device_array<S>(cache.w.has_peephole ? 3 * H : 0),
             scratch = device_array<S>(lc::backward_scratch_size<S>(cfg));
  {
    py::gil_scoped_release nogil;
    const lstm_ext::Grads<S> g{dW.as<S>(), dR.as<S>(), db.as<S>(), dW_hr.as<S>(), dpeep.as<S>()};
    lc::lstm_backward<S>(ctx, dx.as<S>(), dh0.as<S>(), dc0.as<S>(), g, scratch.as<S>(),
                         cache.workspace.as<S>(), cache.x.as<S>(), dy.as<S>(), dh.as<S>(),
                         dc.as<S>(), cache.w.weights<S>(), cfg);
    ctx.synchronize();
  }
  const carray<S> dx_h = download<S>(ctx, dx, {T, B, I});
  return py::make_tuple(
      cache.batch_first ? swap01(dx_h) : py::array(dx_h), download<S>(ctx, dh0, {B, O}),
      download<S>(ctx, dc0, {B, H}), download<S>(ctx, dW, {G, I}), download<S>(ctx, dR, {G, O}),
      download<S>(ctx, db, {G}),
      P > 0 ? py::object(download<S>(ctx, dW_hr, {P, H})) : py::object(py::none()),
      cache.w.has_peephole ? py::object(download<S>(ctx, dpeep, {3 * H}))
                           : py::object(py::none()));
}

py::tuple backward(const py::object& cache_obj, const py::object& dy_obj, const py::object& dh_obj,
                   const py::object& dc_obj) {
  const Cache& cache = check_cache<Cache>(cache_obj);
  const Arg dy = opt_arg("dy", dy_obj), dh = opt_arg("dh", dh_obj), dc = opt_arg("dc", dc_obj);
  check_backward(cache.cfg, cache.batch_first, cache.size, dy, dh, dc);
  return cache.size == 4 ? backward_impl<float>(cache, dy, dh, dc)
                         : backward_impl<double>(cache, dy, dh, dc);
}

template <typename S>
py::tuple step_impl(const StepArgs& a) {
  const Config& cfg = a.cfg;
  lc::Context& ctx = context();
  const lc::Buffer x = upload<S>(ctx, contiguous<S>(a.x.a)),
                   h = upload<S>(ctx, opt_contiguous<S>(a.h)),
                   c = upload<S>(ctx, opt_contiguous<S>(a.c));
  const DeviceLayer w = upload_layer<S>(ctx, a.l);
  lc::Buffer h_out = device_array<S>(cfg.B * cfg.O()), c_out = device_array<S>(cfg.B * cfg.H),
             scratch = device_array<S>(lc::step_scratch_size(cfg));
  {
    py::gil_scoped_release nogil;
    lc::lstm_step<S>(ctx, h_out.as<S>(), c_out.as<S>(), scratch.as<S>(), x.as<S>(), h.as<S>(),
                     c.as<S>(), w.weights<S>(), cfg);
    ctx.synchronize();
  }
  return py::make_tuple(download<S>(ctx, h_out, {cfg.B, cfg.O()}),
                        download<S>(ctx, c_out, {cfg.B, cfg.H}));
}

py::tuple step(const py::object& x, const py::object& h, const py::object& c,
               const py::object& W, const py::object& R, const py::object& b,
               const py::object& W_hr, const py::object& peephole, const py::object& clip,
               bool input_forget) {
  const StepArgs a = check_step(x, h, c, W, R, b, W_hr, peephole, clip, input_forget);
  return a.size == 4 ? step_impl<float>(a) : step_impl<double>(a);
}

// Benchmarks: milliseconds of each of `reps` forward (or forward+backward)
// calls on data that lives on the GPU, the way a training loop on the GPU
// runs them: no host copies in the timed region.
template <typename S>
std::vector<double> bench_impl(const Config& cfg, bool backward, int warmup, int reps) {
  lc::Context& ctx = context();
  const int64_t T = cfg.T, B = cfg.B, I = cfg.I, H = cfg.H, O = cfg.O(), G = 4 * H;
  uint64_t state = 88172645463325252ull;  // xorshift: uniform values in [-a, a]
  auto random = [&](int64_t n, double a) {
    std::vector<S> v(size_t(std::max<int64_t>(n, 0)));
    for (auto& e : v) {
      state ^= state << 13;
      state ^= state >> 7;
      state ^= state << 17;
      e = S(a * (double(state >> 11) / double(1ull << 53) * 2 - 1));
    }
    lc::Buffer b(n * int64_t(sizeof(S)));
    b.upload(ctx, v.data(), n * int64_t(sizeof(S)));
    return b;
  };
  const double k = 1 / std::sqrt(double(std::max<int64_t>(H, 1)));
  const lc::Buffer x = random(T * B * I, 1), W = random(G * I, k), R = random(G * O, k),
                   b = random(G, k), dy = random(T * B * O, 1);
  const lstm_ext::Weights<S> w{W.as<S>(), R.as<S>(), b.as<S>(), nullptr, nullptr};
  lc::Buffer y = device_array<S>(T * B * O), hT = device_array<S>(B * O),
             cT = device_array<S>(B * H),
             ws = device_array<S>(lc::forward_workspace_size<S>(cfg, backward)),
             dx = device_array<S>(T * B * I), dh0 = device_array<S>(B * O),
             dc0 = device_array<S>(B * H), dW = device_array<S>(G * I), dR = device_array<S>(G * O),
             db = device_array<S>(G),
             scratch = device_array<S>(backward ? lc::backward_scratch_size<S>(cfg) : 0);
  const lstm_ext::Grads<S> g{dW.as<S>(), dR.as<S>(), db.as<S>(), nullptr, nullptr};
  py::gil_scoped_release nogil;
  return lc::time_on_stream(
      ctx,
      [&] {
        lc::lstm_forward<S>(ctx, y.as<S>(), hT.as<S>(), cT.as<S>(), nullptr, ws.as<S>(),
                            x.as<S>(), nullptr, nullptr, w, cfg, backward);
        if (backward)
          lc::lstm_backward<S>(ctx, dx.as<S>(), dh0.as<S>(), dc0.as<S>(), g, scratch.as<S>(),
                               ws.as<S>(), x.as<S>(), dy.as<S>(), nullptr, nullptr, w, cfg);
      },
      warmup, reps);
}

std::vector<double> bench(int64_t T, int64_t B, int64_t I, int64_t H, const std::string& dtype,
                          bool backward, int warmup, int reps) {
  Config cfg;
  cfg.T = T;
  cfg.B = B;
  cfg.I = I;
  cfg.H = H;
  if (dtype != "float32" && dtype != "float64")
    throw py::value_error("dtype: expected 'float32' or 'float64', got '" + dtype + "'");
  if (reps < 1 || warmup < 0) throw py::value_error("reps: expected >= 1 (and warmup >= 0)");
  return dtype == "float32" ? bench_impl<float>(cfg, backward, warmup, reps)
                            : bench_impl<double>(cfg, backward, warmup, reps);
}

}  // namespace

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "lstm_ext's CUDA path; use lstm_ext.forward(..., device='cuda') and friends.";

  py::class_<Cache>(m, "Cache", "What forward on the GPU keeps for backward: opaque.")
      .def_static("__new__",
                  [](const py::args&, const py::kwargs&) -> py::object {
                    throw py::type_error("Cache: made only by lstm_ext.forward(training=True)");
                  })
      .def_property_readonly("T", [](const Cache& c) { return c.cfg.T; })
      .def_property_readonly("B", [](const Cache& c) { return c.cfg.B; })
      .def_property_readonly("I", [](const Cache& c) { return c.cfg.I; })
      .def_property_readonly("H", [](const Cache& c) { return c.cfg.H; })
      .def_property_readonly("P", [](const Cache& c) { return c.cfg.P; })
      .def_property_readonly("reverse", [](const Cache& c) { return c.cfg.reverse; })
      .def_property_readonly("dtype",
                             [](const Cache& c) { return py::dtype(c.size == 4 ? "float32" : "float64"); })
      .def_property_readonly("batch_first", [](const Cache& c) { return c.batch_first; })
      .def_property_readonly("device", [](const Cache&) { return "cuda"; })
      .def_property_readonly("nbytes", &Cache::nbytes, "Bytes it holds on the GPU.")
      .def("__repr__", [](const Cache& c) {
        return "<lstm_ext Cache T=" + std::to_string(c.cfg.T) + " B=" + std::to_string(c.cfg.B) +
               " I=" + std::to_string(c.cfg.I) + " H=" + std::to_string(c.cfg.H) +
               (c.cfg.P ? " P=" + std::to_string(c.cfg.P) : "") +
               (c.size == 4 ? " float32" : " float64") + " on cuda>";
      });

  m.def("forward", &forward, py::arg("x"), py::arg("W"), py::arg("R"), py::arg("b") = py::none(),
        py::arg("h0") = py::none(), py::arg("c0") = py::none(), py::kw_only(),
        py::arg("batch_first") = false, py::arg("training") = true, py::arg("reverse") = false,
        py::arg("lengths") = py::none(), py::arg("W_hr") = py::none(),
        py::arg("peephole") = py::none(), py::arg("clip") = py::none(),
        py::arg("input_forget") = false, py::arg("return_cell_states") = false);
  m.def("backward", &backward, py::arg("cache"), py::arg("dy"), py::arg("dh") = py::none(),
        py::arg("dc") = py::none());
  m.def("step", &step, py::arg("x"), py::arg("h"), py::arg("c"), py::arg("W"), py::arg("R"),
        py::arg("b") = py::none(), py::kw_only(), py::arg("W_hr") = py::none(),
        py::arg("peephole") = py::none(), py::arg("clip") = py::none(),
        py::arg("input_forget") = false);
  m.def("_set_poison", [](bool on) { g_poison = on; },
        "Tests only: fill every new output and workspace buffer with NaN.");
  m.def("_bench", &bench, py::arg("T"), py::arg("B"), py::arg("I"), py::arg("H"),
        py::arg("dtype") = "float32", py::arg("backward") = false, py::arg("warmup") = 3,
        py::arg("reps") = 20,
        "Benchmarks: ms of each forward (or forward+backward) call on GPU-resident data.");
  m.def("device_count", &lc::device_count, "GPUs visible to this process.");
  m.def("describe", &lc::describe, "The GPU, driver, runtime and cuBLAS found.");
}
