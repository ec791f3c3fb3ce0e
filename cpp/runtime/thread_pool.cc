// ThreadPool: N-1 persistent workers plus the caller. A Run() publishes a job by
// bumping a generation counter; workers spin on it for a short while (decode calls
// MatMul every few microseconds, so sleeping between them would cost more than the
// work) and then sleep on a condition variable. Tasks are taken from an atomic
// counter, so uneven tasks balance themselves. The caller waits for the workers
// with the same spin-then-sleep scheme. The counters that every task touches (next_task)
// and that every thread touches once per job (completed, active) live on their own cache
// lines, away from the read-mostly job state the spinning workers poll: on a 16-core Xeon
// sharing one line made each Run() of a small matmul cost ~20 us at 4-16 threads.
#include "runtime/thread_pool.h"

#include "runtime/phase_timers.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define TERNLM_PAUSE() _mm_pause()
#else
#define TERNLM_PAUSE() std::this_thread::yield()
#endif

namespace ternlm {
namespace {
constexpr int kSpinIterations = 20000;  // ~50-100 us of pause before sleeping
std::atomic<size_t> g_fail_thread_start{0};  // FailThreadStartForTest
}  // namespace

struct ThreadPool::Impl {
  size_t num_threads = 1;
  std::vector<std::thread> workers;

  // Job state, written by Run() before job_open is set; read by the workers.
  alignas(64) const std::function<void(size_t, size_t)>* fn = nullptr;
  size_t num_tasks = 0;
  std::atomic<bool> job_open{false};    // job state may be read
  std::atomic<uint64_t> generation{0};  // bumped per job (and on stop)
  std::atomic<bool> stop{false};
  alignas(64) std::atomic<size_t> next_task{0};
  alignas(64) std::atomic<size_t> completed{0};  // tasks finished (added once per thread and job)
  alignas(64) std::atomic<size_t> active{0};     // workers inside a job

  std::mutex run_mu;  // one Run() at a time (two Python threads may share a pool)
  std::mutex mu;
  std::condition_variable wake;  // workers wait for a new generation
  std::condition_variable done;  // caller waits for the last task

  void Work(size_t thread) {
    size_t done_here = 0;
#ifdef TERNLM_PHASE_TIMERS
    const uint64_t t0 = PhaseClockNs();
#endif
    for (;;) {
      const size_t task = next_task.fetch_add(1, std::memory_order_relaxed);
      if (task >= num_tasks) break;
      (*fn)(task, thread);
      ++done_here;
    }
#ifdef TERNLM_PHASE_TIMERS
    if (done_here != 0) AddTaskTime(thread, PhaseClockNs() - t0);
#endif
    // One release per thread publishes its tasks' writes; the caller acquires them.
    if (done_here != 0 && completed.fetch_add(done_here, std::memory_order_acq_rel) + done_here == num_tasks) {
      std::lock_guard<std::mutex> lock(mu);
      done.notify_one();
    }
  }

  // Wakes every worker with the stop flag set and joins them.
  void StopAndJoin() {
    {
      std::lock_guard<std::mutex> lock(mu);
      stop.store(true);
      generation.fetch_add(1);
    }
    wake.notify_all();
    for (std::thread& t : workers) t.join();
    workers.clear();
  }

  // The caller never waits for a worker that has not woken up yet (a sleeping vCPU can
  // take a millisecond to wake): it waits for the tasks, then only for workers that are
  // inside the job. A worker enters by incrementing `active` and re-checking that the
  // job it was woken for is still open; all these atomics are sequentially consistent.
  void WorkerLoop(size_t thread) {
    uint64_t seen = 0;
    for (;;) {
      uint64_t gen = generation.load();
      for (int i = 0; gen == seen && i < kSpinIterations; ++i) {
        TERNLM_PAUSE();
        gen = generation.load();
      }
      if (gen == seen) {
        std::unique_lock<std::mutex> lock(mu);
        wake.wait(lock, [&] { return generation.load() != seen; });
        gen = generation.load();
      }
      seen = gen;
      if (stop.load()) return;
      active.fetch_add(1);
      if (generation.load() == gen && job_open.load()) Work(thread);
      active.fetch_sub(1);
    }
  }
};

// Workers get the Impl pointer, not `this`: they touch nothing else of the ThreadPool.
// When thread t cannot be created, the workers already running are stopped and joined
// before Impl is freed (a constructor that throws runs no destructor).
ThreadPool::ThreadPool(size_t num_threads) : impl_(new Impl) {
  Impl* impl = impl_;
  impl->num_threads = std::max<size_t>(1, num_threads);
  size_t t = 1;
  try {
    for (; t < impl->num_threads; ++t) {
      if (t == g_fail_thread_start.load())
        throw std::system_error(std::make_error_code(std::errc::resource_unavailable_try_again),
                                "simulated by FailThreadStartForTest");
      impl->workers.emplace_back([impl, t] { impl->WorkerLoop(t); });
    }
  } catch (const std::system_error& e) {
    impl->StopAndJoin();
    delete impl;
    throw std::runtime_error("thread pool: could not start worker thread " + std::to_string(t) + " of " +
                             std::to_string(num_threads) + " (" + e.what() +
                             "); the system limits threads per process or user: use fewer threads");
  } catch (...) {
    impl->StopAndJoin();
    delete impl;
    throw;
  }
}

ThreadPool::~ThreadPool() {
  impl_->StopAndJoin();
  delete impl_;
}

size_t ThreadPool::num_threads() const { return impl_->num_threads; }

void ThreadPool::Run(size_t num_tasks, const std::function<void(size_t, size_t)>& fn) {
  Impl& s = *impl_;
  if (num_tasks == 0) return;
  if (s.workers.empty() || num_tasks == 1) {
    for (size_t t = 0; t < num_tasks; ++t) fn(t, 0);
    return;
  }
  std::lock_guard<std::mutex> run_lock(s.run_mu);
  s.fn = &fn;
  s.num_tasks = num_tasks;
  s.next_task.store(0);
  s.completed.store(0);
  s.job_open.store(true);
  {
    // The lock orders the bump against a worker that is about to sleep.
    std::lock_guard<std::mutex> lock(s.mu);
    s.generation.fetch_add(1);
  }
  s.wake.notify_all();
  s.Work(0);
#ifdef TERNLM_PHASE_TIMERS
  const uint64_t wait0 = PhaseClockNs();
#endif
  for (int i = 0; s.completed.load() != num_tasks && i < kSpinIterations; ++i) TERNLM_PAUSE();
  if (s.completed.load() != num_tasks) {
    std::unique_lock<std::mutex> lock(s.mu);
    s.done.wait(lock, [&] { return s.completed.load() == num_tasks; });
  }
  s.job_open.store(false);
  // A worker that entered just now finds no task left and leaves at once.
  while (s.active.load() != 0) TERNLM_PAUSE();
#ifdef TERNLM_PHASE_TIMERS
  AddPoolRun(PhaseClockNs() - wait0);
#endif
}

// ---------------------------------------------------------------- shared pools

namespace {
size_t AllCores() { return std::max(1u, std::thread::hardware_concurrency()); }

// The registry: every live pool by size (weak: holders keep them alive), plus the two
// pools the process itself holds.
struct Pools {
  std::mutex mu;
  std::map<size_t, std::weak_ptr<ThreadPool>> live;
  size_t default_threads = 0;                // 0: all cores
  std::shared_ptr<ThreadPool> default_pool;  // of default size, once asked for
  std::shared_ptr<ThreadPool> recent;        // RecentPool's latest
};

Pools& Registry() {
  static Pools* pools = new Pools;  // never destroyed: pools may be released during exit
  return *pools;
}

void CheckThreads(size_t n) {
  if (n > MaxThreads())
    throw std::invalid_argument("threads=" + std::to_string(n) + " is more than 4 x the " + std::to_string(AllCores()) +
                                " cores of this machine (at most " + std::to_string(MaxThreads()) + ")");
}

// With the registry locked. A pool that fails to start throws before it is registered.
std::shared_ptr<ThreadPool> AcquireLocked(Pools& r, size_t n) {
  n = n ? n : AllCores();
  CheckThreads(n);
  auto it = r.live.find(n);
  if (it != r.live.end())
    if (std::shared_ptr<ThreadPool> p = it->second.lock()) return p;
  auto p = std::make_shared<ThreadPool>(n);
  r.live[n] = p;
  for (auto i = r.live.begin(); i != r.live.end();) i = i->second.expired() ? r.live.erase(i) : std::next(i);
  return p;
}
}  // namespace

size_t MaxThreads() { return 4 * AllCores(); }

std::shared_ptr<ThreadPool> AcquirePool(size_t n) {
  Pools& r = Registry();
  std::lock_guard<std::mutex> lock(r.mu);
  return AcquireLocked(r, n);
}

std::shared_ptr<ThreadPool> RecentPool(size_t n) {
  Pools& r = Registry();
  std::shared_ptr<ThreadPool> previous;  // released after the lock: joining takes time
  std::lock_guard<std::mutex> lock(r.mu);
  std::shared_ptr<ThreadPool> p = AcquireLocked(r, n);
  previous = std::move(r.recent);
  r.recent = p;
  return p;
}

std::shared_ptr<ThreadPool> DefaultPool() {
  Pools& r = Registry();
  std::lock_guard<std::mutex> lock(r.mu);
  const size_t n = r.default_threads ? r.default_threads : AllCores();
  if (!r.default_pool || r.default_pool->num_threads() != n) r.default_pool = AcquireLocked(r, n);
  return r.default_pool;
}

void SetNumThreads(size_t n) {
  CheckThreads(n);
  Pools& r = Registry();
  std::shared_ptr<ThreadPool> previous;
  std::lock_guard<std::mutex> lock(r.mu);
  r.default_threads = n;
  previous = std::move(r.default_pool);  // the new default starts on first use
}

size_t GetNumThreads() {
  Pools& r = Registry();
  std::lock_guard<std::mutex> lock(r.mu);
  return r.default_threads ? r.default_threads : AllCores();
}

void FailThreadStartForTest(size_t index) { g_fail_thread_start.store(index); }

}  // namespace ternlm
