// AVX2 + FMA tile kernel, 6 x 16: 12 ymm accumulators + 2 rows of B + 1 broadcast fill 15 of
// the 16 registers. Raw pointers and intrinsics only (see gemm_kernels.h).
#include <immintrin.h>

#include "gemm_kernels.h"

namespace lowbit::gemm_detail {

void tile_avx2(int64_t kc, const float* a, const float* b, float* c, int64_t ldc, float alpha,
               float beta) {
  constexpr int MR = kMrAvx2;
  __m256 s0[MR], s1[MR];
#pragma GCC unroll 6
  for (int i = 0; i < MR; ++i) s0[i] = s1[i] = _mm256_setzero_ps();
  for (int64_t k = 0; k < kc; ++k, a += MR, b += 16) {
    const __m256 b0 = _mm256_loadu_ps(b), b1 = _mm256_loadu_ps(b + 8);
#pragma GCC unroll 6
    for (int i = 0; i < MR; ++i) {
      const __m256 ai = _mm256_broadcast_ss(a + i);
      s0[i] = _mm256_fmadd_ps(ai, b0, s0[i]);
      s1[i] = _mm256_fmadd_ps(ai, b1, s1[i]);
    }
  }
  // Epilogue: (beta * c) + (alpha * s), each rounded, exactly like tile_scalar.
  const __m256 va = _mm256_set1_ps(alpha), vb = _mm256_set1_ps(beta);
#pragma GCC unroll 6
  for (int i = 0; i < MR; ++i) {
    float* ci = c + i * ldc;
    __m256 r0 = _mm256_mul_ps(va, s0[i]), r1 = _mm256_mul_ps(va, s1[i]);
    if (beta != 0.0f) {
      r0 = _mm256_add_ps(_mm256_mul_ps(vb, _mm256_loadu_ps(ci)), r0);
      r1 = _mm256_add_ps(_mm256_mul_ps(vb, _mm256_loadu_ps(ci + 8)), r1);
    }
    _mm256_storeu_ps(ci, r0);
    _mm256_storeu_ps(ci + 8, r1);
  }
}

}  // namespace lowbit::gemm_detail
