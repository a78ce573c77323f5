// The one matrix-product door of the rounding engine. Row-major, BLAS-like:
//   C (M, N) = alpha * op(A) (M, K) * op(B) (K, N) + beta * C,  op = transpose when trans_*.
// Deterministic for any thread count and ISA level: the ISA-dispatched kernel of
// rounding_kernels.h on fixed tiles of C run by parallel_for (each element summed in k order).
// When lowbit/linalg.h lands, the body becomes one call to lowbit::sgemm.
#pragma once
#include <cstdint>

namespace lowbit::rounding_detail {

void matmul(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
            const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C,
            int64_t ldc);

}  // namespace lowbit::rounding_detail
