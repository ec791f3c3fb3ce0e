// Helpers shared by the format codecs (formats/<format>.cc) and quantized_matrix.cc:
// argument checks with the messages the Python API shows, the stored-buffer reader of
// from_buffers, and the row copy behind ConcatRows / SliceRows.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "formats/format_traits.h"
#include "formats/quantized_matrix.h"

namespace ternlm {

// Throws std::invalid_argument "<fn>: ..." for an empty or too large shape; below the
// limit every stored size is far from overflowing size_t (and bf16c's uint32 exception
// counts from overflowing).
void CheckShape(const char* fn, size_t rows, size_t cols);
// group must be 32, 64 or 128 and divide cols.
void CheckGroup(const char* fn, size_t cols, int group);
// nano's rank (group_size) in [1, kNanoMaxRank] and its shape within kNanoMaxCols (nano.cc).
void CheckNanoRank(const char* fn, size_t rows, size_t cols, int rank);
// "<what>[i] is not finite (...)": float32 values (row multipliers, stored weights).
void CheckFiniteValues(const std::string& what, const float* v, size_t n);
// "<what>[i] is not finite": fp16 bit patterns (int4 scales and mins), read with memcpy
// so that `halves` may be unaligned (a memory-mapped buffer).
void CheckHalvesFinite(const std::string& what, const void* halves, size_t n);

// memcpy that accepts an empty (possibly null) source.
inline void CopyBytes(void* dst, const void* src, size_t n) {
  if (n) std::memcpy(dst, src, n);
}

// The stored buffers given to from_buffers, taken by name. Take checks dtype and element
// count; RejectUnknown (after the codec took what it reads) names any buffer left over.
class StoredBuffers {
 public:
  StoredBuffers(const std::vector<BufferView>& buffers, const char* format)
      : buffers_(buffers), format_(format), taken_(buffers.size(), false) {}
  // The data of buffer `name`; throws if it is missing or its dtype or count differ.
  const void* Take(const char* name, const char* dtype, size_t count);
  // Same without the count check; *count receives it.
  const void* TakeAnyCount(const char* name, const char* dtype, size_t* count);
  void RejectUnknown() const;

 private:
  const std::vector<BufferView>& buffers_;
  const char* format_;
  std::vector<bool> taken_;
};

// The "<count> elements" check, for a buffer whose length the codec learns late.
void CheckCount(const char* name, size_t got, size_t expected);

// Stacks ranges of a format whose rows can be copied one at a time: whole tiles by memcpy
// where the source and destination rows both start on a tile (every row for an untiled
// format), the rest by copy_row(dst, dst_row, src, src_row); the row multipliers too, for a
// format that has them.
using CopyRowFn = void (*)(QuantizedMatrix& dst, size_t dst_row, const QuantizedMatrix& src, size_t src_row);
QuantizedMatrix StackRowsByCopy(const std::vector<RowRange>& ranges, CopyRowFn copy_row);

}  // namespace ternlm
