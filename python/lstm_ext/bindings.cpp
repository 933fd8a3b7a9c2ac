// lstm_ext._core: the adapter between NumPy and the C++ core. It checks every
// argument (naming it in the message), makes inputs contiguous, allocates the
// outputs, releases the GIL and calls the core. No math lives here.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "lstm_ext/lstm.h"
#include "lstm_ext/runtime.h"

namespace py = pybind11;
using lstm_ext::Config;

namespace {

// ---- describing arrays in messages ----------------------------------------

std::string shape_str(const std::vector<int64_t>& s) {
  std::ostringstream o;
  o << "(";
  for (size_t k = 0; k < s.size(); ++k) o << (k ? ", " : "") << s[k];
  o << (s.size() == 1 ? ",)" : ")");
  return o.str();
}

std::vector<int64_t> shape_of(const py::array& a) {
  return std::vector<int64_t>(a.shape(), a.shape() + a.ndim());
}

std::string dtype_str(const py::array& a) { return py::str(a.dtype()).cast<std::string>(); }

std::string type_name(const py::handle& obj) {
  return py::str(py::type::of(obj).attr("__name__")).cast<std::string>();
}

// ---- checking arguments -----------------------------------------------------

// An argument as the user passed it, converted to an ndarray (lists work).
// `a` is empty when the argument is optional and None.
struct Arg {
  const char* name;
  py::object original;
  py::array a;
  bool given() const { return !original.is_none(); }
};

Arg arg(const char* name, const py::object& obj) {
  py::array a;
  try {
    a = py::array::ensure(obj);
  } catch (py::error_already_set&) {
  }
  if (!a)
    throw py::type_error(std::string(name) + ": expected a NumPy array, got " + type_name(obj));
  return {name, obj, a};
}

Arg opt_arg(const char* name, const py::object& obj) {
  return obj.is_none() ? Arg{name, obj, py::array()} : arg(name, obj);
}

// The item size (4 or 8) of a float32/float64 array, or a TypeError.
int float_size(const Arg& x) {
  const py::dtype dt = x.a.dtype();
  if (dt.kind() == 'f' && (dt.itemsize() == 4 || dt.itemsize() == 8)) return int(dt.itemsize());
  throw py::type_error(std::string(x.name) + ": expected dtype float32 or float64, got " +
                       dtype_str(x.a));
}

void check_dtype(const Arg& a, int size, const char* of_what) {
  if (float_size(a) != size)
    throw py::type_error(std::string(a.name) + ": expected dtype " +
                         (size == 4 ? "float32" : "float64") + " to match " + of_what + ", got " +
                         dtype_str(a.a));
}

void check_shape(const Arg& a, const std::vector<int64_t>& want, const std::string& letters) {
  if (shape_of(a.a) != want)
    throw py::value_error(std::string(a.name) + ": expected shape " + letters + " = " +
                          shape_str(want) + ", got " + shape_str(shape_of(a.a)));
}

void check_ndim(const Arg& a, int ndim, const char* letters) {
  if (a.a.ndim() != ndim)
    throw py::value_error(std::string(a.name) + ": expected " + std::to_string(ndim) +
                          " dimensions " + letters + ", got " + std::to_string(a.a.ndim()) +
                          " with shape " + shape_str(shape_of(a.a)));
}

// An optional [B,width] state: dtype and shape.
void check_state(const Arg& s, int size, int64_t B, int64_t width, const char* letters,
                 const char* of_what) {
  if (!s.given()) return;
  check_dtype(s, size, of_what);
  check_shape(s, {B, width}, letters);
}

// ---- contiguous copies --------------------------------------------------------

template <typename S>
using carray = py::array_t<S, py::array::c_style | py::array::forcecast>;
// An optional argument: absent (None) is nullopt, which the core reads as zeros.
template <typename S>
using opt_carray = std::optional<carray<S>>;

// C-contiguous, native byte order; a copy only where needed.
template <typename S>
carray<S> contiguous(const py::array& a) {
  return carray<S>::ensure(a);
}

template <typename S>
opt_carray<S> opt_contiguous(const Arg& a) {
  if (!a.given()) return std::nullopt;
  return contiguous<S>(a.a);
}

// As contiguous(), but never sharing memory with what the user holds, so that
// changing the user's array after forward cannot change what backward sees.
// Only a conversion of an ndarray is known to be fresh; anything else (a
// view, the array itself, what an __array__ method handed out) is copied.
template <typename S>
carray<S> private_copy(const py::array& view, const py::object& original) {
  carray<S> c = contiguous<S>(view);
  const bool fresh = py::isinstance<py::array>(original) && c.ptr() != original.ptr() &&
                     c.ptr() != view.ptr() && c.owndata();
  return fresh ? c : carray<S>(c.request());  // the constructor copies
}

template <typename S>
opt_carray<S> opt_private_copy(const Arg& a) {
  if (!a.given()) return std::nullopt;
  return private_copy<S>(a.a, a.original);
}

template <typename S>
const S* ptr_or_null(const opt_carray<S>& a) {
  return a ? a->data() : nullptr;
}

template <typename S>
S* mut_or_null(opt_carray<S>& a) {
  return a ? a->mutable_data() : nullptr;
}

template <typename S>
carray<S> empty(const std::vector<int64_t>& shape) {
  return carray<S>(std::vector<py::ssize_t>(shape.begin(), shape.end()));
}

py::array swap01(const py::array& a) { return a.attr("swapaxes")(0, 1); }

py::object or_none(const py::object& a, bool present) { return present ? a : py::none(); }

// ---- one layer's weights and switches -------------------------------------------

struct LayerArgs {
  Arg W, R, b, W_hr, peephole;
  Config cfg;  // I, H, P, clip, input_forget from the arguments
};

// H and P from the weights (H from W_hr when projecting, else from R), then
// every weight's dtype and shape. The letters in messages are lstm.h's.
LayerArgs check_layer(const py::object& W, const py::object& R, const py::object& b,
                      const py::object& W_hr, const py::object& peephole, const py::object& clip,
                      bool input_forget, int size, int64_t I) {
  LayerArgs l{arg("W", W),
              arg("R", R),
              opt_arg("b", b),
              opt_arg("W_hr", W_hr),
              opt_arg("peephole", peephole),
              Config{}};
  check_dtype(l.W, size, "x");
  check_dtype(l.R, size, "x");
  check_ndim(l.R, 2, l.W_hr.given() ? "[4H,P]" : "[4H,H]");
  int64_t H = l.R.a.shape(1), P = 0;
  if (l.W_hr.given()) {
    check_dtype(l.W_hr, size, "x");
    check_ndim(l.W_hr, 2, "[P,H]");
    P = l.W_hr.a.shape(0);
    H = l.W_hr.a.shape(1);
    if (P == 0)
      throw py::value_error("W_hr: expected P >= 1 rows [P,H], got shape " +
                            shape_str(shape_of(l.W_hr.a)));
    check_shape(l.R, {4 * H, P}, "[4H,P] (H=" + std::to_string(H) + " from W_hr)");
  } else {
    check_shape(l.R, {4 * H, H}, "[4H,H]");
  }
  check_ndim(l.W, 2, "[4H,I]");
  check_shape(l.W, {4 * H, I}, "[4H,I]");
  if (l.b.given()) {
    check_dtype(l.b, size, "x");
    check_shape(l.b, {4 * H}, "[4H]");
  }
  if (l.peephole.given()) {
    check_dtype(l.peephole, size, "x");
    check_shape(l.peephole, {3 * H}, "[3H] (i, o, f)");
  }
  l.cfg.I = I;
  l.cfg.H = H;
  l.cfg.P = P;
  l.cfg.input_forget = input_forget;
  if (!clip.is_none()) {
    double v;
    try {
      v = py::float_(clip).cast<double>();
    } catch (py::error_already_set&) {
      throw py::type_error("clip: expected a number > 0 or None, got " + type_name(clip));
    }
    // The smallest normal number of the dtype: a smaller clip would round to 0.
    const double tiny =
        size == 4 ? double(std::numeric_limits<float>::min()) : std::numeric_limits<double>::min();
    if (!(v >= tiny))
      throw py::value_error("clip: expected a number > 0 (at least " + std::to_string(tiny) +
                            " in this dtype), or None for no clipping, got " +
                            py::str(clip).cast<std::string>());
    l.cfg.clip = v;
  }
  return l;
}

// lengths: integers [B] in [0,T], as a private int64 array. Checked here, in
// the argument's own dtype, so that the message shows the value given.
std::optional<py::array_t<int64_t>> check_lengths(const py::object& obj, int64_t B, int64_t T) {
  if (obj.is_none()) return std::nullopt;
  const Arg a = arg("lengths", obj);
  const char kind = a.a.dtype().kind();
  if (a.a.size() > 0 && kind != 'i' && kind != 'u')
    throw py::type_error("lengths: expected an integer array, got dtype " + dtype_str(a.a));
  check_shape(a, {B}, "[B]");
  const py::object np = py::module_::import("numpy");
  const py::array bad = np.attr("flatnonzero")(
      np.attr("logical_or")(np.attr("less")(a.a, 0), np.attr("greater")(a.a, T)));
  if (bad.size() > 0) {
    const py::object b = bad.attr("__getitem__")(0);
    throw py::value_error("lengths[" + py::str(b).cast<std::string>() +
                          "] = " + py::str(a.a.attr("__getitem__")(b)).cast<std::string>() +
                          " is outside [0, " + std::to_string(T) + "]");
  }
  return py::array_t<int64_t>(np.attr("array")(a.a, "int64"));
}

// What a layer needs from its checked arguments as contiguous arrays.
template <typename S>
struct LayerArrays {
  carray<S> W, R;
  opt_carray<S> b, W_hr, peephole;
  lstm_ext::Weights<S> weights() const {
    return {W.data(), R.data(), ptr_or_null(b), ptr_or_null(W_hr), ptr_or_null(peephole)};
  }
};

template <typename S>
LayerArrays<S> layer_arrays(const LayerArgs& l, bool private_copies) {
  if (private_copies)
    return {private_copy<S>(l.W.a, l.W.original), private_copy<S>(l.R.a, l.R.original),
            opt_private_copy<S>(l.b), opt_private_copy<S>(l.W_hr), opt_private_copy<S>(l.peephole)};
  return {contiguous<S>(l.W.a), contiguous<S>(l.R.a), opt_contiguous<S>(l.b),
          opt_contiguous<S>(l.W_hr), opt_contiguous<S>(l.peephole)};
}

// ---- the cache ------------------------------------------------------------------

// What forward keeps for backward: its configuration, private copies of its
// inputs and weights, and the workspace lstm_forward filled. Type-erased over
// the dtype (the arrays carry it).
struct Cache {
  Config cfg;  // cfg.lengths is re-pointed at `lengths` for each call
  bool batch_first;
  py::array x, W, R;             // x is [T,B,I]
  py::object b, W_hr, peephole;  // arrays, or None where forward had none
  py::array workspace;
  std::optional<py::array_t<int64_t>> lengths;
};

template <typename S>
py::tuple forward_impl(const Arg& x_arg, const LayerArgs& l, const Arg& h0_arg, const Arg& c0_arg,
                       const py::object& lengths_obj, bool batch_first, bool training, bool reverse,
                       bool return_cell_states) {
  const py::array x_tb = batch_first ? swap01(x_arg.a) : x_arg.a;
  Config cfg = l.cfg;
  cfg.T = x_tb.shape(0);
  cfg.B = x_tb.shape(1);
  cfg.reverse = reverse;
  check_state(h0_arg, sizeof(S), cfg.B, cfg.O(), cfg.P ? "[B,P]" : "[B,H]", "x");
  check_state(c0_arg, sizeof(S), cfg.B, cfg.H, "[B,H]", "x");
  const auto lengths = check_lengths(lengths_obj, cfg.B, cfg.T);
  if (lengths) cfg.lengths = lengths->data();
  const int64_t ws_size = lstm_ext::forward_workspace_size(cfg, training);  // throws on overflow

  const carray<S> x = training ? private_copy<S>(x_tb, x_arg.original) : contiguous<S>(x_tb);
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
    const lstm_ext::Weights<S> weights = w.weights();
    py::gil_scoped_release nogil;
    lstm_ext::lstm_forward(py_, ph, pc, pcs, pw, px, ph0, pc0, weights, cfg, training);
  }
  py::object cache = py::none();
  if (training) {
    auto arr = [](const opt_carray<S>& a) { return a ? py::object(*a) : py::object(py::none()); };
    cache = py::cast(
        Cache{cfg, batch_first, x, w.W, w.R, arr(w.b), arr(w.W_hr), arr(w.peephole), ws, lengths});
  }
  auto tb = [&](const py::array& a) { return batch_first ? swap01(a) : a; };
  return py::make_tuple(tb(y), hT, cT, cache, cs ? py::object(tb(*cs)) : py::object(py::none()));
}

py::tuple forward(const py::object& x_obj, const py::object& W, const py::object& R,
                  const py::object& b, const py::object& h0_obj, const py::object& c0_obj,
                  bool batch_first, bool training, bool reverse, const py::object& lengths,
                  const py::object& W_hr, const py::object& peephole, const py::object& clip,
                  bool input_forget, bool return_cell_states) {
  const Arg x = arg("x", x_obj);
  const int size = float_size(x);
  check_ndim(x, 3, batch_first ? "[B,T,I]" : "[T,B,I]");
  const LayerArgs l = check_layer(W, R, b, W_hr, peephole, clip, input_forget, size, x.a.shape(2));
  const Arg h0 = opt_arg("h0", h0_obj), c0 = opt_arg("c0", c0_obj);
  auto run = [&](auto zero) {
    using S = decltype(zero);
    return forward_impl<S>(x, l, h0, c0, lengths, batch_first, training, reverse,
                           return_cell_states);
  };
  return size == 4 ? run(0.0f) : run(0.0);
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
    return a.is_none() ? opt_carray<S>() : opt_carray<S>(carray<S>::ensure(a));
  };
  const opt_carray<S> x = get(cache.x), W = get(cache.W), R = get(cache.R), b = get(cache.b),
                      W_hr = get(cache.W_hr), peep = get(cache.peephole), ws = get(cache.workspace);
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
    const S *pws = ptr_or_null(ws), *px = ptr_or_null(x), *pdy = ptr_or_null(dy),
            *pdh = ptr_or_null(dh), *pdc = ptr_or_null(dc);
    py::gil_scoped_release nogil;
    lstm_ext::lstm_backward(pdx, pdh0, pdc0, g, pscr, pws, px, pdy, pdh, pdc, w, cfg);
  }
  auto opt = [](const opt_carray<S>& a) { return a ? py::object(*a) : py::object(py::none()); };
  return py::make_tuple(cache.batch_first ? swap01(dx) : py::array(dx), dh0, dc0, dW, dR, db,
                        opt(dW_hr), opt(dpeep));
}

py::tuple backward(const py::object& cache_obj, const py::object& dy_obj, const py::object& dh_obj,
                   const py::object& dc_obj) {
  if (cache_obj.is_none())
    throw py::type_error(
        "cache: got None; forward(..., training=False) keeps no cache, call it with "
        "training=True to take gradients");
  if (!py::isinstance<Cache>(cache_obj))
    throw py::type_error("cache: expected the cache returned by lstm_ext.forward, got " +
                         type_name(cache_obj));
  const Cache& cache = cache_obj.cast<const Cache&>();
  const Config& c = cache.cfg;
  const int size = int(cache.workspace.itemsize());
  const char* of_what = "the cache";
  const Arg dy = opt_arg("dy", dy_obj), dh = opt_arg("dh", dh_obj), dc = opt_arg("dc", dc_obj);
  if (dy.given()) {
    check_dtype(dy, size, of_what);
    const std::string o = c.P ? "P" : "H";
    if (cache.batch_first)
      check_shape(dy, {c.B, c.T, c.O()}, "[B,T," + o + "] (from the cache)");
    else
      check_shape(dy, {c.T, c.B, c.O()}, "[T,B," + o + "] (from the cache)");
  }
  check_state(dh, size, c.B, c.O(), c.P ? "[B,P]" : "[B,H]", of_what);
  check_state(dc, size, c.B, c.H, "[B,H]", of_what);
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
  carray<S> scratch = empty<S>({lstm_ext::step_scratch_size(cfg)});
  {
    S *ph = h_out.mutable_data(), *pc = c_out.mutable_data(), *ps = scratch.mutable_data();
    const S *px = x.data(), *phi = ptr_or_null(h), *pci = ptr_or_null(c);
    const lstm_ext::Weights<S> weights = w.weights();
    py::gil_scoped_release nogil;
    lstm_ext::lstm_step(ph, pc, ps, px, phi, pci, weights, cfg);
  }
  return py::make_tuple(h_out, c_out);
}

py::tuple step(const py::object& x_obj, const py::object& h_obj, const py::object& c_obj,
               const py::object& W, const py::object& R, const py::object& b,
               const py::object& W_hr, const py::object& peephole, const py::object& clip,
               bool input_forget) {
  const Arg x = arg("x", x_obj);
  const int size = float_size(x);
  check_ndim(x, 2, "[B,I]");
  const LayerArgs l = check_layer(W, R, b, W_hr, peephole, clip, input_forget, size, x.a.shape(1));
  Config cfg = l.cfg;
  cfg.T = 1;
  cfg.B = x.a.shape(0);
  const Arg h = opt_arg("h", h_obj), c = opt_arg("c", c_obj);
  check_state(h, size, cfg.B, cfg.O(), cfg.P ? "[B,P]" : "[B,H]", "x");
  check_state(c, size, cfg.B, cfg.H, "[B,H]", "x");
  return size == 4 ? step_impl<float>(x, h, c, l, cfg) : step_impl<double>(x, h, c, l, cfg);
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "lstm_ext's compiled core; use the functions re-exported by lstm_ext.";

  py::class_<Cache>(m, "Cache", "What forward keeps for backward: opaque, read-only.")
      // Only forward makes one: Cache.__new__(Cache) would be an uninitialised object.
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
      .def_property_readonly("dtype", [](const Cache& c) { return c.workspace.dtype(); })
      .def_property_readonly("batch_first", [](const Cache& c) { return c.batch_first; })
      .def_property_readonly("nbytes",
                             [](const Cache& c) {
                               py::ssize_t n = 0;
                               for (const py::object* a : {&c.b, &c.W_hr, &c.peephole})
                                 if (!a->is_none()) n += a->cast<py::array>().nbytes();
                               return n + c.x.nbytes() + c.W.nbytes() + c.R.nbytes() +
                                      c.workspace.nbytes();
                             })
      .def("__repr__", [](const Cache& c) {
        return "<lstm_ext Cache T=" + std::to_string(c.cfg.T) + " B=" + std::to_string(c.cfg.B) +
               " I=" + std::to_string(c.cfg.I) + " H=" + std::to_string(c.cfg.H) +
               (c.cfg.P ? " P=" + std::to_string(c.cfg.P) : "") + " " + dtype_str(c.workspace) +
               ">";
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
  m.attr("inference_chunk") = lstm_ext::kInferenceChunk;
  m.def("blas_config", &lstm_ext::blas_config, "The BLAS's description of its build.");
  m.def("blas_num_threads", &lstm_ext::blas_num_threads,
        "Threads the BLAS uses outside lstm_ext calls (inside them: one).");
  m.def("get_num_threads", &lstm_ext::get_num_threads, "lstm_ext's threads.");
  m.def("set_num_threads", &lstm_ext::set_num_threads, py::arg("n"),
        "Set lstm_ext's threads (results are the same bits for any count).");
  m.def("build_description", &lstm_ext::build_description, "Compiler and options of the core.");
  m.attr("cuda_compiled") = false;  // the CUDA path is not written yet
}
