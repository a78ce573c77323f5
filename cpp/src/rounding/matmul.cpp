#include "matmul.h"

#include <algorithm>
#include <vector>

#include "lowbit/parallel.h"
#include "rounding_kernels.h"

namespace lowbit::rounding_detail {

namespace {

// Tile edges of C handed to one kernel call: functions of the shape only. The kernel sums
// every element of C over the whole K in k order, so tiling and threads never change the bits.
int64_t tile_m(int64_t M) { return M <= 64 ? std::max<int64_t>(4, (M + 1) / 2) : 64; }
int64_t tile_n(int64_t N) { return N <= 256 ? N : 256; }

// dst (cols, rows) = src (rows, cols)^T, src with leading dimension ld.
void transpose(const float* src, int64_t rows, int64_t cols, int64_t ld, float* dst) {
  constexpr int64_t T = 32;
  parallel_for(0, (cols + T - 1) / T, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b)
      for (int64_t r0 = 0; r0 < rows; r0 += T)
        for (int64_t c = b * T; c < std::min(cols, (b + 1) * T); ++c)
          for (int64_t r = r0; r < std::min(rows, r0 + T); ++r) dst[c * rows + r] = src[r * ld + c];
  });
}

}  // namespace

void matmul(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
            const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C,
            int64_t ldc) {
  if (M <= 0 || N <= 0) return;
  // op(A), op(B) as row-major (M, K) and (K, N): transposed operands are copied once.
  std::vector<float> at, bt;
  if (trans_a && K > 0) {
    at.resize(size_t(M * K));
    transpose(A, K, M, lda, at.data());
    A = at.data();
    lda = K;
  }
  if (trans_b && K > 0) {
    bt.resize(size_t(K * N));
    transpose(B, N, K, ldb, bt.data());
    B = bt.data();
    ldb = N;
  }
  const Kernels k = kernels();
  const bool plain = alpha == 1.0f && beta == 0.0f;
  std::vector<float> prod;
  float* P = C;
  int64_t ldp = ldc;
  if (!plain) {
    prod.resize(size_t(M * N));
    P = prod.data();
    ldp = N;
  }
  const int64_t tm = tile_m(M), tn = tile_n(N);
  const int64_t tiles_m = (M + tm - 1) / tm, tiles_n = (N + tn - 1) / tn;
  parallel_for(0, tiles_m * tiles_n, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t m0 = (t / tiles_n) * tm, n0 = (t % tiles_n) * tn;
      const int64_t mb = std::min(tm, M - m0), nb = std::min(tn, N - n0);
      if (K <= 0) {
        for (int64_t i = 0; i < mb; ++i) std::fill_n(P + (m0 + i) * ldp + n0, nb, 0.0f);
        continue;
      }
      k.gemm(mb, nb, K, A + m0 * lda, lda, B + n0, ldb, P + m0 * ldp + n0, ldp);
      if (!plain)
        for (int64_t i = m0; i < m0 + mb; ++i)
          for (int64_t j = n0; j < n0 + nb; ++j) {
            float& c = C[i * ldc + j];
            const float ab = alpha * P[i * ldp + j];
            c = beta == 0.0f ? ab : ab + beta * c;
          }
    }
  });
}

}  // namespace lowbit::rounding_detail
