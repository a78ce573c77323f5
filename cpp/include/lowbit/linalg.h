// Dense single-precision matrix products for the whole library: one blocked, packed GEMM with
// per-ISA micro-kernels (scalar, AVX2, AVX-512) picked at run time by active_isa().
//
// Layout: every matrix is row-major with a leading dimension (row stride, in elements):
// element (r, c) of a matrix X stored with leading dimension ldx is X[r * ldx + c].
//
// Determinism contract (what the bits of C depend on):
//   * K is cut into blocks of kGemmKc and the blocks into chunks of kGemmChunk. Inside a block
//     the products are accumulated one after another in k order, starting from zero, giving a
//     block sum s; inside a chunk the block sums are added in order, starting from zero
//     (p = s_0, p = p + s_1, ...), giving a chunk partial p; the chunk partials are then
//     folded into C in order as  C = beta*C + alpha*p_0,  C = C + alpha*p_1, ...  (each
//     multiply and add rounded separately; beta == 0 means C is not read).
//   * Threads split C into tiles, or (for small C and long K) take whole chunks each; neither
//     tile shape nor schedule enters the arithmetic, so results are bit-identical for any
//     thread count.
//   * The AVX2 and AVX-512 kernels both use FMA inside a block and give the same bits. The
//     scalar kernel rounds the product and the sum separately, so it can differ from them in
//     the last bits. Either way |C - C_exact| <= eps_f32 * (kc + ceil(K/kc) + 2) *
//     (|alpha| * (|op(A)| |op(B)|) + |beta| * |C|) elementwise (kc = min(K, kGemmKc)), a
//     bound the tests use as tolerance; a looser form is eps_f32 * (K + 2) * (...).
#pragma once
#include <cstdint>

#include "lowbit/view.h"

namespace lowbit {

// K block of every product. Part of the numerical contract above: changing it changes bits.
constexpr int64_t kGemmKc = 256;
// K blocks per chunk (2048 rows of K). Also part of the contract.
constexpr int64_t kGemmChunk = 8;

// C (M, N) = alpha * op(A) * op(B) + beta * C.
//   op(A) is (M, K): A itself, stored (M, K) with lda >= K, or with trans_a its transpose,
//         A stored (K, M) with lda >= M.
//   op(B) is (K, N): B stored (K, N) with ldb >= N, or with trans_b B stored (N, K), ldb >= K.
//   C is (M, N) with ldc >= N and must not overlap A or B.
// beta == 0 overwrites C without reading it (NaN/Inf already in C do not propagate); alpha == 0
// or K == 0 only scales C by beta (A and B are not read). Sizes may be 0. Throws
// std::invalid_argument on negative sizes or too small leading dimensions.
void sgemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
           const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C,
           int64_t ldc);

// Symmetric rank-k update, the Gram kernel: C (d, d) += A^T A for A (n, d) stored with
// lda >= d. Only the upper triangle of C (j >= i) is read and computed (about half of the
// flops of sgemm); the strict lower triangle is then overwritten with the mirror of the upper
// one, so C leaves exactly symmetric. This equals sgemm(true, false, d, d, n, 1, A, lda, A,
// lda, 1, C, ldc) bit for bit on the upper triangle whenever C is symmetric on entry.
void ssyrk_tn_acc(int64_t n, int64_t d, const float* A, int64_t lda, float* C, int64_t ldc);

// View forms of the above with the shapes checked against each other.
// C = alpha * op(A) * op(B) + beta * C.
void gemm(ConstMatrixView<float> A, bool trans_a, ConstMatrixView<float> B, bool trans_b,
          MatrixView<float> C, float alpha = 1.0f, float beta = 0.0f);
// C (d, d) += A^T A for A (n, d); see ssyrk_tn_acc.
void syrk_tn_acc(ConstMatrixView<float> A, MatrixView<float> C);

}  // namespace lowbit
