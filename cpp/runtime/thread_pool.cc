// ThreadPool: N-1 persistent workers plus the caller. A Run() publishes a job by
// bumping a generation counter; workers spin on it for a short while (decode calls
// MatMul every few microseconds, so sleeping between them would cost more than the
// work) and then sleep on a condition variable. Tasks are taken from an atomic
// counter, so uneven tasks balance themselves. The caller waits for the workers
// with the same spin-then-sleep scheme.
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

  // Job state, written by Run() before the generation bump.
  const std::function<void(size_t, size_t)>* fn = nullptr;
  size_t num_tasks = 0;
  std::atomic<size_t> next_task{0};
  std::atomic<size_t> workers_done{0};
  std::atomic<uint64_t> generation{0};
  bool stop = false;

  std::mutex run_mu;  // one Run() at a time (two Python threads may share a pool)
  std::mutex mu;
  std::condition_variable wake;  // workers wait for a new generation
  std::condition_variable done;  // caller waits for workers_done

  void Work(size_t thread) {
    for (;;) {
      const size_t task = next_task.fetch_add(1, std::memory_order_relaxed);
      if (task >= num_tasks) return;
      (*fn)(task, thread);
    }
  }

  void WorkerLoop(size_t thread) {
    uint64_t seen = 0;
    for (;;) {
      uint64_t gen = generation.load(std::memory_order_acquire);
      for (int i = 0; gen == seen && i < kSpinIterations; ++i) {
        TERNLM_PAUSE();
        gen = generation.load(std::memory_order_acquire);
      }
      if (gen == seen) {
        std::unique_lock<std::mutex> lock(mu);
        wake.wait(lock, [&] { return generation.load(std::memory_order_acquire) != seen; });
        gen = generation.load(std::memory_order_acquire);
      }
      seen = gen;
      if (stop) return;
      Work(thread);
      if (workers_done.fetch_add(1, std::memory_order_acq_rel) + 1 == workers.size()) {
        std::lock_guard<std::mutex> lock(mu);
        done.notify_one();
      }
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
    impl_->stop = true;
    impl_->generation.fetch_add(1, std::memory_order_acq_rel);
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
  s.next_task.store(0, std::memory_order_relaxed);
  s.workers_done.store(0, std::memory_order_relaxed);
  {
    // The lock orders the bump against a worker that is about to sleep.
    std::lock_guard<std::mutex> lock(s.mu);
    s.generation.fetch_add(1, std::memory_order_acq_rel);
  }
  s.wake.notify_all();
  s.Work(0);
  const size_t n = s.workers.size();
  for (int i = 0; s.workers_done.load(std::memory_order_acquire) != n && i < kSpinIterations; ++i)
    TERNLM_PAUSE();
  if (s.workers_done.load(std::memory_order_acquire) != n) {
    std::unique_lock<std::mutex> lock(s.mu);
    s.done.wait(lock, [&] { return s.workers_done.load(std::memory_order_acquire) == n; });
  }
}

// ---------------------------------------------------------------- default pool

namespace {
std::mutex g_default_mu;
std::unique_ptr<ThreadPool> g_default;
size_t g_default_threads = 0;  // 0: all cores

size_t AllCores() { return std::max(1u, std::thread::hardware_concurrency()); }
}  // namespace

ThreadPool& DefaultPool() {
  std::lock_guard<std::mutex> lock(g_default_mu);
  const size_t want = g_default_threads ? g_default_threads : AllCores();
  if (!g_default || g_default->num_threads() != want) g_default.reset(new ThreadPool(want));
  return *g_default;
}

void SetNumThreads(size_t n) {
  std::lock_guard<std::mutex> lock(g_default_mu);
  g_default_threads = n;
}

ThreadPool& PoolWithThreads(size_t n) {
  static std::mutex mu;
  static std::vector<std::unique_ptr<ThreadPool>> pools;
  std::lock_guard<std::mutex> lock(mu);
  n = n ? n : AllCores();
  for (auto& p : pools)
    if (p->num_threads() == n) return *p;
  pools.emplace_back(new ThreadPool(n));
  return *pools.back();
}

size_t GetNumThreads() {
  std::lock_guard<std::mutex> lock(g_default_mu);
  return g_default_threads ? g_default_threads : AllCores();
}

}  // namespace ternlm
