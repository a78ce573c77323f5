// AVX-512 VNNI (+VBMI) kernels for packed weights. One zmm of unpacked codes is 16 rows x 4
// columns (pack.h), so:
//   int8 path   vpdpbusd(acc, codes u8, 4 activations s8 broadcast) feeds 16 rows per step;
//   fp32 path   a shift and a vpternlogd turn byte j of each lane into the float 2^23 + q, and
//               subtracting 2^23 + z leaves q - z exactly; one FMA per column per 16 rows.
// Operation order is qmatmul.h's (checked bit for bit against qmatmul_ref.cpp).
#include <immintrin.h>

#include "qmatmul_kernels.h"

namespace lowbit::kernels {

namespace {

constexpr int vectors_per_block(int bits) { return bits == 8 ? 1 : bits == 4 ? 2 : 4; }
constexpr int block_bytes(int bits) { return bits == 3 ? 96 : 64; }
constexpr int kMaxRowsA8 = 8;
constexpr int kPrefetch = 4096;  // bytes ahead in the code stream (1 KiB: 20 % slower at W4, batch 1)

inline int32_t load_i32(const void* p) {
  int32_t v;
  __builtin_memcpy(&v, p, 4);
  return v;
}

inline __mmask64 load_mask64(const void* p) {
  unsigned long long v;
  __builtin_memcpy(&v, p, 8);
  return _cvtu64_mask64(v);
}

// W[i] = codes of columns k0 + 4i + j in byte 4r + j (r = row in tile), as unsigned bytes.
template <int Bits>
inline void unpack(const uint8_t* p, __m512i* W) {
  const __m512i v = _mm512_loadu_si512(p);
  if constexpr (Bits == 8) {
    W[0] = v;
  } else if constexpr (Bits == 4) {
    const __m512i m = _mm512_set1_epi8(0x0F);
    W[0] = _mm512_and_si512(v, m);
    W[1] = _mm512_and_si512(_mm512_srli_epi16(v, 4), m);
  } else {
    const __m512i m = _mm512_set1_epi8(0x03);
    W[0] = _mm512_and_si512(v, m);
    W[1] = _mm512_and_si512(_mm512_srli_epi16(v, 2), m);
    W[2] = _mm512_and_si512(_mm512_srli_epi16(v, 4), m);
    W[3] = _mm512_and_si512(_mm512_srli_epi16(v, 6), m);
    if constexpr (Bits == 3) {
      const __m512i four = _mm512_set1_epi8(4);
      _Pragma("GCC unroll 16")
      for (int i = 0; i < 4; ++i)
        W[i] = _mm512_mask_add_epi8(W[i], load_mask64(p + 64 + 8 * i), W[i], four);
    }
  }
}

inline __mmask16 row_mask(const QmmArgs& a, int64_t t) {
  const int64_t left = a.N - t * 16;
  return left >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << left) - 1);
}

// ---- int8 activations -------------------------------------------------------------------

template <int Bits, int MR>
void a8_tile(const QmmArgs& a, int64_t t, int64_t m0) {
  constexpr int NV = vectors_per_block(Bits), KB = 4 * NV, BB = block_bytes(Bits);
  constexpr int NACC = MR >= 4 ? 1 : MR >= 2 ? 2 : 4;  // independent dpbusd chains per row
  const uint8_t* tile = a.codes + t * a.tile_bytes;
  const int64_t nblk = a.gcols / KB;
  __m512 y[MR];
  _Pragma("GCC unroll 16")
  for (int m = 0; m < MR; ++m) y[m] = _mm512_setzero_ps();
  for (int64_t g = 0; g < a.G; ++g) {
    __m512i acc[NACC][MR];
    _Pragma("GCC unroll 16")
    for (int c = 0; c < NACC; ++c)
      _Pragma("GCC unroll 16")
      for (int m = 0; m < MR; ++m) acc[c][m] = _mm512_setzero_si512();
    const uint8_t* p = tile + g * nblk * BB;
    const int8_t* xg = a.xq + m0 * a.Kp + g * a.gcols;
    for (int64_t b = 0; b < nblk; ++b) {
      _mm_prefetch(reinterpret_cast<const char*>(p + kPrefetch), _MM_HINT_T0);
      __m512i W[NV];
      unpack<Bits>(p, W);
      _Pragma("GCC unroll 16")
      for (int i = 0; i < NV; ++i) {
        const int c = int((b * NV + i) % NACC);
        _Pragma("GCC unroll 16")
        for (int m = 0; m < MR; ++m)
          acc[c][m] = _mm512_dpbusd_epi32(acc[c][m], W[i],
                                          _mm512_set1_epi32(load_i32(xg + m * a.Kp + 4 * i)));
      }
      p += BB;
      xg += KB;
    }
    const int64_t u = (t * a.G + g) * 16;
    const __m512i zv = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(a.zeros + u)));
    const __m512 s = _mm512_loadu_ps(a.scales + u);
    _Pragma("GCC unroll 16")
    for (int m = 0; m < MR; ++m) {
      __m512i I = acc[0][m];
      _Pragma("GCC unroll 16")
      for (int c = 1; c < NACC; ++c) I = _mm512_add_epi32(I, acc[c][m]);
      I = _mm512_sub_epi32(I, _mm512_mullo_epi32(zv, _mm512_set1_epi32(a.xsum[(m0 + m) * a.G + g])));
      y[m] = _mm512_fmadd_ps(s, _mm512_cvtepi32_ps(I), y[m]);
    }
  }
  const __mmask16 mask = row_mask(a, t);
  _Pragma("GCC unroll 16")
  for (int m = 0; m < MR; ++m) {
    const int32_t d = a.xoff[m0 + m];
    __m512 v = y[m];
    if (d != 0)
      v = _mm512_fmadd_ps(_mm512_set1_ps(float(d)), _mm512_maskz_loadu_ps(mask, a.row_sums + t * 16), v);
    v = _mm512_mul_ps(v, _mm512_set1_ps(a.xscale[m0 + m]));
    if (a.bias) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, a.bias + t * 16));
    _mm512_mask_storeu_ps(a.y + (m0 + m) * a.ldy + t * 16, mask, v);
  }
}

// ---- fp32 activations -------------------------------------------------------------------
//
// Decoding. A code field of WD bits at bit P of a 32-bit lane (P + WD <= 23) becomes the float
// 2^(23-P) + q in one vpternlogd: (lane & field mask) | exponent of 2^(23-P), since bit P of
// the mantissa then weighs 1. Subtracting the float 2^(23-P) + z leaves q - z exactly. So a
// column of 16 rows costs a ternlog and a subtraction; fields at bit 16 and above are first
// brought down by one shift of the whole lane (shared by half the fields of a block).

template <int P, int WD>
inline __m512 field(__m512i w) {
  static_assert(P + WD <= 23, "the field must stay inside the mantissa");
  return _mm512_castsi512_ps(_mm512_ternarylogic_epi32(
      w, _mm512_set1_epi32(((1 << WD) - 1) << P), _mm512_set1_epi32((150 - P) << 23), 0xEA));
}

// Bit positions whose biases 2^(23-P) + z a block needs: index i is P = kStep * i.
template <int Bits> constexpr int kFields = Bits == 8 ? 2 : Bits == 4 ? 4 : Bits == 3 ? 3 : 8;
template <int Bits> constexpr int kStep = Bits == 8 ? 8 : Bits == 4 ? 4 : Bits == 3 ? 8 : 2;

template <int Bits>
inline void group_biases(const uint8_t* zeros16, __m512* bz) {
  const __m512i z = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(zeros16)));
  _Pragma("GCC unroll 16")
  for (int i = 0; i < kFields<Bits>; ++i) {
    const int P = kStep<Bits> * i;
    bz[i] = _mm512_castsi512_ps(_mm512_or_si512(_mm512_sllv_epi32(z, _mm512_set1_epi32(P)),
                                                _mm512_set1_epi32((150 - P) << 23)));
  }
}

// d[c] = q - z of block column c (k0 + c) for the tile's 16 rows, as floats.
template <int Bits>
inline void decode_block(const uint8_t* p, const __m512* bz, __m512* d) {
  if constexpr (Bits == 3) {
    __m512i U[4];
    unpack<3>(p, U);  // byte 4r + j = code of column 4i + j, hi bit included
    _Pragma("GCC unroll 16")
    for (int i = 0; i < 4; ++i) {
      d[4 * i + 0] = _mm512_sub_ps(field<0, 3>(U[i]), bz[0]);
      d[4 * i + 1] = _mm512_sub_ps(field<8, 3>(U[i]), bz[1]);
      d[4 * i + 2] = _mm512_sub_ps(field<16, 3>(U[i]), bz[2]);
      d[4 * i + 3] = _mm512_sub_ps(field<8, 3>(_mm512_srli_epi32(U[i], 16)), bz[1]);
    }
  } else {
    const __m512i v = _mm512_loadu_si512(p);
    const __m512i h = _mm512_srli_epi32(v, 16);  // bytes 2, 3 of each lane at bits 0..15
    if constexpr (Bits == 8) {
      d[0] = _mm512_sub_ps(field<0, 8>(v), bz[0]);
      d[1] = _mm512_sub_ps(field<8, 8>(v), bz[1]);
      d[2] = _mm512_sub_ps(field<0, 8>(h), bz[0]);
      d[3] = _mm512_sub_ps(field<8, 8>(h), bz[1]);
    } else if constexpr (Bits == 4) {  // byte j: column j (low nibble), 4 + j (high)
      d[0] = _mm512_sub_ps(field<0, 4>(v), bz[0]);
      d[4] = _mm512_sub_ps(field<4, 4>(v), bz[1]);
      d[1] = _mm512_sub_ps(field<8, 4>(v), bz[2]);
      d[5] = _mm512_sub_ps(field<12, 4>(v), bz[3]);
      d[2] = _mm512_sub_ps(field<0, 4>(h), bz[0]);
      d[6] = _mm512_sub_ps(field<4, 4>(h), bz[1]);
      d[3] = _mm512_sub_ps(field<8, 4>(h), bz[2]);
      d[7] = _mm512_sub_ps(field<12, 4>(h), bz[3]);
    } else {  // 2 bits: byte j, bits 2i: column 4i + j
      d[0] = _mm512_sub_ps(field<0, 2>(v), bz[0]);
      d[4] = _mm512_sub_ps(field<2, 2>(v), bz[1]);
      d[8] = _mm512_sub_ps(field<4, 2>(v), bz[2]);
      d[12] = _mm512_sub_ps(field<6, 2>(v), bz[3]);
      d[1] = _mm512_sub_ps(field<8, 2>(v), bz[4]);
      d[5] = _mm512_sub_ps(field<10, 2>(v), bz[5]);
      d[9] = _mm512_sub_ps(field<12, 2>(v), bz[6]);
      d[13] = _mm512_sub_ps(field<14, 2>(v), bz[7]);
      d[2] = _mm512_sub_ps(field<0, 2>(h), bz[0]);
      d[6] = _mm512_sub_ps(field<2, 2>(h), bz[1]);
      d[10] = _mm512_sub_ps(field<4, 2>(h), bz[2]);
      d[14] = _mm512_sub_ps(field<6, 2>(h), bz[3]);
      d[3] = _mm512_sub_ps(field<8, 2>(h), bz[4]);
      d[7] = _mm512_sub_ps(field<10, 2>(h), bz[5]);
      d[11] = _mm512_sub_ps(field<12, 2>(h), bz[6]);
      d[15] = _mm512_sub_ps(field<14, 2>(h), bz[7]);
    }
  }
}

inline void store_rows(const QmmArgs& a, int64_t t, int64_t m, __m512 v, __mmask16 mask) {
  if (a.bias) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, a.bias + t * 16));
  _mm512_mask_storeu_ps(a.y + m * a.ldy + t * 16, mask, v);
}

// Few rows (M <= 3): each block is decoded in registers and used at once.
template <int Bits, int MR>
void f32_tile(const QmmArgs& a, int64_t t, int64_t m0) {
  constexpr int NV = vectors_per_block(Bits), KB = 4 * NV, BB = block_bytes(Bits);
  const uint8_t* tile = a.codes + t * a.tile_bytes;
  const int64_t nblk = a.gcols / KB;
  __m512 y[MR];
  _Pragma("GCC unroll 16")
  for (int m = 0; m < MR; ++m) y[m] = _mm512_setzero_ps();
  for (int64_t g = 0; g < a.G; ++g) {
    const int64_t u = (t * a.G + g) * 16;
    __m512 bz[kFields<Bits>];
    group_biases<Bits>(a.zeros + u, bz);
    __m512 acc[MR][4];
    _Pragma("GCC unroll 16")
    for (int m = 0; m < MR; ++m)
      _Pragma("GCC unroll 16")
      for (int j = 0; j < 4; ++j) acc[m][j] = _mm512_setzero_ps();
    const uint8_t* p = tile + g * nblk * BB;
    const float* xg = a.x + m0 * a.ldx + g * a.gcols;
    for (int64_t b = 0; b < nblk; ++b) {
      _mm_prefetch(reinterpret_cast<const char*>(p + kPrefetch), _MM_HINT_T0);
      __m512 d[KB];
      decode_block<Bits>(p, bz, d);
      _Pragma("GCC unroll 16")
      for (int c = 0; c < KB; ++c)
        _Pragma("GCC unroll 16")
        for (int m = 0; m < MR; ++m)
          acc[m][c % 4] = _mm512_fmadd_ps(d[c], _mm512_set1_ps(xg[m * a.ldx + c]), acc[m][c % 4]);
      p += BB;
      xg += KB;
    }
    const __m512 s = _mm512_loadu_ps(a.scales + u);
    _Pragma("GCC unroll 16")
    for (int m = 0; m < MR; ++m) {
      const __m512 sum = _mm512_add_ps(_mm512_add_ps(acc[m][0], acc[m][1]),
                                       _mm512_add_ps(acc[m][2], acc[m][3]));
      y[m] = _mm512_fmadd_ps(s, sum, y[m]);
    }
  }
  const __mmask16 mask = row_mask(a, t);
  _Pragma("GCC unroll 16")
  for (int m = 0; m < MR; ++m) store_rows(a, t, m0 + m, y[m], mask);
}

// Many rows (M >= 4): the tile is decoded once per chunk of up to kChunk columns into an L1
// buffer of floats, which every row block of up to kRowBlock rows then reads; column k of
// row m still goes into acc[m][k % 4] in k order (qmatmul.h), JB of those four chains at a time.
constexpr int kChunk = 128;    // columns decoded at once (8 KiB of floats)
constexpr int kRowBlock = 64;  // rows whose accumulators live in the L1 buffers below
constexpr int kMR = 8;         // rows per register block

template <int MR>
inline void fma_chunk(const float* D, int ncols, const float* x, int64_t ldx, float* accm) {
  // accm: (MR rows, 4 chains, 16 lanes) floats
  constexpr int JB = MR >= 8 ? 1 : MR >= 4 ? 2 : 4;  // >= 8 independent FMA chains
  _Pragma("GCC unroll 4")
  for (int j0 = 0; j0 < 4; j0 += JB) {
    __m512 acc[MR][JB];
    _Pragma("GCC unroll 16")
    for (int m = 0; m < MR; ++m)
      _Pragma("GCC unroll 4")
      for (int jj = 0; jj < JB; ++jj) acc[m][jj] = _mm512_loadu_ps(accm + (m * 4 + j0 + jj) * 16);
    for (int k = j0; k < ncols; k += 4) {
      _Pragma("GCC unroll 4")
      for (int jj = 0; jj < JB; ++jj) {
        const __m512 d = _mm512_load_ps(D + (k + jj) * 16);
        _Pragma("GCC unroll 16")
        for (int m = 0; m < MR; ++m)
          acc[m][jj] = _mm512_fmadd_ps(d, _mm512_set1_ps(x[m * ldx + k + jj]), acc[m][jj]);
      }
    }
    _Pragma("GCC unroll 16")
    for (int m = 0; m < MR; ++m)
      _Pragma("GCC unroll 4")
      for (int jj = 0; jj < JB; ++jj) _mm512_storeu_ps(accm + (m * 4 + j0 + jj) * 16, acc[m][jj]);
  }
}

template <int Bits>
void f32_tile_many(const QmmArgs& a, int64_t t) {
  constexpr int NV = vectors_per_block(Bits), KB = 4 * NV, BB = block_bytes(Bits);
  alignas(64) float D[kChunk * 16];
  alignas(64) float accm[kRowBlock * 4 * 16];
  alignas(64) float ym[kRowBlock * 16];
  const uint8_t* tile = a.codes + t * a.tile_bytes;
  const int64_t nblk = a.gcols / KB;
  const __mmask16 mask = row_mask(a, t);
  for (int64_t mb = 0; mb < a.M; mb += kRowBlock) {
    const int nm = int(a.M - mb < kRowBlock ? a.M - mb : kRowBlock);
    for (int m = 0; m < nm; ++m) _mm512_store_ps(ym + m * 16, _mm512_setzero_ps());
    for (int64_t g = 0; g < a.G; ++g) {
      const int64_t u = (t * a.G + g) * 16;
      __m512 bz[kFields<Bits>];
      group_biases<Bits>(a.zeros + u, bz);
      for (int i = 0; i < nm * 4; ++i) _mm512_store_ps(accm + i * 16, _mm512_setzero_ps());
      const uint8_t* p = tile + g * nblk * BB;
      for (int64_t c0 = 0; c0 < a.gcols; c0 += kChunk) {
        const int ncols = int(a.gcols - c0 < kChunk ? a.gcols - c0 : kChunk);
        for (int k = 0; k < ncols; k += KB) {
          _mm_prefetch(reinterpret_cast<const char*>(p + kPrefetch), _MM_HINT_T0);
          __m512 d[KB];
          decode_block<Bits>(p, bz, d);
          _Pragma("GCC unroll 16")
          for (int c = 0; c < KB; ++c) _mm512_store_ps(D + (k + c) * 16, d[c]);
          p += BB;
        }
        const float* xc = a.x + mb * a.ldx + g * a.gcols + c0;
        int m = 0;
        for (; m + kMR <= nm; m += kMR) fma_chunk<kMR>(D, ncols, xc + m * a.ldx, a.ldx, accm + m * 64);
        switch (nm - m) {
          case 1: fma_chunk<1>(D, ncols, xc + m * a.ldx, a.ldx, accm + m * 64); break;
          case 2: fma_chunk<2>(D, ncols, xc + m * a.ldx, a.ldx, accm + m * 64); break;
          case 3: fma_chunk<3>(D, ncols, xc + m * a.ldx, a.ldx, accm + m * 64); break;
          case 4: fma_chunk<4>(D, ncols, xc + m * a.ldx, a.ldx, accm + m * 64); break;
          case 5: fma_chunk<5>(D, ncols, xc + m * a.ldx, a.ldx, accm + m * 64); break;
          case 6: fma_chunk<6>(D, ncols, xc + m * a.ldx, a.ldx, accm + m * 64); break;
          case 7: fma_chunk<7>(D, ncols, xc + m * a.ldx, a.ldx, accm + m * 64); break;
          default: break;
        }
      }
      const __m512 s = _mm512_loadu_ps(a.scales + u);
      for (int m = 0; m < nm; ++m) {
        const float* am = accm + m * 64;
        const __m512 sum = _mm512_add_ps(_mm512_add_ps(_mm512_load_ps(am), _mm512_load_ps(am + 16)),
                                         _mm512_add_ps(_mm512_load_ps(am + 32), _mm512_load_ps(am + 48)));
        _mm512_store_ps(ym + m * 16, _mm512_fmadd_ps(s, sum, _mm512_load_ps(ym + m * 16)));
      }
    }
    for (int m = 0; m < nm; ++m) store_rows(a, t, mb + m, _mm512_load_ps(ym + m * 16), mask);
  }
}

template <int Bits>
void a8_tiles(const QmmArgs& a, int64_t t0, int64_t t1) {
  for (int64_t t = t0; t < t1; ++t)
    for (int64_t m0 = 0; m0 < a.M; m0 += kMaxRowsA8) {
      switch (a.M - m0 >= kMaxRowsA8 ? kMaxRowsA8 : int(a.M - m0)) {
        case 1: a8_tile<Bits, 1>(a, t, m0); break;
        case 2: a8_tile<Bits, 2>(a, t, m0); break;
        case 3: a8_tile<Bits, 3>(a, t, m0); break;
        case 4: a8_tile<Bits, 4>(a, t, m0); break;
        case 5: a8_tile<Bits, 5>(a, t, m0); break;
        case 6: a8_tile<Bits, 6>(a, t, m0); break;
        case 7: a8_tile<Bits, 7>(a, t, m0); break;
        default: a8_tile<Bits, 8>(a, t, m0); break;
      }
    }
}

template <int Bits>
void f32_tiles(const QmmArgs& a, int64_t t0, int64_t t1) {
  for (int64_t t = t0; t < t1; ++t) {
    switch (a.M) {
      case 1: f32_tile<Bits, 1>(a, t, 0); break;
      case 2: f32_tile<Bits, 2>(a, t, 0); break;
      case 3: f32_tile<Bits, 3>(a, t, 0); break;
      default: f32_tile_many<Bits>(a, t); break;
    }
  }
}

}  // namespace

void qmm_a8_avx512vnni(const QmmArgs& a, int64_t t0, int64_t t1) {
  switch (a.bits) {
    case 2: a8_tiles<2>(a, t0, t1); break;
    case 3: a8_tiles<3>(a, t0, t1); break;
    case 4: a8_tiles<4>(a, t0, t1); break;
    default: a8_tiles<8>(a, t0, t1); break;
  }
}

void qmm_f32_avx512vnni(const QmmArgs& a, int64_t t0, int64_t t1) {
  switch (a.bits) {
    case 2: f32_tiles<2>(a, t0, t1); break;
    case 3: f32_tiles<3>(a, t0, t1); break;
    case 4: f32_tiles<4>(a, t0, t1); break;
    default: f32_tiles<8>(a, t0, t1); break;
  }
}

void quant_act_avx512vnni(const ActArgs& a, int64_t m0, int64_t m1) {
  const __m512 lo = _mm512_set1_ps(a.dynamic ? -127.0f : 0.0f);
  const __m512 hi = _mm512_set1_ps(a.dynamic ? 127.0f : float(a.qmax));
  const __m512i off = _mm512_set1_epi32(a.off);
  for (int64_t m = m0; m < m1; ++m) {
    const float* x = a.x + m * a.ldx;
    int8_t* xq = a.xq + m * a.Kp;
    float sx = a.scale, zero = a.zero;
    if (a.dynamic) {
      __m512 amax = _mm512_setzero_ps();
      for (int64_t k = 0; k < a.K; k += 16) {
        const __mmask16 in = a.K - k >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (a.K - k)) - 1);
        amax = _mm512_max_ps(amax, _mm512_abs_ps(_mm512_maskz_loadu_ps(in, x + k)));
      }
      const float mx = _mm512_reduce_max_ps(amax);
      sx = mx > 0.0f ? mx / 127.0f : 1.0f;
      zero = 0.0f;
    }
    const __m512 vs = _mm512_set1_ps(sx), vz = _mm512_set1_ps(zero);
    __m512i gsum = _mm512_setzero_si512();
    for (int64_t k = 0; k < a.Kp; k += 16) {
      const __mmask16 in = a.K - k >= 16 ? __mmask16(0xFFFF)
                           : a.K > k     ? __mmask16((1u << (a.K - k)) - 1)
                                         : __mmask16(0);
      const __mmask16 out = a.Kp - k >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (a.Kp - k)) - 1);
      __m512 q = _mm512_roundscale_ps(_mm512_div_ps(_mm512_maskz_loadu_ps(in, x + k), vs),
                                      _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      if (!a.dynamic) q = _mm512_add_ps(q, vz);
      q = _mm512_min_ps(_mm512_max_ps(q, lo), hi);
      __m512i qi = _mm512_cvtps_epi32(q);
      if (!a.dynamic) qi = _mm512_sub_epi32(qi, off);
      qi = _mm512_maskz_mov_epi32(in, qi);
      _mm512_mask_cvtepi32_storeu_epi8(xq + k, out, qi);
      gsum = _mm512_add_epi32(gsum, qi);
      if ((k + 16) % a.gcols == 0 || k + 16 >= a.Kp) {
        a.xsum[m * a.G + k / a.gcols] = _mm512_reduce_add_epi32(gsum);
        gsum = _mm512_setzero_si512();
      }
    }
    a.xscale[m] = sx;
    a.xoff[m] = a.dynamic ? 0 : a.off - int(a.zero);
  }
}

}  // namespace lowbit::kernels
