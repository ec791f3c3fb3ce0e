// QuantizeWeights: the scan, then the rows in blocks of tiles (formats/quantize.h draws the
// steps), and Quantize (f32) as its one-thread case.
#include "formats/quantize.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <exception>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "formats/codec_util.h"
#include "formats/format_traits.h"
#include "formats/half.h"
#include "formats/tiles.h"

namespace ternlm {

const float* WeightRows::Read(size_t r0, size_t r1, float* scratch) const {
  const size_t at = r0 * cols_, n = (r1 - r0) * cols_;
  if (type_ == SourceType::kF32) return static_cast<const float*>(data_) + at;
  const uint16_t* b = static_cast<const uint16_t*>(data_) + at;
  if (type_ == SourceType::kBF16) {
    for (size_t i = 0; i < n; ++i) scratch[i] = F32FromBF16(b[i]);
  } else {
    for (size_t i = 0; i < n; ++i) scratch[i] = F32FromF16(b[i]);
  }
  return scratch;
}

float WeightRows::At(size_t i) const {
  if (type_ == SourceType::kF32) return static_cast<const float*>(data_)[i];
  const uint16_t b = static_cast<const uint16_t*>(data_)[i];
  return type_ == SourceType::kBF16 ? F32FromBF16(b) : F32FromF16(b);
}

namespace {

// Widened rows per Read: a few rows (at least one) of scratch per thread.
constexpr size_t kScratchBytes = 64 * 1024;
// Below this many weights per task the tasks are not worth a thread's wake-up.
constexpr size_t kMinTaskWeights = size_t(1) << 15;

// The rows as tasks: task i covers whole tiles, rows [Begin(i), End(i)).
struct RowBlocks {
  size_t rows, tiles, tasks;
  RowBlocks(size_t rows_, size_t cols, size_t threads) : rows(rows_), tiles(TileCount(rows_)) {
    const size_t by_size = std::max<size_t>(1, rows * cols / kMinTaskWeights);
    tasks = threads <= 1 ? 1 : std::min({tiles, 4 * threads, by_size});
  }
  size_t Begin(size_t i) const { return tiles * i / tasks * kTileRows; }
  size_t End(size_t i) const { return std::min(rows, tiles * (i + 1) / tasks * kTileRows); }
};

void RunTasks(const TaskRunner& runner, size_t n, const std::function<void(size_t, size_t)>& fn) {
  if (n <= 1 || runner.threads <= 1 || !runner.run) {
    for (size_t i = 0; i < n; ++i) fn(i, 0);
    return;
  }
  runner.run(n, fn);
}

// Each thread's scratch for widened rows (none for an f32 source: rows are read in place).
struct Scratch {
  size_t chunk_rows;
  std::vector<std::vector<float>> of_thread;
  Scratch(const WeightRows& w, size_t threads)
      : chunk_rows(std::clamp<size_t>(kScratchBytes / (4 * w.cols()), 1, kTileRows)),
        of_thread(w.type() == SourceType::kF32 ? 0 : threads) {
    for (std::vector<float>& s : of_thread) s.resize(chunk_rows * w.cols());
  }
  float* For(size_t thread) { return of_thread.empty() ? nullptr : of_thread[thread].data(); }
};

// The error of the lowest row among the tasks that failed (what a serial run throws first).
class FirstError {
 public:
  size_t row() const { return row_.load(std::memory_order_relaxed); }
  void Keep(size_t row, std::exception_ptr e) {
    std::lock_guard<std::mutex> lock(mu_);
    if (row < row_.load(std::memory_order_relaxed)) {
      row_.store(row, std::memory_order_relaxed);
      error_ = e;
    }
  }
  void Rethrow() const {
    if (error_) std::rethrow_exception(error_);
  }

 private:
  std::mutex mu_;
  std::atomic<size_t> row_{SIZE_MAX};
  std::exception_ptr error_;
};

// Step 1: the first non-finite weight (throws naming it) and the format's scan.
QuantizeScan Scan(const WeightRows& w, ScanKind kind, const RowBlocks& blocks, Scratch& scratch,
                  const TaskRunner& runner) {
  const size_t cols = w.cols();
  std::vector<size_t> first_bad(blocks.tasks, SIZE_MAX);
  std::vector<float> lo(blocks.tasks, INFINITY), hi(blocks.tasks, -INFINITY);
  RunTasks(runner, blocks.tasks, [&](size_t i, size_t thread) {
    for (size_t r = blocks.Begin(i); r < blocks.End(i) && first_bad[i] == SIZE_MAX; r += scratch.chunk_rows) {
      const size_t r1 = std::min(blocks.End(i), r + scratch.chunk_rows);
      const float* x = w.Read(r, r1, scratch.For(thread));
      float l = lo[i], h = hi[i];
      for (size_t k = 0; k < (r1 - r) * cols; ++k) {
        if (!std::isfinite(x[k])) {
          first_bad[i] = r * cols + k;
          break;
        }
        l = std::min(l, x[k]);
        h = std::max(h, x[k]);
      }
      lo[i] = l;
      hi[i] = h;
    }
  });
  QuantizeScan s;
  s.count = w.rows() * cols;
  for (size_t i = 0; i < blocks.tasks; ++i) {
    if (first_bad[i] != SIZE_MAX)
      throw std::invalid_argument("quantize: w has a non-finite value (" + std::to_string(w.At(first_bad[i])) +
                                  ") at flat index " + std::to_string(first_bad[i]));
  }
  if (kind == ScanKind::kRange) {
    s.lo = *std::min_element(lo.begin(), lo.end());
    s.hi = *std::max_element(hi.begin(), hi.end());
  }
  if (kind == ScanKind::kAbsSum) {
    double sum = 0;
    for (size_t r = 0; r < w.rows(); r += scratch.chunk_rows) {
      const size_t r1 = std::min(w.rows(), r + scratch.chunk_rows);
      const float* x = w.Read(r, r1, scratch.For(0));
      for (size_t k = 0; k < (r1 - r) * cols; ++k) sum += std::fabs(double(x[k]));
    }
    s.abs_sum = sum;
  }
  return s;
}

}  // namespace

QuantizedMatrix QuantizeWeights(const WeightRows& w, WeightFormat f, int group, const TaskRunner& runner) {
  const FormatTraits& t = Traits(f);
  CheckShape("quantize", w.rows(), w.cols());
  if (t.grouped) CheckGroup("quantize", w.cols(), group);
  const size_t threads = runner.run ? std::max<size_t>(1, runner.threads) : 1;
  const RowBlocks blocks(w.rows(), w.cols(), threads);
  Scratch scratch(w, threads);
  const QuantizeScan scan = Scan(w, t.scan, blocks, scratch, runner);
  QuantizedMatrix m = QuantizedMatrix::Allocate(f, w.rows(), w.cols(), group);
  if (t.quantize_begin) t.quantize_begin(scan);
  if (!t.quantize_rows) {
    t.quantize_whole(m, w);
    return m;
  }
  FirstError error;
  RunTasks(runner, blocks.tasks, [&](size_t i, size_t thread) {
    for (size_t r = blocks.Begin(i); r < blocks.End(i) && r < error.row(); r += scratch.chunk_rows) {
      const size_t r1 = std::min(blocks.End(i), r + scratch.chunk_rows);
      try {
        t.quantize_rows(m, w.Read(r, r1, scratch.For(thread)), r, r1, scan);
      } catch (...) {
        error.Keep(r, std::current_exception());
        return;
      }
    }
  });
  error.Rethrow();
  return m;
}

QuantizedMatrix Quantize(const float* w, size_t rows, size_t cols, WeightFormat f, int group) {
  return QuantizeWeights(WeightRows(w, SourceType::kF32, rows, cols), f, group, TaskRunner{});
}

}  // namespace ternlm
