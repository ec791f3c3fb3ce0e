// The Highway targets this build compiled and this CPU supports, and a switch to
// force one of them (tests run every kernel on every target this way).
#pragma once
#include <string>
#include <vector>

namespace ternlm {

// Names as Highway spells them ("AVX3_DL", "AVX3", "AVX2", "SSE4", "EMU128", ...),
// best first.
std::vector<std::string> SupportedTargetNames();
// The target dynamic dispatch picks now.
std::string CurrentTargetName();
// Restricts dispatch to one supported target; throws std::invalid_argument naming the
// supported ones otherwise. An empty name restores normal dispatch.
void SetTarget(const std::string& name);

}  // namespace ternlm
