// Argument checking shared by lstm_ext's two extension modules, _core (CPU)
// and _cuda (GPU): every argument is checked here, with the same messages,
// before either computes anything. Header-only; internal.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#if !defined(_WIN32)
#include <pthread.h>
#endif

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <optional>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "buffers.h"
#include "lstm_ext/lstm.h"

namespace py = pybind11;
using lstm_ext::Config;

namespace lstm_ext_bind {

// ---- the GIL ---------------------------------------------------------------

// A thread that Python ends: Python before 3.14 ends a daemon thread that
// takes the GIL once the interpreter finalizes (also one that was waiting for
// it then) with pthread_exit, which unwinds the thread's stack. Unwinding
// lstm_ext's frames would destroy their Python objects without the GIL, in a
// finalizing interpreter (a crash), and unwinding a destructor (noexcept)
// aborts the process: "terminate called without an active exception"
// (pybind11 issue 2215). So where lstm_ext's code takes the GIL back, or calls
// NumPy code that releases it (a copy), the unwinding is caught and the
// thread parks instead, holding nothing, until the process ends (as Python
// 3.14 parks such threads itself). `f` runs once; what it returns is returned.
// f calls C code only, so the one exception that can leave it is that
// unwinding (abi::__forced_unwind, or none on other C libraries): caught by
// `...`, as a typed handler would bind a reference to no object (UBSan).
[[noreturn]] inline void park_forever() {
  for (;;) std::this_thread::sleep_for(std::chrono::hours(1));
}

template <typename F>
auto parked_if_ended(F&& f) -> decltype(f()) {
#if defined(__GLIBCXX__) && !defined(_WIN32)
  try {
    return f();
  } catch (...) {
    park_forever();  // never leaves the handler: leaving it without rethrowing aborts
  }
#else
  return f();  // only glibc's pthread_exit unwinds
#endif
}

// Calls computing without the GIL, counted so that the process's teardown
// (after Python's finalization; OpenBLAS frees its buffers there) waits for
// them to finish, as it waits for a NumPy product in a daemon thread
// (guard_exit's drain, which Py_AtExit runs; it says so on stderr after
// kExitNote: a 10-s limit had let a longer call crash in the teardown). A
// call that ends after the drain parks at once instead of taking the GIL
// back; one that ends during it takes the GIL back as CPython lets any daemon
// thread (parked_if_ended). Nothing parks earlier: a daemon thread's call
// during the atexit handlers runs and returns (it may hold a lock that a
// handler takes). A forked child starts with no call in flight.
struct ExitGuard {
  std::atomic<int> busy{0};
  std::atomic<bool> finalized{false};
};
inline ExitGuard& exit_guard() {
  static ExitGuard guard;  // one a module: each registers its own drain
  return guard;
}
constexpr std::chrono::seconds kExitNote(10);

// Releases the GIL for its scope, as py::gil_scoped_release does (see
// ExitGuard and parked_if_ended for what differs at exit).
class WithoutGil {
 public:
  WithoutGil() : state_((++exit_guard().busy, PyEval_SaveThread())) {}
  WithoutGil(const WithoutGil&) = delete;
  WithoutGil& operator=(const WithoutGil&) = delete;
  ~WithoutGil() {
    ExitGuard& g = exit_guard();
    --g.busy;  // no longer computing
    if (g.finalized) park_forever();  // Python is gone
    parked_if_ended([&] { PyEval_RestoreThread(state_); });
  }

 private:
  PyThreadState* state_;
};

// Registers the module's drain (see ExitGuard), at import.
inline void guard_exit() {
  static void (*const wait)() = [] {
    const auto note = std::chrono::steady_clock::now() + kExitNote;
    for (bool said = false; exit_guard().busy > 0;
         std::this_thread::sleep_for(std::chrono::microseconds(100)))
      if (!said && std::chrono::steady_clock::now() > note) {
        std::fprintf(stderr, "lstm_ext: the process exits once the lstm_ext calls still "
                             "running in other threads finish\n");
        said = true;
      }
  };
  static void (*const drain)() = [] {
    exit_guard().finalized = true;
    wait();
  };
#if !defined(_WIN32)
  static const bool at_fork = [] {  // the child has only the forking thread, outside any call
    return pthread_atfork(nullptr, nullptr, [] { exit_guard().busy = 0; }) == 0;
  }();
  (void)at_fork;
#endif
  exit_guard().finalized = false;  // an embedding program may initialize Python again
  if (Py_AtExit(drain) != 0)  // its 32 places taken: wait in Python's atexit, Python still alive
    py::module_::import("atexit").attr("register")(py::cpp_function(wait));
}

// ---- describing arrays in messages ----------------------------------------

// Plain string building: no iostreams, whose locale state can be missing in
// a module whose C++ runtime is linked statically (seen on a GPU machine).
inline std::string shape_str(const std::vector<int64_t>& s) {
  std::string o = "(";
  for (size_t k = 0; k < s.size(); ++k) o += (k ? ", " : "") + std::to_string(s[k]);
  return o + (s.size() == 1 ? ",)" : ")");
}

inline std::vector<int64_t> shape_of(const py::array& a) {
  return std::vector<int64_t>(a.shape(), a.shape() + a.ndim());
}

inline std::string dtype_str(const py::array& a) { return py::str(a.dtype()).cast<std::string>(); }

inline std::string type_name(const py::handle& obj) {
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

// An error a conversion raised, which the caller may turn into its own
// TypeError; not one to pass on as it is (KeyboardInterrupt, MemoryError).
inline bool conversion_error(py::error_already_set& e) {
  return e.matches(PyExc_Exception) && !e.matches(PyExc_MemoryError);
}

// obj's value if it is a number (not a string, which float() would parse,
// nor a bool, Python's or NumPy's).
inline std::optional<double> as_number(const py::object& obj) {
  static const py::handle numpy_bool =
      py::object(py::module_::import("numpy").attr("bool_")).release();
  if (!PyNumber_Check(obj.ptr()) || PyBool_Check(obj.ptr()) ||
      PyObject_IsInstance(obj.ptr(), numpy_bool.ptr()) == 1)
    return std::nullopt;
  try {
    return py::float_(obj).cast<double>();
  } catch (py::error_already_set& e) {
    if (!conversion_error(e)) throw;
    return std::nullopt;
  }
}

// A bool argument's value, by the one rule of _checks.check_bool: True or
// False, NumPy's bool, the integer 0 or 1, or None (False). Taken as an
// object and converted here, so that anything else is a TypeError naming the
// argument (a bool parameter refused it in overload resolution: a message of
// the whole signature and every argument's repr, thousands of characters).
inline bool flag(const char* name, const py::handle& obj) {
  if (obj.ptr() == Py_True) return true;
  if (obj.ptr() == Py_False || obj.is_none()) return false;
  static const py::handle numpy = py::module_::import("numpy").release();
  static const py::handle numpy_bool = py::object(numpy.attr("bool_")).release();
  static const py::handle numpy_integer = py::object(numpy.attr("integer")).release();
  if (PyObject_IsInstance(obj.ptr(), numpy_bool.ptr()) == 1) return PyObject_IsTrue(obj.ptr()) == 1;
  if (!PyLong_Check(obj.ptr()) && PyObject_IsInstance(obj.ptr(), numpy_integer.ptr()) != 1)
    throw py::type_error(std::string(name) + ": expected a bool, got " + type_name(obj));
  const py::object index = py::reinterpret_steal<py::object>(PyNumber_Index(obj.ptr()));
  if (!index) throw py::error_already_set();
  int overflow = 0;
  const long long v = PyLong_AsLongLongAndOverflow(index.ptr(), &overflow);
  if (!overflow && (v == 0 || v == 1)) return v == 1;
  throw py::type_error(std::string(name) + ": expected a bool, got " + std::string(py::str(index)));
}

inline Arg arg(const char* name, const py::object& obj) {
  // An ndarray itself (not a subclass) is used as it is: what ensure() would
  // return, without NumPy's conversion machinery (a fifth of a B = 1 step).
  static const py::handle ndarray =
      py::object(py::module_::import("numpy").attr("ndarray")).release();
  if (Py_TYPE(obj.ptr()) == reinterpret_cast<PyTypeObject*>(ndarray.ptr()))
    return {name, obj, py::reinterpret_borrow<py::array>(obj)};
  // Anything else as numpy.asarray converts it (py::array::ensure would clear
  // the error: a KeyboardInterrupt or MemoryError inside the conversion became
  // this TypeError, and the reason, a tensor that requires grad say, was lost).
  // Called through the C API, in parked_if_ended: the conversion may run
  // Python code (an __array__ method) or copy without the GIL.
  static const py::handle asarray =
      py::object(py::module_::import("numpy").attr("asarray")).release();
  PyObject* converted =
      parked_if_ended([&] { return PyObject_CallOneArg(asarray.ptr(), obj.ptr()); });
  try {
    if (converted == nullptr) throw py::error_already_set();
    return {name, obj, py::reinterpret_steal<py::array>(converted)};
  } catch (py::error_already_set& e) {
    if (!conversion_error(e)) throw;
    // The cause's type and message (what() adds Python's traceback lines).
    const std::string why = std::string(name) + ": expected a NumPy array, got " + type_name(obj) +
                            " (" + type_name(e.value()) + ": " +
                            py::str(e.value()).cast<std::string>() + ")";
    py::raise_from(e, PyExc_TypeError, why.c_str());
    throw py::error_already_set();
  }
}

inline Arg opt_arg(const char* name, const py::object& obj) {
  return obj.is_none() ? Arg{name, obj, py::array()} : arg(name, obj);
}

// The item size (4 or 8) of a float32/float64 array, or a TypeError.
inline int float_size(const Arg& x) {
  const py::dtype dt = x.a.dtype();
  if (dt.kind() == 'f' && (dt.itemsize() == 4 || dt.itemsize() == 8)) return int(dt.itemsize());
  throw py::type_error(std::string(x.name) + ": expected dtype float32 or float64, got " +
                       dtype_str(x.a));
}

inline void check_dtype(const Arg& a, int size, const std::string& of_what) {
  if (float_size(a) != size)
    throw py::type_error(std::string(a.name) + ": expected dtype " +
                         (size == 4 ? "float32" : "float64") + " to match " + of_what + ", got " +
                         dtype_str(a.a));
}

// The array whose dtype the others must have, for messages: its name, and
// how it got its dtype where it was not a NumPy array (a list of Python
// floats becomes float64, and then float32 weights were blamed).
inline std::string dtype_source(const Arg& a) {
  if (py::isinstance<py::array>(a.original)) return a.name;
  return std::string(a.name) + " (a " + type_name(a.original) + ", read as " + dtype_str(a.a) +
         ")";
}

inline void check_shape(const Arg& a, const std::vector<int64_t>& want,
                        const std::string& letters) {
  if (shape_of(a.a) != want)
    throw py::value_error(std::string(a.name) + ": expected shape " + letters + " = " +
                          shape_str(want) + ", got " + shape_str(shape_of(a.a)));
}

inline void check_ndim(const Arg& a, int ndim, const char* letters) {
  if (a.a.ndim() != ndim)
    throw py::value_error(std::string(a.name) + ": expected " + std::to_string(ndim) +
                          " dimensions " + letters + ", got " + std::to_string(a.a.ndim()) +
                          " with shape " + shape_str(shape_of(a.a)));
}

// An optional [B,width] state: dtype and shape.
inline void check_state(const Arg& s, int size, int64_t B, int64_t width, const char* letters,
                        const std::string& of_what) {
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

template <typename S>
carray<S> empty(const std::vector<int64_t>& shape);

// A C-contiguous copy, in a buffer of the cache (buffers.h), of a NumPy array
// (not a subclass) of S's dtype that is not C-contiguous, such as a slice of
// a wider array (dy[:, :, :H]); nullopt for anything else. NumPy's own copy
// takes memory from the C library, which may hand back fresh pages at every
// call (a page fault each 4 KiB, 1-5 us each on the 2-core VM): a 2-layer
// bidirectional forward+backward took 300-560 a call before its copies and
// concatenations came from the cache, none after (dev/perf-notes.md, 76).
template <typename S>
std::optional<carray<S>> cached_copy(const py::handle& a) {
  auto& api = py::detail::npy_api::get();
  if (Py_TYPE(a.ptr()) != api.PyArray_Type_) return std::nullopt;
  const auto view = py::reinterpret_borrow<py::array>(a);
  if (view.flags() & py::array::c_style) return std::nullopt;  // the common case first
  if (!api.PyArray_EquivTypes_(view.dtype().ptr(), py::dtype::of<S>().ptr())) return std::nullopt;
  std::vector<int64_t> shape(view.shape(), view.shape() + view.ndim());
  carray<S> copy = empty<S>(shape);
  if (parked_if_ended([&] { return api.PyArray_CopyInto_(copy.ptr(), view.ptr()); }) < 0)
    throw py::error_already_set();
  return copy;
}

// NumPy's conversion: NumPy copies without the GIL (parked_if_ended). A copy
// too large for memory is NumPy's MemoryError (py::array_t::ensure cleared it
// and returned no array).
template <typename S>
carray<S> numpy_contiguous(const py::handle& a) {
  auto& api = py::detail::npy_api::get();
  PyObject* c = parked_if_ended([&] {
    return api.PyArray_FromAny_(a.ptr(), py::dtype::of<S>().release().ptr(), 0, 0,
                                py::detail::npy_api::NPY_ARRAY_ENSUREARRAY_ | py::array::c_style |
                                    py::array::forcecast,
                                nullptr);
  });
  if (c == nullptr) throw py::error_already_set();
  return py::reinterpret_steal<carray<S>>(c);
}

// C-contiguous, native byte order; a copy only where needed (cached_copy,
// else NumPy's).
template <typename S>
carray<S> contiguous(const py::handle& a) {
  if (auto copy = cached_copy<S>(a)) return *std::move(copy);
  return numpy_contiguous<S>(a);
}

template <typename S>
opt_carray<S> opt_contiguous(const Arg& a) {
  if (!a.given()) return std::nullopt;
  return contiguous<S>(a.a);
}

// An uninitialised array: large ones reuse buffers of earlier calls (buffers.h).
template <typename S>
carray<S> empty(const std::vector<int64_t>& shape) {
  return cached_empty<S>(std::vector<py::ssize_t>(shape.begin(), shape.end()));
}

// As contiguous(), but never sharing memory with what the user holds, so that
// changing the user's array after forward cannot change what backward sees.
// Only a conversion of an ndarray is known to be fresh; anything else (a
// view, the array itself, what an __array__ method handed out) is copied.
template <typename S>
carray<S> private_copy(const py::array& view, const py::object& original) {
  if (auto copy = cached_copy<S>(view)) return *std::move(copy);  // fresh
  carray<S> c = numpy_contiguous<S>(view);
  const bool fresh = py::isinstance<py::array>(original) && c.ptr() != original.ptr() &&
                     c.ptr() != view.ptr() && c.owndata();
  if (fresh) return c;
  carray<S> copy = empty<S>(shape_of(c));
  if (c.size() > 0) std::memcpy(copy.mutable_data(), c.data(), sizeof(S) * size_t(c.size()));
  return copy;
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

inline py::array swap01(const py::array& a) { return a.attr("swapaxes")(0, 1); }

inline py::object or_none(const py::object& a, bool present) { return present ? a : py::none(); }

// ---- one layer's weights and switches -------------------------------------------

struct LayerArgs {
  Arg W, R, b, W_hr, peephole;
  Config cfg;  // I, H, P, clip, input_forget from the arguments
};

// H and P from the weights (H from W_hr when projecting, else from R), then
// every weight's dtype and shape. The letters in messages are lstm.h's.
// 4H and 3H cannot overflow: NumPy keeps an array's size (as if no dimension
// were 0) times its item size below 2^63, so H < 2^61. The core checks every
// product of sizes (std::length_error, a ValueError here).
inline LayerArgs check_layer(const py::object& W, const py::object& R, const py::object& b,
                             const py::object& W_hr, const py::object& peephole,
                             const py::object& clip, bool input_forget, int size, int64_t I,
                             const std::string& of_what) {
  LayerArgs l{arg("W", W),
              arg("R", R),
              opt_arg("b", b),
              opt_arg("W_hr", W_hr),
              opt_arg("peephole", peephole),
              Config{}};
  check_dtype(l.W, size, of_what);
  check_dtype(l.R, size, of_what);
  check_ndim(l.R, 2, l.W_hr.given() ? "[4H,P]" : "[4H,H]");
  int64_t H = l.R.a.shape(1), P = 0;
  if (l.W_hr.given()) {
    check_dtype(l.W_hr, size, of_what);
    check_ndim(l.W_hr, 2, "[P,H]");
    P = l.W_hr.a.shape(0);
    H = l.W_hr.a.shape(1);
    if (P == 0)
      throw py::value_error("W_hr: expected P >= 1 rows [P,H], got shape " +
                            shape_str(shape_of(l.W_hr.a)));
    check_shape(l.R, {4 * H, P}, "[4H,P] (H=" + std::to_string(H) + " from W_hr)");
  } else {
    check_shape(l.R, {4 * H, H}, "[4H,H] (H=" + std::to_string(H) + " from R's columns)");
  }
  check_ndim(l.W, 2, "[4H,I]");
  check_shape(l.W, {4 * H, I}, "[4H,I]");
  if (l.b.given()) {
    check_dtype(l.b, size, of_what);
    check_shape(l.b, {4 * H}, "[4H]");
  }
  if (l.peephole.given()) {
    check_dtype(l.peephole, size, of_what);
    check_shape(l.peephole, {3 * H}, "[3H] (i, o, f)");
  }
  l.cfg.I = I;
  l.cfg.H = H;
  l.cfg.P = P;
  l.cfg.input_forget = input_forget;
  if (!clip.is_none()) {
    const std::optional<double> number = as_number(clip);
    if (!number)
      throw py::type_error("clip: expected a number > 0 or None, got " + type_name(clip));
    const double v = *number;
    // The smallest normal number of the dtype: a smaller clip would round to 0.
    const bool f32 = size == 4;
    const double tiny =
        f32 ? double(std::numeric_limits<float>::min()) : std::numeric_limits<double>::min();
    if (!(v >= tiny))
      throw py::value_error(
          std::string("clip: expected a number > 0 (at least ") +
          (f32 ? "1.1754944e-38 in float32" : "2.2250738585072014e-308 in float64") +
          "), or None for no clipping, got " + py::str(clip).cast<std::string>());
    l.cfg.clip = v;
  }
  return l;
}

// lengths: integers [B] in [0,T], as a private int64 array. Checked in C++
// on the values as given (int64 holds any signed one, uint64 any unsigned),
// so that the message shows the value given and no Python code runs inside
// the call (parked_if_ended).
inline std::optional<py::array_t<int64_t>> check_lengths(const py::object& obj, int64_t B,
                                                         int64_t T) {
  if (obj.is_none()) return std::nullopt;
  const Arg a = arg("lengths", obj);
  const char kind = a.a.dtype().kind();
  if (a.a.size() > 0 && kind != 'i' && kind != 'u')
    throw py::type_error("lengths: expected an integer array, got dtype " + dtype_str(a.a));
  check_shape(a, {B}, "[B]");
  py::array_t<int64_t> out(B);
  int64_t* o = out.mutable_data();
  const auto checked = [&](const auto& given) {
    for (int64_t i = 0; i < B; ++i) {
      const auto v = given.data()[i];
      bool outside;
      if constexpr (std::is_signed_v<decltype(v)>)
        outside = v < 0 || v > T;
      else
        outside = v > uint64_t(T);
      if (outside)
        throw py::value_error("lengths[" + std::to_string(i) + "] = " + std::to_string(v) +
                              " is outside [0, " + std::to_string(T) + "]");
      o[i] = int64_t(v);
    }
  };
  if (B == 0) return out;  // [] of any dtype
  if (kind == 'i')
    checked(contiguous<int64_t>(a.a));
  else
    checked(contiguous<uint64_t>(a.a));
  return out;
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

// private_copies (a training forward's, for its cache): W and R copied only
// where backward reads them, i.e. where the forward does not keep them packed
// in its workspace (lstm_ext::training_keeps_weights; copying them took 10 of
// the 150 us of a (100,1,128,128) training forward, dev/perf-notes.md 43).
template <typename S>
LayerArrays<S> layer_arrays(const LayerArgs& l, bool private_copies) {
  if (private_copies) {
    const bool kept = lstm_ext::training_keeps_weights(l.cfg);
    auto weight = [&](const Arg& a) {
      return kept ? contiguous<S>(a.a) : private_copy<S>(a.a, a.original);
    };
    return {weight(l.W), weight(l.R), opt_private_copy<S>(l.b), opt_private_copy<S>(l.W_hr),
            opt_private_copy<S>(l.peephole)};
  }
  return {contiguous<S>(l.W.a), contiguous<S>(l.R.a), opt_contiguous<S>(l.b),
          opt_contiguous<S>(l.W_hr), opt_contiguous<S>(l.peephole)};
}

// ---- whole calls ------------------------------------------------------------------

// forward's arguments, checked; cfg.lengths is left null (point it at
// lengths->data() where the call runs, the array owning it).
struct ForwardArgs {
  Arg x;
  py::array x_tb;  // x as [T,B,I]
  LayerArgs l;
  Arg h0, c0;
  Config cfg;
  std::optional<py::array_t<int64_t>> lengths;
  int size;  // 4 or 8
};

// weight_dtype: None (the weights as given) or "bfloat16" (float32 data only).
inline bool check_weight_dtype(const py::object& o, int size) {
  if (o.is_none()) return false;
  if (!py::isinstance<py::str>(o))
    throw py::type_error("weight_dtype: expected None or 'bfloat16', got " + type_name(o));
  const std::string v = o.cast<std::string>();
  if (v != "bfloat16")
    throw py::value_error("weight_dtype: expected None or 'bfloat16', got '" + v + "'");
  if (size != 4)
    throw py::type_error("weight_dtype='bfloat16': expected float32 arrays, got float64");
  return true;
}

inline ForwardArgs check_forward(const py::object& x_obj, const py::object& W, const py::object& R,
                                 const py::object& b, const py::object& h0_obj,
                                 const py::object& c0_obj, bool batch_first, bool reverse,
                                 const py::object& lengths, const py::object& W_hr,
                                 const py::object& peephole, const py::object& clip,
                                 bool input_forget, const py::object& weight_dtype) {
  Arg x = arg("x", x_obj);
  const int size = float_size(x);
  check_ndim(x, 3, batch_first ? "[B,T,I]" : "[T,B,I]");
  const std::string of_x = dtype_source(x);
  LayerArgs l =
      check_layer(W, R, b, W_hr, peephole, clip, input_forget, size, x.a.shape(2), of_x);
  Arg h0 = opt_arg("h0", h0_obj), c0 = opt_arg("c0", c0_obj);
  py::array x_tb = batch_first ? swap01(x.a) : x.a;
  Config cfg = l.cfg;
  cfg.T = x_tb.shape(0);
  cfg.B = x_tb.shape(1);
  cfg.reverse = reverse;
  cfg.bf16_weights = check_weight_dtype(weight_dtype, size);
  check_state(h0, size, cfg.B, cfg.O(), cfg.P ? "[B,P]" : "[B,H]", of_x);
  check_state(c0, size, cfg.B, cfg.H, "[B,H]", of_x);
  auto lens = check_lengths(lengths, cfg.B, cfg.T);
  return {x, x_tb, l, h0, c0, cfg, std::move(lens), size};
}

// backward's dy, dh, dc against what the cache says forward saw.
inline void check_backward(const Config& c, bool batch_first, int size, const Arg& dy,
                           const Arg& dh, const Arg& dc) {
  const char* of_what = "the cache";
  if (dy.given()) {
    check_dtype(dy, size, of_what);
    const std::string o = c.P ? "P" : "H";
    if (batch_first)
      check_shape(dy, {c.B, c.T, c.O()}, "[B,T," + o + "] (from the cache)");
    else
      check_shape(dy, {c.T, c.B, c.O()}, "[T,B," + o + "] (from the cache)");
  }
  check_state(dh, size, c.B, c.O(), c.P ? "[B,P]" : "[B,H]", of_what);
  check_state(dc, size, c.B, c.H, "[B,H]", of_what);
}

// The cache argument of backward: a CacheT, else a TypeError saying what it is.
template <typename CacheT>
const CacheT& check_cache(const py::object& cache_obj) {
  if (cache_obj.is_none())
    throw py::type_error(
        "cache: got None; forward(..., training=False) keeps no cache, call it with "
        "training=True to take gradients");
  if (!py::isinstance<CacheT>(cache_obj))
    throw py::type_error("cache: expected the cache returned by lstm_ext.forward, got " +
                         type_name(cache_obj));
  return cache_obj.cast<const CacheT&>();
}

// step's arguments, checked.
struct StepArgs {
  Arg x;
  LayerArgs l;
  Arg h, c;
  Config cfg;
  int size;
};

inline StepArgs check_step(const py::object& x_obj, const py::object& h_obj,
                           const py::object& c_obj, const py::object& W, const py::object& R,
                           const py::object& b, const py::object& W_hr, const py::object& peephole,
                           const py::object& clip, bool input_forget) {
  Arg x = arg("x", x_obj);
  const int size = float_size(x);
  check_ndim(x, 2, "[B,I]");
  const std::string of_x = dtype_source(x);
  LayerArgs l =
      check_layer(W, R, b, W_hr, peephole, clip, input_forget, size, x.a.shape(1), of_x);
  Config cfg = l.cfg;
  cfg.T = 1;
  cfg.B = x.a.shape(0);
  Arg h = opt_arg("h", h_obj), c = opt_arg("c", c_obj);
  check_state(h, size, cfg.B, cfg.O(), cfg.P ? "[B,P]" : "[B,H]", of_x);
  check_state(c, size, cfg.B, cfg.H, "[B,H]", of_x);
  return {x, l, h, c, cfg, size};
}

// A private copy of an optional array as an object: the array, or None.
template <typename S>
py::object or_none_arr(const opt_carray<S>& a) {
  return a ? py::object(*a) : py::object(py::none());
}

// T's instances are made by C++ only: T.__new__(T) and T() raise TypeError
// (message), and so does pybind11_object.__new__(T), which CPython's own
// error message suggests and which made an instance of uninitialised memory
// (its first use crashed the interpreter): with a tp_new of its own, not the
// base's, CPython refuses the base's __new__ on T as "not safe".
template <typename T>
inline const char* refusal_of = "";
template <typename T>
PyObject* refuse_new(PyTypeObject*, PyObject*, PyObject*) {
  PyErr_SetString(PyExc_TypeError, refusal_of<T>);
  return nullptr;
}
template <typename T, typename... Options>
void made_by_cpp_only(py::class_<T, Options...>& c, const char* message) {
  refusal_of<T> = message;
  c.def_static("__new__", [message](const py::args&, const py::kwargs&) -> py::object {
    throw py::type_error(message);
  });
  reinterpret_cast<PyTypeObject*>(c.ptr())->tp_new = &refuse_new<T>;
}

// What both modules' Cache classes show alike: no construction from Python,
// the sizes and switches of the forward call.
template <typename CacheT>
void def_cache_common(py::class_<CacheT>& c) {
  made_by_cpp_only(c, "Cache: made only by lstm_ext.forward(training=True)");
  c.def_property_readonly("T", [](const CacheT& c) { return c.cfg.T; })
      .def_property_readonly("B", [](const CacheT& c) { return c.cfg.B; })
      .def_property_readonly("I", [](const CacheT& c) { return c.cfg.I; })
      .def_property_readonly("H", [](const CacheT& c) { return c.cfg.H; })
      .def_property_readonly("P", [](const CacheT& c) { return c.cfg.P; })
      .def_property_readonly("reverse", [](const CacheT& c) { return c.cfg.reverse; })
      .def_property_readonly("batch_first", [](const CacheT& c) { return c.batch_first; });
}

// forward, backward and step with their argument names and defaults, the
// same in both modules.
template <typename Forward, typename Backward, typename Step>
void def_calls(py::module_& m, Forward forward, Backward backward, Step step) {
  m.def("forward", forward, py::arg("x"), py::arg("W"), py::arg("R"), py::arg("b") = py::none(),
        py::arg("h0") = py::none(), py::arg("c0") = py::none(), py::kw_only(),
        py::arg("batch_first") = false, py::arg("training") = true, py::arg("reverse") = false,
        py::arg("lengths") = py::none(), py::arg("W_hr") = py::none(),
        py::arg("peephole") = py::none(), py::arg("clip") = py::none(),
        py::arg("input_forget") = false, py::arg("return_cell_states") = false,
        py::arg("weight_dtype") = py::none());
  m.def("backward", backward, py::arg("cache"), py::arg("dy"), py::arg("dh") = py::none(),
        py::arg("dc") = py::none());
  m.def("step", step, py::arg("x"), py::arg("h"), py::arg("c"), py::arg("W"), py::arg("R"),
        py::arg("b") = py::none(), py::kw_only(), py::arg("W_hr") = py::none(),
        py::arg("peephole") = py::none(), py::arg("clip") = py::none(),
        py::arg("input_forget") = false);
}

}  // namespace lstm_ext_bind
