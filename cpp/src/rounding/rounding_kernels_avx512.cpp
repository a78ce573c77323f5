#include <immintrin.h>

#include <cstdlib>
#include <cstring>

#include "rounding_kernels.inc"

namespace {

// AVX-512 register tile of gemm_nn: MR rows x 32 columns of C in 2*MR zmm accumulators,
// columns beyond N masked. Per element the same operations as the generic kernel
// (acc = acc + a * b, separate multiply and add, k in order), so the bits are the same.
template <int MR>
inline void gemm_tile_zmm(int64_t K, const float* A, int64_t lda, const float* B, int64_t ldb,
                          float* C, int64_t ldc, __mmask16 m0, __mmask16 m1) {
  __m512 c0[MR], c1[MR];
  for (int r = 0; r < MR; ++r) c0[r] = c1[r] = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; ++k) {
    const float* b = B + k * ldb;
    const __m512 b0 = _mm512_maskz_loadu_ps(m0, b);
    const __m512 b1 = _mm512_maskz_loadu_ps(m1, b + 16);
    for (int r = 0; r < MR; ++r) {
      const __m512 a = _mm512_set1_ps(A[r * lda + k]);
      c0[r] = _mm512_add_ps(c0[r], _mm512_mul_ps(a, b0));
      c1[r] = _mm512_add_ps(c1[r], _mm512_mul_ps(a, b1));
    }
  }
  for (int r = 0; r < MR; ++r) {
    _mm512_mask_storeu_ps(C + r * ldc, m0, c0[r]);
    _mm512_mask_storeu_ps(C + r * ldc + 16, m1, c1[r]);
  }
}

void gemm_nn_avx512(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda,
                    const float* B, int64_t ldb, float* C, int64_t ldc) {
  constexpr int MR = 6;
  // When B spans more than 2 MiB, each 32-column panel is packed contiguously (K x 32,
  // zero-padded) first: rows of B that far apart would cost a TLB miss per k.
  const bool packed = double(K) * double(ldb) * 4.0 > double(2 << 20);
  float* pack = packed ? static_cast<float*>(std::malloc(sizeof(float) * size_t(K) * 32)) : nullptr;
  if (packed && pack == nullptr) {
    gemm_nn(M, N, K, A, lda, B, ldb, C, ldc);
    return;
  }
  for (int64_t j0 = 0; j0 < N; j0 += 32) {
    const int64_t nb = N - j0 < 32 ? N - j0 : 32;
    const float* bp = B + j0;
    int64_t ldp = ldb;
    if (packed) {
      for (int64_t k = 0; k < K; ++k) {
        std::memcpy(pack + k * 32, B + k * ldb + j0, sizeof(float) * size_t(nb));
        if (nb < 32) std::memset(pack + k * 32 + nb, 0, sizeof(float) * size_t(32 - nb));
      }
      bp = pack;
      ldp = 32;
    }
    const __mmask16 m0 = nb >= 16 ? __mmask16(0xffff) : __mmask16((1u << nb) - 1);
    const __mmask16 m1 = nb >= 32 ? __mmask16(0xffff)
                                  : (nb > 16 ? __mmask16((1u << (nb - 16)) - 1) : __mmask16(0));
    float* c = C + j0;
    int64_t i = 0;
    for (; i + MR <= M; i += MR)
      gemm_tile_zmm<MR>(K, A + i * lda, lda, bp, ldp, c + i * ldc, ldc, m0, m1);
    switch (M - i) {
      case 5: gemm_tile_zmm<5>(K, A + i * lda, lda, bp, ldp, c + i * ldc, ldc, m0, m1); break;
      case 4: gemm_tile_zmm<4>(K, A + i * lda, lda, bp, ldp, c + i * ldc, ldc, m0, m1); break;
      case 3: gemm_tile_zmm<3>(K, A + i * lda, lda, bp, ldp, c + i * ldc, ldc, m0, m1); break;
      case 2: gemm_tile_zmm<2>(K, A + i * lda, lda, bp, ldp, c + i * ldc, ldc, m0, m1); break;
      case 1: gemm_tile_zmm<1>(K, A + i * lda, lda, bp, ldp, c + i * ldc, ldc, m0, m1); break;
      default: break;
    }
  }
  if (pack) std::free(pack);
}

}  // namespace

namespace lowbit::rounding_detail {

Kernels kernels_avx512() { return {update_segment, soft_segment, gemm_nn_avx512, "avx512"}; }

}  // namespace lowbit::rounding_detail
