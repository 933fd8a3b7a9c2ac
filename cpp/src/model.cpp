// lstm_ext::Model: the model file's reader (docs/model-format.md) and the
// stack of lstm_forward / lstm_step calls that runs it.
#include "lstm_ext/model.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <system_error>

#include "common.h"
#include "lstm_ext/lstm.h"

namespace lstm_ext {
namespace {

constexpr unsigned char kMagic[8] = {'L', 'S', 'T', 'M', 'E', 'X', 'T', 0};
constexpr uint32_t kVersion = 1;
constexpr uint32_t kMaxSize = 1u << 20;  // input, hidden and projection sizes
constexpr uint32_t kMaxLayers = 1024;
constexpr uint32_t kMaxName = 64;

std::string where(size_t pos) { return " (byte " + std::to_string(pos) + ")"; }

// A name from the file as a message quotes it: printable ASCII as is, any
// other byte as \xNN, so that a message is always valid UTF-8 (Python gets
// it as a str) and prints no control characters.
std::string quoted(const std::string& name) {
  static const char hex[] = "0123456789abcdef";
  std::string out = "'";
  for (const char ch : name) {
    const unsigned char b = static_cast<unsigned char>(ch);
    if (b >= 0x20 && b < 0x7f && b != '\\' && b != '\'') {
      out += ch;
    } else {
      out += "\\x";
      out += hex[b >> 4];
      out += hex[b & 15];
    }
  }
  return out + "'";
}

// Bounded little-endian reads: every read is checked against the end first.
struct Reader {
  const unsigned char* p;
  size_t n, pos = 0;

  void need(size_t k, const std::string& what) const {
    if (k > n - pos)
      throw FormatError("lstm_ext model: truncated: " + what + " needs " + std::to_string(k) +
                        " bytes, " + std::to_string(n - pos) + " left" + where(pos));
  }
  uint64_t uint(int bytes, const std::string& what) {
    need(size_t(bytes), what);
    uint64_t v = 0;
    for (int i = bytes - 1; i >= 0; --i) v = (v << 8) | p[pos + size_t(i)];
    pos += size_t(bytes);
    return v;
  }
  uint32_t u32(const std::string& what) { return uint32_t(uint(4, what)); }
  uint64_t u64(const std::string& what) { return uint(8, what); }
};

uint32_t checked(uint32_t v, uint32_t lo, uint32_t hi, const char* what, size_t pos) {
  if (v < lo || v > hi)
    throw FormatError(std::string("lstm_ext model: ") + what + " = " + std::to_string(v) +
                      " is outside [" + std::to_string(lo) + ", " + std::to_string(hi) + "]" +
                      where(pos));
  return v;
}

// PyTorch's names and shapes for the configuration, in state_dict order.
std::vector<std::pair<std::string, std::vector<uint64_t>>> expected(const ModelConfig& c) {
  std::vector<std::pair<std::string, std::vector<uint64_t>>> out;
  const uint64_t H = uint64_t(c.hidden_size), O = uint64_t(c.output_size()),
                 D = uint64_t(c.directions());
  for (int64_t layer = 0; layer < c.num_layers; ++layer) {
    const uint64_t I = layer == 0 ? uint64_t(c.input_size) : D * O;
    for (uint64_t d = 0; d < D; ++d) {
      const std::string s = "_l" + std::to_string(layer) + (d ? "_reverse" : "");
      out.push_back({"weight_ih" + s, {4 * H, I}});
      out.push_back({"weight_hh" + s, {4 * H, O}});
      if (c.bias) {
        out.push_back({"bias_ih" + s, {4 * H}});
        out.push_back({"bias_hh" + s, {4 * H}});
      }
      if (c.proj_size > 0) out.push_back({"weight_hr" + s, {uint64_t(c.proj_size), H}});
    }
  }
  return out;
}

// The call of layer `layer`, direction d, over x [T,B,I_layer].
Config layer_config(const ModelConfig& m, int64_t layer, int64_t d, int64_t T, int64_t B) {
  Config c;
  c.T = T, c.B = B, c.H = m.hidden_size, c.P = m.proj_size, c.reverse = d == 1;
  c.I = layer == 0 ? m.input_size : m.directions() * m.output_size();
  return c;
}

}  // namespace

Model Model::from_bytes(const unsigned char* data, size_t size) {
  Reader r{data, size};
  r.need(8, "the magic bytes");
  if (std::memcmp(data, kMagic, 8) != 0)
    throw FormatError("lstm_ext model: not a model file (no LSTMEXT magic at its start)");
  r.pos = 8;
  const uint32_t version = r.u32("the format version");
  if (version != kVersion)
    throw FormatError("lstm_ext model: format version " + std::to_string(version) +
                      ", this reader reads version " + std::to_string(kVersion));
  size_t p0 = r.pos;
  const uint32_t dtype = r.u32("the dtype");
  if (dtype != 4 && dtype != 8)
    throw FormatError("lstm_ext model: dtype code " + std::to_string(dtype) +
                      " (expected 4, float32, or 8, float64)" + where(p0));
  Model m;
  ModelConfig& c = m.cfg_;
  p0 = r.pos;
  c.input_size = checked(r.u32("input_size"), 1, kMaxSize, "input_size", p0);
  p0 = r.pos;
  c.hidden_size = checked(r.u32("hidden_size"), 1, kMaxSize, "hidden_size", p0);
  p0 = r.pos;
  c.num_layers = checked(r.u32("num_layers"), 1, kMaxLayers, "num_layers", p0);
  p0 = r.pos;
  c.proj_size = checked(r.u32("proj_size"), 0, uint32_t(c.hidden_size - 1), "proj_size", p0);
  p0 = r.pos;
  c.bidirectional = checked(r.u32("bidirectional"), 0, 1, "bidirectional", p0) == 1;
  p0 = r.pos;
  c.bias = checked(r.u32("bias"), 0, 1, "bias", p0) == 1;
  const auto want = expected(c);
  p0 = r.pos;
  const uint32_t count = r.u32("the tensor count");
  if (count != want.size())
    throw FormatError("lstm_ext model: " + std::to_string(count) + " tensors, expected " +
                      std::to_string(want.size()) + " for this configuration" + where(p0));
  m.names_.resize(want.size());
  m.params_.resize(want.size());
  std::vector<bool> seen(want.size(), false);
  for (uint32_t t = 0; t < count; ++t) {
    p0 = r.pos;
    const uint32_t len = checked(r.u32("a name's length"), 1, kMaxName, "name length", p0);
    r.need(len, "a tensor name");
    const std::string name(reinterpret_cast<const char*>(data + r.pos), len);
    r.pos += len;
    size_t k = 0;
    while (k < want.size() && want[k].first != name) ++k;
    if (k == want.size())
      throw FormatError("lstm_ext model: unexpected tensor " + quoted(name) + where(p0));
    if (seen[k]) throw FormatError("lstm_ext model: tensor " + quoted(name) + " twice" + where(p0));
    seen[k] = true;
    const std::vector<uint64_t>& shape = want[k].second;
    p0 = r.pos;
    const uint32_t ndim = r.u32("'" + name + "' ndim");
    if (ndim != shape.size())
      throw FormatError("lstm_ext model: '" + name + "' has " + std::to_string(ndim) +
                        " dimensions, expected " + std::to_string(shape.size()) + where(p0));
    uint64_t elements = 1;
    for (uint32_t i = 0; i < ndim; ++i) {
      p0 = r.pos;
      const uint64_t dim = r.u64("'" + name + "' shape");
      if (dim != shape[i])
        throw FormatError("lstm_ext model: '" + name + "' dimension " + std::to_string(i) + " is " +
                          std::to_string(dim) + ", expected " + std::to_string(shape[i]) +
                          where(p0));
      elements *= dim;  // each bounded by 4 * 2^20 * 2: no overflow
    }
    r.need(size_t(elements * dtype), "'" + name + "' data");  // before allocating
    std::vector<float>& v = m.params_[k];
    v.resize(size_t(elements));
    const unsigned char* src = data + r.pos;
    for (uint64_t e = 0; e < elements; ++e) {
      uint64_t bits = 0;
      for (int b = int(dtype) - 1; b >= 0; --b) bits = (bits << 8) | src[e * dtype + uint64_t(b)];
      if (dtype == 4) {
        const uint32_t b32 = uint32_t(bits);
        std::memcpy(&v[e], &b32, 4);
      } else {
        double d;
        std::memcpy(&d, &bits, 8);
        v[e] = float(d);
      }
    }
    r.pos += size_t(elements * dtype);
    m.names_[k] = name;
  }
  if (r.pos != size)
    throw FormatError("lstm_ext model: " + std::to_string(size - r.pos) +
                      " bytes after the last tensor" + where(r.pos));
  m.link();
  return m;
}

Model Model::load(const std::string& path) {
  // A regular file only (a directory, a pipe or /dev/zero would fail late,
  // block, or never end), read as the size it has.
  std::error_code err;
  const bool regular = std::filesystem::is_regular_file(path, err);
  const std::uintmax_t size = regular ? std::filesystem::file_size(path, err) : 0;
  if (!regular || err)
    throw FormatError("lstm_ext model: cannot open '" + path + "'" +
                      (err ? ": " + err.message() : ": not a regular file"));
  std::ifstream f(path, std::ios::binary);
  if (!f) throw FormatError("lstm_ext model: cannot open '" + path + "'");
  std::vector<unsigned char> bytes(static_cast<size_t>(size));
  f.read(reinterpret_cast<char*>(bytes.data()), std::streamsize(size));
  if (size_t(f.gcount()) != bytes.size())
    throw FormatError("lstm_ext model: cannot read '" + path + "': " + std::to_string(size) +
                      " bytes expected, " + std::to_string(f.gcount()) + " read");
  try {
    return from_bytes(bytes.data(), bytes.size());
  } catch (const FormatError& e) {
    throw FormatError(std::string(e.what()) + " in '" + path + "'");
  }
}

int64_t Model::index(const std::string& name) const {
  for (size_t k = 0; k < names_.size(); ++k)
    if (names_[k] == name) return int64_t(k);
  return -1;
}

const std::vector<float>& Model::parameter(const std::string& name) const {
  const int64_t k = index(name);
  if (k < 0) throw std::out_of_range("lstm_ext::Model: no parameter '" + name + "'");
  return params_[size_t(k)];
}

void Model::reset(int64_t batch) {
  if (batch < 1) throw std::invalid_argument("lstm_ext::Model: batch must be >= 1");
  // Sizes checked (std::length_error) before anything is allocated; the
  // state changes only once all of it is allocated.
  forward_workspace_size(layer_config(cfg_, cfg_.num_layers - 1, 0, 1, batch), false);
  const size_t L = size_t(cfg_.num_layers), nh = size_t(detail::mul(batch, cfg_.output_size())),
               nc = size_t(detail::mul(batch, cfg_.hidden_size));
  std::vector<std::vector<float>> h(L, std::vector<float>(nh, 0)), c(L, std::vector<float>(nc, 0));
  h_.swap(h);
  c_.swap(c);
  batch_ = batch;
}

void Model::link() {
  const int64_t D = cfg_.directions(), G = 4 * cfg_.hidden_size;
  parts_.assign(size_t(cfg_.num_layers * D), Part{});
  for (int64_t layer = 0; layer < cfg_.num_layers; ++layer)
    for (int64_t d = 0; d < D; ++d) {
      const std::string s = "_l" + std::to_string(layer) + (d ? "_reverse" : "");
      Part& p = parts_[size_t(layer * D + d)];
      p.W = index("weight_ih" + s);
      p.R = index("weight_hh" + s);
      p.W_hr = index("weight_hr" + s);
      if (cfg_.bias) {
        const float *bi = at(index("bias_ih" + s)), *bh = at(index("bias_hh" + s));
        p.bias.resize(size_t(G));
        for (int64_t q = 0; q < G; ++q) p.bias[size_t(q)] = bi[q] + bh[q];
      }
    }
}

// One layer, one direction, over a sequence: x [T,B,I_layer] -> y [T,B,O];
// from h0 [B,O], c0 [B,H] (null: zeros) to hT, cT.
void Model::layer_forward(int64_t layer, int64_t d, const float* x, int64_t T, int64_t B, float* y,
                          const float* h0, const float* c0, float* hT, float* cT) {
  const Config cfg = layer_config(cfg_, layer, d, T, B);
  Part& p = parts_[size_t(layer * cfg_.directions() + d)];
  Weights<float> w{at(p.W), at(p.R), p.bias.empty() ? nullptr : p.bias.data(), at(p.W_hr), nullptr};
  if (p.packed.empty()) {  // the first run() packs the weights for all later ones
    std::vector<float> packed(size_t(packed_weights_size(cfg)));
    pack_weights(packed.data(), w, cfg);
    p.packed.swap(packed);
  }
  w.packed = p.packed.data();
  ws_.resize(size_t(forward_workspace_size(cfg, false)));
  lstm_forward(y, hT, cT, nullptr, ws_.data(), x, h0, c0, w, cfg, false);
}

void Model::run(const float* x, int64_t T, int64_t B, float* y) {
  if (T < 0 || B < 1) throw std::invalid_argument("lstm_ext::Model::run: T >= 0 and B >= 1");
  const int64_t D = cfg_.directions(), H = cfg_.hidden_size, O = cfg_.output_size(),
                L = cfg_.num_layers;
  // Every layer's sizes checked (std::length_error) before anything is
  // allocated; then no product below overflows (T*B*D*O is within the bound).
  for (int64_t layer = 0; layer < L; ++layer)
    forward_workspace_size(layer_config(cfg_, layer, 0, T, B), false);
  const int64_t nx = T * B * cfg_.input_size, ny = T * B * D * O;
  detail::require(x, "x", nx);
  detail::require(y, "y", ny);
  detail::require_apart(y, ny, "y", x, nx, "x");
  // Unidirectional: each layer goes from the state (zeros for a new batch
  // size) to next_h_, next_c_, which become the state once all have run.
  const bool carry = D == 1 && B == batch_;
  if (D == 1) {
    next_h_.resize(size_t(L));
    next_c_.resize(size_t(L));
  }
  const float* in = x;
  for (int64_t layer = 0; layer < L; ++layer) {
    const bool last = layer + 1 == L;
    std::vector<float>& out = layer % 2 ? a_ : scratch_;  // alternate: `in` stays intact
    float* dst = last ? y : (out.resize(size_t(T * B * D * O)), out.data());
    if (D == 1) {
      const size_t k = size_t(layer);
      next_h_[k].resize(size_t(B * O));
      next_c_[k].resize(size_t(B * H));
      layer_forward(layer, 0, in, T, B, dst, carry ? h_[k].data() : nullptr,
                    carry ? c_[k].data() : nullptr, next_h_[k].data(), next_c_[k].data());
    } else {
      y_dir_.resize(size_t(T * B * O));
      h_out_.resize(size_t(B * O));
      c_out_.resize(size_t(B * H));
      for (int64_t d = 0; d < 2; ++d) {  // [T,B,O] each, then side by side: [T,B,2O]
        layer_forward(layer, d, in, T, B, y_dir_.data(), nullptr, nullptr, h_out_.data(),
                      c_out_.data());
        for (int64_t r = 0; r < T * B; ++r)
          std::copy(y_dir_.begin() + r * O, y_dir_.begin() + (r + 1) * O, dst + (r * 2 + d) * O);
      }
    }
    in = dst;
  }
  if (D == 1) {
    h_.swap(next_h_);
    c_.swap(next_c_);
    batch_ = B;
  }
}

void Model::step(const float* x, float* y) {
  if (cfg_.bidirectional)
    throw std::logic_error(
        "lstm_ext::Model::step: a bidirectional model needs the whole "
        "sequence; use run()");
  if (batch_ < 1) throw std::logic_error("lstm_ext::Model::step: call reset(batch) first");
  run(x, 1, batch_, y);
}

}  // namespace lstm_ext
