// MeasureReadBandwidth: the buffer is split into 256 KiB chunks handed out by the
// thread pool (contiguous enough for the hardware prefetchers, small enough to
// balance threads). Each chunk is summed as 64-bit lanes with four independent
// accumulators so the loop is bound by loads, not by the add latency.
#include "runtime/bandwidth.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "runtime/thread_pool.h"

#if defined(__linux__)
#include <sys/mman.h>
#endif

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "runtime/bandwidth.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"

HWY_BEFORE_NAMESPACE();
namespace ternlm {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// Sums n 64-bit words at p (p aligned to the vector size, n a multiple of 4 vectors).
uint64_t SumWords(const uint64_t* HWY_RESTRICT p, size_t n) {
  const hn::ScalableTag<uint64_t> d;
  const size_t N = hn::Lanes(d);
  auto s0 = hn::Zero(d), s1 = hn::Zero(d), s2 = hn::Zero(d), s3 = hn::Zero(d);
  for (size_t i = 0; i < n; i += 4 * N) {
    s0 = hn::Add(s0, hn::Load(d, p + i));
    s1 = hn::Add(s1, hn::Load(d, p + i + N));
    s2 = hn::Add(s2, hn::Load(d, p + i + 2 * N));
    s3 = hn::Add(s3, hn::Load(d, p + i + 3 * N));
  }
  const auto s = hn::Add(hn::Add(s0, s1), hn::Add(s2, s3));
  HWY_ALIGN uint64_t lanes[HWY_MAX_BYTES / sizeof(uint64_t)];
  hn::Store(s, d, lanes);
  uint64_t total = 0;
  for (size_t i = 0; i < N; ++i) total += lanes[i];
  return total;
}

}  // namespace HWY_NAMESPACE
}  // namespace ternlm
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace ternlm {
HWY_EXPORT(SumWords);

namespace {
constexpr size_t kChunkBytes = size_t(256) << 10;  // one pool task
constexpr size_t kSmallChunkBytes = size_t(4) << 10;  // for probes below one chunk per thread
constexpr size_t kHugePage = size_t(2) << 20;
}  // namespace

ReadBandwidthResult MeasureReadBandwidth(size_t threads, size_t bytes, size_t repeats) {
  if (bytes < kMinProbeBytes)
    throw std::invalid_argument("measure_read_bandwidth: bytes must be >= " +
                                std::to_string(kMinProbeBytes) + ", got " + std::to_string(bytes));
  if (repeats < 1)
    throw std::invalid_argument("measure_read_bandwidth: repeats must be >= 1, got " +
                                std::to_string(repeats));
  const std::shared_ptr<ThreadPool> held = AcquirePool(threads);
  ThreadPool& pool = *held;
  const size_t chunk = bytes >= kChunkBytes * pool.num_threads() ? kChunkBytes : kSmallChunkBytes;
  const size_t num_chunks = bytes / chunk;
  const size_t words_per_chunk = chunk / sizeof(uint64_t);

  // 2 MiB-aligned so Linux can back it with huge pages (as the model's large weight
  // buffers usually are): with 4 KiB pages, TLB misses would cap the rate we measure.
  const size_t alloc_bytes = (num_chunks * chunk + kHugePage - 1) / kHugePage * kHugePage;
  std::unique_ptr<void, void (*)(void*)> buf(std::aligned_alloc(kHugePage, alloc_bytes), std::free);
  if (!buf) throw std::runtime_error("measure_read_bandwidth: cannot allocate " + std::to_string(bytes) + " bytes");
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  madvise(buf.get(), alloc_bytes, MADV_HUGEPAGE);  // a hint; failure only costs speed
#endif
  uint64_t* words = static_cast<uint64_t*>(buf.get());
  pool.Run(num_chunks, [&](size_t c, size_t) {
    std::fill(words + c * words_per_chunk, words + (c + 1) * words_per_chunk, uint64_t(1));
  });

  ReadBandwidthResult result;
  result.bytes_read = num_chunks * chunk;
  result.threads = pool.num_threads();
  std::vector<uint64_t> per_chunk(num_chunks);
  double best_s = 1e300;
  for (size_t r = 0; r < repeats; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    pool.Run(num_chunks, [&](size_t c, size_t) {
      per_chunk[c] = HWY_DYNAMIC_DISPATCH(SumWords)(words + c * words_per_chunk, words_per_chunk);
    });
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    best_s = std::min(best_s, s);
    uint64_t total = 0;
    for (uint64_t v : per_chunk) total += v;
    if (total != result.bytes_read / sizeof(uint64_t))
      throw std::runtime_error("measure_read_bandwidth: summed " + std::to_string(total) +
                               " words, wrote " + std::to_string(result.bytes_read / 8));
    result.checksum = total;
  }
  result.gb_per_s = double(result.bytes_read) / best_s / 1e9;
  return result;
}

}  // namespace ternlm
#endif  // HWY_ONCE
