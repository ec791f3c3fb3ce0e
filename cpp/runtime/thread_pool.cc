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

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
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
    for (;;) {
      const size_t task = next_task.fetch_add(1, std::memory_order_relaxed);
      if (task >= num_tasks) break;
      (*fn)(task, thread);
      ++done_here;
    }
    // One release per thread publishes its tasks' writes; the caller acquires them.
    if (done_here != 0 && completed.fetch_add(done_here, std::memory_order_acq_rel) + done_here == num_tasks) {
      std::lock_guard<std::mutex> lock(mu);
      done.notify_one();
    }
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

ThreadPool::ThreadPool(size_t num_threads) : impl_(new Impl) {
  impl_->num_threads = std::max<size_t>(1, num_threads);
  for (size_t t = 1; t < impl_->num_threads; ++t)
    impl_->workers.emplace_back([this, t] { impl_->WorkerLoop(t); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    impl_->stop.store(true);
    impl_->generation.fetch_add(1);
  }
  impl_->wake.notify_all();
  for (std::thread& t : impl_->workers) t.join();
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
  for (int i = 0; s.completed.load() != num_tasks && i < kSpinIterations; ++i) TERNLM_PAUSE();
  if (s.completed.load() != num_tasks) {
    std::unique_lock<std::mutex> lock(s.mu);
    s.done.wait(lock, [&] { return s.completed.load() == num_tasks; });
  }
  s.job_open.store(false);
  // A worker that entered just now finds no task left and leaves at once.
  while (s.active.load() != 0) TERNLM_PAUSE();
}

// ---------------------------------------------------------------- default pool

namespace {
std::mutex g_default_mu;
size_t g_default_threads = 0;  // 0: all cores

size_t AllCores() { return std::max(1u, std::thread::hardware_concurrency()); }
}  // namespace

// Pools are created once per size and never destroyed, so a reference handed out by
// DefaultPool() (a model keeps one) stays valid after SetNumThreads() changes the size.
ThreadPool& PoolWithThreads(size_t n) {
  static std::mutex mu;
  static std::vector<std::unique_ptr<ThreadPool>>* pools = new std::vector<std::unique_ptr<ThreadPool>>;
  std::lock_guard<std::mutex> lock(mu);
  n = n ? n : AllCores();
  for (auto& p : *pools)
    if (p->num_threads() == n) return *p;
  pools->emplace_back(new ThreadPool(n));
  return *pools->back();
}

ThreadPool& DefaultPool() { return PoolWithThreads(GetNumThreads()); }

void SetNumThreads(size_t n) {
  std::lock_guard<std::mutex> lock(g_default_mu);
  g_default_threads = n;
}

size_t GetNumThreads() {
  std::lock_guard<std::mutex> lock(g_default_mu);
  return g_default_threads ? g_default_threads : AllCores();
}

}  // namespace ternlm
