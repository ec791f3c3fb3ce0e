// Online Hadamard rotation of a linear layer's input (QuEST; BitNet v2 before its attention
// output and down projections): x <- x·H with H block-diagonal,
//
//   H = diag(H_b, H_b, ..., H_b)  (m blocks for an input of n = m·b),   H_b = S_b / sqrt(b),
//   S_1 = [1],  S_2k = [[S_k, S_k], [S_k, -S_k]]                          (Sylvester),
//
// b = HadamardBlock(n): the largest power of two dividing n, at least kMinHadamardBlock.
// H is symmetric and orthogonal, so x·Wᵀ = (x·H)·(W·H)ᵀ: a model stores W·H (its rows
// rotated) and the engine rotates each token's input online. Supported widths: n = m·2^k
// with 2^k >= 16 and any m (576 = 9·64, 960 = 15·64, 1536 = 3·512, 4096 = 1·4096); a
// width with a smaller power-of-two factor (n not a multiple of 16) has none.
//
// The fast Walsh-Hadamard transform runs the butterflies of every block in stages
// h = 1, 2, 4, ..., b/2 (a <- a + c, c <- a - c for each pair (a, c) h apart whose lower
// index has bit h clear), then multiplies by float(1 / sqrt(b)). Every target computes
// the same f32 operations in the same order, so all targets, and a reference that runs
// these stages (tests), agree bit for bit; against the exact product x·H the error is
// that of log2(b) rounded additions (tests state the tolerance).
#pragma once
#include <cstddef>

namespace ternlm {

constexpr size_t kMinHadamardBlock = 16;

// The block size for an input of n values, or 0 when n has no power-of-two factor of at
// least kMinHadamardBlock (the rotation is not supported for that width).
size_t HadamardBlock(size_t n);

// x [n] <- x·H in place (H as above, blocks of `block`: a power of two dividing n).
void HadamardRotate(float* x, size_t n, size_t block);

}  // namespace ternlm
