// The nano matmul (formats/nano.h): y[n, rows] = x[n, cols] . W^T with W = diag(s_out) U V^T
// diag(s_in), as two binary products on int8 activations (kernels/nano_matmul-inl.h).
// MatMul (kernels/matmul.h) calls it for nano matrices.
#pragma once
#include <cstddef>
#include <cstdint>

#include "formats/quantized_matrix.h"
#include "runtime/thread_pool.h"

namespace ternlm {

void NanoMatMul(const QuantizedMatrix& w, const float* x, size_t n, float* y, ThreadPool& pool);

// Tests: out[j * nrows + r] = sum_i (bit i of row r ? q[j, i] : -q[j, i]) by the dispatched
// kernel, for a bit matrix [nrows, n / 8 bytes] (n a multiple of 64) and na rows of q
// (int8 in [-127, 127], [na, n]).
void NanoBitDotsForTest(const uint8_t* bits, size_t nrows, size_t n, const int8_t* q, size_t na, int32_t* out);
// Benchmarks: the f32 sign-selected sum sum_i (bit i ? x[i] : -x[i]) (n a multiple of 64).
float NanoBitDotFloat(const uint8_t* bits, size_t n, const float* x);

}  // namespace ternlm
