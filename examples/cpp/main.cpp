// lstm_stream MODEL: runs a model exported from Python
// (lstm_ext.export.save_model) one step at a time over the input it reads:
// whitespace-separated numbers on standard input, input_size of them per
// step, one sequence (batch 1). Prints each step's output, one line per step.
#include <lstm_ext/model.h>

#include <cstdio>
#include <exception>
#include <iostream>
#include <vector>

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s MODEL < INPUT\n", argv[0]);
    return 2;
  }
  try {
    lstm_ext::Model model = lstm_ext::Model::load(argv[1]);
    const auto& cfg = model.config();
    std::vector<float> x(size_t(cfg.input_size)), y(size_t(cfg.output_size()));
    model.reset(1);
    for (;;) {
      size_t got = 0;
      while (got < x.size() && std::cin >> x[got]) ++got;
      if (got == 0) break;
      if (got < x.size()) {
        std::fprintf(stderr, "lstm_stream: the input ends inside a step\n");
        return 1;
      }
      model.step(x.data(), y.data());
      for (size_t i = 0; i < y.size(); ++i) std::printf(i ? " %.9g" : "%.9g", double(y[i]));
      std::printf("\n");
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "lstm_stream: %s\n", e.what());
    return 1;
  }
  return 0;
}
