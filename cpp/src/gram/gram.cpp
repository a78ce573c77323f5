#include "lowbit/gram.h"

#include <Eigen/Dense>
#include <algorithm>
#include <vector>

#include "lowbit/check.h"
#include "lowbit/parallel.h"

namespace lowbit {

namespace {

using RowMat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using Stride = Eigen::OuterStride<>;
using ConstMap = Eigen::Map<const RowMat, 0, Stride>;
using Map = Eigen::Map<RowMat, 0, Stride>;

// C (m, k) += A^T B over n rows, split into fixed column blocks of C so that each output
// element is reduced by one thread in one order: bit-identical for any thread count.
void tn_accumulate(ConstMatrixView<float> A, ConstMatrixView<float> B, MatrixView<float> C) {
  constexpr int64_t kBlock = 64;
  ConstMap a(A.data, A.rows, A.cols, Stride(A.stride));
  parallel_for(0, B.cols, kBlock, [&](int64_t c0, int64_t c1) {
    ConstMap b(B.data + c0, B.rows, c1 - c0, Stride(B.stride));
    Map c(C.data + c0, C.rows, c1 - c0, Stride(C.stride));
    c.noalias() += a.transpose() * b;
  });
}

}  // namespace

void gram_accumulate(ConstMatrixView<float> X, MatrixView<float> H) {
  LOWBIT_CHECK(H.rows == X.cols && H.cols == X.cols,
               "H must be (" << X.cols << ", " << X.cols << "), got (" << H.rows << ", "
                             << H.cols << ")");
  tn_accumulate(X, X, H);
}

void cross_gram_accumulate(ConstMatrixView<float> A, ConstMatrixView<float> B,
                           MatrixView<float> C) {
  LOWBIT_CHECK(A.rows == B.rows && A.cols == B.cols,
               "A and B must have the same shape, got (" << A.rows << ", " << A.cols << ") and ("
                                                         << B.rows << ", " << B.cols << ")");
  LOWBIT_CHECK(C.rows == A.cols && C.cols == B.cols,
               "C must be (" << A.cols << ", " << B.cols << "), got (" << C.rows << ", "
                             << C.cols << ")");
  tn_accumulate(A, B, C);
}

void check_conv_geometry(const Conv2dGeometry& g) {
  LOWBIT_CHECK(g.N >= 0 && g.C > 0 && g.H > 0 && g.W > 0, "input must be (N, C, H, W) with C, H, W > 0");
  LOWBIT_CHECK(g.kh > 0 && g.kw > 0 && g.stride_h > 0 && g.stride_w > 0 && g.dil_h > 0 &&
                   g.dil_w > 0 && g.pad_h >= 0 && g.pad_w >= 0,
               "kernel, stride and dilation must be positive and padding non-negative");
  LOWBIT_CHECK(g.groups > 0 && g.C % g.groups == 0,
               "groups=" << g.groups << " must divide the " << g.C << " input channels");
  LOWBIT_CHECK(g.out_h() > 0 && g.out_w() > 0, "the convolution output is empty");
}

void im2col_rows(const float* x, const Conv2dGeometry& g, int group, int64_t row0, int64_t nrows,
                 MatrixView<float> out) {
  const int64_t oh = g.out_h(), ow = g.out_w(), cg = g.C / g.groups;
  for (int64_t i = 0; i < nrows; ++i) {
    const int64_t row = row0 + i;
    const int64_t n = row / (oh * ow), oy = (row / ow) % oh, ox = row % ow;
    float* o = out.row(i);
    for (int64_t c = 0; c < cg; ++c) {
      const float* plane = x + ((n * g.C) + group * cg + c) * g.H * g.W;
      for (int ky = 0; ky < g.kh; ++ky) {
        const int64_t iy = oy * g.stride_h - g.pad_h + ky * g.dil_h;
        for (int kx = 0; kx < g.kw; ++kx) {
          const int64_t ix = ox * g.stride_w - g.pad_w + kx * g.dil_w;
          *o++ = (iy >= 0 && iy < g.H && ix >= 0 && ix < g.W) ? plane[iy * g.W + ix] : 0.0f;
        }
      }
    }
  }
}

void conv_gram_accumulate(const float* x, const float* x2, const Conv2dGeometry& g, float* H) {
  check_conv_geometry(g);
  const int64_t d = g.row_len(), rows = g.rows();
  // Tiles of im2col rows keep memory at O(tile * d + d^2) whatever the batch size.
  const int64_t tile = std::max<int64_t>(64, std::min<int64_t>(4096, (1 << 20) / d));
  std::vector<float> a(size_t(tile * d)), b(x2 ? size_t(tile * d) : 0);
  for (int grp = 0; grp < g.groups; ++grp) {
    MatrixView<float> Hg(H + grp * d * d, d, d);
    for (int64_t r0 = 0; r0 < rows; r0 += tile) {
      const int64_t n = std::min(tile, rows - r0);
      MatrixView<float> A(a.data(), n, d);
      im2col_rows(x, g, grp, r0, n, A);
      if (x2) {
        MatrixView<float> B(b.data(), n, d);
        im2col_rows(x2, g, grp, r0, n, B);
        tn_accumulate(A, B, Hg);
      } else {
        tn_accumulate(A, A, Hg);
      }
    }
  }
}

}  // namespace lowbit
