// KvCache: keys and values of every position seen so far, f32 (the default, exact) or
// IEEE half (f16: half the bytes attention streams per token; values beyond +-65504 are
// saturated, each element rounded to nearest even).
//
// The caller bounds the size (Transformer checks it against physical memory first);
// an allocation that still fails throws OutOfMemory.
//
// Layout: [layer][kv_head] slabs of `context` positions (rounded up to kKeyBlock), so one
// KV head's history is contiguous and attention reads it front to back. Within a slab,
// values are rows [pos][head_dim] and keys are blocks of kKeyBlock positions, each
// [head_dim][kKeyBlock] (kernels/attention.h: KeyOffset). Storage is allocated once for
// `context` positions and left untouched until written (the OS commits pages
// as positions fill up). Transparent huge pages are declined for it: a slab is
// context * head_dim * 4 bytes (2 MiB at 4096 x 128 in f32), so with THP the first
// position written would commit the whole slab, and a short generation would hold the
// full-context cache (600 MB for BitNet-2B) in RSS.
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "formats/half.h"  // F16FromF32
#include "hwy/aligned_allocator.h"
#include "kernels/attention.h"
#include "runtime/out_of_memory.h"

namespace ternlm {

enum class KvDtype : uint8_t { kF32, kF16 };

class KvCache {
 public:
  KvCache() = default;
  KvCache(size_t num_layers, size_t num_kv_heads, size_t context, size_t head_dim,
          KvDtype dtype = KvDtype::kF32)
      : dtype_(dtype), num_kv_heads_(num_kv_heads), context_(context), head_dim_(head_dim),
        elem_(dtype == KvDtype::kF16 ? 2 : 4),
        slab_((context + kKeyBlock - 1) / kKeyBlock * kKeyBlock * head_dim),
        bytes_(num_layers * num_kv_heads * slab_ * elem_),
        keys_(hwy::AllocateAligned<uint8_t>(bytes_)), values_(hwy::AllocateAligned<uint8_t>(bytes_)) {
    if (!keys_ || !values_)
      throw OutOfMemory("KV cache: could not allocate 2 x " + std::to_string(bytes_) + " bytes");
    NoHugePages(keys_.get());
    NoHugePages(values_.get());
  }

  KvDtype dtype() const { return dtype_; }
  bool f16() const { return dtype_ == KvDtype::kF16; }
  size_t context() const { return context_; }
  size_t nbytes() const { return 2 * bytes_; }

  // Slabs of one layer's KV head (elements f32 or f16 bits): key blocks, value rows.
  const void* Keys(size_t layer, size_t kv_head) const { return keys_.get() + Offset(layer, kv_head); }
  const void* Values(size_t layer, size_t kv_head) const { return values_.get() + Offset(layer, kv_head); }

  // Writes the key and value of position pos.
  void Store(size_t layer, size_t kv_head, size_t pos, const float* key, const float* value) {
    uint8_t* k = keys_.get() + Offset(layer, kv_head);
    uint8_t* v = values_.get() + Offset(layer, kv_head) + pos * head_dim_ * elem_;
    if (!f16()) {
      for (size_t d = 0; d < head_dim_; ++d)
        std::memcpy(k + KeyOffset(pos, d, head_dim_) * 4, key + d, 4);
      std::memcpy(v, value, head_dim_ * 4);
      return;
    }
    for (size_t d = 0; d < head_dim_; ++d) {
      const uint16_t kh = Half(key[d]), vh = Half(value[d]);
      std::memcpy(k + KeyOffset(pos, d, head_dim_) * 2, &kh, 2);
      std::memcpy(v + d * 2, &vh, 2);
    }
  }

 private:
  static uint16_t Half(float x) { return F16FromF32(std::clamp(x, -65504.0f, 65504.0f)); }
  void NoHugePages(uint8_t* p) const {
#if defined(__linux__) && defined(MADV_NOHUGEPAGE)
    const uintptr_t page = 4096, b = (reinterpret_cast<uintptr_t>(p) + page - 1) / page * page;
    const uintptr_t e = (reinterpret_cast<uintptr_t>(p + bytes_)) / page * page;
    if (e > b) madvise(reinterpret_cast<void*>(b), e - b, MADV_NOHUGEPAGE);  // a hint
#else
    (void)p;
#endif
  }
  size_t Offset(size_t layer, size_t kv_head) const {
    return (layer * num_kv_heads_ + kv_head) * slab_ * elem_;
  }
  KvDtype dtype_ = KvDtype::kF32;
  size_t num_kv_heads_ = 0, context_ = 0, head_dim_ = 0, elem_ = 4, slab_ = 0, bytes_ = 0;
  hwy::AlignedFreeUniquePtr<uint8_t[]> keys_, values_;
};

}  // namespace ternlm
