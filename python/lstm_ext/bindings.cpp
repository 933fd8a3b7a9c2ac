// lstm_ext._core: the adapter between NumPy and the C++ core. It checks every
// argument (naming it in the message), makes inputs contiguous, allocates the
// outputs, releases the GIL and calls the core. No math lives here.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "lstm_ext/lstm.h"

namespace py = pybind11;
using lstm_ext::Dims;

namespace {

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

// An argument as the user passed it, converted to an ndarray (lists work).
struct Arg {
  const char* name;
  py::object original;
  py::array a;
};

Arg arg(const char* name, const py::object& obj) {
  py::array a;
  try {
    a = py::array::ensure(obj);
  } catch (py::error_already_set&) {
  }
  if (!a)
    throw py::type_error(std::string(name) +
                         ": expected a NumPy array of float32 or float64, got " +
                         py::str(py::type::of(obj).attr("__name__")).cast<std::string>());
  return {name, obj, a};
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

void check_shape(const Arg& a, const std::vector<int64_t>& want, const char* letters) {
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

template <typename S>
using carray = py::array_t<S, py::array::c_style | py::array::forcecast>;

// C-contiguous, native byte order; a copy only where needed.
template <typename S>
carray<S> contiguous(const py::array& a) {
  return carray<S>::ensure(a);
}

// As contiguous(), but never sharing memory with what the user holds, so that
// changing the user's array after forward cannot change what backward sees.
template <typename S>
carray<S> private_copy(const py::array& view, const py::object& original) {
  carray<S> c = contiguous<S>(view);
  if (c.ptr() == original.ptr() || !c.owndata()) return carray<S>(c.request());  // copies
  return c;
}

// An optional argument: absent (None) is nullopt, which the core reads as zeros.
template <typename S>
using opt_carray = std::optional<carray<S>>;

template <typename S>
const S* ptr_or_null(const opt_carray<S>& a) {
  return a ? a->data() : nullptr;
}

template <typename S>
carray<S> empty(const std::vector<int64_t>& shape) {
  return carray<S>(std::vector<py::ssize_t>(shape.begin(), shape.end()));
}

py::array swap01(const py::array& a) { return a.attr("swapaxes")(0, 1); }

// What forward keeps for backward: private copies of x, W, R and the
// workspace lstm_forward filled.
struct Cache {
  Dims d;
  bool batch_first;
  py::array x, W, R, workspace;  // x is [T,B,I]
  int item_size() const { return int(workspace.itemsize()); }
};

// The arguments of forward/step after checking: H from R, the rest from x.
struct Weights {
  Arg W, R, b;
};

Dims check_weights(const Weights& w, int size, int64_t I) {
  check_dtype(w.W, size, "x");
  check_dtype(w.R, size, "x");
  check_ndim(w.R, 2, "[4H,H]");
  const int64_t H = w.R.a.shape(1);
  check_shape(w.R, {4 * H, H}, "[4H,H]");
  check_ndim(w.W, 2, "[4H,I]");
  check_shape(w.W, {4 * H, I}, "[4H,I]");
  if (!w.b.original.is_none()) {
    check_dtype(w.b, size, "x");
    check_shape(w.b, {4 * H}, "[4H]");
  }
  return Dims{0, 0, I, H};
}

void check_state(const Arg& s, int size, const Dims& d, const char* of_what) {
  if (s.original.is_none()) return;
  check_dtype(s, size, of_what);
  check_shape(s, {d.B, d.H}, "[B,H]");
}

Arg opt_arg(const char* name, const py::object& obj) {
  return obj.is_none() ? Arg{name, obj, py::array()} : arg(name, obj);
}

template <typename S>
opt_carray<S> opt_contiguous(const Arg& a) {
  if (a.original.is_none()) return std::nullopt;
  return contiguous<S>(a.a);
}

template <typename S>
py::tuple forward_impl(const Arg& x_arg, const Weights& w, const Arg& h0_arg, const Arg& c0_arg,
                       Dims d, bool batch_first, bool training) {
  const py::array x_tb = batch_first ? swap01(x_arg.a) : x_arg.a;
  d.T = x_tb.shape(0);
  d.B = x_tb.shape(1);
  check_state(h0_arg, sizeof(S), d, "x");
  check_state(c0_arg, sizeof(S), d, "x");
  const int64_t ws_size = lstm_ext::forward_workspace_size(d, training);  // throws on overflow

  const carray<S> x = training ? private_copy<S>(x_tb, x_arg.original) : contiguous<S>(x_tb);
  const carray<S> W = training ? private_copy<S>(w.W.a, w.W.original) : contiguous<S>(w.W.a);
  const carray<S> R = training ? private_copy<S>(w.R.a, w.R.original) : contiguous<S>(w.R.a);
  const opt_carray<S> b = opt_contiguous<S>(w.b), h0 = opt_contiguous<S>(h0_arg),
                      c0 = opt_contiguous<S>(c0_arg);
  carray<S> y = empty<S>({d.T, d.B, d.H}), hT = empty<S>({d.B, d.H}), cT = empty<S>({d.B, d.H});
  carray<S> ws = empty<S>({ws_size});
  {
    S *py_ = y.mutable_data(), *ph = hT.mutable_data(), *pc = cT.mutable_data(),
      *pw = ws.mutable_data();
    py::gil_scoped_release nogil;
    lstm_ext::lstm_forward(py_, ph, pc, pw, x.data(), ptr_or_null(h0), ptr_or_null(c0), W.data(),
                           R.data(), ptr_or_null(b), d, training);
  }
  py::object cache = py::none();
  if (training) cache = py::cast(Cache{d, batch_first, x, W, R, ws});
  return py::make_tuple(batch_first ? swap01(y) : py::array(y), hT, cT, cache);
}

py::tuple forward(const py::object& x_obj, const py::object& W_obj, const py::object& R_obj,
                  const py::object& b_obj, const py::object& h0_obj, const py::object& c0_obj,
                  bool batch_first, bool training) {
  const Arg x = arg("x", x_obj);
  const int size = float_size(x);
  check_ndim(x, 3, batch_first ? "[B,T,I]" : "[T,B,I]");
  const Weights w{arg("W", W_obj), arg("R", R_obj), opt_arg("b", b_obj)};
  const Dims d = check_weights(w, size, x.a.shape(2));
  const Arg h0 = opt_arg("h0", h0_obj), c0 = opt_arg("c0", c0_obj);
  return size == 4 ? forward_impl<float>(x, w, h0, c0, d, batch_first, training)
                   : forward_impl<double>(x, w, h0, c0, d, batch_first, training);
}

template <typename S>
py::tuple backward_impl(const Cache& cache, const Arg& dy_arg, const Arg& dh_arg,
                        const Arg& dc_arg) {
  const Dims& d = cache.d;
  opt_carray<S> dy;
  if (!dy_arg.original.is_none())
    dy = contiguous<S>(cache.batch_first ? swap01(dy_arg.a) : dy_arg.a);
  const opt_carray<S> dh = opt_contiguous<S>(dh_arg), dc = opt_contiguous<S>(dc_arg);
  const carray<S> x = carray<S>::ensure(cache.x), W = carray<S>::ensure(cache.W),
                  R = carray<S>::ensure(cache.R), ws = carray<S>::ensure(cache.workspace);
  carray<S> dx = empty<S>({d.T, d.B, d.I}), dh0 = empty<S>({d.B, d.H}), dc0 = empty<S>({d.B, d.H}),
            dW = empty<S>({4 * d.H, d.I}), dR = empty<S>({4 * d.H, d.H}), db = empty<S>({4 * d.H});
  carray<S> scratch = empty<S>({lstm_ext::backward_scratch_size(d)});
  {
    S *pdx = dx.mutable_data(), *pdh0 = dh0.mutable_data(), *pdc0 = dc0.mutable_data(),
      *pdW = dW.mutable_data(), *pdR = dR.mutable_data(), *pdb = db.mutable_data(),
      *pscr = scratch.mutable_data();
    py::gil_scoped_release nogil;
    lstm_ext::lstm_backward(pdx, pdh0, pdc0, pdW, pdR, pdb, pscr, ws.data(), x.data(), W.data(),
                            R.data(), ptr_or_null(dy), ptr_or_null(dh), ptr_or_null(dc), d);
  }
  return py::make_tuple(cache.batch_first ? swap01(dx) : py::array(dx), dh0, dc0, dW, dR, db);
}

py::tuple backward(const py::object& cache_obj, const py::object& dy_obj, const py::object& dh_obj,
                   const py::object& dc_obj) {
  if (cache_obj.is_none())
    throw py::type_error(
        "cache: got None; forward(..., training=False) keeps no cache, call it with "
        "training=True to take gradients");
  if (!py::isinstance<Cache>(cache_obj))
    throw py::type_error("cache: expected the cache returned by lstm_ext.forward, got " +
                         py::str(py::type::of(cache_obj).attr("__name__")).cast<std::string>());
  const Cache& cache = cache_obj.cast<const Cache&>();
  const Dims& d = cache.d;
  const int size = cache.item_size();
  const char* of_what = "the cache";
  const Arg dy = opt_arg("dy", dy_obj), dh = opt_arg("dh", dh_obj), dc = opt_arg("dc", dc_obj);
  if (!dy_obj.is_none()) {
    check_dtype(dy, size, of_what);
    if (cache.batch_first)
      check_shape(dy, {d.B, d.T, d.H}, "[B,T,H] (from the cache)");
    else
      check_shape(dy, {d.T, d.B, d.H}, "[T,B,H] (from the cache)");
  }
  check_state(dh, size, d, of_what);
  check_state(dc, size, d, of_what);
  return size == 4 ? backward_impl<float>(cache, dy, dh, dc)
                   : backward_impl<double>(cache, dy, dh, dc);
}

template <typename S>
py::tuple step_impl(const Arg& x_arg, const Arg& h_arg, const Arg& c_arg, const Weights& w,
                    const Dims& d) {
  const carray<S> x = contiguous<S>(x_arg.a), W = contiguous<S>(w.W.a), R = contiguous<S>(w.R.a);
  const opt_carray<S> h = opt_contiguous<S>(h_arg), c = opt_contiguous<S>(c_arg),
                      b = opt_contiguous<S>(w.b);
  carray<S> h_out = empty<S>({d.B, d.H}), c_out = empty<S>({d.B, d.H});
  carray<S> scratch = empty<S>({lstm_ext::step_scratch_size(d)});
  {
    S *ph = h_out.mutable_data(), *pc = c_out.mutable_data(), *ps = scratch.mutable_data();
    py::gil_scoped_release nogil;
    lstm_ext::lstm_step(ph, pc, ps, x.data(), ptr_or_null(h), ptr_or_null(c), W.data(), R.data(),
                        ptr_or_null(b), d);
  }
  return py::make_tuple(h_out, c_out);
}

py::tuple step(const py::object& x_obj, const py::object& h_obj, const py::object& c_obj,
               const py::object& W_obj, const py::object& R_obj, const py::object& b_obj) {
  const Arg x = arg("x", x_obj);
  const int size = float_size(x);
  check_ndim(x, 2, "[B,I]");
  const Weights w{arg("W", W_obj), arg("R", R_obj), opt_arg("b", b_obj)};
  Dims d = check_weights(w, size, x.a.shape(1));
  d.B = x.a.shape(0);
  const Arg h = opt_arg("h", h_obj), c = opt_arg("c", c_obj);
  check_state(h, size, d, "x");
  check_state(c, size, d, "x");
  return size == 4 ? step_impl<float>(x, h, c, w, d) : step_impl<double>(x, h, c, w, d);
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "lstm_ext's compiled core; use the functions re-exported by lstm_ext.";

  py::class_<Cache>(m, "Cache", "What forward keeps for backward: opaque, read-only.")
      .def_property_readonly("T", [](const Cache& c) { return c.d.T; })
      .def_property_readonly("B", [](const Cache& c) { return c.d.B; })
      .def_property_readonly("I", [](const Cache& c) { return c.d.I; })
      .def_property_readonly("H", [](const Cache& c) { return c.d.H; })
      .def_property_readonly("dtype", [](const Cache& c) { return c.workspace.dtype(); })
      .def_property_readonly("batch_first", [](const Cache& c) { return c.batch_first; })
      .def_property_readonly("nbytes",
                             [](const Cache& c) {
                               return c.x.nbytes() + c.W.nbytes() + c.R.nbytes() +
                                      c.workspace.nbytes();
                             })
      .def("__repr__", [](const Cache& c) {
        return "<lstm_ext Cache T=" + std::to_string(c.d.T) + " B=" + std::to_string(c.d.B) +
               " I=" + std::to_string(c.d.I) + " H=" + std::to_string(c.d.H) + " " +
               dtype_str(c.workspace) + ">";
      });

  m.def("forward", &forward, py::arg("x"), py::arg("W"), py::arg("R"), py::arg("b") = py::none(),
        py::arg("h0") = py::none(), py::arg("c0") = py::none(), py::kw_only(),
        py::arg("batch_first") = false, py::arg("training") = true);
  m.def("backward", &backward, py::arg("cache"), py::arg("dy"), py::arg("dh") = py::none(),
        py::arg("dc") = py::none());
  m.def("step", &step, py::arg("x"), py::arg("h"), py::arg("c"), py::arg("W"), py::arg("R"),
        py::arg("b") = py::none());
  m.attr("inference_chunk") = lstm_ext::kInferenceChunk;
}
