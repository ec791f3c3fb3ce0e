#include "formats/weight_arena.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <new>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace ternlm {
namespace {

void* HeapAllocate(size_t size) {
  const size_t alloc = std::max<size_t>(64, (size + 63) / 64 * 64);
  void* p = std::aligned_alloc(64, alloc);
  if (!p) throw std::bad_alloc();
  std::memset(p, 0, alloc);
  return p;
}

#if defined(__linux__)
constexpr size_t kHugePage = size_t(2) << 20;
constexpr size_t kChunkBytes = size_t(64) << 20;  // pieces above a quarter get their own chunk
constexpr size_t kPiece = 4096;

struct Chunk {
  uint8_t* base = nullptr;
  size_t size = 0;
  size_t used = 0;   // bump pointer: pieces are never reused while the chunk lives
  size_t live = 0;   // pieces not yet freed
  bool open = false; // still taking new pieces
};

std::mutex g_mu;
Chunk* g_open = nullptr;

// A 2 MiB-aligned anonymous mapping of `size` bytes (a multiple of 2 MiB), or nullptr.
uint8_t* MapAligned(size_t size) {
  void* p = mmap(nullptr, size + kHugePage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return nullptr;
  const uintptr_t raw = reinterpret_cast<uintptr_t>(p);
  const uintptr_t aligned = (raw + kHugePage - 1) / kHugePage * kHugePage;
  if (aligned > raw) munmap(p, aligned - raw);
  const uintptr_t end = raw + size + kHugePage;
  if (end > aligned + size) munmap(reinterpret_cast<void*>(aligned + size), end - (aligned + size));
#ifdef MADV_HUGEPAGE
  madvise(reinterpret_cast<void*>(aligned), size, MADV_HUGEPAGE);  // a hint; failure costs speed only
#endif
  return reinterpret_cast<uint8_t*>(aligned);
}

Chunk* NewChunk(size_t size) {
  uint8_t* base = MapAligned(size);
  if (!base) return nullptr;
  Chunk* c = new Chunk;
  c->base = base;
  c->size = size;
  return c;
}

void DropChunk(Chunk* c) {
  munmap(c->base, c->size);
  delete c;
}
#endif  // __linux__

}  // namespace

uint8_t* ArenaAllocate(size_t size, void** chunk) {
  *chunk = nullptr;
#if defined(__linux__)
  if (size >= kArenaMinBytes) {
    const size_t need = (size + kPiece - 1) / kPiece * kPiece;
    std::lock_guard<std::mutex> lock(g_mu);
    Chunk* c = nullptr;
    if (need > kChunkBytes / 4) {
      c = NewChunk((need + kHugePage - 1) / kHugePage * kHugePage);  // a chunk of its own
    } else {
      if (!g_open || g_open->size - g_open->used < need) {
        if (g_open) {
          g_open->open = false;
          if (g_open->live == 0) DropChunk(g_open);
        }
        g_open = NewChunk(kChunkBytes);
        if (g_open) g_open->open = true;
      }
      c = g_open;
    }
    if (c) {
      uint8_t* p = c->base + c->used;
      c->used += need;
      ++c->live;
      *chunk = c;
      return p;
    }
    // mmap failed: fall through to the heap, which reports bad_alloc if it fails too
  }
#endif
  return static_cast<uint8_t*>(HeapAllocate(size));
}

void ArenaFree(uint8_t* p, size_t size, void* chunk) {
  if (!p) return;
  if (!chunk) {
    std::free(p);
    return;
  }
#if defined(__linux__)
  Chunk* c = static_cast<Chunk*>(chunk);
  std::lock_guard<std::mutex> lock(g_mu);
  --c->live;
  if (c->live == 0 && !c->open) {
    DropChunk(c);
    return;
  }
  if (c->live == 0) {  // the open chunk emptied: give its pages back and start it over
    madvise(c->base, c->used, MADV_DONTNEED);
    c->used = 0;
    return;
  }
  // Pieces are page-aligned and page-sized: give this one's pages back now (they read
  // as zeros if touched again, and the bump pointer never hands them out again).
  madvise(p, (size + kPiece - 1) / kPiece * kPiece, MADV_DONTNEED);
#else
  (void)size;
#endif
}

}  // namespace ternlm
