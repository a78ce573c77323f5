#include "matmul.h"

#include <Eigen/Dense>
#include <algorithm>

#include "lowbit/parallel.h"

namespace lowbit::rounding_detail {

namespace {

using RowMat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using Stride = Eigen::OuterStride<>;
using ConstMap = Eigen::Map<const RowMat, 0, Stride>;
using Map = Eigen::Map<RowMat, 0, Stride>;

// Tile edge of C: a function of the shape only, so every element of C is reduced over the
// whole K by one Eigen call, in the same order whatever the thread count.
int64_t tile_of(int64_t n) { return n <= 192 ? n : 128; }

}  // namespace

void matmul(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
            const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C,
            int64_t ldc) {
  if (M <= 0 || N <= 0) return;
  const int64_t tm = tile_of(M), tn = tile_of(N);
  const int64_t tiles_m = (M + tm - 1) / tm, tiles_n = (N + tn - 1) / tn;
  parallel_for(0, tiles_m * tiles_n, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t m0 = (t / tiles_n) * tm, n0 = (t % tiles_n) * tn;
      const int64_t mb = std::min(tm, M - m0), nb = std::min(tn, N - n0);
      Map c(C + m0 * ldc + n0, mb, nb, Stride(ldc));
      if (beta == 0.0f) c.setZero();
      else if (beta != 1.0f) c *= beta;
      if (K <= 0) continue;
      // op(A) rows m0.. and op(B) columns n0..
      if (!trans_a && !trans_b) {
        ConstMap a(A + m0 * lda, mb, K, Stride(lda));
        ConstMap b(B + n0, K, nb, Stride(ldb));
        c.noalias() += alpha * (a * b);
      } else if (!trans_a && trans_b) {
        ConstMap a(A + m0 * lda, mb, K, Stride(lda));
        ConstMap b(B + n0 * ldb, nb, K, Stride(ldb));
        c.noalias() += alpha * (a * b.transpose());
      } else if (trans_a && !trans_b) {
        ConstMap a(A + m0, K, mb, Stride(lda));
        ConstMap b(B + n0, K, nb, Stride(ldb));
        c.noalias() += alpha * (a.transpose() * b);
      } else {
        ConstMap a(A + m0, K, mb, Stride(lda));
        ConstMap b(B + n0 * ldb, nb, K, Stride(ldb));
        c.noalias() += alpha * (a.transpose() * b.transpose());
      }
    }
  });
}

}  // namespace lowbit::rounding_detail
