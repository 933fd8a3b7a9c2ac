// Large arrays that lstm_ext hands out (workspaces, outputs) come from a small
// cache of buffers freed by earlier calls. A fresh buffer costs the kernel a
// page fault and a page of zeros for each 4 KiB (or 2 MiB) touched, about
// 1 ms per 20 MB: 4 % of a (100,64,512,512) forward+backward and 10 % of a
// ragged one (dev/perf-notes.md, 17). A training loop asks for the same sizes
// every iteration, so a buffer its last iteration freed serves the next.
//
// Bounded: at most kBlocks buffers and LSTM_EXT_BUFFER_CACHE_MB (default 1024)
// megabytes are held; 0 turns the cache off. Buffers under kMinBytes (128 KiB)
// come from NumPy as usual. Thread-safe. Header-only; internal.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <cstdlib>
#include <deque>
#include <mutex>
#include <new>
#include <string>
#include <utility>
#include <vector>

#if !defined(_WIN32)
#include <sys/mman.h>
#endif

namespace py = pybind11;

namespace lstm_ext_bind {

class BufferCache {
 public:
  // kMinBytes: glibc's default threshold for serving malloc by mmap, i.e.
  // by fresh pages on every call (it raises the threshold only after such a
  // block is freed, which other libraries in the process may or may not do).
  static constexpr size_t kMinBytes = size_t(128) << 10, kAlign = 64, kBlocks = 32;
  static constexpr size_t kHuge = size_t(2) << 20;

  // The process's cache: _core's, which _cuda adopts when it loads
  // (def_buffer_cache), so that both modules share one bound. Never
  // destroyed: arrays may outlive the interpreter's exit.
  static BufferCache& instance() {
    BufferCache*& cache = slot();
    if (!cache) cache = new BufferCache();  // first use, with the GIL held
    return *cache;
  }
  static void adopt(BufferCache* shared) { slot() = shared; }

  // A buffer of at least `bytes`, and its capacity: a cached one of at least
  // `bytes` and at most 5/4 of a new one's capacity (the latest freed first),
  // else a new one. From kHuge bytes a new buffer is a whole number of huge
  // pages, 2 MiB-aligned, which the kernel is asked to back with huge pages
  // (where transparent huge pages are on "madvise" or "always"): fewer TLB
  // misses where products stride through rows of z 4 KiB apart (the BLAS's
  // copies of dz for dW: 12 % of a (100,32,512,256) backward's samples, 8 %
  // on huge pages; forward+backward 0.97-0.98 of the time at B = 16-64,
  // dev/perf-notes.md 76).
  std::pair<void*, size_t> take(size_t bytes) {
    if (bytes > size_t(PTRDIFF_MAX)) throw std::bad_alloc();  // and no rounding past SIZE_MAX
    const size_t align = bytes >= kHuge ? kHuge : kAlign;
    const size_t capacity = (bytes + align - 1) / align * align;
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (auto it = free_.rbegin(); it != free_.rend(); ++it) {
        if (it->second >= bytes && it->second <= capacity + capacity / 4) {
          const auto block = *it;
          held_ -= block.second;
          free_.erase(std::next(it).base());
          return block;
        }
      }
    }
    void* p = std::aligned_alloc(align, capacity);
    if (!p) throw std::bad_alloc();
#ifdef MADV_HUGEPAGE
    if (align == kHuge) madvise(p, capacity, MADV_HUGEPAGE);
#endif
    return {p, capacity};
  }

  // Back into the cache, dropping the oldest buffers past the bounds.
  void give(void* p, size_t capacity) {
    std::vector<void*> drop;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (capacity > limit_) {
        drop.push_back(p);
      } else {
        free_.emplace_back(p, capacity);
        held_ += capacity;
        while (held_ > limit_ || free_.size() > kBlocks) {
          drop.push_back(free_.front().first);
          held_ -= free_.front().second;
          free_.pop_front();
        }
      }
    }
    for (void* q : drop) std::free(q);
  }

  size_t held() {
    std::lock_guard<std::mutex> lock(mu_);
    return held_;
  }

  // Frees every cached buffer (arrays in use keep theirs); the bytes freed.
  size_t release() {
    std::deque<std::pair<void*, size_t>> drop;
    size_t bytes = 0;
    {
      std::lock_guard<std::mutex> lock(mu_);
      drop.swap(free_);
      bytes = held_;
      held_ = 0;
    }
    for (const auto& block : drop) std::free(block.first);
    return bytes;
  }

  size_t limit() const { return limit_; }

 private:
  // A whole number of megabytes in [0, 2^40); anything else (lstm_ext
  // warns of it at import: _checks.py) leaves the default.
  BufferCache() {
    long long mb = 1024;
    if (const char* env = std::getenv("LSTM_EXT_BUFFER_CACHE_MB")) {
      char* end = nullptr;
      const long long v = std::strtoll(env, &end, 10);
      if (end != env && *end == '\0' && v >= 0 && v < (1LL << 40)) mb = v;
    }
    limit_ = size_t(mb) << 20;
  }

  static BufferCache*& slot() {
    static BufferCache* cache = nullptr;
    return cache;
  }

  std::mutex mu_;
  std::deque<std::pair<void*, size_t>> free_;  // oldest first
  size_t held_ = 0, limit_ = 0;
};

// An uninitialised C-contiguous array of `shape`; large ones from the cache,
// given back when NumPy frees the array.
template <typename S>
py::array_t<S, py::array::c_style | py::array::forcecast> cached_empty(
    const std::vector<py::ssize_t>& shape) {
  using Array = py::array_t<S, py::array::c_style | py::array::forcecast>;
  size_t bytes = sizeof(S);
  bool too_large = false;  // past what an array may hold (NumPy's limit too)
  for (const py::ssize_t d : shape) {
    too_large |= d < 0 || (d > 0 && bytes > size_t(PTRDIFF_MAX) / size_t(d));
    bytes = too_large ? 0 : bytes * size_t(d);
  }
  BufferCache& cache = BufferCache::instance();
  if (!too_large && (bytes < BufferCache::kMinBytes || cache.limit() == 0)) return Array(shape);
  using Block = std::pair<void*, size_t>;  // the buffer and its capacity
  Block* block = nullptr;
  const auto what = [&] {  // for the errors, in NumPy's words
    std::string dims;
    for (const py::ssize_t d : shape) dims += (dims.empty() ? "" : ", ") + std::to_string(d);
    return "an array with shape (" + dims + (shape.size() == 1 ? ",)" : ")") + " and data type " +
           py::str(py::dtype::of<S>()).cast<std::string>();
  };
  if (too_large) throw py::value_error("array is too big: " + what() + " would pass 2^63 bytes");
  try {
    block = new Block(cache.take(bytes));
  } catch (const std::bad_alloc&) {
    const std::string message =
        "Unable to allocate " + std::to_string(bytes) + " bytes for " + what();
    PyErr_SetString(PyExc_MemoryError, message.c_str());
    throw py::error_already_set();
  }
  const auto give_back = [](void* b) {
    auto* done = static_cast<Block*>(b);
    BufferCache::instance().give(done->first, done->second);
    delete done;
  };
  py::capsule owner;
  try {
    owner = py::capsule(block, give_back);
  } catch (...) {
    give_back(block);
    throw;
  }
  return Array(shape, static_cast<S*>(block->first), owner);
}

// The cache's functions in module m: _core makes the cache and hands it out
// as a capsule; _cuda (owner = _core) adopts _core's.
inline void def_buffer_cache(py::module_& m, const py::module_* owner = nullptr) {
  if (owner) {
    BufferCache::adopt(
        static_cast<BufferCache*>(owner->attr("_buffer_cache").cast<py::capsule>().get_pointer()));
  } else {
    m.attr("_buffer_cache") = py::capsule(&BufferCache::instance(), "lstm_ext.BufferCache");
  }
  m.def(
      "buffer_cache",
      [] {
        auto& c = BufferCache::instance();
        return py::make_tuple(c.held(), c.limit());
      },
      "(bytes held, limit in bytes) of the cache of freed large buffers (buffers.h).");
  m.def(
      "free_cached_buffers", [] { return BufferCache::instance().release(); },
      "Frees the cached buffers; the bytes freed.");
}

}  // namespace lstm_ext_bind
