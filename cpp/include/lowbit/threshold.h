// Threshold activation quantizers: non-uniform input thresholds, uniform integer output levels.
// One family shared by AQuant (learned rounding borders, methods.md section 2) and N2UQ
// (learnable threshold quantizer LTQ with the G-STE backward, methods.md section 4).
//
// Activation layout (every entry here): x is (rows, inner) row-major and row r belongs to
// channel r % C. An NCHW conv input is (N*C, H*W); an (M, C) linear input is (M*C, 1); with
// C = 1 (per tensor) any 2-D view works. Parameters are per channel, (C, ...) row-major.
//
// Inference form of both, for n = 2^b - 1 thresholds t_{c,0} <= ... <= t_{c,n-1} in x units:
//
//   code = #{ k : x >= t_{c,k} }  in 0..n,      x^ = s * (code - z)
//
// (ties: x exactly at a threshold rounds up; N2UQ's own code uses '>', which differs on a
// set of measure zero.)
//
// Backward reductions (border / interval / offset / scale gradients) are computed per work
// unit (channel c, block of outer rows of a size fixed by the shape alone) into double partials
// and summed in unit order, so the result is bit-identical for any thread count.
#pragma once
#include <cstdint>

#include "lowbit/view.h"

namespace lowbit {

// ---- AQuant: learned rounding borders -------------------------------------------------------
//
// With v = x/s + z (z an integer zero point, 0 for unsigned inputs) and qmax = 2^b - 1:
//   v < 0: code 0;  v >= qmax: code qmax;  otherwise k = floor(v), f = v - k and
//   hard: code = k + [f >= B_{c,k}]          soft: q = k + sigmoid((f - B_{c,k}) / tau)
//   out = s * (q - z).
// Borders B (C, n), n = qmax, one per channel and level k = 0..qmax-1. Inference thresholds:
// t_{c,k} = s * (k + B_{c,k} - z). Borders in [eps, 1 - eps] keep them strictly increasing.
//
// Backward (LSQ rule for x and s, exact derivative of the soft border for B):
//   inside the range: dout/dx = 1, dout/ds = q - v, dout/dB_{c,k} = -s * h (1 - h) / tau
//   outside:          dout/dx = 0, dout/ds = q - z, dout/dB = 0
// with h = sigmoid((f - B)/tau) and q the forward value (hard or soft). In hard mode the border
// gradient is the soft one at the same tau (hard forward, sigmoid straight-through backward).

struct BorderParams {
  int bits = 4;
  int64_t C = 1;        // channels (1 = per tensor)
  float scale = 1.0f;   // step s > 0
  float zero = 0.0f;    // integer zero point
  float tau = 0.2f;     // temperature of the soft border, > 0
  bool hard = false;    // hard decisions in the forward pass
};

// bits: 2..8 everywhere (n = 2^b - 1 = 3..255 thresholds).

// Border tables from their parameterisation (methods.md section 2.3), eps in (0, 0.5):
//   table  (affine = false): param (C, n) = delta;        B = clamp(0.5 + delta, eps, 1 - eps)
//   affine (affine = true):  param (C, 2) = (alpha, beta);
//                            B_{c,k} = clamp(0.5 + (alpha_c (k + 0.5) / n + beta_c), eps, 1 - eps)
// The affine slope is normalised by n (alpha = n times methods.md's slope, the change of the
// border across the whole range), so an optimiser step moves every border by about its size.
void border_table(const float* param, int64_t C, int bits, bool affine, float eps, float* B);
// gparam (C, n or 2) = chain rule of gB (C, n) through border_table, where a clamped entry
// passes its gradient only when a descent step (-gradient) moves it back inside
// [eps, 1 - eps] (a one-sided straight-through clamp: a border pushed past the range by a noisy
// step can come back, which a plain clamp's zero gradient would forbid).
void border_table_backward(const float* param, const float* gB, int64_t C, int bits, bool affine,
                           float eps, float* gparam);

void border_quant_forward(ConstMatrixView<float> x, const float* B, const BorderParams& p,
                          MatrixView<float> out);
// gx (rows, inner); gB (C, n) and gscale (1) are overwritten (not accumulated into).
void border_quant_backward(ConstMatrixView<float> x, ConstMatrixView<float> gy, const float* B,
                           const BorderParams& p, MatrixView<float> gx, float* gB, float* gscale);

// ---- N2UQ: learnable threshold quantizer (LTQ) with the G-STE backward --------------------
//
// Per channel c: offset start_c, n = 2^b - 1 interval lengths a_{c,i} (floored at a_min) and an
// input scale s1_c (floored at s1_min); per tensor: output step s2 and integer zero point z.
//   u = s1 x,  d_0 = start,  d_i = d_{i-1} + a_i,  T_i = d_{i-1} + a_i / 2   (i = 1..n)
//   code = #{ i : u >= T_i },  out = s2 * (code - z)
// G-STE backward: the gradient of the piecewise-linear surrogate s2 * (g(u) - z), with
// g(u) = (i - 1) + (u - d_{i-1}) / a_i on segment i = [d_{i-1}, d_i), 0 below d_0, n above d_n
// (the expectation of stochastic rounding inside each segment). dout/ds2 = code - z.
// Floored parameters get zero gradient (as torch.clamp).

struct LtqParams {
  int bits = 2;
  int64_t C = 1;
  float out_scale = 1.0f;  // s2 > 0
  float zero = 0.0f;       // integer zero point of the output codes
  float a_min = 1e-3f;     // floor of the interval lengths, > 0
  float s1_min = 1e-3f;    // floor of the input scale, > 0
};

void ltq_forward(ConstMatrixView<float> x, const float* start, const float* a, const float* s1,
                 const LtqParams& p, MatrixView<float> out);
// gx (rows, inner); gstart (C), ga (C, n), gs1 (C), gout_scale (1) are overwritten.
void ltq_backward(ConstMatrixView<float> x, ConstMatrixView<float> gy, const float* start,
                  const float* a, const float* s1, const LtqParams& p, MatrixView<float> gx,
                  float* gstart, float* ga, float* gs1, float* gout_scale);
// Inference thresholds in x units, (C, n): T_{c,i} / s1_c.
void ltq_thresholds(const float* start, const float* a, const float* s1, const LtqParams& p,
                    float* thresholds);

// ---- The shared inference form -------------------------------------------------------------
// codes (rows, inner) uint8 = #{k : x >= t_{c,k}} for thresholds t (C, n), n = 2^b - 1, each
// row non-decreasing (checked). This is the per-channel multi-threshold requantize step.
void threshold_quantize(ConstMatrixView<float> x, const float* t, int64_t C, int bits,
                        MatrixView<uint8_t> codes);

}  // namespace lowbit
