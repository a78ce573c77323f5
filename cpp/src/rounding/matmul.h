// The one matrix-product door of the rounding engine. Row-major, BLAS-like:
//   C (M, N) = alpha * op(A) (M, K) * op(B) (K, N) + beta * C,  op = transpose when trans_*.
// lowbit::sgemm (linalg.h): bit-identical for any thread count; the AVX2 and AVX-512 kernels
// give the same bits, the scalar one (no FMA) may differ in the last bits.
#pragma once
#include <cstdint>

namespace lowbit::rounding_detail {

void matmul(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
            const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C,
            int64_t ldc);

}  // namespace lowbit::rounding_detail
