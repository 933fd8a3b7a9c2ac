// libFuzzer harness over the C++ model reader, lstm_ext::Model::from_bytes
// (docs/model-format.md). Built with ASan and UBSan by dev/fuzz.sh, not by
// CMake:
//
//   dev/fuzz.sh model 600
//
// Every input must either load or throw lstm_ext::FormatError; anything
// else (another exception, a sanitizer report, an allocation over
// -malloc_limit_mb, a timeout) is a crash. A model that loads is run: a
// short sequence through run(), and, unidirectional, two step() calls, so
// that the shapes the reader accepted are the shapes the core is given.
// The inputs worth keeping end up in tests/fuzz/corpus/model, which
// tests/test_fuzz_corpus.py replays through the Python binding.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "lstm_ext/model.h"

namespace {

// A model that loaded holds its weights in the input, so its sizes are
// bounded by the input's; the activations below are T*B times that at most.
void exercise(lstm_ext::Model& m) {
  const lstm_ext::ModelConfig& c = m.config();
  const int64_t T = 3, B = 2, I = c.input_size, Y = c.directions() * c.output_size();
  std::vector<float> x(size_t(T * B * I)), y(size_t(T * B * Y), NAN);
  for (size_t k = 0; k < x.size(); ++k) x[k] = float(int(k % 7) - 3) * 0.25f;
  m.run(x.data(), T, B, y.data());
  if (!c.bidirectional) {
    m.reset(1);
    m.step(x.data(), y.data());
    m.step(x.data() + I, y.data());
  }
  // Read every output, so that nothing above is optimised away.
  volatile float sink = 0;
  for (float v : y) sink = sink + v;
  (void)sink;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    lstm_ext::Model m = lstm_ext::Model::from_bytes(data, size);
    exercise(m);
  } catch (const lstm_ext::FormatError& e) {
    // the documented outcome for a bad file, with a message that says why,
    // in printable ASCII (bytes from the file are escaped)
    const char* msg = e.what();
    bool printable = msg[0] != '\0';
    for (const char* q = msg; *q; ++q) printable &= *q >= 0x20 && *q < 0x7f;
    if (!printable) {
      std::fprintf(stderr, "FormatError message empty or not printable ASCII: %s\n", msg);
      std::abort();
    }
  }
  return 0;  // any other exception escapes: libFuzzer reports it as a crash
}
