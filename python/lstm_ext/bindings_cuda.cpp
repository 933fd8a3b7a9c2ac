// lstm_ext._cuda: the GPU twin of _core, built only with the CUDA path. The
// same functions with the same argument checks (bind_args.h). Arguments may
// be NumPy arrays (copied to the GPU) or GPU arrays (anything with
// __cuda_array_interface__: CuPy, PyTorch, Numba; used in place). Results
// come back as NumPy arrays when x (dy for backward) is a NumPy array, else
// as DeviceArray objects that CuPy and PyTorch take without a copy. A
// forward cache keeps its own copies of x and the weights, and the
// workspace, on the GPU, so backward sends only dy across. The module is
// separate from _core so that a CPU-only machine imports _core without the
// CUDA libraries.
#include <pybind11/stl.h>

#include <algorithm>
#include <cmath>
#include <map>
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
lc::Buffer upload(lc::Context& ctx, const carray<S>& a) {
  lc::Buffer b(a.nbytes());
  b.upload(ctx, a.data(), a.nbytes());
  return b;
}

template <typename S>
carray<S> download(lc::Context& ctx, const lc::Buffer& b, const std::vector<int64_t>& shape) {
  carray<S> a = empty<S>(shape);
  b.download(ctx, a.mutable_data(), a.nbytes());
  return a;
}

// ---- GPU arrays --------------------------------------------------------------------

// A result on the GPU: C-contiguous float32/float64, exposed through
// __cuda_array_interface__ (version 3; ready when the call returns).
struct DeviceArray {
  std::shared_ptr<lc::Buffer> buffer;
  std::vector<int64_t> shape;
  int size;  // 4 or 8
};

template <typename S>
py::object device_result(lc::Buffer&& b, std::vector<int64_t> shape) {
  return py::cast(
      DeviceArray{std::make_shared<lc::Buffer>(std::move(b)), std::move(shape), int(sizeof(S))});
}

// Arguments given as GPU arrays: each is replaced by a placeholder NumPy can
// check (a zero-stride view of the same shape and dtype, holding no memory),
// so that bind_args.h checks it with the same messages; its pointer is kept.
class GpuArgs {
 public:
  py::object take(const char* name, const py::object& obj) {
    if (obj.is_none() || !py::hasattr(obj, "__cuda_array_interface__")) return obj;
    const py::dict d = obj.attr("__cuda_array_interface__");
    std::vector<int64_t> shape;
    for (const auto v : py::tuple(d["shape"])) shape.push_back(v.cast<int64_t>());
    const py::dtype dt(d["typestr"].cast<std::string>());
    if (d.contains("strides") && !d["strides"].is_none()) {
      int64_t want = dt.itemsize();
      const py::tuple st(d["strides"]);
      for (size_t k = shape.size(); k-- > 0;) {
        if (shape[k] > 1 && st[k].cast<int64_t>() != want)
          throw py::value_error(std::string(name) +
                                ": expected a C-contiguous GPU array, got strides " +
                                py::str(st).cast<std::string>() + " for shape " + shape_str(shape) +
                                " (make it contiguous first)");
        want *= shape[k];
      }
    }
    const auto ptr = reinterpret_cast<const void*>(py::tuple(d["data"])[0].cast<uintptr_t>());
    int64_t n = 1;
    for (int64_t v : shape) n *= v;
    if (n > 0 && lc::device_of(ptr) != 0)
      throw py::value_error(std::string(name) + ": a GPU array lstm_ext cannot read: it is on " +
                            (lc::device_of(ptr) < 0 ? std::string("no GPU")
                                                    : "GPU " + std::to_string(lc::device_of(ptr))) +
                            "; lstm_ext runs on GPU 0 (CUDA_VISIBLE_DEVICES chooses it)");
    ptrs_[name] = ptr;
    const py::object np = py::module_::import("numpy");
    return np.attr("broadcast_to")(np.attr("zeros")(py::tuple(), dt), py::cast(shape));
  }
  const void* ptr(const char* name) const {
    const auto it = ptrs_.find(name);
    return it == ptrs_.end() ? nullptr : it->second;
  }
  bool any() const { return !ptrs_.empty(); }
  // Arrays other libraries wrote may still be in flight on their streams.
  void wait_for_producers() const {
    if (any()) lc::synchronize_device();
  }

 private:
  std::map<std::string, const void*> ptrs_;
};

void no_gpu_lengths(const py::object& lengths) {
  if (!lengths.is_none() && py::hasattr(lengths, "__cuda_array_interface__"))
    throw py::type_error(
        "lengths: expected integers on the host (a list or NumPy array), got a "
        "GPU array");
}

// An input on the GPU for the call: the caller's GPU array in place, or (for
// a cache, `copy`) a private copy of it, or an upload of a host array; null
// for an absent optional argument. `keep` owns whatever was made.
template <typename S>
const S* device_input(lc::Context& ctx, const GpuArgs& gpu, const char* name, const Arg& a,
                      const py::array& host_view, bool copy, lc::Buffer& keep) {
  if (!a.given()) return nullptr;
  if (const void* p = gpu.ptr(name)) {
    if (!copy) return static_cast<const S*>(p);
    keep = lc::Buffer(a.a.nbytes());
    keep.copy_from(ctx, p, a.a.nbytes());
  } else {
    keep = upload<S>(ctx, contiguous<S>(host_view));
  }
  return keep.as<S>();
}

// x as [T,B,I] on the GPU; a batch_first GPU array is transposed on the GPU.
template <typename S>
const S* device_x(lc::Context& ctx, const GpuArgs& gpu, const ForwardArgs& f, bool batch_first,
                  bool copy, lc::Buffer& keep) {
  const void* p = gpu.ptr("x");
  if (p && batch_first) {
    keep = lc::Buffer(f.x.a.nbytes());
    lc::swap01<S>(ctx, keep.as<S>(), static_cast<const S*>(p), f.cfg.B, f.cfg.T, f.cfg.I);
    return keep.as<S>();
  }
  return device_input<S>(ctx, gpu, "x", f.x, f.x_tb, copy, keep);
}

// A [T,B,W] result as the caller gets it: on the host or the GPU, and
// [B,T,W] when batch_first.
template <typename S>
py::object result_tb(lc::Context& ctx, lc::Buffer&& b, int64_t T, int64_t B, int64_t W, bool on_gpu,
                     bool batch_first) {
  if (on_gpu) {
    if (!batch_first) return device_result<S>(std::move(b), {T, B, W});
    lc::Buffer t = device_array<S>(T * B * W);
    lc::swap01<S>(ctx, t.as<S>(), b.as<S>(), T, B, W);
    ctx.synchronize();
    return device_result<S>(std::move(t), {B, T, W});
  }
  const carray<S> h = download<S>(ctx, b, {T, B, W});
  return batch_first ? py::object(swap01(h)) : py::object(h);
}

template <typename S>
py::object result(lc::Context& ctx, lc::Buffer&& b, std::vector<int64_t> shape, bool on_gpu) {
  if (on_gpu) return device_result<S>(std::move(b), std::move(shape));
  return download<S>(ctx, b, shape);
}

// ---- one layer's weights ----------------------------------------------------------

// One layer's weights on the GPU (an absent one reads as null).
struct DeviceLayer {
  lc::Buffer W, R, b, W_hr, peephole;  // what was uploaded or copied
  const void *pW = nullptr, *pR = nullptr, *pb = nullptr, *pW_hr = nullptr, *ppeep = nullptr;
  bool has_peephole = false;
  template <typename S>
  lstm_ext::Weights<S> weights() const {
    return {static_cast<const S*>(pW), static_cast<const S*>(pR), static_cast<const S*>(pb),
            static_cast<const S*>(pW_hr), static_cast<const S*>(ppeep)};
  }
};

template <typename S>
DeviceLayer device_layer(lc::Context& ctx, const GpuArgs& gpu, const LayerArgs& l, bool copy) {
  DeviceLayer d;
  d.pW = device_input<S>(ctx, gpu, "W", l.W, l.W.a, copy, d.W);
  d.pR = device_input<S>(ctx, gpu, "R", l.R, l.R.a, copy, d.R);
  d.pb = device_input<S>(ctx, gpu, "b", l.b, l.b.a, copy, d.b);
  d.pW_hr = device_input<S>(ctx, gpu, "W_hr", l.W_hr, l.W_hr.a, copy, d.W_hr);
  d.ppeep = device_input<S>(ctx, gpu, "peephole", l.peephole, l.peephole.a, copy, d.peephole);
  d.has_peephole = l.peephole.given();
  return d;
}

// ---- forward, backward, step ----------------------------------------------------------

// What forward keeps for backward, on the GPU.
struct Cache {
  Config cfg;  // cfg.lengths is re-pointed at `lengths` for each call
  bool batch_first;
  int size;
  bool on_gpu;  // x was a GPU array: gradients come back on the GPU
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
py::tuple forward_impl(ForwardArgs& f, const GpuArgs& gpu, bool batch_first, bool training,
                       bool return_cell_states) {
  Config cfg = f.cfg;
  if (f.lengths) cfg.lengths = f.lengths->data();
  const int64_t T = cfg.T, B = cfg.B, H = cfg.H, O = cfg.O();
  const int64_t ws_size = lc::forward_workspace_size<S>(cfg, training);  // throws on overflow
  const bool on_gpu = gpu.ptr("x") != nullptr;
  lc::Context& ctx = context();
  lc::Buffer x, h0, c0;
  const S* px = device_x<S>(ctx, gpu, f, batch_first, training, x);
  DeviceLayer w = device_layer<S>(ctx, gpu, f.l, training);
  const S* ph0 = device_input<S>(ctx, gpu, "h0", f.h0, f.h0.a, false, h0);
  const S* pc0 = device_input<S>(ctx, gpu, "c0", f.c0, f.c0.a, false, c0);
  lc::Buffer y = device_array<S>(T * B * O), hT = device_array<S>(B * O),
             cT = device_array<S>(B * H), ws = device_array<S>(ws_size), cs;
  if (return_cell_states) cs = device_array<S>(T * B * H);
  {
    WithoutGil nogil;
    lc::lstm_forward<S>(ctx, y.as<S>(), hT.as<S>(), cT.as<S>(), cs.as<S>(), ws.as<S>(), px, ph0,
                        pc0, w.weights<S>(), cfg, training);
    ctx.synchronize();
  }
  py::object cache = py::none();
  if (training)
    cache = py::cast(Cache{cfg, batch_first, int(sizeof(S)), on_gpu, std::move(w), std::move(x),
                           std::move(ws), f.lengths});
  py::object cells = py::none();
  if (return_cell_states) cells = result_tb<S>(ctx, std::move(cs), T, B, H, on_gpu, batch_first);
  py::object yo = result_tb<S>(ctx, std::move(y), T, B, O, on_gpu, batch_first);
  return py::make_tuple(yo, result<S>(ctx, std::move(hT), {B, O}, on_gpu),
                        result<S>(ctx, std::move(cT), {B, H}, on_gpu), cache, cells);
}

py::tuple forward(const py::object& x, const py::object& W, const py::object& R,
                  const py::object& b, const py::object& h0, const py::object& c0,
                  const py::object& batch_first_, const py::object& training_,
                  const py::object& reverse_, const py::object& lengths, const py::object& W_hr,
                  const py::object& peephole, const py::object& clip,
                  const py::object& input_forget_, const py::object& return_cell_states_,
                  const py::object& weight_dtype) {
  const bool batch_first = flag("batch_first", batch_first_),
             training = flag("training", training_), reverse = flag("reverse", reverse_),
             input_forget = flag("input_forget", input_forget_),
             return_cell_states = flag("return_cell_states", return_cell_states_);
  if (!weight_dtype.is_none())
    throw py::value_error(
        "weight_dtype: the CUDA path takes None only (bfloat16 weights run on "
        "the CPU, device='cpu')");
  GpuArgs gpu;
  const py::object x_ = gpu.take("x", x), W_ = gpu.take("W", W), R_ = gpu.take("R", R),
                   b_ = gpu.take("b", b), h0_ = gpu.take("h0", h0), c0_ = gpu.take("c0", c0),
                   W_hr_ = gpu.take("W_hr", W_hr), peephole_ = gpu.take("peephole", peephole);
  no_gpu_lengths(lengths);
  ForwardArgs f = check_forward(x_, W_, R_, b_, h0_, c0_, batch_first, reverse, lengths, W_hr_,
                                peephole_, clip, input_forget, py::none());
  gpu.wait_for_producers();
  return f.size == 4 ? forward_impl<float>(f, gpu, batch_first, training, return_cell_states)
                     : forward_impl<double>(f, gpu, batch_first, training, return_cell_states);
}

template <typename S>
py::tuple backward_impl(const Cache& cache, const GpuArgs& gpu, const Arg& dy_arg,
                        const Arg& dh_arg, const Arg& dc_arg) {
  Config cfg = cache.cfg;
  if (cache.lengths) cfg.lengths = cache.lengths->data();
  const int64_t T = cfg.T, B = cfg.B, I = cfg.I, H = cfg.H, P = cfg.P, O = cfg.O(), G = 4 * H;
  const bool bf = cache.batch_first, on_gpu = cache.on_gpu;
  lc::Context& ctx = context();
  lc::Buffer dy, dh, dc;
  const S* pdy = nullptr;
  if (const void* p = gpu.ptr("dy"); p && bf) {
    dy = lc::Buffer(dy_arg.a.nbytes());
    lc::swap01<S>(ctx, dy.as<S>(), static_cast<const S*>(p), B, T, O);
    pdy = dy.as<S>();
  } else {
    pdy = device_input<S>(ctx, gpu, "dy", dy_arg, bf ? swap01(dy_arg.a) : dy_arg.a, false, dy);
  }
  const S* pdh = device_input<S>(ctx, gpu, "dh", dh_arg, dh_arg.a, false, dh);
  const S* pdc = device_input<S>(ctx, gpu, "dc", dc_arg, dc_arg.a, false, dc);
  lc::Buffer dx = device_array<S>(T * B * I), dh0 = device_array<S>(B * O),
             dc0 = device_array<S>(B * H), dW = device_array<S>(G * I), dR = device_array<S>(G * O),
             db = device_array<S>(G), dW_hr = device_array<S>(P * H),
             dpeep = device_array<S>(cache.w.has_peephole ? 3 * H : 0),
             scratch = device_array<S>(lc::backward_scratch_size<S>(cfg));
  {
    WithoutGil nogil;
    const lstm_ext::Grads<S> g{dW.as<S>(), dR.as<S>(), db.as<S>(), dW_hr.as<S>(), dpeep.as<S>()};
    lc::lstm_backward<S>(ctx, dx.as<S>(), dh0.as<S>(), dc0.as<S>(), g, scratch.as<S>(),
                         cache.workspace.as<S>(), cache.x.as<S>(), pdy, pdh, pdc,
                         cache.w.weights<S>(), cfg);
    ctx.synchronize();
  }
  py::object dW_hr_o = py::none(), dpeep_o = py::none();
  if (P > 0) dW_hr_o = result<S>(ctx, std::move(dW_hr), {P, H}, on_gpu);
  if (cache.w.has_peephole) dpeep_o = result<S>(ctx, std::move(dpeep), {3 * H}, on_gpu);
  return py::make_tuple(result_tb<S>(ctx, std::move(dx), T, B, I, on_gpu, bf),
                        result<S>(ctx, std::move(dh0), {B, O}, on_gpu),
                        result<S>(ctx, std::move(dc0), {B, H}, on_gpu),
                        result<S>(ctx, std::move(dW), {G, I}, on_gpu),
                        result<S>(ctx, std::move(dR), {G, O}, on_gpu),
                        result<S>(ctx, std::move(db), {G}, on_gpu), dW_hr_o, dpeep_o);
}

py::tuple backward(const py::object& cache_obj, const py::object& dy, const py::object& dh,
                   const py::object& dc) {
  const Cache& cache = check_cache<Cache>(cache_obj);
  GpuArgs gpu;
  const Arg dy_ = opt_arg("dy", gpu.take("dy", dy)), dh_ = opt_arg("dh", gpu.take("dh", dh)),
            dc_ = opt_arg("dc", gpu.take("dc", dc));
  check_backward(cache.cfg, cache.batch_first, cache.size, dy_, dh_, dc_);
  gpu.wait_for_producers();
  return cache.size == 4 ? backward_impl<float>(cache, gpu, dy_, dh_, dc_)
                         : backward_impl<double>(cache, gpu, dy_, dh_, dc_);
}

template <typename S>
py::tuple step_impl(const StepArgs& a, const GpuArgs& gpu) {
  const Config& cfg = a.cfg;
  const int64_t scratch_size = lc::step_scratch_size(cfg);  // refuses sizes before any copy
  const bool on_gpu = gpu.ptr("x") != nullptr;
  lc::Context& ctx = context();
  lc::Buffer x, h, c;
  const S* px = device_input<S>(ctx, gpu, "x", a.x, a.x.a, false, x);
  const S* ph = device_input<S>(ctx, gpu, "h", a.h, a.h.a, false, h);
  const S* pc = device_input<S>(ctx, gpu, "c", a.c, a.c.a, false, c);
  const DeviceLayer w = device_layer<S>(ctx, gpu, a.l, false);
  lc::Buffer h_out = device_array<S>(cfg.B * cfg.O()), c_out = device_array<S>(cfg.B * cfg.H),
             scratch = device_array<S>(scratch_size);
  {
    WithoutGil nogil;
    lc::lstm_step<S>(ctx, h_out.as<S>(), c_out.as<S>(), scratch.as<S>(), px, ph, pc, w.weights<S>(),
                     cfg);
    ctx.synchronize();
  }
  return py::make_tuple(result<S>(ctx, std::move(h_out), {cfg.B, cfg.O()}, on_gpu),
                        result<S>(ctx, std::move(c_out), {cfg.B, cfg.H}, on_gpu));
}

py::tuple step(const py::object& x, const py::object& h, const py::object& c, const py::object& W,
               const py::object& R, const py::object& b, const py::object& W_hr,
               const py::object& peephole, const py::object& clip, const py::object& input_forget) {
  GpuArgs gpu;
  const StepArgs a =
      check_step(gpu.take("x", x), gpu.take("h", h), gpu.take("c", c), gpu.take("W", W),
                 gpu.take("R", R), gpu.take("b", b), gpu.take("W_hr", W_hr),
                 gpu.take("peephole", peephole), clip, flag("input_forget", input_forget));
  gpu.wait_for_producers();
  return a.size == 4 ? step_impl<float>(a, gpu) : step_impl<double>(a, gpu);
}

// A host array on the GPU, as a DeviceArray (e.g. weights uploaded once).
py::object to_device(const py::object& obj) {
  const Arg a = arg("a", obj);
  lc::Context& ctx = context();
  const std::vector<int64_t> shape = shape_of(a.a);
  if (float_size(a) == 4)
    return device_result<float>(upload<float>(ctx, contiguous<float>(a.a)), shape);
  return device_result<double>(upload<double>(ctx, contiguous<double>(a.a)), shape);
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
  WithoutGil nogil;
  return lc::time_on_stream(
      ctx,
      [&] {
        lc::lstm_forward<S>(ctx, y.as<S>(), hT.as<S>(), cT.as<S>(), nullptr, ws.as<S>(), x.as<S>(),
                            nullptr, nullptr, w, cfg, backward);
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
  guard_exit();  // the teardown waits for calls in flight (ExitGuard)
  const py::module_ core = py::module_::import("lstm_ext._core");
  def_buffer_cache(m, &core);  // one cache of freed buffers with _core's

  // module_local, as _core's Cache (bindings.cpp): both are the anonymous
  // namespace's Cache, one type by name where the runtime compares names.
  py::class_<Cache> cache(m, "Cache", "What forward on the GPU keeps for backward: opaque.",
                          py::dynamic_attr(), py::module_local());
  def_cache_common(cache);
  cache
      .def_property_readonly(
          "dtype", [](const Cache& c) { return py::dtype(c.size == 4 ? "float32" : "float64"); })
      .def_property_readonly("device", [](const Cache&) { return "cuda"; })
      .def_property_readonly(
          "on_gpu", [](const Cache& c) { return c.on_gpu; },
          "Whether backward returns GPU arrays (forward's x was one).")
      .def_property_readonly("nbytes", &Cache::nbytes, "Bytes it holds on the GPU.")
      .def("__repr__", [](const Cache& c) {
        return "<lstm_ext Cache T=" + std::to_string(c.cfg.T) + " B=" + std::to_string(c.cfg.B) +
               " I=" + std::to_string(c.cfg.I) + " H=" + std::to_string(c.cfg.H) +
               (c.cfg.P ? " P=" + std::to_string(c.cfg.P) : "") +
               (c.size == 4 ? " float32" : " float64") + " on cuda>";
      });

  py::class_<DeviceArray> device_array(
      m, "DeviceArray",
      "A result on the GPU; cupy.asarray() and torch.as_tensor() take it "
      "without a copy, get() copies it to a NumPy array.",
      py::module_local());
  made_by_cpp_only(device_array, "DeviceArray: made only by lstm_ext's GPU calls");
  device_array
      .def_property_readonly("shape",
                             [](const DeviceArray& d) { return py::tuple(py::cast(d.shape)); })
      .def_property_readonly(
          "dtype",
          [](const DeviceArray& d) { return py::dtype(d.size == 4 ? "float32" : "float64"); })
      .def_property_readonly("__cuda_array_interface__",
                             [](const DeviceArray& d) {
                               py::dict i;
                               i["shape"] = py::tuple(py::cast(d.shape));
                               i["typestr"] = d.size == 4 ? "<f4" : "<f8";
                               i["data"] = py::make_tuple(
                                   reinterpret_cast<uintptr_t>(d.buffer->data()), false);
                               i["strides"] = py::none();
                               i["stream"] = py::none();  // ready: the call waited for it
                               i["version"] = 3;
                               return i;
                             })
      .def(
          "get",
          [](const DeviceArray& d) -> py::object {
            if (d.size == 4) return download<float>(context(), *d.buffer, d.shape);
            return download<double>(context(), *d.buffer, d.shape);
          },
          "A NumPy copy.")
      .def("__repr__", [](const DeviceArray& d) {
        return "<lstm_ext DeviceArray " + shape_str(d.shape) +
               (d.size == 4 ? " float32" : " float64") + " on cuda>";
      });
  m.def("to_device", &to_device, py::arg("a"),
        "A NumPy array copied to the GPU, as a DeviceArray.");

  def_calls(m, &forward, &backward, &step);
  m.def(
      "_set_poison", [](bool on) { g_poison = on; },
      "Tests only: fill every new output and workspace buffer with NaN.");
  m.def("_bench", &bench, py::arg("T"), py::arg("B"), py::arg("I"), py::arg("H"),
        py::arg("dtype") = "float32", py::arg("backward") = false, py::arg("warmup") = 3,
        py::arg("reps") = 20,
        "Benchmarks: ms of each forward (or forward+backward) call on GPU-resident data.");
  m.def("device_count", &lc::device_count, "GPUs visible to this process.");
  m.def("describe", &lc::describe, "The GPU, driver, runtime and cuBLAS found.");
}
