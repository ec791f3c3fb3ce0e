// A streaming-read memory-bandwidth probe. Decode speed of a weight-bound LLM is
// capped by how fast the CPU can read the weights once per token; this measures that
// rate on this machine so the comparison can report a roofline (tokens/s that the
// bandwidth allows) next to the speed it achieved.
#pragma once
#include <cstddef>
#include <cstdint>

namespace ternlm {

struct ReadBandwidthResult {
  double gb_per_s = 0;      // best of the repeats, 1 GB = 1e9 bytes
  size_t bytes_read = 0;    // per repeat: `bytes` rounded down to whole chunks
  size_t threads = 0;       // threads that read (0 was resolved to all cores)
  uint64_t checksum = 0;    // sum of all 64-bit words read; equals bytes_read / 8
};

// Allocates `bytes` (make it well beyond the last-level cache, e.g. 1 GiB), fills it
// with 64-bit ones from the reading threads (first touch places pages near them),
// then `repeats` times reads all of it with `threads` threads (0: all cores) using
// the widest SIMD loads Highway dispatches to, and keeps the fastest repeat.
// Throws std::invalid_argument for bytes < kMinProbeBytes or repeats < 1, and
// std::runtime_error if the words summed differ from those written (a read was lost).
constexpr size_t kMinProbeBytes = size_t(1) << 16;
ReadBandwidthResult MeasureReadBandwidth(size_t threads, size_t bytes, size_t repeats);

}  // namespace ternlm
