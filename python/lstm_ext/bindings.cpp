// lstm_ext._core: the adapter between NumPy and the C++ core. bind_args.h
// checks every argument (naming it in the message); this file makes inputs
// contiguous, allocates the outputs, releases the GIL and calls the core.
// No math lives here.
#include <algorithm>

#include "bind_args.h"
#include "lstm_ext/linear.h"
#include "lstm_ext/model.h"
#include "lstm_ext/runtime.h"

namespace {

using namespace lstm_ext_bind;  // NOLINT: the shared argument checks

// ---- the cache ------------------------------------------------------------------

// What forward keeps for backward: its configuration, private copies of its
// weights, and the workspace lstm_forward filled (it holds x's rows).
// Type-erased over the dtype (the arrays carry it).
struct Cache {
  Config cfg;  // cfg.lengths is re-pointed at `lengths` for each call
  bool batch_first;
  py::object W, R;               // None where the workspace keeps them
  py::object b, W_hr, peephole;  // arrays, or None where forward had none
  py::array workspace;
  std::optional<py::array_t<int64_t>> lengths;
};

// packed: pack_weights' buffer for these weights and shape (checked), or null.
template <typename S>
py::tuple forward_impl(ForwardArgs& f, bool batch_first, bool training, bool return_cell_states,
                       const S* packed = nullptr) {
  Config cfg = f.cfg;
  const auto& lengths = f.lengths;
  if (lengths) cfg.lengths = lengths->data();
  const int64_t ws_size = lstm_ext::forward_workspace_size(cfg, training);  // throws on overflow
  const py::array& x_tb = f.x_tb;
  const LayerArgs& l = f.l;
  const Arg &h0_arg = f.h0, &c0_arg = f.c0;

  // Backward reads no x: training keeps the rows it used in the workspace
  // (so x needs no private copy: changing it after forward changes nothing).
  const carray<S> x = contiguous<S>(x_tb);
  const LayerArrays<S> w = layer_arrays<S>(l, training);
  const opt_carray<S> h0 = opt_contiguous<S>(h0_arg), c0 = opt_contiguous<S>(c0_arg);
  carray<S> y = empty<S>({cfg.T, cfg.B, cfg.O()}), hT = empty<S>({cfg.B, cfg.O()}),
            cT = empty<S>({cfg.B, cfg.H}), ws = empty<S>({ws_size});
  opt_carray<S> cs;
  if (return_cell_states) cs = empty<S>({cfg.T, cfg.B, cfg.H});
  {
    S *py_ = y.mutable_data(), *ph = hT.mutable_data(), *pc = cT.mutable_data(),
      *pcs = mut_or_null(cs), *pw = ws.mutable_data();
    const S *px = x.data(), *ph0 = ptr_or_null(h0), *pc0 = ptr_or_null(c0);
    lstm_ext::Weights<S> weights = w.weights();
    weights.packed = packed;
    WithoutGil nogil;
    lstm_ext::lstm_forward(py_, ph, pc, pcs, pw, px, ph0, pc0, weights, cfg, training);
  }
  py::object cache = py::none();
  if (training) {
    const bool kept = lstm_ext::training_keeps_weights(cfg);
    cache = py::cast(Cache{cfg, batch_first, kept ? py::object(py::none()) : py::object(w.W),
                           kept ? py::object(py::none()) : py::object(w.R), or_none_arr(w.b),
                           or_none_arr(w.W_hr), or_none_arr(w.peephole), ws, lengths});
  }
  auto tb = [&](const py::array& a) { return batch_first ? swap01(a) : a; };
  return py::make_tuple(tb(y), hT, cT, cache, cs ? py::object(tb(*cs)) : py::object(py::none()));
}

py::tuple forward(const py::object& x, const py::object& W, const py::object& R,
                  const py::object& b, const py::object& h0, const py::object& c0,
                  const py::object& batch_first_, const py::object& training_,
                  const py::object& reverse, const py::object& lengths, const py::object& W_hr,
                  const py::object& peephole, const py::object& clip,
                  const py::object& input_forget, const py::object& return_cell_states_,
                  const py::object& weight_dtype) {
  const bool batch_first = flag("batch_first", batch_first_),
             training = flag("training", training_),
             return_cell_states = flag("return_cell_states", return_cell_states_);
  ForwardArgs f =
      check_forward(x, W, R, b, h0, c0, batch_first, flag("reverse", reverse), lengths, W_hr,
                    peephole, clip, flag("input_forget", input_forget), weight_dtype);
  if (f.cfg.bf16_weights && training)
    throw py::value_error("weight_dtype='bfloat16' is for inference: expected training=False");
  return f.size == 4 ? forward_impl<float>(f, batch_first, training, return_cell_states)
                     : forward_impl<double>(f, batch_first, training, return_cell_states);
}

// ---- weights packed once (lstm.h: pack_weights) -----------------------------------

// The layer's arguments checked as forward checks them, I from W.
LayerArgs check_packed_layer(const py::object& W, const py::object& R, const py::object& b,
                             const py::object& W_hr, const py::object& peephole,
                             const py::object& clip, bool input_forget,
                             const py::object& weight_dtype) {
  const Arg w = arg("W", W);
  const int size = float_size(w);
  check_ndim(w, 2, "[4H,I]");
  LayerArgs l =
      check_layer(W, R, b, W_hr, peephole, clip, input_forget, size, w.a.shape(1), dtype_source(w));
  l.cfg.bf16_weights = check_weight_dtype(weight_dtype, size);
  return l;
}

template <typename S>
py::array pack_impl(const LayerArgs& l) {
  const LayerArrays<S> w = layer_arrays<S>(l, false);
  carray<S> packed = empty<S>({lstm_ext::packed_weights_size(l.cfg)});
  {
    S* p = packed.mutable_data();
    const lstm_ext::Weights<S> weights = w.weights();
    WithoutGil nogil;
    lstm_ext::pack_weights(p, weights, l.cfg);
  }
  return packed;
}

py::array pack_weights(const py::object& W, const py::object& R, const py::object& b,
                       const py::object& W_hr, const py::object& peephole, const py::object& clip,
                       const py::object& input_forget, const py::object& weight_dtype) {
  const LayerArgs l = check_packed_layer(W, R, b, W_hr, peephole, clip,
                                         flag("input_forget", input_forget), weight_dtype);
  return l.W.a.itemsize() == 4 ? pack_impl<float>(l) : pack_impl<double>(l);
}

// An inference forward on weights packed once: `packed` must be what
// pack_weights returned for the same arrays (lstm_ext.PackedLayer keeps the
// two together); its size and dtype are checked here, its header by the core.
py::tuple forward_packed(const py::object& packed, const py::object& x, const py::object& W,
                         const py::object& R, const py::object& b, const py::object& h0,
                         const py::object& c0, const py::object& batch_first_,
                         const py::object& reverse, const py::object& lengths,
                         const py::object& W_hr, const py::object& peephole, const py::object& clip,
                         const py::object& input_forget, const py::object& return_cell_states_,
                         const py::object& weight_dtype) {
  const bool batch_first = flag("batch_first", batch_first_),
             return_cell_states = flag("return_cell_states", return_cell_states_);
  ForwardArgs f =
      check_forward(x, W, R, b, h0, c0, batch_first, flag("reverse", reverse), lengths, W_hr,
                    peephole, clip, flag("input_forget", input_forget), weight_dtype);
  const Arg p = arg("packed", packed);
  check_dtype(p, f.size, dtype_source(f.x));
  check_shape(p, {lstm_ext::packed_weights_size(f.cfg)}, "[packed_weights_size]");
  if (f.size == 4) {
    const carray<float> pf = contiguous<float>(p.a);
    return forward_impl<float>(f, batch_first, false, return_cell_states, pf.data());
  }
  const carray<double> pd = contiguous<double>(p.a);
  return forward_impl<double>(f, batch_first, false, return_cell_states, pd.data());
}

template <typename S>
py::tuple backward_impl(const Cache& cache, const Arg& dy_arg, const Arg& dh_arg,
                        const Arg& dc_arg) {
  Config cfg = cache.cfg;
  if (cache.lengths) cfg.lengths = cache.lengths->data();
  const int64_t T = cfg.T, B = cfg.B, I = cfg.I, H = cfg.H, P = cfg.P, O = cfg.O();
  opt_carray<S> dy;
  if (dy_arg.given()) dy = contiguous<S>(cache.batch_first ? swap01(dy_arg.a) : dy_arg.a);
  const opt_carray<S> dh = opt_contiguous<S>(dh_arg), dc = opt_contiguous<S>(dc_arg);
  auto get = [](const py::object& a) {
    return a.is_none() ? opt_carray<S>() : opt_carray<S>(contiguous<S>(a));
  };
  const opt_carray<S> W = get(cache.W), R = get(cache.R), b = get(cache.b), W_hr = get(cache.W_hr),
                      peep = get(cache.peephole), ws = get(cache.workspace);
  carray<S> dx = empty<S>({T, B, I}), dh0 = empty<S>({B, O}), dc0 = empty<S>({B, H}),
            dW = empty<S>({4 * H, I}), dR = empty<S>({4 * H, O}), db = empty<S>({4 * H});
  opt_carray<S> dW_hr, dpeep;
  if (P > 0) dW_hr = empty<S>({P, H});
  if (peep) dpeep = empty<S>({3 * H});
  carray<S> scratch = empty<S>({lstm_ext::backward_scratch_size(cfg)});
  {
    const lstm_ext::Grads<S> g{dW.mutable_data(), dR.mutable_data(), db.mutable_data(),
                               mut_or_null(dW_hr), mut_or_null(dpeep)};
    const lstm_ext::Weights<S> w{ptr_or_null(W), ptr_or_null(R), ptr_or_null(b), ptr_or_null(W_hr),
                                 ptr_or_null(peep)};
    S *pdx = dx.mutable_data(), *pdh0 = dh0.mutable_data(), *pdc0 = dc0.mutable_data(),
      *pscr = scratch.mutable_data();
    const S *pws = ptr_or_null(ws), *pdy = ptr_or_null(dy), *pdh = ptr_or_null(dh),
            *pdc = ptr_or_null(dc);
    WithoutGil nogil;  // x: the workspace holds the rows forward used
    lstm_ext::lstm_backward(pdx, pdh0, pdc0, g, pscr, pws, nullptr, pdy, pdh, pdc, w, cfg);
  }
  return py::make_tuple(cache.batch_first ? swap01(dx) : py::array(dx), dh0, dc0, dW, dR, db,
                        or_none_arr(dW_hr), or_none_arr(dpeep));
}

py::tuple backward(const py::object& cache_obj, const py::object& dy_obj, const py::object& dh_obj,
                   const py::object& dc_obj) {
  const Cache& cache = check_cache<Cache>(cache_obj);
  const int size = int(cache.workspace.itemsize());
  const Arg dy = opt_arg("dy", dy_obj), dh = opt_arg("dh", dh_obj), dc = opt_arg("dc", dc_obj);
  check_backward(cache.cfg, cache.batch_first, size, dy, dh, dc);
  return size == 4 ? backward_impl<float>(cache, dy, dh, dc)
                   : backward_impl<double>(cache, dy, dh, dc);
}

template <typename S>
py::tuple step_impl(const Arg& x_arg, const Arg& h_arg, const Arg& c_arg, const LayerArgs& l,
                    const Config& cfg) {
  const carray<S> x = contiguous<S>(x_arg.a);
  const LayerArrays<S> w = layer_arrays<S>(l, false);
  const opt_carray<S> h = opt_contiguous<S>(h_arg), c = opt_contiguous<S>(c_arg);
  carray<S> h_out = empty<S>({cfg.B, cfg.O()}), c_out = empty<S>({cfg.B, cfg.H});
  // The scratch: a small one stays with the calling thread from call to
  // call (a NumPy array for each of a stream's steps cost 0.2 us of 6).
  constexpr int64_t kKeptScratch = 16384;  // elements
  const int64_t n_scratch = lstm_ext::step_scratch_size(cfg);
  thread_local std::vector<S> kept = std::vector<S>(size_t(kKeptScratch));
  std::optional<carray<S>> big;
  if (n_scratch > kKeptScratch) big = empty<S>({n_scratch});
  S* ps = big ? big->mutable_data() : kept.data();
  {
    S *ph = h_out.mutable_data(), *pc = c_out.mutable_data();
    const S *px = x.data(), *phi = ptr_or_null(h), *pci = ptr_or_null(c);
    const lstm_ext::Weights<S> weights = w.weights();
    WithoutGil nogil;
    lstm_ext::lstm_step(ph, pc, ps, px, phi, pci, weights, cfg);
  }
  return py::make_tuple(h_out, c_out);
}

py::tuple step(const py::object& x, const py::object& h, const py::object& c, const py::object& W,
               const py::object& R, const py::object& b, const py::object& W_hr,
               const py::object& peephole, const py::object& clip, const py::object& input_forget) {
  const StepArgs a =
      check_step(x, h, c, W, R, b, W_hr, peephole, clip, flag("input_forget", input_forget));
  lstm_ext::step_scratch_size(a.cfg);  // sizes refused (ValueError) before x is copied
  return a.size == 4 ? step_impl<float>(a.x, a.h, a.c, a.l, a.cfg)
                     : step_impl<double>(a.x, a.h, a.c, a.l, a.cfg);
}

// ---- workspace sizes --------------------------------------------------------------

// The Config of a size query. ragged: the call has lengths (the core only
// tests the pointer for null to size the workspace, never reads it here).
Config size_config(int64_t T, int64_t B, int64_t I, int64_t H, int64_t P, bool reverse,
                   bool ragged) {
  static const int64_t kSomeLengths = 0;
  Config c;
  c.T = T, c.B = B, c.I = I, c.H = H, c.P = P, c.reverse = reverse;
  c.lengths = ragged ? &kSomeLengths : nullptr;
  return c;
}

// ---- the fully connected layer (linear.h), for lstm_ext.nn.Linear ---------------

// An array the call adds into: an ndarray of exactly S in native byte order,
// the shape `want`, C-contiguous and writeable (a copy could not take the sums).
template <typename S>
void check_accumulator(const Arg& a, const std::vector<int64_t>& want, const char* letters) {
  if (!py::isinstance<py::array>(a.original))
    throw py::type_error(std::string(a.name) + ": expected a NumPy array to add into, got " +
                         type_name(a.original));
  const py::dtype dt = a.a.dtype();
  if (dt.kind() != 'f' || dt.itemsize() != py::ssize_t(sizeof(S)))  // x's, and only x's
    throw py::type_error(std::string(a.name) + ": expected dtype " +
                         (sizeof(S) == 4 ? "float32" : "float64") + " to match x, got " +
                         dtype_str(a.a));
  check_shape(a, want, letters);
  const char* got = !a.a.writeable()                      ? "a read-only array"
                    : !(a.a.flags() & py::array::c_style) ? "an array that is not C-contiguous"
                    : !py::isinstance<py::array_t<S>>(a.original)
                        ? "an array in the other byte order"
                        : nullptr;
  if (got)
    throw py::value_error(std::string(a.name) + ": expected a writeable, C-contiguous array " +
                          "in native byte order to add into, got " + got);
}

// x [N,K], W [M,K], b [M] or None: checked, with N, K, M.
struct LinearArgs {
  Arg x, W, b;
  int size;
  int64_t N, K, M;
};

LinearArgs check_linear(const py::object& x_obj, const py::object& W_obj, const py::object& b_obj) {
  LinearArgs l{arg("x", x_obj), arg("W", W_obj), opt_arg("b", b_obj), 0, 0, 0, 0};
  l.size = float_size(l.x);
  check_ndim(l.x, 2, "[N,K]");
  check_dtype(l.W, l.size, dtype_source(l.x));
  check_ndim(l.W, 2, "[M,K]");
  l.N = l.x.a.shape(0), l.K = l.x.a.shape(1), l.M = l.W.a.shape(0);
  check_shape(l.W, {l.M, l.K}, "[M,K] (K from x)");
  lstm_ext::check_linear_sizes(l.N, l.K, l.M);  // before y [N,M] or dx [N,K] is allocated
  if (l.b.given()) {
    check_dtype(l.b, l.size, dtype_source(l.x));
    check_shape(l.b, {l.M}, "[M] (M from W)");
  }
  return l;
}

template <typename S>
py::array linear_forward_impl(const LinearArgs& l) {
  const carray<S> x = contiguous<S>(l.x.a), W = contiguous<S>(l.W.a);
  const opt_carray<S> b = opt_contiguous<S>(l.b);
  carray<S> y = empty<S>({l.N, l.M});
  {
    S* py_ = y.mutable_data();
    const S *px = x.data(), *pW = W.data(), *pb = ptr_or_null(b);
    WithoutGil nogil;
    lstm_ext::linear_forward(py_, px, pW, pb, l.N, l.K, l.M);
  }
  return y;
}

py::array linear_forward(const py::object& x, const py::object& W, const py::object& b) {
  const LinearArgs l = check_linear(x, W, b);
  return l.size == 4 ? linear_forward_impl<float>(l) : linear_forward_impl<double>(l);
}

template <typename S>
py::object linear_backward_impl(const LinearArgs& l, const Arg& dy_arg, const Arg& dW_arg,
                                const Arg& db_arg, bool with_dx) {
  check_accumulator<S>(dW_arg, {l.M, l.K}, "[M,K] (W's)");
  if (db_arg.given()) check_accumulator<S>(db_arg, {l.M}, "[M] (M from W)");
  const carray<S> dy = contiguous<S>(dy_arg.a), x = contiguous<S>(l.x.a), W = contiguous<S>(l.W.a);
  const auto dW = py::reinterpret_borrow<py::array_t<S>>(dW_arg.a);
  std::optional<py::array_t<S>> db;
  if (db_arg.given()) db = py::reinterpret_borrow<py::array_t<S>>(db_arg.a);
  opt_carray<S> dx;
  if (with_dx) dx = empty<S>({l.N, l.K});
  {
    S *pdx = mut_or_null(dx), *pdW = static_cast<S*>(dW.request().ptr),
      *pdb = db ? static_cast<S*>(db->request().ptr) : nullptr;
    const S *pdy = dy.data(), *px = x.data(), *pW = W.data();
    WithoutGil nogil;
    lstm_ext::linear_backward(pdx, pdW, pdb, pdy, px, pW, l.N, l.K, l.M);
  }
  return dx ? py::object(*dx) : py::object(py::none());
}

py::object linear_backward(const py::object& dy_obj, const py::object& x, const py::object& W,
                           const py::object& dW_obj, const py::object& db_obj,
                           const py::object& with_dx_) {
  const bool with_dx = flag("with_dx", with_dx_);
  const LinearArgs l = check_linear(x, W, py::none());
  const Arg dy = arg("dy", dy_obj), dW = arg("dW", dW_obj), db = opt_arg("db", db_obj);
  check_dtype(dy, l.size, dtype_source(l.x));
  check_shape(dy, {l.N, l.M}, "[N,M] (N from x, M from W)");
  return l.size == 4 ? linear_backward_impl<float>(l, dy, dW, db, with_dx)
                     : linear_backward_impl<double>(l, dy, dW, db, with_dx);
}

void def_linear(py::module_& m) {
  m.def("linear_forward", &linear_forward, py::arg("x"), py::arg("W"), py::arg("b") = py::none(),
        "y [N,M] = x [N,K] W^T + b on lstm_ext's threads (linear.h), for lstm_ext.nn.Linear.");
  m.def("linear_backward", &linear_backward, py::arg("dy"), py::arg("x"), py::arg("W"),
        py::arg("dW"), py::arg("db") = py::none(), py::kw_only(), py::arg("with_dx") = true,
        "dW += dy^T x and db += dy's column sums in place; returns dx = dy W (None without "
        "with_dx). For lstm_ext.nn.Linear.");
}

void def_sizes(py::module_& m) {
  m.def(
      "forward_workspace_size",
      [](int64_t T, int64_t B, int64_t I, int64_t H, int64_t P, bool training, bool reverse,
         bool ragged) {
        return lstm_ext::forward_workspace_size(size_config(T, B, I, H, P, reverse, ragged),
                                                training);
      },
      py::arg("T"), py::arg("B"), py::arg("I"), py::arg("H"), py::arg("P") = 0, py::kw_only(),
      py::arg("training") = true, py::arg("reverse") = false, py::arg("ragged") = false,
      "Elements of the workspace forward keeps (the cache's; times the item size for bytes). "
      "ValueError where a size is negative or a byte count would pass 2^63.");
  m.def(
      "backward_scratch_size",
      [](int64_t T, int64_t B, int64_t I, int64_t H, int64_t P, bool reverse, bool ragged) {
        return lstm_ext::backward_scratch_size(size_config(T, B, I, H, P, reverse, ragged));
      },
      py::arg("T"), py::arg("B"), py::arg("I"), py::arg("H"), py::arg("P") = 0, py::kw_only(),
      py::arg("reverse") = false, py::arg("ragged") = false,
      "Elements of the scratch backward allocates for the call.");
  m.def(
      "step_scratch_size",
      [](int64_t B, int64_t I, int64_t H, int64_t P) {
        return lstm_ext::step_scratch_size(size_config(1, B, I, H, P, false, false));
      },
      py::arg("B"), py::arg("I"), py::arg("H"), py::arg("P") = 0,
      "Elements of the scratch step allocates for the call.");
}

}  // namespace

// lstm_ext's threads for threadpoolctl (python/lstm_ext/_threadpool.py): it
// finds the library that holds them by the first symbol in the files a
// process has loaded, and calls these through ctypes, as it calls OpenBLAS's
// own. Plain C, so nothing may throw out of them: the count is clamped to
// [1, kMaxThreads], and a pool that cannot be made (no memory) stays as it
// was, which the return value (0, else -1) says. threadpoolctl sets every
// library's count as a block begins and again as it ends; a new count makes
// a new pool (threads started anew, TeamBackoff's state forgotten: 0.24 ms
// a block from two threads to one and back), a count the pool has already
// keeps it.
extern "C" __attribute__((visibility("default"))) int lstm_ext_threadpool_get_num_threads() {
  try {
    return lstm_ext::planned_num_threads();  // listing the pools starts none
  } catch (...) {
    return 1;
  }
}
extern "C" __attribute__((visibility("default"))) int lstm_ext_threadpool_set_num_threads(int n) {
  try {
    n = std::clamp(n, 1, lstm_ext::kMaxThreads);
    if (n != lstm_ext::planned_num_threads()) lstm_ext::set_num_threads(n);
    return 0;
  } catch (...) {
    return -1;
  }
}

PYBIND11_MODULE(_core, m) {
  m.doc() = "lstm_ext's compiled core; use the functions re-exported by lstm_ext.";
  guard_exit();  // the teardown waits for calls in flight (ExitGuard)

  // module_local: two builds of _core in one process (dev/ab.py) register their
  // own Cache; where the C++ runtime compares types by name (Clang with
  // libstdc++) a global registration clashes ("already registered").
  py::class_<Cache> cache(m, "Cache", "What forward keeps for backward: opaque, read-only.",
                          py::module_local());
  def_cache_common(cache);
  cache.def_property_readonly("dtype", [](const Cache& c) { return c.workspace.dtype(); })
      .def_property_readonly("nbytes",
                             [](const Cache& c) {
                               py::ssize_t n = 0;
                               for (const py::object* a : {&c.W, &c.R, &c.b, &c.W_hr, &c.peephole})
                                 if (!a->is_none()) n += a->cast<py::array>().nbytes();
                               return n + c.workspace.nbytes();
                             })
      .def("__repr__", [](const Cache& c) {
        return "<lstm_ext Cache T=" + std::to_string(c.cfg.T) + " B=" + std::to_string(c.cfg.B) +
               " I=" + std::to_string(c.cfg.I) + " H=" + std::to_string(c.cfg.H) +
               (c.cfg.P ? " P=" + std::to_string(c.cfg.P) : "") + " " + dtype_str(c.workspace) +
               ">";
      });

  def_calls(m, &forward, &backward, &step);
  m.def("pack_weights", &pack_weights, py::arg("W"), py::arg("R"), py::arg("b") = py::none(),
        py::kw_only(), py::arg("W_hr") = py::none(), py::arg("peephole") = py::none(),
        py::arg("clip") = py::none(), py::arg("input_forget") = false,
        py::arg("weight_dtype") = py::none(),
        "W and R packed as forward's products read them (lstm.h: pack_weights), checked as "
        "forward checks them; for lstm_ext.PackedLayer.");
  m.def("forward_packed", &forward_packed, py::arg("packed"), py::arg("x"), py::arg("W"),
        py::arg("R"), py::arg("b") = py::none(), py::arg("h0") = py::none(),
        py::arg("c0") = py::none(), py::kw_only(), py::arg("batch_first") = false,
        py::arg("reverse") = false, py::arg("lengths") = py::none(), py::arg("W_hr") = py::none(),
        py::arg("peephole") = py::none(), py::arg("clip") = py::none(),
        py::arg("input_forget") = false, py::arg("return_cell_states") = false,
        py::arg("weight_dtype") = py::none(),
        "An inference forward reading pack_weights' buffer for the same W and R; for "
        "lstm_ext.PackedLayer.");
  def_sizes(m);
  def_linear(m);
  m.def("inference_chunk", &lstm_ext::inference_chunk, py::arg("B"),
        "Steps whose input projection inference keeps at once, for a batch of B.");
  m.def(
      "_model_from_bytes",
      [](const py::bytes& data) {
        const std::string s = data;  // the C++ reader, for tests: its checks, its messages
        try {
          const lstm_ext::Model model = lstm_ext::Model::from_bytes(
              reinterpret_cast<const unsigned char*>(s.data()), s.size());
          const lstm_ext::ModelConfig& c = model.config();
          py::dict d;
          d["input_size"] = c.input_size;
          d["hidden_size"] = c.hidden_size;
          d["num_layers"] = c.num_layers;
          d["proj_size"] = c.proj_size;
          d["bidirectional"] = c.bidirectional;
          d["bias"] = c.bias;
          return d;
        } catch (const lstm_ext::FormatError& e) {
          throw py::value_error(e.what());
        }
      },
      py::arg("data"), "Tests only: lstm_ext::Model::from_bytes, its config or a ValueError.");
  def_buffer_cache(m);
  m.def(
      "cached_empty",
      [](const py::tuple& sizes, const py::dtype& dtype) -> py::array {
        std::vector<int64_t> shape;
        for (const py::handle d : sizes) {
          shape.push_back(d.cast<int64_t>());
          if (shape.back() < 0)
            throw py::value_error("shape: expected sizes >= 0, got " +
                                  std::to_string(shape.back()));
        }
        if (dtype.equal(py::dtype::of<float>())) return empty<float>(shape);
        if (dtype.equal(py::dtype::of<double>())) return empty<double>(shape);
        throw py::type_error("dtype: expected float32 or float64, got " +
                             py::str(dtype).cast<std::string>());
      },
      py::arg("shape"), py::arg("dtype"),
      "An uninitialised C-contiguous array, a large one in a buffer of the cache (as the "
      "arrays lstm_ext's calls return): lstm_ext.nn's own intermediate arrays.");
  m.def("blas_config", &lstm_ext::blas_config, "The BLAS's description of its build.");
  m.def("blas_num_threads", &lstm_ext::blas_num_threads,
        "Threads the BLAS uses: 1 once lstm_ext has run (it parallelises on its own).");
  m.def("get_num_threads", &lstm_ext::get_num_threads, "lstm_ext's threads.");
  m.def("team_backoffs", &lstm_ext::team_backoffs,
        "How often calls' threads were halved (or halved again) since set_num_threads: other "
        "threads kept them off their cores.");
  m.def("cpu_quota_cores", &lstm_ext::cpu_quota_cores,
        "The process's cgroup CPU limit in cores rounded up; 0 where none is set.");
  m.def(
      "set_num_threads",
      [](const py::object& n) {  // an integer (not a bool, nor 2.5), any size
        const std::string range = "[1, " + std::to_string(lstm_ext::kMaxThreads) + "]";
        if (PyBool_Check(n.ptr()) || !PyIndex_Check(n.ptr()))
          throw py::type_error("n: expected an integer in " + range + ", got " + type_name(n));
        const auto i = py::reinterpret_steal<py::object>(PyNumber_Index(n.ptr()));
        if (!i) throw py::error_already_set();
        int overflow = 0;
        const long long v = PyLong_AsLongLongAndOverflow(i.ptr(), &overflow);
        if (overflow || v < 1 || v > lstm_ext::kMaxThreads)  // set_num_threads's words, n as given
          throw py::value_error("lstm_ext: the number of threads must be in " + range + ", got " +
                                py::str(n).cast<std::string>());
        lstm_ext::set_num_threads(int(v));
      },
      py::arg("n"), "Set lstm_ext's threads (results are the same bits for any count).");
  m.def("use_own_pool", &lstm_ext::use_own_pool, py::arg("n"),
        "The calling thread's calls run on a pool of its own of n threads from now on (0: the "
        "process's again); lstm_ext.nn's side-by-side directions.");
  m.def(
      "packed_recurrent_enabled", &lstm_ext::packed_recurrent_enabled,
      "Whether the recurrent product runs on R packed (AVX-512F or AVX2+FMA; else per step in the "
      "BLAS).");
  m.def("packed_recurrent_kernel", &lstm_ext::packed_recurrent_kernel,
        "The packed kernel this CPU runs: 'avx512f', 'avx2' (with FMA) or 'none'.");
  m.def("set_packed_recurrent", &lstm_ext::set_packed_recurrent, py::arg("on"),
        "Switch the packed recurrent product on or off; returns the previous setting.");
  m.def("fused_gate_math", &lstm_ext::fused_gate_math,
        "Whether the gate pass fuses its exps' multiply-adds (FMA instructions in the version this "
        "CPU runs; else each rounds twice).");
  m.def("build_description", &lstm_ext::build_description, "Compiler and options of the core.");
}
