// AVX2 kernels for packed weights (also what AVX-512 without VNNI runs). A ymm holds half a
// tile's block: rows 8h..8h+7 x 4 columns (pack.h), so each tile is done in two halves.
//   int8 path   vpmaddubsw(codes u8, 4 activations s8 broadcast) + vpmaddwd(1): codes <= 15
//               keep the int16 pair sums exact; 8-bit codes go as two nibbles (x1 and x16).
//   fp32 path   byte j of each lane -> float 2^23 + q (shuffle/shift, or 2^23), minus 2^23 + z.
// Operation order is qmatmul.h's (checked bit for bit against qmatmul_ref.cpp).
#include <immintrin.h>

#include "qmatmul_kernels.h"

namespace lowbit::kernels {

namespace {

constexpr int vectors_per_block(int bits) { return bits == 8 ? 1 : bits == 4 ? 2 : 4; }
constexpr int block_bytes(int bits) { return bits == 3 ? 96 : 64; }
constexpr int kMaxRowsF32 = 2;
constexpr int kMaxRowsA8 = 4;

inline int32_t load_i32(const void* p) {
  int32_t v;
  __builtin_memcpy(&v, p, 4);
  return v;
}

// W[i] = codes of columns k0 + 4i + j for rows 8h + r in byte 4r + j.
template <int Bits>
inline void unpack(const uint8_t* p, int h, __m256i* W) {
  const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 32 * h));
  if constexpr (Bits == 8) {
    W[0] = v;
  } else if constexpr (Bits == 4) {
    const __m256i m = _mm256_set1_epi8(0x0F);
    W[0] = _mm256_and_si256(v, m);
    W[1] = _mm256_and_si256(_mm256_srli_epi16(v, 4), m);
  } else {
    const __m256i m = _mm256_set1_epi8(0x03);
    W[0] = _mm256_and_si256(v, m);
    W[1] = _mm256_and_si256(_mm256_srli_epi16(v, 2), m);
    W[2] = _mm256_and_si256(_mm256_srli_epi16(v, 4), m);
    W[3] = _mm256_and_si256(_mm256_srli_epi16(v, 6), m);
    if constexpr (Bits == 3) {
      // bit q of the 32-bit plane word -> byte q: replicate bytes, test one bit per byte.
      const __m256i spread = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,
                                              2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
      const __m256i sel = _mm256_set1_epi64x(0x8040201008040201LL);
      const __m256i four = _mm256_set1_epi8(4);
      _Pragma("GCC unroll 16")
      for (int i = 0; i < 4; ++i) {
        const __m256i b = _mm256_shuffle_epi8(_mm256_set1_epi32(load_i32(p + 64 + 8 * i + 4 * h)), spread);
        const __m256i set = _mm256_cmpeq_epi8(_mm256_and_si256(b, sel), sel);
        W[i] = _mm256_add_epi8(W[i], _mm256_and_si256(set, four));
      }
    }
  }
}

inline int rows_left(const QmmArgs& a, int64_t t, int h) {
  const int64_t left = a.N - t * 16 - 8 * h;
  return left >= 8 ? 8 : left < 0 ? 0 : int(left);
}

inline __m256 load_rows(const float* p, int n) {
  if (n == 8) return _mm256_loadu_ps(p);
  alignas(32) float tmp[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  for (int i = 0; i < n; ++i) tmp[i] = p[i];
  return _mm256_load_ps(tmp);
}

inline void store_rows(float* p, __m256 v, int n) {
  if (n == 8) {
    _mm256_storeu_ps(p, v);
    return;
  }
  alignas(32) float tmp[8];
  _mm256_store_ps(tmp, v);
  for (int i = 0; i < n; ++i) p[i] = tmp[i];
}

// ---- int8 activations -------------------------------------------------------------------

template <int Bits, int MR>
void a8_half(const QmmArgs& a, int64_t t, int h, int64_t m0) {
  constexpr int NV = vectors_per_block(Bits), KB = 4 * NV, BB = block_bytes(Bits);
  const uint8_t* tile = a.codes + t * a.tile_bytes;
  const int64_t nblk = a.gcols / KB;
  const __m256i ones = _mm256_set1_epi16(1), sixteen = _mm256_set1_epi16(16);
  const __m256i nib = _mm256_set1_epi8(0x0F);
  __m256 y[MR];
  _Pragma("GCC unroll 16")
  for (int m = 0; m < MR; ++m) y[m] = _mm256_setzero_ps();
  for (int64_t g = 0; g < a.G; ++g) {
    __m256i acc[MR];
    _Pragma("GCC unroll 16")
    for (int m = 0; m < MR; ++m) acc[m] = _mm256_setzero_si256();
    const uint8_t* p = tile + g * nblk * BB;
    const int8_t* xg = a.xq + m0 * a.Kp + g * a.gcols;
    for (int64_t b = 0; b < nblk; ++b) {
      __m256i W[NV];
      unpack<Bits>(p, h, W);
      _Pragma("GCC unroll 16")
      for (int i = 0; i < NV; ++i)
        _Pragma("GCC unroll 16")
        for (int m = 0; m < MR; ++m) {
          const __m256i xv = _mm256_set1_epi32(load_i32(xg + m * a.Kp + 4 * i));
          if constexpr (Bits == 8) {
            const __m256i lo = _mm256_maddubs_epi16(_mm256_and_si256(W[i], nib), xv);
            const __m256i hi = _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(W[i], 4), nib), xv);
            acc[m] = _mm256_add_epi32(acc[m], _mm256_add_epi32(_mm256_madd_epi16(lo, ones),
                                                               _mm256_madd_epi16(hi, sixteen)));
          } else {
            acc[m] = _mm256_add_epi32(acc[m], _mm256_madd_epi16(_mm256_maddubs_epi16(W[i], xv), ones));
          }
        }
      p += BB;
      xg += KB;
    }
    const int64_t u = (t * a.G + g) * 16 + 8 * h;
    const __m256i zv = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(a.zeros + u)));
    const __m256 s = _mm256_loadu_ps(a.scales + u);
    _Pragma("GCC unroll 16")
    for (int m = 0; m < MR; ++m) {
      const __m256i I = _mm256_sub_epi32(acc[m], _mm256_mullo_epi32(zv, _mm256_set1_epi32(a.xsum[(m0 + m) * a.G + g])));
      y[m] = _mm256_fmadd_ps(s, _mm256_cvtepi32_ps(I), y[m]);
    }
  }
  const int n = rows_left(a, t, h);
  const int64_t n0 = t * 16 + 8 * h;
  _Pragma("GCC unroll 16")
  for (int m = 0; m < MR; ++m) {
    const int32_t d = a.xoff[m0 + m];
    __m256 v = y[m];
    if (d != 0) v = _mm256_fmadd_ps(_mm256_set1_ps(float(d)), load_rows(a.row_sums + n0, n), v);
    v = _mm256_mul_ps(v, _mm256_set1_ps(a.xscale[m0 + m]));
    if (a.bias) v = _mm256_add_ps(v, load_rows(a.bias + n0, n));
    store_rows(a.y + (m0 + m) * a.ldy + n0, v, n);
  }
}

// ---- fp32 activations -------------------------------------------------------------------

// The four bytes of each 32-bit lane of unpacked codes as exact floats 2^23 + q (or-ing the
// code into the mantissa of 2^23); subtracting 2^23 + z then gives q - z exactly.
struct CodeDecoder {
  const __m256i magic = _mm256_set1_epi32(0x4B000000);  // float 2^23
  const __m256i low_byte = _mm256_set1_epi32(0xFF);
  const __m256i lane4 = _mm256_setr_epi32(0, 4, 8, 12, 0, 4, 8, 12);
  const __m256i sel1 = _mm256_add_epi32(_mm256_set1_epi32(int(0x80808001u)), lane4);
  const __m256i sel2 = _mm256_add_epi32(_mm256_set1_epi32(int(0x80808002u)), lane4);

  void operator()(__m256i w, __m256* wf) const {
    wf[0] = _mm256_castsi256_ps(_mm256_or_si256(_mm256_and_si256(w, low_byte), magic));
    wf[1] = _mm256_castsi256_ps(_mm256_or_si256(_mm256_shuffle_epi8(w, sel1), magic));
    wf[2] = _mm256_castsi256_ps(_mm256_or_si256(_mm256_shuffle_epi8(w, sel2), magic));
    wf[3] = _mm256_castsi256_ps(_mm256_or_si256(_mm256_srli_epi32(w, 24), magic));
  }
};

template <int Bits, int MR>
void f32_half(const QmmArgs& a, int64_t t, int h, int64_t m0) {
  constexpr int NV = vectors_per_block(Bits), KB = 4 * NV, BB = block_bytes(Bits);
  const uint8_t* tile = a.codes + t * a.tile_bytes;
  const int64_t nblk = a.gcols / KB;
  const CodeDecoder decode;
  __m256 y[MR];
  _Pragma("GCC unroll 16")
  for (int m = 0; m < MR; ++m) y[m] = _mm256_setzero_ps();
  for (int64_t g = 0; g < a.G; ++g) {
    const int64_t u = (t * a.G + g) * 16 + 8 * h;
    const __m256 bias_z = _mm256_castsi256_ps(_mm256_or_si256(
        _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(a.zeros + u))), decode.magic));
    __m256 acc[MR][4];
    _Pragma("GCC unroll 16")
    for (int m = 0; m < MR; ++m)
      _Pragma("GCC unroll 16")
      for (int j = 0; j < 4; ++j) acc[m][j] = _mm256_setzero_ps();
    const uint8_t* p = tile + g * nblk * BB;
    const float* xg = a.x + m0 * a.ldx + g * a.gcols;
    for (int64_t b = 0; b < nblk; ++b) {
      __m256i W[NV];
      unpack<Bits>(p, h, W);
      _Pragma("GCC unroll 16")
      for (int i = 0; i < NV; ++i) {
        __m256 wf[4];
        decode(W[i], wf);
        _Pragma("GCC unroll 16")
        for (int j = 0; j < 4; ++j) {
          const __m256 d = _mm256_sub_ps(wf[j], bias_z);  // q - z, exact
          _Pragma("GCC unroll 16")
          for (int m = 0; m < MR; ++m)
            acc[m][j] = _mm256_fmadd_ps(d, _mm256_set1_ps(xg[m * a.ldx + 4 * i + j]), acc[m][j]);
        }
      }
      p += BB;
      xg += KB;
    }
    const __m256 s = _mm256_loadu_ps(a.scales + u);
    _Pragma("GCC unroll 16")
    for (int m = 0; m < MR; ++m) {
      const __m256 sum = _mm256_add_ps(_mm256_add_ps(acc[m][0], acc[m][1]),
                                       _mm256_add_ps(acc[m][2], acc[m][3]));
      y[m] = _mm256_fmadd_ps(s, sum, y[m]);
    }
  }
  const int n = rows_left(a, t, h);
  const int64_t n0 = t * 16 + 8 * h;
  _Pragma("GCC unroll 16")
  for (int m = 0; m < MR; ++m) {
    __m256 v = y[m];
    if (a.bias) v = _mm256_add_ps(v, load_rows(a.bias + n0, n));
    store_rows(a.y + (m0 + m) * a.ldy + n0, v, n);
  }
}

// Many rows (M >= 4): each half tile is decoded once per chunk of up to kChunk columns into
// an L1 buffer of floats that every block of kMR rows then reads; column k of row m still goes
// into acc[m][k % 4] in k order (qmatmul.h), JB of the four chains at a time.
constexpr int kChunk = 128;    // columns decoded at once (4 KiB of floats)
constexpr int kRowBlock = 32;  // rows whose accumulators live in the L1 buffers
constexpr int kMR = 4;         // rows per register block

template <int MR>
inline void fma_chunk(const float* D, int ncols, const float* x, int64_t ldx, float* accm) {
  constexpr int JB = MR >= 4 ? 2 : 4;  // >= 8 independent FMA chains where the rows allow
  _Pragma("GCC unroll 4")
  for (int j0 = 0; j0 < 4; j0 += JB) {
    __m256 acc[MR][JB];
    _Pragma("GCC unroll 8")
    for (int m = 0; m < MR; ++m)
      _Pragma("GCC unroll 4")
      for (int jj = 0; jj < JB; ++jj) acc[m][jj] = _mm256_loadu_ps(accm + (m * 4 + j0 + jj) * 8);
    for (int k = j0; k < ncols; k += 4) {
      _Pragma("GCC unroll 4")
      for (int jj = 0; jj < JB; ++jj) {
        const __m256 d = _mm256_load_ps(D + (k + jj) * 8);
        _Pragma("GCC unroll 8")
        for (int m = 0; m < MR; ++m)
          acc[m][jj] = _mm256_fmadd_ps(d, _mm256_set1_ps(x[m * ldx + k + jj]), acc[m][jj]);
      }
    }
    _Pragma("GCC unroll 8")
    for (int m = 0; m < MR; ++m)
      _Pragma("GCC unroll 4")
      for (int jj = 0; jj < JB; ++jj) _mm256_storeu_ps(accm + (m * 4 + j0 + jj) * 8, acc[m][jj]);
  }
}

template <int Bits>
void f32_half_many(const QmmArgs& a, int64_t t, int h) {
  constexpr int NV = vectors_per_block(Bits), KB = 4 * NV, BB = block_bytes(Bits);
  alignas(32) float D[kChunk * 8];
  alignas(32) float accm[kRowBlock * 4 * 8];
  alignas(32) float ym[kRowBlock * 8];
  const uint8_t* tile = a.codes + t * a.tile_bytes;
  const int64_t nblk = a.gcols / KB;
  const CodeDecoder decode;
  const int n = rows_left(a, t, h);
  const int64_t n0 = t * 16 + 8 * h;
  for (int64_t mb = 0; mb < a.M; mb += kRowBlock) {
    const int nm = int(a.M - mb < kRowBlock ? a.M - mb : kRowBlock);
    for (int m = 0; m < nm; ++m) _mm256_store_ps(ym + m * 8, _mm256_setzero_ps());
    for (int64_t g = 0; g < a.G; ++g) {
      const int64_t u = (t * a.G + g) * 16 + 8 * h;
      const __m256 bias_z = _mm256_castsi256_ps(_mm256_or_si256(
          _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(a.zeros + u))), decode.magic));
      for (int i = 0; i < nm * 4; ++i) _mm256_store_ps(accm + i * 8, _mm256_setzero_ps());
      const uint8_t* p = tile + g * nblk * BB;
      for (int64_t c0 = 0; c0 < a.gcols; c0 += kChunk) {
        const int ncols = int(a.gcols - c0 < kChunk ? a.gcols - c0 : kChunk);
        for (int k = 0; k < ncols; k += KB) {
          __m256i W[NV];
          unpack<Bits>(p, h, W);
          _Pragma("GCC unroll 16")
          for (int i = 0; i < NV; ++i) {
            __m256 wf[4];
            decode(W[i], wf);
            _Pragma("GCC unroll 4")
            for (int j = 0; j < 4; ++j)
              _mm256_store_ps(D + (k + 4 * i + j) * 8, _mm256_sub_ps(wf[j], bias_z));  // q - z, exact
          }
          p += BB;
        }
        const float* xc = a.x + mb * a.ldx + g * a.gcols + c0;
        int m = 0;
        for (; m + kMR <= nm; m += kMR) fma_chunk<kMR>(D, ncols, xc + m * a.ldx, a.ldx, accm + m * 32);
        switch (nm - m) {
          case 1: fma_chunk<1>(D, ncols, xc + m * a.ldx, a.ldx, accm + m * 32); break;
          case 2: fma_chunk<2>(D, ncols, xc + m * a.ldx, a.ldx, accm + m * 32); break;
          case 3: fma_chunk<3>(D, ncols, xc + m * a.ldx, a.ldx, accm + m * 32); break;
          default: break;
        }
      }
      const __m256 s = _mm256_loadu_ps(a.scales + u);
      for (int m = 0; m < nm; ++m) {
        const float* am = accm + m * 32;
        const __m256 sum = _mm256_add_ps(_mm256_add_ps(_mm256_load_ps(am), _mm256_load_ps(am + 8)),
                                         _mm256_add_ps(_mm256_load_ps(am + 16), _mm256_load_ps(am + 24)));
        _mm256_store_ps(ym + m * 8, _mm256_fmadd_ps(s, sum, _mm256_load_ps(ym + m * 8)));
      }
    }
    for (int m = 0; m < nm; ++m) {
      __m256 v = _mm256_load_ps(ym + m * 8);
      if (a.bias) v = _mm256_add_ps(v, load_rows(a.bias + n0, n));
      store_rows(a.y + (mb + m) * a.ldy + n0, v, n);
    }
  }
}

template <int Bits>
void a8_tiles(const QmmArgs& a, int64_t t0, int64_t t1) {
  for (int64_t t = t0; t < t1; ++t)
    for (int h = 0; h < 2; ++h) {
      if (rows_left(a, t, h) == 0) continue;
      for (int64_t m0 = 0; m0 < a.M; m0 += kMaxRowsA8) {
        switch (a.M - m0 >= kMaxRowsA8 ? kMaxRowsA8 : int(a.M - m0)) {
          case 1: a8_half<Bits, 1>(a, t, h, m0); break;
          case 2: a8_half<Bits, 2>(a, t, h, m0); break;
          case 3: a8_half<Bits, 3>(a, t, h, m0); break;
          default: a8_half<Bits, 4>(a, t, h, m0); break;
        }
      }
    }
}

template <int Bits>
void f32_tiles(const QmmArgs& a, int64_t t0, int64_t t1) {
  for (int64_t t = t0; t < t1; ++t)
    for (int h = 0; h < 2; ++h) {
      if (rows_left(a, t, h) == 0) continue;
      if (a.M >= 4) {
        f32_half_many<Bits>(a, t, h);
        continue;
      }
      for (int64_t m0 = 0; m0 < a.M; m0 += kMaxRowsF32) {
        if (a.M - m0 >= 2)
          f32_half<Bits, 2>(a, t, h, m0);
        else
          f32_half<Bits, 1>(a, t, h, m0);
      }
    }
}

}  // namespace

void qmm_a8_avx2(const QmmArgs& a, int64_t t0, int64_t t1) {
  switch (a.bits) {
    case 2: a8_tiles<2>(a, t0, t1); break;
    case 3: a8_tiles<3>(a, t0, t1); break;
    case 4: a8_tiles<4>(a, t0, t1); break;
    default: a8_tiles<8>(a, t0, t1); break;
  }
}

void qmm_f32_avx2(const QmmArgs& a, int64_t t0, int64_t t1) {
  switch (a.bits) {
    case 2: f32_tiles<2>(a, t0, t1); break;
    case 3: f32_tiles<3>(a, t0, t1); break;
    case 4: f32_tiles<4>(a, t0, t1); break;
    default: f32_tiles<8>(a, t0, t1); break;
  }
}

void quant_act_avx2(const ActArgs& a, int64_t m0, int64_t m1) {
  const float lo_s = a.dynamic ? -127.0f : 0.0f, hi_s = a.dynamic ? 127.0f : float(a.qmax);
  const __m256 lo = _mm256_set1_ps(lo_s), hi = _mm256_set1_ps(hi_s);
  const __m256i off = _mm256_set1_epi32(a.off);
  const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
  for (int64_t m = m0; m < m1; ++m) {
    const float* x = a.x + m * a.ldx;
    int8_t* xq = a.xq + m * a.Kp;
    float sx = a.scale, zero = a.zero;
    const int64_t K8 = a.K / 8 * 8;
    if (a.dynamic) {
      __m256 amax = _mm256_setzero_ps();
      for (int64_t k = 0; k < K8; k += 8)
        amax = _mm256_max_ps(amax, _mm256_and_ps(_mm256_loadu_ps(x + k), absmask));
      alignas(32) float lanes[8];
      _mm256_store_ps(lanes, amax);
      float mx = 0.0f;
      for (int i = 0; i < 8; ++i) mx = lanes[i] > mx ? lanes[i] : mx;
      for (int64_t k = K8; k < a.K; ++k) {
        const float v = x[k] < 0 ? -x[k] : x[k];
        mx = v > mx ? v : mx;
      }
      sx = mx > 0.0f ? mx / 127.0f : 1.0f;
      zero = 0.0f;
    }
    const __m256 vs = _mm256_set1_ps(sx), vz = _mm256_set1_ps(zero);
    for (int64_t k = 0; k < K8; k += 8) {
      __m256 q = _mm256_round_ps(_mm256_div_ps(_mm256_loadu_ps(x + k), vs),
                                 _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      if (!a.dynamic) q = _mm256_add_ps(q, vz);
      q = _mm256_min_ps(_mm256_max_ps(q, lo), hi);
      __m256i qi = _mm256_cvtps_epi32(q);
      if (!a.dynamic) qi = _mm256_sub_epi32(qi, off);
      const __m128i w16 = _mm_packs_epi32(_mm256_castsi256_si128(qi), _mm256_extracti128_si256(qi, 1));
      _mm_storel_epi64(reinterpret_cast<__m128i*>(xq + k), _mm_packs_epi16(w16, w16));
    }
    for (int64_t k = K8; k < a.K; ++k) {  // same operations, one lane at a time
      __m128 q = _mm_round_ss(_mm_setzero_ps(), _mm_div_ss(_mm_set_ss(x[k]), _mm_set_ss(sx)),
                              _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      if (!a.dynamic) q = _mm_add_ss(q, _mm_set_ss(zero));
      q = _mm_min_ss(_mm_max_ss(q, _mm_set_ss(lo_s)), _mm_set_ss(hi_s));
      xq[k] = int8_t(_mm_cvtss_si32(q) - (a.dynamic ? 0 : a.off));
    }
    for (int64_t k = a.K; k < a.Kp; ++k) xq[k] = 0;
    for (int64_t g = 0; g < a.G; ++g) {
      int32_t s = 0;
      for (int64_t k = g * a.gcols; k < (g + 1) * a.gcols; ++k) s += xq[k];
      a.xsum[m * a.G + g] = s;
    }
    a.xscale[m] = sx;
    a.xoff[m] = a.dynamic ? 0 : a.off - int(a.zero);
  }
}

}  // namespace lowbit::kernels
