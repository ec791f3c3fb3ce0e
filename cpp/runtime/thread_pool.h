// A persistent pool of worker threads. Work is split into tasks (e.g. blocks of
// output rows); the calling thread takes part, so a pool of N threads starts N-1
// workers once and never creates threads per call.
#pragma once
#include <cstddef>
#include <functional>

namespace ternlm {

class ThreadPool {
 public:
  // num_threads >= 1 counts the caller.
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

// The process-wide pool used when no pool is passed. Its size is the number of
// cores unless SetNumThreads() changed it. Pools are never destroyed: a reference
// taken before SetNumThreads() stays valid (and keeps its old size).
ThreadPool& DefaultPool();
void SetNumThreads(size_t n);  // n == 0: all cores
size_t GetNumThreads();
// A process-wide pool of exactly n threads (n == 0: all cores), created on first
// use and kept; for callers that pass an explicit thread count.
ThreadPool& PoolWithThreads(size_t n);

}  // namespace ternlm
