// A persistent pool of worker threads. Work is split into tasks (e.g. blocks of
// output rows); the calling thread takes part, so a pool of N threads starts N-1
// workers once and never creates threads per call.
//
// Pools are shared and reference-counted: AcquirePool(n) hands out the live pool of n
// threads if anyone holds one, else starts a new one, and a pool stops (its workers are
// joined) when its last holder lets go. Holders are the models built on a pool (for their
// lifetime), the default pool (DefaultPool, kept while it is the default) and the pool of
// the latest explicit count (RecentPool, kept until another count is asked for). So idle
// threads are bounded by the live models, not by every thread count ever used.
#pragma once
#include <cstddef>
#include <functional>
#include <memory>

namespace ternlm {

class ThreadPool {
 public:
  // num_threads >= 1 counts the caller. When the system refuses a worker thread, the
  // workers already started are stopped and joined, then std::runtime_error is thrown
  // naming the thread and the system's reason.
  explicit ThreadPool(size_t num_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  size_t num_threads() const;

  // Calls fn(task, thread_index) for every task in [0, num_tasks) and returns
  // when all are done. thread_index < num_threads(). Calls from several threads
  // are serialised; a Run() from inside fn deadlocks.
  void Run(size_t num_tasks, const std::function<void(size_t task, size_t thread)>& fn);

 private:
  struct Impl;
  Impl* impl_;
};

// The most threads a pool may have: 4 x the cores (threads beyond the cores only wait for
// one, and every Run() waits for the slowest).
size_t MaxThreads();

// The shared pool of n threads (n == 0: all cores). Throws std::invalid_argument for
// n > MaxThreads(), std::runtime_error when its threads cannot be started.
std::shared_ptr<ThreadPool> AcquirePool(size_t n);
// AcquirePool(n), also kept alive until a call with another count: for callers that
// come back with the same count many times (matmul(threads=n)), which would otherwise
// start and join n-1 threads per call.
std::shared_ptr<ThreadPool> RecentPool(size_t n);
// The pool used when no count is given: GetNumThreads() threads. A pool taken before
// SetNumThreads() keeps its size; the default stops being held by the process then.
std::shared_ptr<ThreadPool> DefaultPool();
void SetNumThreads(size_t n);  // n == 0: all cores; throws std::invalid_argument above MaxThreads()
size_t GetNumThreads();

// Test hook: every pool started from now on fails to create its worker number `index`
// (1 <= index; 0 turns the failure off) as if the system refused the thread.
void FailThreadStartForTest(size_t index);

}  // namespace ternlm
