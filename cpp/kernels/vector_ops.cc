// Run-time dispatch of vector_ops.h to the per-target code in vector_ops-inl.h.
#include "kernels/vector_ops.h"

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/vector_ops.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"

#include "kernels/vector_ops-inl.h"

#if HWY_ONCE
namespace ternlm {

HWY_EXPORT(RmsNormTarget);
HWY_EXPORT(RopeRotateHalfTarget);
HWY_EXPORT(AxpyTarget);
HWY_EXPORT(AddInPlaceTarget);
HWY_EXPORT(SiluMulTarget);
HWY_EXPORT(Relu2MulTarget);
HWY_EXPORT(ArgmaxTarget);

void RmsNorm(const float* x, const float* weight, size_t n, float eps, float* out) {
  HWY_DYNAMIC_DISPATCH(RmsNormTarget)(x, weight, n, eps, out);
}
void RopeRotateHalf(float* x, const float* cos, const float* sin, size_t head_dim) {
  HWY_DYNAMIC_DISPATCH(RopeRotateHalfTarget)(x, cos, sin, head_dim);
}
void Axpy(float a, const float* x, size_t n, float* y) { HWY_DYNAMIC_DISPATCH(AxpyTarget)(a, x, n, y); }
void AddInPlace(const float* y, size_t n, float* x) { HWY_DYNAMIC_DISPATCH(AddInPlaceTarget)(y, n, x); }
void SiluMul(const float* gate, const float* up, size_t n, float* out) {
  HWY_DYNAMIC_DISPATCH(SiluMulTarget)(gate, up, n, out);
}
void Relu2Mul(const float* gate, const float* up, size_t n, float* out) {
  HWY_DYNAMIC_DISPATCH(Relu2MulTarget)(gate, up, n, out);
}
size_t Argmax(const float* x, size_t n) { return HWY_DYNAMIC_DISPATCH(ArgmaxTarget)(x, n); }

}  // namespace ternlm
#endif  // HWY_ONCE
