// What the library was built with and runs on.
#pragma once

#include <string>

namespace lstm_ext {

// The BLAS's own description of its build (OpenBLAS: version, kernels, threading).
std::string blas_config();

// Threads the BLAS uses for one product outside lstm_ext calls (inside them
// it uses one: lstm_ext parallelises on its own threads).
int blas_num_threads();

// lstm_ext's threads. The default is the environment variable
// LSTM_EXT_NUM_THREADS, else the cores this process may run on. Results are
// bit-identical whatever the count. set_num_threads throws
// std::invalid_argument outside [1, 1024].
int get_num_threads();
void set_num_threads(int n);

// The compiler and options this library was built with, one line.
std::string build_description();

}  // namespace lstm_ext
