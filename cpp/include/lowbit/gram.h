// Streamed second-moment statistics of layer inputs, the O(d^2)-memory summary that the
// reconstruction methods optimise against: H = sum_i x_i x_i^T (Gram) and
// C = sum_i xq_i x_i^T (cross-Gram of quantized-network inputs xq and full-precision inputs x).
// Every call ADDS into its output, so a calibration set is streamed batch by batch.
#pragma once
#include <cstdint>

#include "lowbit/view.h"

namespace lowbit {

// H (d, d) += X^T X for X (n, d) rows, through ssyrk_tn_acc (linalg.h): only the upper
// triangle of H is read and computed, the lower one is overwritten with its mirror. H must be
// symmetric on entry (it is when it starts at zero and is only fed by these functions).
void gram_accumulate(ConstMatrixView<float> X, MatrixView<float> H);

// C (d, d) += A^T B for A, B (n, d); with A the quantized-network rows and B the FP rows,
// C[i][j] = sum_n a_ni b_nj.
void cross_gram_accumulate(ConstMatrixView<float> A, ConstMatrixView<float> B,
                           MatrixView<float> C);

// The geometry of an nn.Conv2d input; its im2col rows for group g have length
// d = (C / groups) * kh * kw, ordered (channel, ky, kx) like the flattened weight.
struct Conv2dGeometry {
  int64_t N, C, H, W;
  int kh, kw, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, groups;
  int64_t out_h() const { return (H + 2 * pad_h - dil_h * (kh - 1) - 1) / stride_h + 1; }
  int64_t out_w() const { return (W + 2 * pad_w - dil_w * (kw - 1) - 1) / stride_w + 1; }
  int64_t row_len() const { return (C / groups) * kh * kw; }
  int64_t rows() const { return N * out_h() * out_w(); }
};

// Checks the geometry (positive sizes, groups divide C, non-empty output).
void check_conv_geometry(const Conv2dGeometry& g);

// im2col rows [row0, row0 + nrows) of group `group` of the NCHW input x into out (nrows, d).
// Row index = (n * out_h + oy) * out_w + ox; padding reads as zero.
void im2col_rows(const float* x, const Conv2dGeometry& g, int group, int64_t row0, int64_t nrows,
                 MatrixView<float> out);

// H (groups, d, d) += per-group Gram of the im2col rows of x (NCHW), streamed in tiles of
// rows; bit-identical to gram_accumulate over the whole im2col matrix (same symmetry rule).
// With x2 given, the cross-Gram instead: H[g] += rows(x)^T rows(x2), all of H computed.
void conv_gram_accumulate(const float* x, const float* x2, const Conv2dGeometry& g, float* H);

}  // namespace lowbit
