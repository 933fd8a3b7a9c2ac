// lstm_ext::Model: an LSTM stack as lstm_ext.nn.LSTM trains it (layers,
// bidirectional, projection, PyTorch's parameter names), loaded from the file
// lstm_ext.export.save_model writes (docs/model-format.md), run in float32
// over caller-owned input and output buffers.
//
//   lstm_ext::Model m = lstm_ext::Model::load("model.lstmx");
//   m.reset(/*batch=*/1);
//   for (...) m.step(x, y);              // x [B,I] -> y [B,O], state kept inside
//   m.run(xs, T, B, ys);                 // x [T,B,I] -> y [T,B,D*O]
//
// Letters as in lstm.h; D = 2 if bidirectional else 1; O = proj_size or
// hidden_size. A Model is not safe to use from two threads at once (it holds
// the streaming state and its work buffers); copy it for another thread.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace lstm_ext {

// A model file that is missing, truncated, malformed or inconsistent. The
// message says which and where.
class FormatError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct ModelConfig {
  int64_t input_size = 0, hidden_size = 0, num_layers = 1, proj_size = 0;
  bool bidirectional = false, bias = true;
  int64_t directions() const { return bidirectional ? 2 : 1; }
  int64_t output_size() const { return proj_size > 0 ? proj_size : hidden_size; }  // O
};

class Model {
 public:
  // Reads and checks a whole model file; throws FormatError, never reads past
  // the file's end, never allocates more than the file's size justifies. A
  // regular file only (a pipe has no size to justify anything: read its bytes
  // and call from_bytes).
  static Model load(const std::string& path);
  // The same from bytes in memory (what load reads).
  static Model from_bytes(const unsigned char* data, size_t size);

  const ModelConfig& config() const { return cfg_; }
  // Parameters by PyTorch's names, float32 (weight_ih_l0, ..._reverse, ...);
  // std::out_of_range for a name the model does not have.
  const std::vector<float>& parameter(const std::string& name) const;

  // Zero state for a batch of B rows (step() needs it first).
  void reset(int64_t batch);
  // One step of every layer: x [B,I] -> y [B,O], carrying (h, c) from the
  // previous step. Unidirectional models only, after reset() (std::logic_error
  // otherwise).
  void step(const float* x, float* y);
  // A whole sequence: x [T,B,I] -> y [T,B,D*O]. Unidirectional: starts from
  // the state step()/run() left (reset() or a new batch size zeros it) and
  // carries it on, so a long stream can come in chunks. Bidirectional: from
  // zeros, keeps no state. The first call packs each layer's weights
  // (lstm.h: pack_weights) and keeps them for the later ones, so chunks do
  // not pay for it again: that memory is about the weights' size once more.
  // y may not overlap x. A call that throws (a null or overlapping buffer,
  // sizes past the bounds, std::bad_alloc) leaves the state as it was.
  void run(const float* x, int64_t T, int64_t B, float* y);

 private:
  // One layer-direction's parameters, looked up once after loading: indices
  // into params_ (-1: absent), so that copies of a Model stay independent.
  struct Part {
    int64_t W = -1, R = -1, W_hr = -1;
    std::vector<float> bias;    // bias_ih + bias_hh; empty without bias
    std::vector<float> packed;  // pack_weights' buffer, from the first run() on
  };
  ModelConfig cfg_;
  std::vector<std::string> names_;
  std::vector<std::vector<float>> params_;  // in names_ order
  std::vector<Part> parts_;                 // [layer * D + d]
  int64_t batch_ = 0;
  std::vector<std::vector<float>> h_, c_;            // [L] of [B,O], [B,H]: the streaming state
  std::vector<std::vector<float>> next_h_, next_c_;  // run()'s new state, until it is done
  std::vector<float> scratch_, ws_, a_, y_dir_, h_out_, c_out_;

  int64_t index(const std::string& name) const;  // -1 where absent
  const float* at(int64_t index) const {
    return index < 0 ? nullptr : params_[size_t(index)].data();
  }
  void link();  // fills parts_ from params_
  void layer_forward(int64_t layer, int64_t d, const float* x, int64_t T, int64_t B, float* y,
                     const float* h0, const float* c0, float* hT, float* cT);
};

}  // namespace lstm_ext
