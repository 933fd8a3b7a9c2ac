// What the library was built with and runs on.
#pragma once

#include <cstdint>
#include <string>

namespace lstm_ext {

// The BLAS's own description of its build (OpenBLAS: version, kernels, threading).
std::string blas_config();

// Threads the BLAS uses for one product: 1 once lstm_ext has run (it
// parallelises on its own threads; the OpenBLAS it links is its own, not
// NumPy's).
int blas_num_threads();

// lstm_ext's threads. The default is the environment variable
// LSTM_EXT_NUM_THREADS, else the cores this process may run on (its CPU
// affinity), but no more than cpu_quota_cores() where that is set, nor than
// OMP_NUM_THREADS (its first count) where that is set: process pools such
// as joblib's loky workers, Ray and Dask set it in their workers. Results
// are bit-identical whatever the count. set_num_threads throws
// std::invalid_argument outside [1, kMaxThreads]. Where the system refuses a
// thread (a container's limit on tasks), the pool keeps those it started and
// get_num_threads says how many. A child of fork() (after the threads
// started) makes threads of its own, as many as its parent had.
constexpr int kMaxThreads = 1024;
int get_num_threads();
void set_num_threads(int n);
// The calling thread's calls from now on run on a pool of its own of n
// threads (the thread itself and n - 1 more), not on the process's; n = 0
// goes back to the process's. Two threads calling lstm_ext at once then
// each get their own n threads, where on the process's pool one of them
// would run alone on its own thread. get_num_threads, called from the
// thread, says n (or the threads the system let it start). lstm_ext.nn runs
// the two directions of a bidirectional layer so, each on half the threads.
// The pool's threads end with the calling thread. Throws
// std::invalid_argument outside [0, kMaxThreads].
void use_own_pool(int n);
// get_num_threads without starting the threads: the pool's size where it has
// started, else the size it will try for (threads the system will refuse are
// not known yet). For tools that only report the count (threadpoolctl).
int planned_num_threads();

// The threads of a call meet at every step of the sequence. Where other
// processes' threads share the cores, so that calls' threads spend over a
// fifth of their time off their cores while they wait for each other (two
// calls in a row, or one of 20 ms or more), later calls run on half as many
// threads for a while (20 ms to 1.28 s), then try all of them again; the
// results are the same bits either way. team_backoffs: how often the
// threads were halved (or halved again) since the last set_num_threads (or
// the first call).
int64_t team_backoffs();

// The CPU time this process's cgroup (and its ancestors) may use, in cores
// rounded up: 2 in a container run with --cpus=1.5 (Docker) or a CPU limit of
// 1500m (Kubernetes). 0 where no limit is set or none can be read.
int cpu_quota_cores();

// The recurrent product on R packed once per call, with a hand-written kernel
// (where the CPU has AVX-512F, or AVX2 and FMA, unless
// LSTM_EXT_PACKED_RECURRENT=0; the two kernels give the same bits, and
// LSTM_EXT_PACKED_KERNEL=avx2 runs the AVX2 one on an AVX-512F CPU), or each
// step through the BLAS. Both are checked against the same reference; on one
// machine each gives the same bits at any thread count. set_packed_recurrent
// returns the previous setting (it stays off where the CPU cannot).
bool packed_recurrent_enabled();
bool set_packed_recurrent(bool on);
// The packed kernel this CPU runs: "avx512f", "avx2" (with FMA) or "none".
std::string packed_recurrent_kernel();

// Whether the gate pass (cell_math.h's kFma) fuses the exps' multiply-adds
// into FMA instructions: where the version of the pass this CPU runs has them
// (AVX-512F, or AVX2 and FMA; with GCC 12 or later the whole of x86-64-v3).
// Elsewhere each multiply-add rounds twice: other bits, a few ulps apart.
bool fused_gate_math();

// The compiler and options this library was built with, one line.
std::string build_description();

}  // namespace lstm_ext
