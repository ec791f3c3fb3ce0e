// KvCache: f32 keys and values of every position seen so far.
//
// Layout (keys and values each):  [layer][kv_head][pos][head_dim]
// so one KV head's history is one contiguous [context, head_dim] slab, which the
// attention of a query head reads front to back. Storage is allocated once for
// `context` positions and left untouched until written (the OS commits pages
// as positions fill up). Transparent huge pages are declined for it: a slab is
// context * head_dim * 4 bytes (2 MiB at 4096 x 128), so with THP the first
// position written would commit the whole slab, and a short generation would hold the
// full-context cache (600 MB for BitNet-2B) in RSS.
#pragma once
#include <cstddef>
#include <cstdint>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "hwy/aligned_allocator.h"

namespace ternlm {

class KvCache {
 public:
  KvCache() = default;
  KvCache(size_t num_layers, size_t num_kv_heads, size_t context, size_t head_dim)
      : num_kv_heads_(num_kv_heads), context_(context), head_dim_(head_dim),
        size_(num_layers * num_kv_heads * context * head_dim),
        keys_(hwy::AllocateAligned<float>(size_)), values_(hwy::AllocateAligned<float>(size_)) {
    NoHugePages(keys_.get());
    NoHugePages(values_.get());
  }

  size_t context() const { return context_; }
  size_t nbytes() const { return 2 * size_ * sizeof(float); }

  // [context, head_dim] slab of one layer's KV head.
  float* Keys(size_t layer, size_t kv_head) { return keys_.get() + Offset(layer, kv_head); }
  float* Values(size_t layer, size_t kv_head) { return values_.get() + Offset(layer, kv_head); }

 private:
  void NoHugePages(float* p) const {
#if defined(__linux__) && defined(MADV_NOHUGEPAGE)
    const uintptr_t page = 4096, b = (reinterpret_cast<uintptr_t>(p) + page - 1) / page * page;
    const uintptr_t e = (reinterpret_cast<uintptr_t>(p + size_)) / page * page;
    if (e > b) madvise(reinterpret_cast<void*>(b), e - b, MADV_NOHUGEPAGE);  // a hint
#else
    (void)p;
#endif
  }
  size_t Offset(size_t layer, size_t kv_head) const {
    return (layer * num_kv_heads_ + kv_head) * context_ * head_dim_;
  }
  size_t num_kv_heads_ = 0, context_ = 0, head_dim_ = 0, size_ = 0;
  hwy::AlignedFreeUniquePtr<float[]> keys_, values_;
};

}  // namespace ternlm
