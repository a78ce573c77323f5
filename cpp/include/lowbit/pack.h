// The packed low-bit weight format, version 1 (docs/design/packed_format.md says the same in
// prose; tests/regression/test_packed_golden.py pins the bytes). Every kernel in qmatmul.h reads
// exactly this layout; nothing else in lowbit defines one.
//
// A packed matrix is a quantized weight W (N rows = output channels, K columns = inputs) with
// b-bit unsigned codes q in 0..2^b-1, one float32 scale s and one integer zero point z per
// (row, group) unit; the weight it stands for is  W[n][k] = (q[n][k] - z[n][g]) * s[n][g],
// g = k / group_size. Per-channel quantization is the case of one group per row.
//
// Three arrays make one packed matrix:
//
//   codes   uint8  (n_tiles * tile_bytes,)      the codes, layout below
//   scales  float32 (n_tiles, G, 16)            scales[t][g][r] = s of row 16t+r, group g
//   zeros   uint8  (n_tiles, G, 16)             zeros[t][g][r]  = z of row 16t+r, group g
//
// Row tiles. Rows are taken 16 at a time: tile t holds rows 16t .. 16t+15. Rows past N (the
// last tile's padding) have code 0, scale 0 and zero 0, so they contribute nothing.
//
// Columns. Kp = K for grouped matrices (group_size must be a multiple of 16 dividing K);
// per channel, Kp = K rounded up to a multiple of the block width kb(b), and the padding
// columns K..Kp-1 hold the row's zero point, so (q - z) = 0 there. G = Kp / group_size.
//
// Inside a tile, columns go in blocks of kb(b) columns, block after block along K; a block is
// 16 rows x kb columns in block_bytes(b) bytes. Byte i = 4*r + j (r = row in tile 0..15,
// j = 0..3) always belongs to row r, so 32-bit lane r of a 64-byte vector is row r: one
// vpdpbusd / vpmaddubsw step with four broadcast activations feeds 16 rows at once (the
// idea of ggml's 8-row-interleaved q4_0x8, with 16 rows for a zmm of int32 lanes).
//
//   b = 8   kb = 4,  64 B   byte[4r+j] = q[r][k0+j]
//
//   b = 4   kb = 8,  64 B   byte[4r+j] = q[r][k0+j] | q[r][k0+4+j] << 4
//
//              byte 4r+j:  | 7 6 5 4 | 3 2 1 0 |
//                          | q[k0+4+j] | q[k0+j] |
//
//   b = 2   kb = 16, 64 B   byte[4r+j] = sum_i q[r][k0+4i+j] << 2i      (i = 0..3)
//
//              byte 4r+j:  | 7 6      | 5 4      | 3 2      | 1 0    |
//                          | q[k0+12+j] | q[k0+8+j] | q[k0+4+j] | q[k0+j] |
//
//   b = 3   kb = 16, 96 B   bytes 0..63: the low two bits of each code, laid out as b = 2;
//                           bytes 64..95: four little-endian uint64 bit planes P_0..P_3,
//                           bit (4r+j) of P_i = bit 2 of q[r][k0+4i+j]
//
//              byte 64 + 8i + m, bit c  =  bit 2 of q[r][k0+4i+j] with 4r+j = 8m+c
//
// So bit 2 of the 64 codes that one unpack step of the low plane produces sits in one 64-bit
// word, in the same order as the bytes: an AVX-512 byte mask that adds 4 where it is set.
//
// The format is versioned: kPackFormatVersion changes whenever any byte above would change;
// files (lowbit.save) record it and refuse other versions.
#pragma once
#include <cstdint>

#include "lowbit/quant.h"

namespace lowbit {

constexpr int kPackFormatVersion = 1;
constexpr int kTileRows = 16;      // rows per tile (int32 lanes of a zmm)
constexpr int kLaneBytes = 4;      // columns of one row in one 32-bit lane
constexpr int kGroupAlign = 16;    // group sizes must be multiples of this (lcm of kb)

// Block geometry per bit width (only 2, 3, 4 and 8 are packed formats).
constexpr int pack_block_cols(int bits) { return bits == 8 ? 4 : bits == 4 ? 8 : 16; }
constexpr int pack_block_bytes(int bits) { return bits == 3 ? 96 : 64; }
constexpr bool pack_bits_supported(int bits) {
  return bits == 2 || bits == 3 || bits == 4 || bits == 8;
}

static_assert(pack_block_bytes(8) * 8 == kTileRows * pack_block_cols(8) * 8, "8-bit block size");
static_assert(pack_block_bytes(4) * 8 == kTileRows * pack_block_cols(4) * 4, "4-bit block size");
static_assert(pack_block_bytes(3) * 8 == kTileRows * pack_block_cols(3) * 3, "3-bit block size");
static_assert(pack_block_bytes(2) * 8 == kTileRows * pack_block_cols(2) * 2, "2-bit block size");
static_assert(kGroupAlign % pack_block_cols(2) == 0 && kGroupAlign % pack_block_cols(4) == 0 &&
                  kGroupAlign % pack_block_cols(8) == 0,
              "every group size that is a multiple of kGroupAlign holds whole blocks");
static_assert(kTileRows * kLaneBytes == 64, "a block's low plane is one 64-byte vector");

// The shape of a packed matrix. group_size == 0 means per channel (one group of Kp columns).
struct PackedShape {
  int bits = 4;
  int64_t rows = 0;        // N
  int64_t cols = 0;        // K
  int64_t group_size = 0;  // columns per group, or 0 for per channel

  int64_t padded_cols() const {  // Kp
    const int64_t kb = pack_block_cols(bits);
    return group_size > 0 ? cols : (cols + kb - 1) / kb * kb;
  }
  int64_t groups() const { return group_size > 0 ? cols / group_size : 1; }  // G
  int64_t group_cols() const { return group_size > 0 ? group_size : padded_cols(); }
  int64_t tiles() const { return (rows + kTileRows - 1) / kTileRows; }
  int64_t tile_bytes() const {
    return padded_cols() / pack_block_cols(bits) * pack_block_bytes(bits);
  }
  int64_t code_bytes() const { return tiles() * tile_bytes(); }
  int64_t meta_count() const { return tiles() * groups() * kTileRows; }  // scales, zeros
};

// Throws std::invalid_argument naming what is wrong (bits, sizes, group size).
void check_packed_shape(const PackedShape& s);

// A packed matrix as three read-only arrays (sizes from the shape).
struct PackedMatrix {
  PackedShape shape;
  const uint8_t* codes = nullptr;  // shape.code_bytes()
  const float* scales = nullptr;   // shape.meta_count()
  const uint8_t* zeros = nullptr;  // shape.meta_count()
};

// Code of row n, column k (k < Kp; padding columns read as the zero point) straight from the
// layout above: the obviously correct accessor the _ref kernels and the unpacker use.
inline int packed_code(const PackedMatrix& w, int64_t n, int64_t k) {
  const int bits = w.shape.bits;
  const int64_t kb = pack_block_cols(bits);
  const int r = int(n % kTileRows), kk = int(k % kb);
  const uint8_t* blk = w.codes + (n / kTileRows) * w.shape.tile_bytes() +
                       (k / kb) * pack_block_bytes(bits);
  const int j = kk % 4, i = kk / 4;
  const uint8_t byte = blk[4 * r + j];
  switch (bits) {
    case 8: return byte;
    case 4: return (byte >> (4 * i)) & 15;
    case 2: return (byte >> (2 * i)) & 3;
    default: {  // 3
      const int bit = 4 * r + j;
      const int hi = (blk[64 + 8 * i + bit / 8] >> (bit % 8)) & 1;
      return ((byte >> (2 * i)) & 3) | (hi << 2);
    }
  }
}

// Scale / zero of row n in group g.
inline float packed_scale(const PackedMatrix& w, int64_t n, int64_t g) {
  return w.scales[((n / kTileRows) * w.shape.groups() + g) * kTileRows + n % kTileRows];
}
inline int packed_zero(const PackedMatrix& w, int64_t n, int64_t g) {
  return w.zeros[((n / kTileRows) * w.shape.groups() + g) * kTileRows + n % kTileRows];
}

// Packs codes q (N, K), 0..2^b-1, with scale / zero (R, G) as in quant.h (R in {1, N}; the
// zero points must be integers in 0..2^b-1; G must match shape.groups()) into the three output
// arrays, which the caller allocates with the sizes of `shape`. Codes above 2^b-1 are refused.
void pack_weights(ConstMatrixView<uint8_t> q, const QuantParams& p, const PackedShape& shape,
                  uint8_t* codes, float* scales, uint8_t* zeros);

// The inverse: codes q (N, K) and scale / zero (N, G) (zeros as floats, as quant.h keeps them).
void unpack_weights(const PackedMatrix& w, MatrixView<uint8_t> q, float* scale, float* zero);

// Rows `rows[0..n)` of the weight the packed matrix stands for, decoded to float:
// out[i, k] = (q - z) * s of row rows[i], column k (out is (n, K), row-major). The lookup of a
// packed embedding table. Throws std::invalid_argument on a row index outside 0..N-1.
void dequantize_rows(const PackedMatrix& w, const int32_t* rows, int64_t n, float* out);

}  // namespace lowbit
