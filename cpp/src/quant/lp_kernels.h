// Internal: the Lp error of one candidate range over a run of values, the inner loop of
// lp_range_search, one implementation per instruction set (lp_ref.cpp, lp_avx2.cpp,
// lp_avx512.cpp). All of them compute the same bits; lp_ref.cpp states the arithmetic.
//
// The ISA files are compiled with -m flags, so they include nothing but this header and
// intrinsics (no STL: inline code shared with baseline files could be emitted with AVX-512
// instructions and kept by the linker for everyone).
#pragma once
#include <cstdint>

namespace lowbit::lp_detail {

// acc[c % 16] += |x_c - x^_c|^p for c in [0, n), in order, in double, for
// x^ = (clamp(round(x * inv_s) + z, 0, qmax) - z) * s: the 16 lanes of a running sum that
// lp_lanes_sum combines by a fixed tree. A run split into pieces whose lengths are multiples
// of 16 gives the same lanes as one call. p == 2: each term is (e * e) in float; otherwise
// e^p by the exp2/log2 polynomials below, to about 3e-7 relative (powf: 6e-8), for
// 0 < p <= kMaxFastP. Terms are >= 0, so a partial lane sum never exceeds the full one.
using LpAccFn = void (*)(const float* x, int64_t n, float inv_s, float s, float z, float qmax,
                         float p, double* acc);

void lp_acc_scalar(const float* x, int64_t n, float inv_s, float s, float z, float qmax, float p,
                   double* acc);
void lp_acc_avx2(const float* x, int64_t n, float inv_s, float s, float z, float qmax, float p,
                 double* acc);
void lp_acc_avx512(const float* x, int64_t n, float inv_s, float s, float z, float qmax, float p,
                   double* acc);

// (((a0 + a8) + (a4 + a12)) + ((a2 + a10) + (a6 + a14))) + (... odd lanes ...): b[i] = a[i] +
// a[i + 8], c[i] = b[i] + b[i + 4], then (c0 + c2) + (c1 + c3). Monotone in every lane.
double lp_lanes_sum(const double* acc);

// p * log2(e) stays inside the double exponent range for every float e when p <= 6.
constexpr float kMaxFastP = 6.0f;

// Round to nearest even by adding and removing 1.5 * 2^23 (exact for |v| <= 2^22).
constexpr float kMagic = 12582912.0f;
constexpr float kSqrt2 = 1.41421356f;

// log2(1 + t) ~= t * P(t) for t in [sqrt(1/2) - 1, sqrt(2) - 1], P of degree 8 (Horner from
// the top, float multiply then float add). Fitted in double on Chebyshev nodes, rounded to
// float: |error| < 6e-8 absolute with the float evaluation.
constexpr float kLog2P[9] = {0x1.715476p+0f,  -0x1.715476p-1f, 0x1.ec73e0p-2f,
                             -0x1.715946p-2f, 0x1.26cfb8p-2f,  -0x1.e9df04p-3f,
                             0x1.ba9caap-3f,  -0x1.a548fcp-3f, 0x1.f702acp-4f};
// 2^f ~= Q(f) for f in [-1/2, 1/2], degree 6: relative error < 1e-7 with float evaluation.
constexpr float kExp2Q[7] = {0x1.000000p+0f,  0x1.62e430p-1f,  0x1.ebfbdap-3f, 0x1.c6aed6p-5f,
                             0x1.3b2dfep-7f, 0x1.5f44f0p-10f, 0x1.41a6fep-13f};

// p split as p_hi + p_lo with p_hi holding 12 significant bits, so p_hi * E is exact in float
// for every exponent |E| < 2^11.
inline float p_high(float p) {
  uint32_t u = __builtin_bit_cast(uint32_t, p) & 0xFFFFF000u;
  return __builtin_bit_cast(float, u);
}

}  // namespace lowbit::lp_detail
