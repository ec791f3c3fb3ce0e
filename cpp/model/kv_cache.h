// KvCache: f32 keys and values of every position seen so far.
//
// Layout: [layer][kv_head] slabs of `context` positions (rounded up to kKeyBlock), so one
// KV head's history is contiguous and attention reads it front to back. Within a slab,
// values are rows [pos][head_dim] and keys are blocks of kKeyBlock positions, each
// [head_dim][kKeyBlock] (kernels/vector_ops.h: KeyOffset). Storage is allocated once for
// `context` positions and left untouched until written (the OS commits pages
// as positions fill up). Transparent huge pages are declined for it: a slab is
// context * head_dim * 4 bytes (2 MiB at 4096 x 128), so with THP the first
// position written would commit the whole slab, and a short generation would hold the
// full-context cache (600 MB for BitNet-2B) in RSS.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "hwy/aligned_allocator.h"
#include "kernels/vector_ops.h"

namespace ternlm {

class KvCache {
 public:
  KvCache() = default;
  KvCache(size_t num_layers, size_t num_kv_heads, size_t context, size_t head_dim)
      : num_kv_heads_(num_kv_heads), context_(context), head_dim_(head_dim),
        slab_((context + kKeyBlock - 1) / kKeyBlock * kKeyBlock * head_dim),
        size_(num_layers * num_kv_heads * slab_),
        keys_(hwy::AllocateAligned<float>(size_)), values_(hwy::AllocateAligned<float>(size_)) {
    NoHugePages(keys_.get());
    NoHugePages(values_.get());
  }

  size_t context() const { return context_; }
  size_t nbytes() const { return 2 * size_ * sizeof(float); }

  // Slabs of one layer's KV head: key blocks, value rows.
  const float* Keys(size_t layer, size_t kv_head) const { return keys_.get() + Offset(layer, kv_head); }
  const float* Values(size_t layer, size_t kv_head) const { return values_.get() + Offset(layer, kv_head); }

  // Writes the key and value of position pos.
  void Store(size_t layer, size_t kv_head, size_t pos, const float* key, const float* value) {
    float* k = keys_.get() + Offset(layer, kv_head);
    for (size_t d = 0; d < head_dim_; ++d) k[KeyOffset(pos, d, head_dim_)] = key[d];
    std::memcpy(values_.get() + Offset(layer, kv_head) + pos * head_dim_, value, head_dim_ * sizeof(float));
  }

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
    return (layer * num_kv_heads_ + kv_head) * slab_;
  }
  size_t num_kv_heads_ = 0, context_ = 0, head_dim_ = 0, slab_ = 0, size_ = 0;
  hwy::AlignedFreeUniquePtr<float[]> keys_, values_;
};

}  // namespace ternlm
