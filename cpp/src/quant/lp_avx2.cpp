// AVX2 Lp error kernel: lp_ref.cpp's arithmetic, 16 elements per step as two 8-lane halves
// (see there for the steps). Raw pointers and intrinsics only (see lp_kernels.h).
#include <immintrin.h>

#include "lp_kernels.h"

namespace lowbit::lp_detail {

namespace {

struct Consts {
  __m256 inv, s, z, q, p, phi, plo, magic, zero, lo_clamp, hi_clamp;
  __m256i abs_mask;
};

// Terms of 8 elements (lanes past `valid` give 0) as two 4-double halves.
inline void terms8(const Consts& k, const float* x, int valid, bool square, __m256d* out_lo,
                   __m256d* out_hi) {
  __m256 xv;
  if (valid >= 8) {
    xv = _mm256_loadu_ps(x);
  } else {
    const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    xv = _mm256_maskload_ps(x, _mm256_cmpgt_epi32(_mm256_set1_epi32(valid), idx));
  }
  const __m256 vmask = _mm256_castsi256_ps(_mm256_cmpgt_epi32(
      _mm256_set1_epi32(valid), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)));
  const __m256 v =
      _mm256_min_ps(_mm256_max_ps(_mm256_mul_ps(xv, k.inv), k.lo_clamp), k.hi_clamp);
  const __m256 r = _mm256_sub_ps(_mm256_add_ps(v, k.magic), k.magic);
  const __m256 q = _mm256_min_ps(_mm256_max_ps(_mm256_add_ps(r, k.z), k.zero), k.q);
  __m256 e = _mm256_sub_ps(xv, _mm256_mul_ps(_mm256_sub_ps(q, k.z), k.s));
  e = _mm256_castsi256_ps(_mm256_and_si256(_mm256_castps_si256(e), k.abs_mask));
  __m256d dlo, dhi;
  __m256 keep = vmask;
  if (square) {
    const __m256 t = _mm256_mul_ps(e, e);
    dlo = _mm256_cvtps_pd(_mm256_castps256_ps128(t));
    dhi = _mm256_cvtps_pd(_mm256_extractf128_ps(t, 1));
  } else {
    keep = _mm256_and_ps(vmask, _mm256_cmp_ps(e, k.zero, _CMP_NEQ_OQ));
    const __m256 tiny = _mm256_cmp_ps(e, _mm256_set1_ps(0x1p-126f), _CMP_LT_OQ);
    e = _mm256_blendv_ps(e, _mm256_mul_ps(e, _mm256_set1_ps(0x1p32f)), tiny);
    const __m256i b = _mm256_castps_si256(e);
    __m256i E = _mm256_sub_epi32(_mm256_srli_epi32(b, 23), _mm256_set1_epi32(127));
    E = _mm256_sub_epi32(E, _mm256_and_si256(_mm256_castps_si256(tiny), _mm256_set1_epi32(32)));
    __m256 m = _mm256_castsi256_ps(_mm256_or_si256(
        _mm256_and_si256(b, _mm256_set1_epi32(0x007FFFFF)), _mm256_set1_epi32(0x3F800000)));
    const __m256 big = _mm256_cmp_ps(m, _mm256_set1_ps(kSqrt2), _CMP_GT_OQ);
    m = _mm256_blendv_ps(m, _mm256_mul_ps(m, _mm256_set1_ps(0.5f)), big);
    E = _mm256_add_epi32(E, _mm256_and_si256(_mm256_castps_si256(big), _mm256_set1_epi32(1)));
    const __m256 t = _mm256_sub_ps(m, _mm256_set1_ps(1.0f));
    __m256 poly = _mm256_set1_ps(kLog2P[8]);
    for (int i = 7; i >= 0; --i)
      poly = _mm256_add_ps(_mm256_mul_ps(poly, t), _mm256_set1_ps(kLog2P[i]));
    const __m256 l = _mm256_mul_ps(t, poly);
    const __m256 Ef = _mm256_cvtepi32_ps(E);
    const __m256 h = _mm256_mul_ps(k.phi, Ef);
    const __m256 I = _mm256_sub_ps(_mm256_add_ps(h, k.magic), k.magic);
    const __m256 F = _mm256_sub_ps(h, I);
    const __m256 rr =
        _mm256_add_ps(_mm256_add_ps(F, _mm256_mul_ps(k.plo, Ef)), _mm256_mul_ps(k.p, l));
    const __m256 J = _mm256_sub_ps(_mm256_add_ps(rr, k.magic), k.magic);
    const __m256 f = _mm256_sub_ps(rr, J);
    __m256 qv = _mm256_set1_ps(kExp2Q[6]);
    for (int i = 5; i >= 0; --i)
      qv = _mm256_add_ps(_mm256_mul_ps(qv, f), _mm256_set1_ps(kExp2Q[i]));
    const __m256i kk = _mm256_add_epi32(_mm256_cvtps_epi32(I), _mm256_cvtps_epi32(J));
    const __m256i bias = _mm256_set1_epi64x(1023);
    const __m256i elo = _mm256_slli_epi64(
        _mm256_add_epi64(_mm256_cvtepi32_epi64(_mm256_castsi256_si128(kk)), bias), 52);
    const __m256i ehi = _mm256_slli_epi64(
        _mm256_add_epi64(_mm256_cvtepi32_epi64(_mm256_extracti128_si256(kk, 1)), bias), 52);
    dlo = _mm256_mul_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(qv)), _mm256_castsi256_pd(elo));
    dhi = _mm256_mul_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(qv, 1)), _mm256_castsi256_pd(ehi));
  }
  // Widen the float lane mask to the double lanes and zero the terms it drops.
  const __m128i km = _mm_castps_si128(_mm256_castps256_ps128(keep));
  const __m128i kh = _mm_castps_si128(_mm256_extractf128_ps(keep, 1));
  *out_lo = _mm256_and_pd(dlo, _mm256_castsi256_pd(_mm256_cvtepi32_epi64(km)));
  *out_hi = _mm256_and_pd(dhi, _mm256_castsi256_pd(_mm256_cvtepi32_epi64(kh)));
}

}  // namespace

void lp_acc_avx2(const float* x, int64_t n, float inv_s, float s, float z, float qmax, float p,
                 double* acc) {
  Consts k;
  k.inv = _mm256_set1_ps(inv_s), k.s = _mm256_set1_ps(s), k.z = _mm256_set1_ps(z);
  k.q = _mm256_set1_ps(qmax), k.p = _mm256_set1_ps(p);
  const float p_hi = p_high(p);
  k.phi = _mm256_set1_ps(p_hi), k.plo = _mm256_set1_ps(p - p_hi);
  k.magic = _mm256_set1_ps(kMagic), k.zero = _mm256_setzero_ps();
  k.lo_clamp = _mm256_set1_ps(-1024.0f), k.hi_clamp = _mm256_set1_ps(1024.0f);
  k.abs_mask = _mm256_set1_epi32(0x7FFFFFFF);
  const bool square = p == 2.0f;
  // acc0..acc3: lanes 0-3, 4-7, 8-11, 12-15 of the 16-lane scheme.
  __m256d acc0 = _mm256_loadu_pd(acc), acc1 = _mm256_loadu_pd(acc + 4),
          acc2 = _mm256_loadu_pd(acc + 8), acc3 = _mm256_loadu_pd(acc + 12);
  for (int64_t c = 0; c < n; c += 16) {
    const int64_t left = n - c;
    __m256d t0, t1, t2, t3;
    terms8(k, x + c, int(left >= 8 ? 8 : left), square, &t0, &t1);
    if (left > 8) {
      terms8(k, x + c + 8, int(left >= 16 ? 8 : left - 8), square, &t2, &t3);
    } else {
      t2 = t3 = _mm256_setzero_pd();
    }
    acc0 = _mm256_add_pd(acc0, t0);
    acc1 = _mm256_add_pd(acc1, t1);
    acc2 = _mm256_add_pd(acc2, t2);
    acc3 = _mm256_add_pd(acc3, t3);
  }
  _mm256_storeu_pd(acc, acc0);
  _mm256_storeu_pd(acc + 4, acc1);
  _mm256_storeu_pd(acc + 8, acc2);
  _mm256_storeu_pd(acc + 12, acc3);
}

}  // namespace lowbit::lp_detail
