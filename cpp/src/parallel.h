// lstm_ext's own threads. Work is cut into pieces whose boundaries depend
// only on the problem's shape, never on the thread count, and every piece is
// computed by single-threaded code; so results are bit-identical whatever
// the number of threads. The BLAS runs single-threaded inside lstm_ext calls
// (use_serial_blas), so the two never oversubscribe the cores.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <type_traits>

namespace lstm_ext {

// Runs fn(0), ..., fn(n - 1) on the pool and the calling thread; returns when
// all are done, rethrowing the first exception a task threw. Calls from
// several threads at once are safe (one runs on the pool, the others inline).
void parallel_for(int64_t n, const std::function<void(int64_t)>& fn);

// Synchronisation for the threads of one team: each thread has a count of
// finished steps. finished(t, k) publishes thread t's (what it wrote before
// is visible to whoever sees the count), and wait_finished(k) returns once
// every thread's count is at least k (spinning for up to kTeamSpinNs, then
// yielding the core between tries), so that a thread waits only where it
// reads the others' part of a step, not at the step's end. finished(t, 1)
// then wait_finished(1) is a plain barrier. off_core_ns: the time the team's
// threads spent off their cores while they yielded, summed (other threads
// ran there; TeamBackoff reads it). A pool's idle worker spins as long
// before it yields between looks for a next call.
constexpr int64_t kTeamSpinNs = 10'000;
class Barrier {
 public:
  explicit Barrier(int n);
  void finished(int t, int64_t steps);
  void wait_finished(int64_t steps);
  int64_t off_core_ns() const { return off_core_ns_.load(std::memory_order_relaxed); }

 private:
  struct alignas(64) Count {  // a cache line each: the writer's alone
    std::atomic<int64_t> steps{0};
  };
  const int n_;
  std::unique_ptr<Count[]> counts_;
  alignas(64) std::atomic<int64_t> off_core_ns_{0};
};

// How large a team to run while other processes' threads share the cores.
// A team's threads meet at every step, so a step waits for a member the
// scheduler has taken off its core: two processes, each running a team of
// two on a two-core machine, took 28 to 34 times as long a B = 1 call as one
// alone (in two runs of three; dev/perf-notes.md, 66). After two team calls
// in a row whose threads spent over a fifth of their time off their cores
// while waiting for each other (kContended), or one such call at least
// kBackoffNs long, the next calls get half the team they want (rounded up)
// for a while: 8 times that call or kBackoffNs, whichever is longer, the
// kBackoffNs doubled each time the first call after a backoff is contended
// again, the while at most 64 kBackoffNs (1.28 s). A contended call during a
// backoff halves again. A call below the threshold ends the doubling, and so
// does a backoff 1.28 s past. A wait for a slower member on a core of its
// own (a shape that splits unevenly) yields and stays on its core, so it
// counts nothing; nor does a wait for a member's first step (a worker
// waking). Team sizes never change results (parallel_team). Thread-safe.
class TeamBackoff {
 public:
  static constexpr double kContended = 0.2;
  static constexpr int64_t kBackoffNs = 20'000'000;
  static constexpr int kMaxDoublings = 6;
  static constexpr int64_t kLongestNs = kBackoffNs << kMaxDoublings;  // 1.28 s
  // The team to run now for one that wants `want` threads.
  int team(int want, int64_t now_ns);
  // A team of n threads ran for wall_ns, off_core_ns of it off their cores
  // while waiting (Barrier::off_core_ns).
  void record(int n, int64_t off_core_ns, int64_t wall_ns, int64_t now_ns);
  // Backoffs begun so far.
  int64_t backoffs();

 private:
  std::mutex m_;
  int64_t backoffs_ = 0;
  int strikes_ = 0;       // contended calls in a row
  int halvings_ = 0;      // during a backoff: teams are want / 2^halvings_
  int64_t until_ns_ = 0;  // when the backoff ends (or ended)
  int doublings_ = 0;
};

// Runs fn(t, n, barrier) on n threads at once, t = 0..n-1, n = the pool's
// TeamBackoff::team of min(want, the pool's size), with a barrier for the n
// of them; n = 1 (on the calling thread) where the pool is busy with
// another caller, or where the work (about `work` multiply-adds) is under
// kWakeWork and the workers have gone to sleep since a call that ended over
// 100 us ago: waking them takes tens to hundreds of microseconds on a
// virtual machine, more than such a call takes alone (calls spaced out, as
// when a model generates text between them; in a loop of calls close
// together they stay awake, and a loop that resumes after a pause wakes them
// on its second call). What a member throws is rethrown once every member
// has finished (the caller's own first, then the lowest worker's); but a
// member that throws before a wait at the barrier leaves the others waiting
// there, so fn should check what it can before it starts.
constexpr double kWakeWork = 1 << 20;
void parallel_team(int want, double work, const std::function<void(int, int, Barrier&)>& fn);

// A team's task as the pool hands it to each thread: run(fn, t, n, barrier),
// where fn points at `bytes` bytes that the pool copies into each worker's
// own slot (at most kTeamTaskBytes, 64-byte aligned; more is an
// invalid_argument), or at the caller's object where bytes is 0 (read
// through the pointer, from the caller's stack).
constexpr size_t kTeamTaskBytes = 256;
struct TeamTask {
  void (*run)(const void* fn, int t, int n, Barrier& barrier);
  const void* fn;
  size_t bytes;
};
void parallel_team(int want, double work, const TeamTask& task);

// parallel_team for a function object that travels by value: each worker
// runs its own copy, made in its slot with its invitation, so it starts
// without reading the caller's stack line by line through references (each
// line a crossing between cores: 140 ns on the Intel VM, where a call's
// worker started 0.6-0.8 us late that way; dev/perf-notes.md, 80). fn's
// captures must be by value, and few (kTeamTaskBytes).
template <typename F>
void parallel_team_by_value(int want, double work, const F& fn) {
  static_assert(std::is_trivially_copyable_v<F> && sizeof(F) <= kTeamTaskBytes && alignof(F) <= 64,
                "parallel_team_by_value: a small function object, its captures by value");
  const auto run = [](const void* f, int t, int n, Barrier& barrier) {
    (*std::launder(static_cast<const F*>(f)))(t, n, barrier);  // a worker's: bytes copied
  };
  parallel_team(want, work, TeamTask{run, &fn, sizeof(F)});
}

// How often a team call has had to wake a sleeping worker since the pool was
// made (set_num_threads). For tests.
int64_t team_wakes();

// cpu_quota_cores (runtime.h): cgroup v2's cpu.max, or v1's cpu.cfs_quota_us
// over cpu.cfs_period_us, of the process's cgroup and each ancestor up to the
// hierarchy's mount, the smallest. The default thread count is at most this:
// a team spinning on more threads than its quota would be stopped by the
// scheduler for the rest of each period. root prefixes every path read
// (tests).
int cgroup_cpu_limit(const std::string& root = "");

// OMP_NUM_THREADS's value as a cap on the default thread count: the first
// count of its list (one a level of nesting), at most kMaxThreads; 0 where
// unset (null) or where libgomp would ignore it (any element not a positive
// integer).
int omp_num_threads(const char* value);

// Sets the BLAS to one thread, if it is not: lstm_ext parallelises on its
// own threads, cutting products by shape. The setting stays (switching back
// and forth cost 3.5 us a call): the OpenBLAS lstm_ext links, scipy-openblas32's,
// is not the one NumPy uses.
void use_serial_blas();

}  // namespace lstm_ext
