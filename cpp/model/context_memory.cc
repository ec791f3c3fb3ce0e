#include "model/context_memory.h"

#include <unistd.h>  // sysconf

#include <cmath>
#include <cstdio>
#include <stdexcept>
#include <string>

#include "kernels/attention.h"  // kKeyBlock

namespace ternlm {
namespace {

size_t PhysicalMemoryBytes() {  // 0 when unknown
#if defined(_SC_PHYS_PAGES) && defined(_SC_PAGESIZE)
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
  if (pages > 0 && page > 0) return size_t(pages) * size_t(page);
#endif
  return 0;
}

std::string Gigabytes(double bytes) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.3g GB (%.0f bytes)", bytes / 1e9, bytes);
  return buf;
}

double MemoryLimit() {
  const double have = double(PhysicalMemoryBytes());
  return have > 0 ? have : std::ldexp(1.0, 62);
}

}  // namespace

// The buffers that grow with the context, in bytes, computed in double so that no
// context overflows them: the KV caches of every slot (slabs of round_up(context,
// kKeyBlock) positions), the RoPE tables and the per-thread attention scores. Refused when
// they and the weights exceed physical memory (they are only reserved until positions are
// reached, but a context that cannot be filled is a mistake better reported at load than
// as the OOM killer mid-generation).
ContextBytes ContextNeeds(const ModelConfig& c, size_t context, size_t threads, size_t score_rows, size_t kv_elem) {
  const double positions = std::ceil(double(context) / double(kKeyBlock)) * double(kKeyBlock);
  const double kv = 2.0 * double(c.num_layers) * double(c.num_kv_heads) * positions * double(c.head_dim) * double(kv_elem);
  const double rope = 2.0 * double(context) * double(c.head_dim / 2) * sizeof(float);
  const double scores = double(threads) * double(score_rows) * positions * sizeof(float);
  return {kv, rope + scores};
}

void CheckFits(const ContextBytes& b, size_t context, size_t sequences, size_t weight_bytes) {
  const double kv = b.kv * double(sequences), need = kv + b.rest;
  const double have = double(PhysicalMemoryBytes());
  if (need + double(weight_bytes) <= MemoryLimit()) return;
  const std::string what = sequences == 1 ? "context=" + std::to_string(context)
                                          : "max_sequences=" + std::to_string(sequences) + " x context=" +
                                                std::to_string(context);
  throw std::invalid_argument(
      what + " needs " + Gigabytes(need) + " for the KV cache" + (sequences == 1 ? "" : "s") + " (" + Gigabytes(kv) +
      "), RoPE tables and attention scores, beside " + Gigabytes(double(weight_bytes)) + " of weights: more than " +
      (have > 0 ? "the " + Gigabytes(have) + " of physical memory of this machine" : std::string("any machine has")) +
      (sequences == 1 ? "; use a smaller context" : "; use fewer sequences or a smaller context"));
}

size_t SequencesThatFit(const ContextBytes& b, size_t most, size_t weight_bytes) {
  size_t n = most;
  while (n > 1 && b.kv * double(n) + b.rest + double(weight_bytes) > MemoryLimit()) --n;
  return n;
}

}  // namespace ternlm
