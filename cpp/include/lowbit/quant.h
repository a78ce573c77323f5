// Uniform affine quantization of a row-major matrix, per tensor, per row (output channel) or
// per group of columns, at 2..8 bits.
//
//   q    = clamp(round(x / s) + z, 0, 2^b - 1)        codes are always unsigned, 0..2^b-1
//   x^   = s * (q - z)
//
// round() is round-half-to-even (torch.round, np.round). A symmetric grid fixes z = 2^(b-1),
// so the levels are -2^(b-1) .. 2^(b-1)-1 times s. z is an integer stored as float.
//
// Scale layout: `scale` and `zero` are (R, G) row-major with R in {1, rows}; group g of row r
// covers columns [g*cols/G, (g+1)*cols/G). Per tensor: R = G = 1. Per channel: R = rows, G = 1.
#pragma once
#include <cstdint>

#include "lowbit/view.h"

namespace lowbit {

struct QuantParams {
  const float* scale;  // (R, G)
  const float* zero;   // (R, G)
  int64_t R, G;
  int bits;
};

constexpr int kMinBits = 2, kMaxBits = 8;

// Checks shapes and bits; throws std::invalid_argument naming what is wrong.
void check_quant_params(const QuantParams& p, int64_t rows, int64_t cols);

void quantize(ConstMatrixView<float> x, const QuantParams& p, MatrixView<uint8_t> q);
void dequantize(ConstMatrixView<uint8_t> q, const QuantParams& p, MatrixView<float> out);
// dequantize(quantize(x)) without materialising the codes.
void fake_quantize(ConstMatrixView<float> x, const QuantParams& p, MatrixView<float> out);

struct RangeSearch {
  int bits = 4;
  bool symmetric = false;
  float p = 2.4f;          // Lp norm of the error that picks the range; p <= 0 means min-max
  int n_grid = 80;         // candidate ranges: (1 - k * shrink) * [min, max], k = 0..n_grid-1
  float shrink = 0.01f;
};

// For each (R, G) unit, the range [min(x,0), max(x,0)] shrunk by the candidate that minimises
// sum |x - x^|^p over the unit; writes scale and zero (R, G). Ties keep the wider range.
// Returns nothing; units are independent, so the result does not depend on thread count.
void lp_range_search(ConstMatrixView<float> x, const RangeSearch& rs, int64_t R, int64_t G,
                     float* scale, float* zero);

// The error lp_range_search ranks candidates by: sum over x[0..n) of |x - x^|^p in double,
// x^ = (clamp(round(x / s) + z, 0, 2^bits - 1) - z) * s. p == 2 squares in float; 0 < p <= 6
// goes through exp2/log2 polynomials (about 3e-7 relative per term, the same bits on every
// ISA: 16 lanes summed in order, then a fixed tree); other p > 0 use std::pow.
double lp_error(const float* x, int64_t n, float s, float z, int bits, float p);

// Per output channel c: loss[c] = dW_c^T H dW_c with dW (N, K) and H (K, K) symmetric.
// This is the output error of the layer on inputs whose (uncentred) second moment is H.
void hessian_loss(ConstMatrixView<float> dW, ConstMatrixView<float> H, float* loss);

}  // namespace lowbit
