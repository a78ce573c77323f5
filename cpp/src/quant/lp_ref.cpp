// The portable Lp error kernel, and the statement of what every variant computes. Every step
// is one float (or double) operation rounded on its own (-ffp-contract=off), in this order;
// the SIMD variants do the same operations lane by lane, so all give the same bits.
//
// e^p for e > 0, p != 2:
//   e < 2^-126 (subnormal): e *= 2^32, E -= 32 (exact)
//   e = m * 2^E with m in [1, 2); m > sqrt(2): m *= 1/2, E += 1
//   t = m - 1 (exact), l = t * P(t)                              ~ log2(m)
//   h = p_hi * E (exact), I = round(h), F = h - I (exact)
//   r = (F + p_lo * E) + p * l,  J = round(r), f = r - J           p log2(e) = I + J + f
//   e^p = double(Q(f)) * 2^(I + J)                                  (exact scaling in double)
// e == 0 gives 0. Keeping the large integer part I out of the float sum is what holds the
// error near 1e-7 relative for tiny e (a single float p * log2(e) would lose 2^-17).
#include "lp_kernels.h"

namespace lowbit::lp_detail {

namespace {

inline float max_ps(float a, float b) { return a > b ? a : b; }  // as _mm*_max_ps
inline float min_ps(float a, float b) { return a < b ? a : b; }  // as _mm*_min_ps

inline float abs_error(float x, float inv_s, float s, float z, float qmax) {
  const float v = min_ps(max_ps(x * inv_s, -1024.0f), 1024.0f);
  const float r = (v + kMagic) - kMagic;
  const float q = min_ps(max_ps(r + z, 0.0f), qmax);
  const float e = x - (q - z) * s;
  return __builtin_bit_cast(float, __builtin_bit_cast(uint32_t, e) & 0x7FFFFFFFu);
}

inline double pow_term(float e, float p, float p_hi, float p_lo) {
  if (e == 0.0f) return 0.0;
  int adj = 0;
  if (e < 0x1p-126f) {
    e = e * 0x1p32f;
    adj = 32;
  }
  const uint32_t b = __builtin_bit_cast(uint32_t, e);
  int E = int(b >> 23) - 127 - adj;
  float m = __builtin_bit_cast(float, (b & 0x007FFFFFu) | 0x3F800000u);
  if (m > kSqrt2) {
    m = m * 0.5f;
    E = E + 1;
  }
  const float t = m - 1.0f;
  float poly = kLog2P[8];
  for (int i = 7; i >= 0; --i) poly = poly * t + kLog2P[i];
  const float l = t * poly;
  const float Ef = float(E);
  const float h = p_hi * Ef;
  const float I = (h + kMagic) - kMagic;
  const float F = h - I;
  const float r = (F + p_lo * Ef) + p * l;
  const float J = (r + kMagic) - kMagic;
  const float f = r - J;
  float q = kExp2Q[6];
  for (int i = 5; i >= 0; --i) q = q * f + kExp2Q[i];
  const int64_t k = int64_t(int(I) + int(J));
  const double scale = __builtin_bit_cast(double, uint64_t(k + 1023) << 52);
  return double(q) * scale;
}

}  // namespace

void lp_acc_scalar(const float* x, int64_t n, float inv_s, float s, float z, float qmax, float p,
                   double* acc) {
  const float p_hi = p_high(p), p_lo = p - p_hi;
  for (int64_t c = 0; c < n; ++c) {
    const float e = abs_error(x[c], inv_s, s, z, qmax);
    acc[c & 15] += p == 2.0f ? double(e * e) : pow_term(e, p, p_hi, p_lo);
  }
}

double lp_lanes_sum(const double* acc) {
  double b[8], c4[4];
  for (int i = 0; i < 8; ++i) b[i] = acc[i] + acc[i + 8];
  for (int i = 0; i < 4; ++i) c4[i] = b[i] + b[i + 4];
  return (c4[0] + c4[2]) + (c4[1] + c4[3]);
}

}  // namespace lowbit::lp_detail
