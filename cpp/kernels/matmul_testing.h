// Hooks that expose intermediate results of the kernels to the tests.
#pragma once
#include <cstdint>

#include "formats/quantized_matrix.h"

namespace ternlm {

// out[r] = sum_c t[r, c] * q[c] for every row r, computed by the dispatched ternary
// kernel (the exact int32 sums of formats/ternary.h). q: w.cols() int8, quantized as
// kernels/activations.h QuantizeActivationsInt8.
void TernaryIntDotsForTest(const QuantizedMatrix& w, const int8_t* q, int32_t* out);

// out[r * (padded_cols / 32) + b] = the exact int32 block sums I[r, b] of formats/int8.h
// or formats/q6.h for activation q (w.cols() int8), computed by the dispatched kernel.
void HeadBlockDotsForTest(const QuantizedMatrix& w, const int8_t* q, int32_t* out);

}  // namespace ternlm
