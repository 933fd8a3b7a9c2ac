// What the library was built with and runs on.
#pragma once

#include <string>

namespace lstm_ext {

// The BLAS's own description of its build (OpenBLAS: version, kernels, threading).
std::string blas_config();

// Threads the BLAS uses for one product.
int blas_num_threads();

// The compiler and options this library was built with, one line.
std::string build_description();

}  // namespace lstm_ext
