#include "parallel.h"

#include <pthread.h>
#include <sched.h>
#include <time.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <fstream>
#include <memory>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "lstm_ext/runtime.h"

namespace lstm_ext {

void blas_set_num_threads(int n);  // blas.cpp

namespace {

int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

// Spins until pred() holds or about `limit` ns have passed (kSpinTime by
// default); says which. Workers and a region's caller spin before they sleep
// (a team's caller spins, then yields; it never sleeps): waking a sleeping
// thread costs tens to hundreds of microseconds on a virtual machine whose
// idle CPU has halted, more than a whole step of a small LSTM. The
// clock is read from the 64th pause on (about 2 us on Zen 3, where a pause
// takes ~27 ns): most spins end before.
constexpr std::chrono::microseconds kSpinTime(100);

template <typename Pred>
bool spin_until(Pred pred, int64_t limit = std::chrono::nanoseconds(kSpinTime).count()) {
  int64_t start = 0;
  for (int i = 1;; ++i) {
    if (pred()) return true;
    cpu_relax();
    if (i % 64 == 0) {
      if (start == 0)
        start = now_ns();
      else if (now_ns() - start > limit)
        return false;
    }
  }
}

// Whether this thread holds a pool's region_ (runs a region or a team as its
// caller): a parallel_for or team it starts from inside (a BLAS product a
// member cuts into blocks) runs on this thread alone, rather than try_lock
// the mutex it already holds (undefined for std::mutex).
thread_local bool holding_region = false;
struct HoldingRegion {
  HoldingRegion() { holding_region = true; }
  ~HoldingRegion() { holding_region = false; }
  HoldingRegion(const HoldingRegion&) = delete;
  HoldingRegion& operator=(const HoldingRegion&) = delete;
};

// A fixed set of worker threads that join the caller on one region of tasks
// at a time. A region of n tasks wakes only the first n - 1 workers (each
// has its own invitation, a cache line of its own): woken, a worker waits
// awake after its task (spinning kTeamSpinNs, then yielding its core between
// looks for kSpinTime) before it sleeps, so waking all of them for a
// team of two on a many-core machine kept every spare core busy spinning
// while small calls followed each other (perf-notes, 68). The same workers
// are asked first every time, so the ones a loop of calls uses stay awake.
class Pool {
 public:
  // As many workers as the system lets the process start, up to threads - 1:
  // where it refuses one (a container's limit on processes, pids.max), the
  // pool is smaller and get_num_threads says so. (A constructor left by the
  // exception would destroy the slots under the waiting workers: a hang.)
  explicit Pool(int threads) : slots_(new Slot[size_t(std::max(threads - 1, 1))]) {
    workers_.reserve(size_t(std::max(threads - 1, 0)));  // no reallocation below
    for (int k = 1; k < threads; ++k) {
      try {
        Slot& slot = slots_[size_t(k - 1)];
        workers_.emplace_back([this, &slot] { worker(slot); });
      } catch (const std::system_error&) {
        break;
      }
    }
  }
  ~Pool() {
    {
      std::lock_guard<std::mutex> lk(m_);
      stop_ = true;
    }
    for (size_t k = 0; k < workers_.size(); ++k) slots_[k].wake.notify_one();
    for (auto& t : workers_) t.join();
  }
  int size() const { return int(workers_.size()) + 1; }

  // Whether a worker a region or team of n would wake has gone to sleep,
  // and the last region or team call (with the workers or without them:
  // call_ended) ended over kSpinTime ago.
  bool idle(int64_t n) const {
    const int64_t since = now_ns() - last_end_ns_.load(std::memory_order_relaxed);
    if (since <= std::chrono::nanoseconds(kSpinTime).count()) return false;
    for (int64_t k = 0; k < invited(n); ++k)
      if (slots_[size_t(k)].asleep.load(std::memory_order_relaxed)) return true;
    return false;
  }
  void call_ended() { last_end_ns_.store(now_ns(), std::memory_order_relaxed); }
  int64_t wakes() const { return wakes_.load(std::memory_order_relaxed); }
  TeamBackoff& backoff() { return backoff_; }

  void run(int64_t n, const std::function<void(int64_t)>& fn) {
    std::unique_lock<std::mutex> region(region_, std::defer_lock);
    if (!holding_region && !workers_.empty() && n > 1) region.try_lock();
    if (!region) {  // one task, or busy with a region (another caller's, or this one's): inline
      for (int64_t i = 0; i < n; ++i) fn(i);
      return;
    }
    const HoldingRegion holding;
    region_run(n, fn);
  }

  // task.run(.., t, n, barrier) for t < n on n different threads at once;
  // false (nothing run) if the pool is busy or too small.
  bool team(int n, const TeamTask& task, Barrier& barrier) {
    if (holding_region || n > size() || n <= 1) return false;
    std::unique_lock<std::mutex> region(region_, std::try_to_lock);
    if (!region) return false;
    const HoldingRegion holding;
    team_run(n, task, barrier);
    return true;
  }

 private:
  struct alignas(64) Slot {
    // Written by the caller, read by this worker (but asleep).
    std::atomic<uint64_t> invite{0};  // the region this worker is asked to join
    std::atomic<uint64_t> team{0};    // the team call whose task is below
    void (*team_run)(const void*, int, int, Barrier&) = nullptr;
    const void* team_fn = nullptr;  // team_arg, or the caller's object
    Barrier* team_barrier = nullptr;
    int team_t = 0, team_n = 0;
    std::atomic<bool> asleep{false};                     // the worker's
    alignas(64) unsigned char team_arg[kTeamTaskBytes];  // TeamTask's fn, copied
    std::condition_variable wake;
    // Written by this worker, read by the caller: a line of its own.
    alignas(64) std::atomic<uint64_t> team_done{0};  // the team call whose task it finished
    std::exception_ptr team_error;                   // what that task threw
  };

  // The workers a region of n tasks wakes: the caller takes a task too.
  int64_t invited(int64_t n) const { return std::min<int64_t>(n - 1, int64_t(workers_.size())); }

  void region_run(int64_t n, const std::function<void(int64_t)>& fn) {
    const int64_t k = invited(n);
    {
      std::lock_guard<std::mutex> lk(m_);
      fn_ = &fn;
      n_ = n;
      next_ = 0;
      done_ = 0;
      error_ = nullptr;
      ++region_id_;
      for (int64_t w = 0; w < k; ++w)
        slots_[size_t(w)].invite.store(region_id_, std::memory_order_release);
    }
    for (int64_t w = 0; w < k; ++w)
      if (slots_[size_t(w)].asleep.load(std::memory_order_relaxed))
        slots_[size_t(w)].wake.notify_one();
    work(fn, n);
    auto finished = [&] { return done_ == n && active_ == 0; };
    spin_until(finished);
    std::unique_lock<std::mutex> lk(m_);
    finished_.wait(lk, finished);
    fn_ = nullptr;
    call_ended();  // (the region's end)
    if (error_) std::rethrow_exception(error_);
  }

  // A team hands each worker its task in the worker's own slot and waits on
  // each worker's own line, without the pool's mutex: region_run's handshake
  // under m_ (the invitation, joining, counting done and active) cost a call
  // of a team of two 1.9 us on the Intel VM, its lines crossing between the
  // cores some ten times at 140 ns each (dev/perf-notes.md, 80). A team's
  // task is never dropped: the caller waits for every member's before it
  // returns. The seq_cst stores and loads of team and asleep are a pair of
  // flags: of a worker going to sleep and a caller inviting it, one sees the
  // other's.
  void team_run(int n, const TeamTask& task, Barrier& barrier) {
    const int k = n - 1;  // worker w runs task w + 1
    const uint64_t id = ++team_id_;
    for (int w = 0; w < k; ++w) {
      Slot& slot = slots_[size_t(w)];
      slot.team_run = task.run;
      slot.team_fn = task.fn;
      if (task.bytes > 0) {
        std::memcpy(slot.team_arg, task.fn, task.bytes);
        slot.team_fn = slot.team_arg;
      }
      slot.team_barrier = &barrier;
      slot.team_t = w + 1;
      slot.team_n = n;
      slot.team.store(id, std::memory_order_seq_cst);
    }
    for (int w = 0; w < k; ++w)  // all invited first, then the sleepers woken
      if (slots_[size_t(w)].asleep.load(std::memory_order_seq_cst)) wake(slots_[size_t(w)]);
    std::exception_ptr error;
    try {
      task.run(task.fn, 0, n, barrier);
    } catch (...) {
      error = std::current_exception();
    }
    // Past the spin the caller yields its core between looks, as a wait at
    // the team's barrier does, and never sleeps: a caller asleep past the
    // spin woke tens to hundreds of microseconds after its worker's task
    // ended, when the worker, its own spin over, had gone to sleep too, so
    // the next call had to wake it, and so on, each call paying both
    // wake-ups (seen in a loop of team calls, after one slow wake-up).
    for (int w = 0; w < k; ++w) {
      Slot& slot = slots_[size_t(w)];
      const auto done = [&] { return slot.team_done.load(std::memory_order_acquire) == id; };
      if (!spin_until(done))
        while (!done()) std::this_thread::yield();
      if (!error) error = slot.team_error;
      slot.team_error = nullptr;
    }
    call_ended();
    if (error) std::rethrow_exception(error);
  }

  // Wakes a worker that has gone to sleep, or is going to (it sets asleep
  // under m_, then reads team and invite before it waits on wake).
  void wake(Slot& slot) {
    { std::lock_guard<std::mutex> lk(m_); }  // it waits on wake now, or has seen its invitation
    slot.wake.notify_one();
    wakes_.fetch_add(1, std::memory_order_relaxed);
  }

  // This worker's task of team call t (team_run).
  void team_task(Slot& slot, uint64_t t) {
    try {
      slot.team_run(slot.team_fn, slot.team_t, slot.team_n, *slot.team_barrier);
    } catch (...) {
      slot.team_error = std::current_exception();
    }
    slot.team_done.store(t, std::memory_order_release);
  }

  // Tasks until none is left.
  void work(const std::function<void(int64_t)>& fn, int64_t n) {
    for (int64_t i; (i = next_.fetch_add(1)) < n;) {
      try {
        fn(i);
      } catch (...) {
        std::lock_guard<std::mutex> lk(m_);
        if (!error_) error_ = std::current_exception();
      }
      std::lock_guard<std::mutex> lk(m_);
      if (++done_ == n_) finished_.notify_all();
    }
  }

  // Joins each region it is invited to while that region runs (an invitation
  // seen after its region ended is dropped: seen, and back to the spin), and
  // runs its task of each team.
  void worker(Slot& slot) {
    uint64_t seen = 0, team_seen = 0;
    for (;;) {
      const std::function<void(int64_t)>* fn;
      int64_t n;
      const auto teamed = [&] { return slot.team.load(std::memory_order_seq_cst) != team_seen; };
      // Spinning, then yielding the core between looks, then asleep: a
      // worker woken onto its caller's core (as the scheduler places a woken
      // thread) and spinning there kept the caller off it for the whole
      // spin, after which the worker slept and the caller's next call had
      // to wake it again, call after call; yielding lets the caller run
      // (and the scheduler part the two).
      const auto invited = [&] {
        return slot.invite.load(std::memory_order_acquire) != seen || teamed();
      };
      if (!spin_until(invited, kTeamSpinNs)) {
        const int64_t until = now_ns() + std::chrono::nanoseconds(kSpinTime).count();
        while (!invited() && now_ns() < until) std::this_thread::yield();
      }
      if (teamed()) {
        team_seen = slot.team.load(std::memory_order_acquire);
        team_task(slot, team_seen);
        continue;
      }
      {
        std::unique_lock<std::mutex> lk(m_);
        const auto region = [&] {
          return slot.invite != seen && slot.invite == region_id_ && fn_ != nullptr;
        };
        if (stop_) return;
        if (!region()) {
          // A region this worker came too late for never becomes live
          // (invite, region_id_ and fn_ change together under m_): dropped,
          // or the worker would sleep on it again after each team's task,
          // and each team call would have to wake it. With nothing to do,
          // it sleeps until any invitation (or stop_), then looks again.
          if (slot.invite != seen) {
            seen = slot.invite;
          } else if (!teamed()) {
            slot.asleep.store(true, std::memory_order_seq_cst);
            slot.wake.wait(lk, [&] { return stop_ || slot.invite != seen || teamed(); });
            slot.asleep = false;
            if (stop_) return;
          }
          continue;
        }
        seen = region_id_;
        fn = fn_;
        n = n_;
        ++active_;  // the region does not end while this worker is inside it
      }
      work(*fn, n);
      std::lock_guard<std::mutex> lk(m_);
      if (--active_ == 0) finished_.notify_all();
    }
  }

  std::vector<std::thread> workers_;
  std::unique_ptr<Slot[]> slots_;  // worker k's is slots_[k]
  std::mutex region_;              // one region at a time
  std::mutex m_;
  std::condition_variable finished_;
  const std::function<void(int64_t)>* fn_ = nullptr;
  int64_t n_ = 0;
  std::atomic<int64_t> done_{0};  // changed under m_, read while spinning
  std::atomic<int> active_{0};
  std::atomic<int64_t> next_{0};
  uint64_t region_id_ = 0;               // under m_
  uint64_t team_id_ = 0;                 // the last team call's (under region_)
  std::atomic<int64_t> wakes_{0};        // wake()'s calls
  std::atomic<int64_t> last_end_ns_{0};  // now_ns() at the last call's end (call_ended)
  bool stop_ = false;
  std::exception_ptr error_;
  TeamBackoff backoff_;
};

}  // namespace

// OMP_NUM_THREADS caps the default: process pools (joblib's loky workers,
// Ray, Dask) set it in their workers so that each one's threads and the
// others' do not oversubscribe the cores. Read as GCC's OpenMP runtime
// (libgomp) reads it: a comma-separated list of positive integers (one a
// level of nesting), each with white space around it allowed, whose first
// counts; anything else in any element (0, a minus, an empty element, a
// number past a long) and the whole variable is ignored.
int omp_num_threads(const char* value) {
  if (value == nullptr) return 0;
  long first = 0;
  for (const char* p = value;;) {
    while (std::isspace(static_cast<unsigned char>(*p))) ++p;
    const char* digits = *p == '+' ? p + 1 : p;  // strtoul's sign, as libgomp takes it
    if (!std::isdigit(static_cast<unsigned char>(*digits))) return 0;
    errno = 0;
    char* end = nullptr;
    const long v = std::strtol(p, &end, 10);
    if (errno == ERANGE || v < 1) return 0;
    if (first == 0) first = v;
    for (p = end; std::isspace(static_cast<unsigned char>(*p));) ++p;
    if (*p == '\0') break;
    if (*p++ != ',') return 0;
  }
  return int(std::min<long>(first, kMaxThreads));
}

namespace {

int default_threads() {
  if (const char* env = std::getenv("LSTM_EXT_NUM_THREADS")) {
    char* end = nullptr;
    const long v = std::strtol(env, &end, 10);
    if (end != env && *end == '\0' && v >= 1 && v <= kMaxThreads) return int(v);
  }
  cpu_set_t set;
  int cores = sched_getaffinity(0, sizeof(set), &set) == 0
                  ? CPU_COUNT(&set)
                  : int(std::thread::hardware_concurrency());
  const int limit = cgroup_cpu_limit();
  if (limit > 0 && (cores <= 0 || limit < cores)) cores = limit;
  const int omp = omp_num_threads(std::getenv("OMP_NUM_THREADS"));
  if (omp > 0 && (cores <= 0 || omp < cores)) cores = omp;
  return std::max(1, cores);
}

std::mutex pool_m;
int pool_threads = 0;  // the size of the pool to make; 0: default_threads()

// The size of the pool to make (under pool_m).
int threads_to_make() { return pool_threads > 0 ? pool_threads : default_threads(); }

// The pool, made on first use. Never destroyed: at exit a thread (a Python
// daemon thread) may still be inside a region, whose pool the static
// destructors would take apart under it; the workers end with the process.
std::shared_ptr<Pool>& pool_slot() {
  static auto* pool = new std::shared_ptr<Pool>();
  return *pool;
}

// The calling thread's own pool (use_own_pool), if it has one.
thread_local std::shared_ptr<Pool> own_pool;

// fork() copies one thread, the caller, into the child: the pool's workers
// are not there, and its first region would wait for them forever (Python's
// multiprocessing forks by default on Linux). So the child sets the
// parent's pool aside, never to be used or destroyed (its threads, mutexes
// and condition variables are the parent's; destroying it would join threads
// that do not exist), and makes a new one of the same size on first use.
// pool_m is held across fork(), so the child's copy of it is unlocked.
void pool_before_fork() { pool_m.lock(); }
void pool_after_fork_in_parent() { pool_m.unlock(); }
void pool_after_fork_in_child() {
  static auto* set_aside = new std::vector<std::shared_ptr<Pool>>();  // reachable: no leak
  auto& p = pool_slot();
  if (p) {
    pool_threads = p->size();
    set_aside->push_back(std::move(p));
  }
  // The forking thread's own pool is the parent's too: the child's calls from
  // this thread go to the process's pool instead.
  if (own_pool) set_aside->push_back(std::move(own_pool));
  pool_m.unlock();
}

std::shared_ptr<Pool> pool() {
  static const int at_fork =
      pthread_atfork(pool_before_fork, pool_after_fork_in_parent, pool_after_fork_in_child);
  (void)at_fork;  // registered once, before the first pool (fails only without memory)
  if (own_pool) return own_pool;
  std::lock_guard<std::mutex> lk(pool_m);
  auto& p = pool_slot();
  if (!p) p = std::make_shared<Pool>(threads_to_make());
  return p;
}

// The lines of root + path (none where it cannot be read).
std::vector<std::string> read_lines(const std::string& root, const std::string& path) {
  std::ifstream f(root + path);
  std::vector<std::string> lines;
  for (std::string line; std::getline(f, line);) lines.push_back(line);
  return lines;
}

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> parts;
  std::istringstream in(s);
  for (std::string part; std::getline(in, part, sep);) parts.push_back(part);
  return parts;
}

// Cores, rounded up, of a quota of CPU time per period (both in
// microseconds); 0 for no limit ("max", -1) or what does not parse.
int quota_cores(const std::string& quota, const std::string& period) {
  char *qe = nullptr, *pe = nullptr;
  const long long q = std::strtoll(quota.c_str(), &qe, 10);
  const long long p = std::strtoll(period.c_str(), &pe, 10);
  if (qe == quota.c_str() || pe == period.c_str() || q <= 0 || p <= 0) return 0;
  return int(std::min<long long>(q / p + (q % p != 0), 1 << 20));
}

// A cgroup's directory: the mount point of its hierarchy (a line of
// /proc/self/mountinfo: "id parent dev root mountpoint options... - type
// source superoptions") joined with the cgroup's path (from /proc/self/cgroup)
// below the mount's root; the unified hierarchy (v2), else the v1 hierarchy
// of the cpu controller. {"", ""} where none is mounted.
struct CgroupDir {
  std::string mount, dir;
};
CgroupDir cgroup_dir(const std::string& root, bool v2, const std::string& path) {
  for (const std::string& line : read_lines(root, "/proc/self/mountinfo")) {
    const std::vector<std::string> f = split(line, ' ');
    const auto dash = std::find(f.begin(), f.end(), "-");
    if (f.size() < 5 || f.end() - dash < 4) continue;
    const std::vector<std::string> opts = split(dash[3], ',');
    const bool cpu = std::find(opts.begin(), opts.end(), "cpu") != opts.end();
    if (v2 ? dash[1] != "cgroup2" : dash[1] != "cgroup" || !cpu) continue;
    const std::string &mount_root = f[3], &mount = f[4];
    if (mount_root == "/") return {mount, path == "/" ? mount : mount + path};
    // A container's view: its cgroup is the mount's root, or below it.
    const size_t n = mount_root.size();
    if (path.compare(0, n, mount_root) != 0 || (path.size() > n && path[n] != '/'))
      return {mount, mount};
    return {mount, mount + path.substr(mount_root.size())};
  }
  return {};
}

}  // namespace

int cgroup_cpu_limit(const std::string& root) {
  // /proc/self/cgroup: "0::/path" (v2) or "id:controllers:/path" (v1).
  std::string v1_path, v2_path;
  for (const std::string& line : read_lines(root, "/proc/self/cgroup")) {
    const size_t a = line.find(':'), b = a == std::string::npos ? a : line.find(':', a + 1);
    if (b == std::string::npos) continue;
    const std::string controllers = line.substr(a + 1, b - a - 1), path = line.substr(b + 1);
    const std::vector<std::string> c = split(controllers, ',');
    if (line.compare(0, a, "0") == 0 && controllers.empty())
      v2_path = path;
    else if (std::find(c.begin(), c.end(), "cpu") != c.end())
      v1_path = path;
  }
  // The smallest limit of the cgroup and of its ancestors up to the mount.
  int limit = 0;
  auto walk = [&](bool v2, const std::string& path) {
    CgroupDir at = cgroup_dir(root, v2, path);
    if (at.mount.empty()) return;
    for (std::string d = at.dir;;) {
      int cores = 0;
      if (v2) {
        const std::vector<std::string> max = read_lines(root, d + "/cpu.max");
        const std::vector<std::string> f = max.empty() ? max : split(max[0], ' ');
        if (f.size() == 2) cores = quota_cores(f[0], f[1]);
      } else {
        const std::vector<std::string> q = read_lines(root, d + "/cpu.cfs_quota_us");
        const std::vector<std::string> p = read_lines(root, d + "/cpu.cfs_period_us");
        if (!q.empty() && !p.empty()) cores = quota_cores(q[0], p[0]);
      }
      if (cores > 0 && (limit == 0 || cores < limit)) limit = cores;
      const size_t slash = d.rfind('/');
      if (d.size() <= at.mount.size() || slash == std::string::npos || slash < at.mount.size())
        break;
      d.resize(slash);
    }
  };
  if (!v2_path.empty()) walk(true, v2_path);
  if (!v1_path.empty()) walk(false, v1_path);
  return limit;
}

void parallel_for(int64_t n, const std::function<void(int64_t)>& fn) { pool()->run(n, fn); }

Barrier::Barrier(int n) : n_(n), counts_(new Count[size_t(std::max(n, 1))]) {}

// Spins for up to kTeamSpinNs (a step of a small LSTM is a few microseconds)
// until done(), then gives the core away between tries: on a busy machine a
// spinning thread could keep the one it waits for off the core. Returns the
// time this thread spent off its core meanwhile: a yield with nothing else
// to run on the core returns at once, so a wait for a slower thread of the
// team (shapes that split unevenly) counts nothing, one while other threads
// took turns on the core counts those turns. The CPU time is read only past
// the spin: most waits end before.
namespace {
// The CPU time this thread has run (a system call; not in the vDSO), or -1.
int64_t thread_cpu_ns() {
  timespec ts{};
  if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) != 0) return -1;
  return int64_t(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

template <typename Pred>
int64_t team_wait(Pred done) {
  if (spin_until(done, kTeamSpinNs)) return 0;
  const int64_t wall0 = now_ns(), cpu0 = thread_cpu_ns();
  while (!done()) std::this_thread::yield();
  const int64_t wall1 = now_ns(), cpu1 = thread_cpu_ns();
  if (cpu0 < 0 || cpu1 < 0) return 0;  // no CPU clock: nothing known
  return std::max<int64_t>(0, (wall1 - wall0) - (cpu1 - cpu0));
}
}  // namespace

void Barrier::finished(int t, int64_t steps) {
  counts_[size_t(t)].steps.store(steps, std::memory_order_release);
}

// A wait for a thread that has finished no step of this call yet may be a
// wait for a worker to wake (placed on the waiter's core, it takes it): not
// counted.
void Barrier::wait_finished(int64_t steps) {
  for (int t = 0; t < n_; ++t) {
    const std::atomic<int64_t>& count = counts_[size_t(t)].steps;
    const bool started = count.load(std::memory_order_relaxed) > 0;
    const int64_t off = team_wait([&] { return count.load(std::memory_order_acquire) >= steps; });
    if (off > 0 && started) off_core_ns_.fetch_add(off, std::memory_order_relaxed);
  }
}

int TeamBackoff::team(int want, int64_t now_ns) {
  std::lock_guard<std::mutex> lk(m_);
  if (halvings_ > 0 && now_ns >= until_ns_) {
    halvings_ = 0;  // over: the next call is the whole team again,
    strikes_ = 1;   // and backs off at once if it is contended too
  }
  if (halvings_ == 0 && until_ns_ > 0 && now_ns - until_ns_ > kLongestNs) {
    strikes_ = 0;  // long past: contention then says nothing of now
    doublings_ = 0;
    until_ns_ = 0;
  }
  return int((int64_t(want) + (int64_t(1) << halvings_) - 1) >> halvings_);  // rounded up
}

void TeamBackoff::record(int n, int64_t off_core_ns, int64_t wall_ns, int64_t now_ns) {
  std::lock_guard<std::mutex> lk(m_);
  if (double(off_core_ns) <= kContended * double(n) * double(wall_ns)) {
    strikes_ = 0;
    if (halvings_ == 0) doublings_ = 0;
    return;
  }
  // A call as long as a backoff is evidence enough alone: its waits are
  // summed over many steps.
  strikes_ += wall_ns >= kBackoffNs ? 2 : 1;
  if (strikes_ < 2 || n == 1) return;
  halvings_ = std::min(halvings_ + 1, 30);  // a contended half halves again
  ++backoffs_;
  until_ns_ = now_ns + std::min(std::max(kBackoffNs << doublings_, 8 * wall_ns), kLongestNs);
  doublings_ = std::min(doublings_ + 1, kMaxDoublings);
  strikes_ = 1;  // a team of the half contended too halves at once
}

int64_t TeamBackoff::backoffs() {
  std::lock_guard<std::mutex> lk(m_);
  return backoffs_;
}

void parallel_team(int want, double work, const TeamTask& task) {
  if (task.bytes > kTeamTaskBytes)
    throw std::invalid_argument("lstm_ext: a team's task by value takes at most " +
                                std::to_string(kTeamTaskBytes) + " bytes, got " +
                                std::to_string(task.bytes));
  auto p = pool();
  const int n = p->backoff().team(std::min(want, p->size()), now_ns());
  if (n > 1 && !(work < kWakeWork && p->idle(n))) {
    Barrier barrier(n);
    const int64_t start = now_ns();
    if (p->team(n, task, barrier)) {
      const int64_t end = now_ns();
      p->backoff().record(n, barrier.off_core_ns(), end - start, end);
      return;
    }
  }
  Barrier alone(1);
  task.run(task.fn, 0, 1, alone);
  p->call_ended();
}

void parallel_team(int want, double work, const std::function<void(int, int, Barrier&)>& fn) {
  const auto run = [](const void* f, int t, int n, Barrier& barrier) {
    (*static_cast<const std::function<void(int, int, Barrier&)>*>(f))(t, n, barrier);
  };
  parallel_team(want, work, TeamTask{run, &fn, 0});
}

int64_t team_backoffs() { return pool()->backoff().backoffs(); }

int64_t team_wakes() { return pool()->wakes(); }

int get_num_threads() { return pool()->size(); }

int planned_num_threads() {
  std::lock_guard<std::mutex> lk(pool_m);
  const auto& p = pool_slot();
  return p ? p->size() : threads_to_make();
}

int cpu_quota_cores() { return cgroup_cpu_limit(); }

void set_num_threads(int n) {
  if (n < 1 || n > kMaxThreads)
    throw std::invalid_argument("lstm_ext: the number of threads must be in [1, " +
                                std::to_string(kMaxThreads) + "], got " + std::to_string(n));
  auto fresh = std::make_shared<Pool>(n);
  std::lock_guard<std::mutex> lk(pool_m);
  pool_slot().swap(fresh);  // the old pool goes when its last region ends
}

void use_own_pool(int n) {
  if (n < 0 || n > kMaxThreads)
    throw std::invalid_argument("lstm_ext: the number of threads of a thread's own pool must be in "
                                "[0, " + std::to_string(kMaxThreads) + "], got " +
                                std::to_string(n));
  own_pool = n == 0 ? nullptr : std::make_shared<Pool>(n);
}

void use_serial_blas() {
  if (blas_num_threads() != 1) blas_set_num_threads(1);
}

}  // namespace lstm_ext
