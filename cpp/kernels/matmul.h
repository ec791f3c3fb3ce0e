// MatMul over every weight format: y[n, rows] = x[n, cols] · Wᵀ.
// n == 1 is the decode GEMV; n > 1 is the prefill GEMM, blocked so that each
// weight block is streamed once per block of activation rows.
#pragma once
#include <cstddef>

#include "formats/quantized_matrix.h"
#include "kernels/activations.h"
#include "runtime/thread_pool.h"

namespace ternlm {

// x: n rows of w.cols() floats (contiguous), y: n rows of w.rows() floats. aq: how x is
// quantized (kernels/activations.h): as the format's kernel does, or to 4 bits per row for
// a model trained so (any format; the float formats get the dequantized 4-bit values).
void MatMul(const QuantizedMatrix& w, const float* x, size_t n, float* y, ThreadPool& pool,
            ActivationQuant aq = ActivationQuant::kFormat);

}  // namespace ternlm
