// Quantize from the weights as a checkpoint stores them: f32, bf16 or fp16 values
// [rows, cols], row-major. bf16 and fp16 rows are widened to f32 (exactly) a few rows at a
// time into a per-thread scratch, never as a whole-matrix f32 copy, and coded by the
// format's quantize_rows (formats/format_traits.h) in blocks of whole tiles spread over the
// caller's threads. The f32 each row is coded from is the same whatever the source type,
// block split or thread count, so the result is bit for bit that of Quantize (f32) on the
// widened values.
//
//   1. scan (parallel over row blocks): the first non-finite weight in flat order (the
//      error names it as Quantize always has) and, for kRange formats (int4), the range;
//      then, for kAbsSum formats (ternary), sum |w| in flat order in one thread: its
//      double rounding depends on the order, and the absmean scale must not.
//   2. quantize_begin (the format's checks of the scan), then the rows: a task is a run of
//      whole tiles (kTileRows rows; formats/tiles.h), widened kScratchBytes at a time.
//      A format without quantize_rows (bf16c) is coded whole by quantize_whole.
// Errors a row raises (q6's fp16 range) are rethrown after the tasks end: the lowest row's,
// as a serial run would have thrown it.
//
// formats/ does not depend on runtime/: the caller hands in how to run tasks (the bindings
// pass a runtime/thread_pool.h pool).
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>

#include "formats/quantized_matrix.h"

namespace ternlm {

enum class SourceType { kF32, kBF16, kF16 };

// Read-only rows of the source weights as f32.
class WeightRows {
 public:
  // data: rows * cols values of `type` (f32 as float, bf16 and fp16 as uint16 bits),
  // aligned to their element size.
  WeightRows(const void* data, SourceType type, size_t rows, size_t cols)
      : data_(data), type_(type), rows_(rows), cols_(cols) {}
  size_t rows() const { return rows_; }
  size_t cols() const { return cols_; }
  SourceType type() const { return type_; }
  // Rows [r0, r1) as f32 [(r1 - r0) * cols]: a pointer into the source for f32, else the
  // rows widened into scratch (room for that many floats).
  const float* Read(size_t r0, size_t r1, float* scratch) const;
  // The weight at flat index i as f32.
  float At(size_t i) const;

 private:
  const void* data_;
  SourceType type_;
  size_t rows_, cols_;
};

// How to run tasks: run(num_tasks, fn) calls fn(task, thread) for every task in
// [0, num_tasks) with thread < threads and returns when all are done. An empty run runs
// them in the calling thread (threads is then 1).
struct TaskRunner {
  size_t threads = 1;
  std::function<void(size_t num_tasks, const std::function<void(size_t task, size_t thread)>& fn)> run;
};

// The weights of w in format f (numerics: Quantize in formats/quantized_matrix.h); throws
// std::invalid_argument as Quantize does (non-finite weight, empty shape, bad group,
// format-specific ranges).
QuantizedMatrix QuantizeWeights(const WeightRows& w, WeightFormat f, int group_size, const TaskRunner& runner);

}  // namespace ternlm
