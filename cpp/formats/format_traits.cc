#include "formats/format_traits.h"

#include <iterator>
#include <stdexcept>
#include <string>

namespace ternlm {

// Defined by the codecs (formats/<format>.cc).
extern const FormatTraits kF32Traits, kBF16Traits, kInt4Traits, kTernaryTraits, kBF16CTraits,
    kInt8Traits, kQ6Traits, kNanoTraits;

namespace {

// The table: one row per format, in the order error messages list them (most compact
// first). Adding a format adds its row here; Traits() finds a row by its WeightFormat.
const FormatTraits* const kFormatTraits[] = {
    &kNanoTraits, &kTernaryTraits, &kInt4Traits, &kQ6Traits, &kInt8Traits, &kBF16Traits, &kBF16CTraits, &kF32Traits,
};

}  // namespace

const FormatTraits& Traits(WeightFormat f) {
  for (const FormatTraits* t : kFormatTraits)
    if (t->format == f) return *t;
  throw std::invalid_argument("weight format " + std::to_string(int(f)) + " is not in the format table");
}

const std::vector<const FormatTraits*>& AllFormats() {
  static const std::vector<const FormatTraits*> all(std::begin(kFormatTraits), std::end(kFormatTraits));
  return all;
}

}  // namespace ternlm
