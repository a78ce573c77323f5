// Matrix products with packed low-bit weights (pack.h): y (M, N) = x (M, K) W^T + bias.
//
// Two paths, each with a GEMV (M = 1), small-batch (M <= 16, weights streamed once) and GEMM
// regime inside the same register-tiled kernels, OpenMP over 16-row tiles of W, chosen at run
// time among AVX-512 VNNI, AVX2 and scalar (cpu.h: active_isa(); avx512 without VNNI runs the
// AVX2 kernels). Every variant gives the same bits as the scalar *_ref kernels, at any thread
// count: the floating-point operations below happen in the same order everywhere.
//
// Regimes of the weight-only path: up to 3 rows, each block of codes is decoded in registers
// and used at once; from 4 rows on, a tile is decoded once per chunk of 128 columns into an L1
// buffer of (q - z) floats that every activation row then reads (the weights are streamed and
// decoded once for all M rows). It is bound by fp32 FMAs from a few rows on (M*N*K of them,
// one per weight and row, in the order below); the int8 path has 4x the MACs per instruction.
//
// Weight-only path (qmatmul_f32): fp32 activations, the weight decoded to (q - z) exactly.
//   per row n, activation row m:
//     y = 0
//     for each group g:  a[0..3] = 0
//                        for k in g:  a[k % 4] = fma(q[n][k] - z[n][g], x[m][k], a[k % 4])
//                        y = fma(s[n][g], (a[0] + a[1]) + (a[2] + a[3]), y)
//     out[m][n] = y + bias[n]
//   This is the fake-quant product sum_k ((q - z) s) x_k with the scale applied per group: it
//   differs from it only by float rounding (|err| <~ K * eps * sum_k |w_k x_k|).
//
// Int8-activation path (qmatmul_a8): activations become integers a[m][k] = xq[m][k] + d[m] with
// xq int8 and a scale sx[m], in one of two ways (ActQuant):
//   dynamic   per row: sx = max_k |x| / 127, xq = clamp(round(x / sx), -127, 127), d = 0
//             (an approximation of x: opt-in, like torch's dynamic int8 Linear);
//   static    the model's per-tensor activation quantizer (scale s, integer zero zx, bits <= 8):
//             c = clamp(round(x / s) + zx, 0, 2^bits - 1), a = c - zx exactly, stored as
//             xq = c - off with off = clamp(zx, 2^bits - 128, 128) so xq fits int8, d = off - zx.
//             The product then is the fake-quant layer's exactly, up to float rounding of the
//             final scaling: every sum below is an exact integer.
//   per row n, activation row m (I is int32; u8 codes x s8 activations is vpdpbusd's form):
//     y = 0
//     for each group g:  I = sum_k q[n][k] xq[m][k] - z[n][g] * sum_k xq[m][k]
//                        y = fma(s[n][g], float(I), y)
//     if d[m] != 0:      y = fma(float(d[m]), row_sums[n], y)    (row_sums: packed_row_sums)
//     out[m][n] = y * sx[m] + bias[n]        (a multiply, then an add)
//   Exact integer sums need group_cols * qmax * 255 < 2^31 (checked): K <= 33024 per channel
//   at 8 bits, far more at fewer bits.
#pragma once
#include <cstdint>

#include "lowbit/pack.h"
#include "lowbit/view.h"

namespace lowbit {

// y (M, N) = x (M, K) W^T + bias, fp32 activations. bias may be null.
void qmatmul_f32(const PackedMatrix& w, ConstMatrixView<float> x, const float* bias,
                 MatrixView<float> y);

struct ActQuant {
  bool dynamic = true;  // per-row symmetric int8; otherwise the static per-tensor quantizer
  float scale = 1.0f;   // static: the quantizer's scale s (> 0)
  float zero = 0.0f;    // static: its zero point zx (an integer in 0..2^bits-1)
  int bits = 8;         // static: its bits (2..8)
};

// Checks an ActQuant (scale > 0 and finite, zero integer in range, bits in 2..8).
void check_act_quant(const ActQuant& aq);

// row_sums[n] = sum_g s[n][g] * float(sum_k (q[n][k] - z[n][g])), accumulated with fma over g
// in order: the constant the static path needs when d != 0. out has N entries.
void packed_row_sums(const PackedMatrix& w, float* out);

// y (M, N) = A(x) W^T + bias on the int8 path above. row_sums may be null (computed here when
// needed); bias may be null.
void qmatmul_a8(const PackedMatrix& w, ConstMatrixView<float> x, const ActQuant& aq,
                const float* row_sums, const float* bias, MatrixView<float> y);

}  // namespace lowbit
