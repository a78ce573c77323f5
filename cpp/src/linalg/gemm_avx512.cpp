// AVX-512F tile kernel, 14 x 32: 28 zmm accumulators + 2 rows of B + 1 broadcast fit the 32
// registers; per k step 2 loads and 14 broadcasts feed 28 FMAs, so the two FMA ports, not
// the load ports, set the pace. Raw pointers and intrinsics only (see gemm_kernels.h).
#include <immintrin.h>

#include "gemm_kernels.h"

namespace lowbit::gemm_detail {

void tile_avx512(int64_t kc, const float* a, const float* b, float* c, int64_t ldc, float alpha,
                 float beta) {
  constexpr int MR = kMrAvx512;
  __m512 s0[MR], s1[MR];
#pragma GCC unroll 14
  for (int i = 0; i < MR; ++i) s0[i] = s1[i] = _mm512_setzero_ps();
  for (int64_t k = 0; k < kc; ++k, a += MR, b += 32) {
    const __m512 b0 = _mm512_loadu_ps(b), b1 = _mm512_loadu_ps(b + 16);
#pragma GCC unroll 14
    for (int i = 0; i < MR; ++i) {
      const __m512 ai = _mm512_set1_ps(a[i]);
      s0[i] = _mm512_fmadd_ps(ai, b0, s0[i]);
      s1[i] = _mm512_fmadd_ps(ai, b1, s1[i]);
    }
  }
  // Epilogue: (beta * c) + (alpha * s), each rounded, exactly like tile_scalar.
  const __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
#pragma GCC unroll 14
  for (int i = 0; i < MR; ++i) {
    float* ci = c + i * ldc;
    __m512 r0 = _mm512_mul_ps(va, s0[i]), r1 = _mm512_mul_ps(va, s1[i]);
    if (beta != 0.0f) {
      r0 = _mm512_add_ps(_mm512_mul_ps(vb, _mm512_loadu_ps(ci)), r0);
      r1 = _mm512_add_ps(_mm512_mul_ps(vb, _mm512_loadu_ps(ci + 16)), r1);
    }
    _mm512_storeu_ps(ci, r0);
    _mm512_storeu_ps(ci + 16, r1);
  }
}

}  // namespace lowbit::gemm_detail
