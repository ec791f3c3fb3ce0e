// OutOfMemory: an allocation the engine could not get, naming what it was for and its
// size. The Python binding raises it as MemoryError with this message.
#pragma once
#include <stdexcept>

namespace ternlm {

class OutOfMemory : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

}  // namespace ternlm
