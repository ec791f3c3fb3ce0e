// Memory for the large buffers of weight matrices. On Linux they are cut from 2 MiB
// aligned chunks that the kernel is asked to back with transparent huge pages, one
// matrix after the other: a GEMV streams each matrix once per token, and with 4 KiB
// pages a matrix below a few MiB (every matrix of SmolLM2, the q/k/v and o matrices of
// a ternary 2B model) would cost a TLB miss and a hardware-prefetcher restart every
// 4 KiB. A piece is 4 KiB aligned and starts zeroed (fresh anonymous pages); freeing
// it returns its pages to the system at once (MADV_DONTNEED), and a chunk is unmapped
// when its last piece is freed. Elsewhere (and for small buffers) a plain aligned heap
// allocation is used.
#pragma once
#include <cstddef>
#include <cstdint>

namespace ternlm {

// Buffers of at least this many bytes come from the arena.
constexpr size_t kArenaMinBytes = size_t(64) << 10;

// Zeroed bytes, at least 64-byte aligned; *chunk is the handle ArenaFree needs
// (nullptr for a heap allocation). Throws std::bad_alloc.
uint8_t* ArenaAllocate(size_t size, void** chunk);
void ArenaFree(uint8_t* p, size_t size, void* chunk);

}  // namespace ternlm
