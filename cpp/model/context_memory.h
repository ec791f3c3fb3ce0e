// What the buffers that grow with the context cost (KV caches, RoPE tables, attention
// scores), checked against this machine's physical memory before the engine allocates
// them (transformer.cc's constructor).
#pragma once
#include <cstddef>

#include "model/config.h"

namespace ternlm {

// In bytes, computed in double so that no context overflows them.
struct ContextBytes {
  double kv, rest;  // kv: one slot's cache; rest: RoPE tables and attention scores
};
// score_rows: attention score rows per thread; kv_elem: bytes per cached K or V value.
ContextBytes ContextNeeds(const ModelConfig& c, size_t context, size_t threads, size_t score_rows, size_t kv_elem);

// Throws std::invalid_argument naming the bytes when `sequences` slots of `context` positions
// and the weights exceed physical memory.
void CheckFits(const ContextBytes& b, size_t context, size_t sequences, size_t weight_bytes);

// The most slots up to `most` whose caches fit beside the weights (at least 1).
size_t SequencesThatFit(const ContextBytes& b, size_t most, size_t weight_bytes);

}  // namespace ternlm
