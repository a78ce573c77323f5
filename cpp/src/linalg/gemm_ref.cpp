// The portable micro-kernel: plain C++ at the baseline (the compiler vectorises the j loop
// with SSE2). Every product and sum is rounded on its own (-ffp-contract=off), so this is also
// the slow, obvious statement of what the SIMD tile kernels compute.
#include "gemm_kernels.h"

namespace lowbit::gemm_detail {

void tile_scalar(int64_t kc, const float* a, const float* b, float* c, int64_t ldc, float alpha,
                 float beta) {
  constexpr int MR = kMrScalar, NR = kNrScalar;
  float s[MR][NR] = {};
  for (int64_t k = 0; k < kc; ++k, a += MR, b += NR)
    for (int i = 0; i < MR; ++i)
      for (int j = 0; j < NR; ++j) s[i][j] += a[i] * b[j];
  for (int i = 0; i < MR; ++i) {
    float* ci = c + i * ldc;
    for (int j = 0; j < NR; ++j)
      ci[j] = beta == 0.0f ? alpha * s[i][j] : beta * ci[j] + alpha * s[i][j];
  }
}

}  // namespace lowbit::gemm_detail
