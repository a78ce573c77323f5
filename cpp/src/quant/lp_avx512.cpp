// AVX-512 Lp error kernel: lp_ref.cpp's arithmetic on 16 lanes (see there for the steps).
// Raw pointers and intrinsics only (see lp_kernels.h).
#include <immintrin.h>

#include "lp_kernels.h"

namespace lowbit::lp_detail {

namespace {

struct Consts {
  __m512 inv, s, z, q, p, phi, plo, magic, zero, lo_clamp, hi_clamp;
  __m512i abs_mask;
  bool square;
};

// The terms of 16 elements (lanes outside `valid` give 0), as doubles for lanes 0-7 and 8-15.
inline void terms16(const Consts& k, const float* x, __mmask16 valid, __m512d* out_lo,
                    __m512d* out_hi) {
  const __m512 xv = _mm512_maskz_loadu_ps(valid, x);
  const __m512 v = _mm512_min_ps(_mm512_max_ps(_mm512_mul_ps(xv, k.inv), k.lo_clamp), k.hi_clamp);
  const __m512 r = _mm512_sub_ps(_mm512_add_ps(v, k.magic), k.magic);
  const __m512 q = _mm512_min_ps(_mm512_max_ps(_mm512_add_ps(r, k.z), k.zero), k.q);
  __m512 e = _mm512_sub_ps(xv, _mm512_mul_ps(_mm512_sub_ps(q, k.z), k.s));
  e = _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(e), k.abs_mask));
  if (k.square) {
    const __m512 t = _mm512_mul_ps(e, e);
    *out_lo = _mm512_maskz_cvtps_pd(__mmask8(valid & 0xFF), _mm512_castps512_ps256(t));
    *out_hi = _mm512_maskz_cvtps_pd(__mmask8(valid >> 8), _mm512_extractf32x8_ps(t, 1));
    return;
  }
  const __mmask16 keep = _mm512_mask_cmp_ps_mask(valid, e, k.zero, _CMP_NEQ_OQ);
  const __mmask16 tiny = _mm512_cmp_ps_mask(e, _mm512_set1_ps(0x1p-126f), _CMP_LT_OQ);
  e = _mm512_mask_mul_ps(e, tiny, e, _mm512_set1_ps(0x1p32f));
  const __m512i b = _mm512_castps_si512(e);
  __m512i E = _mm512_sub_epi32(_mm512_srli_epi32(b, 23), _mm512_set1_epi32(127));
  E = _mm512_mask_sub_epi32(E, tiny, E, _mm512_set1_epi32(32));
  __m512 m = _mm512_castsi512_ps(_mm512_or_si512(
      _mm512_and_si512(b, _mm512_set1_epi32(0x007FFFFF)), _mm512_set1_epi32(0x3F800000)));
  const __mmask16 big = _mm512_cmp_ps_mask(m, _mm512_set1_ps(kSqrt2), _CMP_GT_OQ);
  m = _mm512_mask_mul_ps(m, big, m, _mm512_set1_ps(0.5f));
  E = _mm512_mask_add_epi32(E, big, E, _mm512_set1_epi32(1));
  const __m512 t = _mm512_sub_ps(m, _mm512_set1_ps(1.0f));
  __m512 poly = _mm512_set1_ps(kLog2P[8]);
  for (int i = 7; i >= 0; --i)
    poly = _mm512_add_ps(_mm512_mul_ps(poly, t), _mm512_set1_ps(kLog2P[i]));
  const __m512 l = _mm512_mul_ps(t, poly);
  const __m512 Ef = _mm512_cvtepi32_ps(E);
  const __m512 h = _mm512_mul_ps(k.phi, Ef);
  const __m512 I = _mm512_sub_ps(_mm512_add_ps(h, k.magic), k.magic);
  const __m512 F = _mm512_sub_ps(h, I);
  const __m512 rr =
      _mm512_add_ps(_mm512_add_ps(F, _mm512_mul_ps(k.plo, Ef)), _mm512_mul_ps(k.p, l));
  const __m512 J = _mm512_sub_ps(_mm512_add_ps(rr, k.magic), k.magic);
  const __m512 f = _mm512_sub_ps(rr, J);
  __m512 term = _mm512_set1_ps(kExp2Q[6]);
  for (int i = 5; i >= 0; --i)
    term = _mm512_add_ps(_mm512_mul_ps(term, f), _mm512_set1_ps(kExp2Q[i]));
  const __m512i kk = _mm512_add_epi32(_mm512_cvtps_epi32(I), _mm512_cvtps_epi32(J));
  const __m512i bias = _mm512_set1_epi64(1023);
  const __m512i elo = _mm512_slli_epi64(
      _mm512_add_epi64(_mm512_cvtepi32_epi64(_mm512_castsi512_si256(kk)), bias), 52);
  const __m512i ehi = _mm512_slli_epi64(
      _mm512_add_epi64(_mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64(kk, 1)), bias), 52);
  const __m512d dlo = _mm512_cvtps_pd(_mm512_castps512_ps256(term));
  const __m512d dhi = _mm512_cvtps_pd(_mm512_extractf32x8_ps(term, 1));
  *out_lo = _mm512_maskz_mul_pd(__mmask8(keep & 0xFF), dlo, _mm512_castsi512_pd(elo));
  *out_hi = _mm512_maskz_mul_pd(__mmask8(keep >> 8), dhi, _mm512_castsi512_pd(ehi));
}

}  // namespace

void lp_acc_avx512(const float* x, int64_t n, float inv_s, float s, float z, float qmax, float p,
                   double* acc) {
  Consts k;
  k.inv = _mm512_set1_ps(inv_s), k.s = _mm512_set1_ps(s), k.z = _mm512_set1_ps(z);
  k.q = _mm512_set1_ps(qmax), k.p = _mm512_set1_ps(p);
  const float p_hi = p_high(p);
  k.phi = _mm512_set1_ps(p_hi), k.plo = _mm512_set1_ps(p - p_hi);
  k.magic = _mm512_set1_ps(kMagic), k.zero = _mm512_setzero_ps();
  k.lo_clamp = _mm512_set1_ps(-1024.0f), k.hi_clamp = _mm512_set1_ps(1024.0f);
  k.abs_mask = _mm512_set1_epi32(0x7FFFFFFF);
  k.square = p == 2.0f;
  __m512d acc_lo = _mm512_loadu_pd(acc), acc_hi = _mm512_loadu_pd(acc + 8);
  int64_t c = 0;
  // Four independent blocks per step (their long polynomial chains overlap), added to the
  // lanes in element order.
  for (; c + 64 <= n; c += 64) {
    __m512d t[8];
    for (int j = 0; j < 4; ++j) terms16(k, x + c + 16 * j, __mmask16(0xFFFF), &t[2 * j], &t[2 * j + 1]);
    for (int j = 0; j < 4; ++j) {
      acc_lo = _mm512_add_pd(acc_lo, t[2 * j]);
      acc_hi = _mm512_add_pd(acc_hi, t[2 * j + 1]);
    }
  }
  for (; c < n; c += 16) {
    const __mmask16 valid =
        n - c >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << unsigned(n - c)) - 1u);
    __m512d lo, hi;
    terms16(k, x + c, valid, &lo, &hi);
    acc_lo = _mm512_add_pd(acc_lo, lo);
    acc_hi = _mm512_add_pd(acc_hi, hi);
  }
  _mm512_storeu_pd(acc, acc_lo);
  _mm512_storeu_pd(acc + 8, acc_hi);
}

}  // namespace lowbit::lp_detail
