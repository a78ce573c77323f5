// Internal: the micro-kernels behind lowbit/linalg.h, one set per instruction set.
//
// The ISA files (gemm_avx2.cpp, gemm_avx512.cpp) are compiled with -m flags, so they include
// nothing but this header and intrinsics and define only these plain functions: any inline
// code they shared with baseline files (STL, Eigen, parallel_for's lambdas) could be emitted
// with AVX-512 instructions and picked by the linker for everyone. Packing, blocking and
// threading live in gemm.cpp at the baseline.
#pragma once
#include <cstdint>

namespace lowbit::gemm_detail {

// Packed panels, as gemm.cpp writes them (zero-padded to full width):
//   a: kc steps of MR floats, a[k * MR + i] = op(A)(i0 + i, k0 + k)
//   b: kc steps of NR floats, b[k * NR + j] = op(B)(k0 + k, j0 + j)
// A tile kernel computes, for the full MR x NR tile,
//   s[i][j] = sum_k a[k*MR+i] * b[k*NR+j]     (from 0, in k order, one chain per element)
//   c[i*ldc + j] = beta == 0 ? alpha * s : beta * c + alpha * s   (mul and add rounded apart)
// kc >= 1. Calling it with alpha = 1, beta = 0 on a scratch tile yields s itself.
using TileKernel = void (*)(int64_t kc, const float* a, const float* b, float* c, int64_t ldc,
                            float alpha, float beta);

// Portable kernel (gemm_ref.cpp): products and sums rounded separately (no FMA).
constexpr int kMrScalar = 4, kNrScalar = 8;
void tile_scalar(int64_t kc, const float* a, const float* b, float* c, int64_t ldc, float alpha,
                 float beta);

// AVX2 + FMA: 6 x 16 tile, 12 ymm accumulators.
constexpr int kMrAvx2 = 6, kNrAvx2 = 16;
void tile_avx2(int64_t kc, const float* a, const float* b, float* c, int64_t ldc, float alpha,
               float beta);

// AVX-512F: 14 x 32 tile, 28 zmm accumulators.
constexpr int kMrAvx512 = 14, kNrAvx512 = 32;
void tile_avx512(int64_t kc, const float* a, const float* b, float* c, int64_t ldc, float alpha,
                 float beta);

constexpr int kMrMax = 14, kNrMax = 32;  // scratch tile size for edges

}  // namespace lowbit::gemm_detail
