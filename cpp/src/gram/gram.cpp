#include "lowbit/gram.h"

#include <algorithm>
#include <vector>

#include "lowbit/check.h"
#include "lowbit/linalg.h"
#include "lowbit/parallel.h"

namespace lowbit {

void gram_accumulate(ConstMatrixView<float> X, MatrixView<float> H) {
  LOWBIT_CHECK(H.rows == X.cols && H.cols == X.cols,
               "H must be (" << X.cols << ", " << X.cols << "), got (" << H.rows << ", "
                             << H.cols << ")");
  syrk_tn_acc(X, H);
}

void cross_gram_accumulate(ConstMatrixView<float> A, ConstMatrixView<float> B,
                           MatrixView<float> C) {
  LOWBIT_CHECK(A.rows == B.rows && A.cols == B.cols,
               "A and B must have the same shape, got (" << A.rows << ", " << A.cols << ") and ("
                                                         << B.rows << ", " << B.cols << ")");
  LOWBIT_CHECK(C.rows == A.cols && C.cols == B.cols,
               "C must be (" << A.cols << ", " << B.cols << "), got (" << C.rows << ", "
                             << C.cols << ")");
  gemm(A, true, B, false, C, 1.0f, 1.0f);
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
    const int64_t iy0 = oy * g.stride_h - g.pad_h, ix0 = ox * g.stride_w - g.pad_w;
    // Kernel columns that land inside the image for this output column (padding reads 0).
    const int kx_lo = int(std::min<int64_t>(g.kw, ix0 >= 0 ? 0 : (-ix0 + g.dil_w - 1) / g.dil_w));
    const int kx_hi = int(std::max<int64_t>(kx_lo, std::min<int64_t>(g.kw, (g.W - ix0 + g.dil_w - 1) / g.dil_w)));
    float* o = out.row(i);
    for (int64_t c = 0; c < cg; ++c) {
      const float* plane = x + ((n * g.C) + group * cg + c) * g.H * g.W;
      for (int ky = 0; ky < g.kh; ++ky, o += g.kw) {
        const int64_t iy = iy0 + int64_t(ky) * g.dil_h;
        if (iy < 0 || iy >= g.H) {
          for (int kx = 0; kx < g.kw; ++kx) o[kx] = 0.0f;
          continue;
        }
        const float* src = plane + iy * g.W + ix0;
        for (int kx = 0; kx < kx_lo; ++kx) o[kx] = 0.0f;
        for (int kx = kx_lo; kx < kx_hi; ++kx) o[kx] = src[int64_t(kx) * g.dil_w];
        for (int kx = kx_hi; kx < g.kw; ++kx) o[kx] = 0.0f;
      }
    }
  }
}

void conv_gram_accumulate(const float* x, const float* x2, const Conv2dGeometry& g, float* H) {
  check_conv_geometry(g);
  const int64_t d = g.row_len(), rows = g.rows();
  // Tiles of im2col rows keep memory at O(tile * d + d^2) whatever the batch size. A tile is
  // a whole number of GEMM K chunks (linalg.h), so the result is bit-identical to one
  // gram_accumulate over the full im2col matrix; up to 4 chunks while a tile stays under
  // 16 MB.
  const int64_t chunk = kGemmKc * kGemmChunk;
  const int64_t tile = chunk * std::clamp<int64_t>((int64_t(1) << 22) / (d * chunk), 1, 4);
  std::vector<float> a(size_t(std::min(tile, rows) * d)), b(x2 ? a.size() : 0);
  for (int grp = 0; grp < g.groups; ++grp) {
    MatrixView<float> Hg(H + grp * d * d, d, d);
    for (int64_t r0 = 0; r0 < rows; r0 += tile) {
      const int64_t n = std::min(tile, rows - r0);
      MatrixView<float> A(a.data(), n, d), B(b.data(), n, d);
      parallel_for(0, n, 64, [&](int64_t i0, int64_t i1) {
        im2col_rows(x, g, grp, r0 + i0, i1 - i0, MatrixView<float>(A.row(i0), i1 - i0, d));
        if (x2) im2col_rows(x2, g, grp, r0 + i0, i1 - i0, MatrixView<float>(B.row(i0), i1 - i0, d));
      });
      if (x2)
        gemm(A, true, B, false, Hg, 1.0f, 1.0f);
      else
        syrk_tn_acc(A, Hg);
    }
  }
}

}  // namespace lowbit
