#include "lowbit/pack.h"

#include <cmath>
#include <cstring>

#include "lowbit/check.h"
#include "lowbit/parallel.h"

namespace lowbit {

void check_packed_shape(const PackedShape& s) {
  LOWBIT_CHECK(pack_bits_supported(s.bits),
               "packed formats exist for 2, 3, 4 and 8 bits, got " << s.bits
                                                                   << " (pack 5..7-bit codes as 8)");
  LOWBIT_CHECK(s.rows > 0 && s.cols > 0,
               "a packed matrix needs rows > 0 and cols > 0, got (" << s.rows << ", " << s.cols
                                                                    << ")");
  LOWBIT_CHECK(s.group_size >= 0, "group_size must be >= 0 (0 = per channel), got "
                                      << s.group_size);
  if (s.group_size > 0) {
    LOWBIT_CHECK(s.group_size % kGroupAlign == 0,
                 "group_size must be a multiple of " << kGroupAlign << ", got " << s.group_size);
    LOWBIT_CHECK(s.cols % s.group_size == 0,
                 "group_size " << s.group_size << " does not divide " << s.cols << " columns");
  }
}

namespace {

// Writes code c of row r (in tile), column kk (in block) into a zeroed block.
inline void put_code(uint8_t* blk, int bits, int r, int kk, int c) {
  const int j = kk % 4, i = kk / 4;
  uint8_t& byte = blk[4 * r + j];
  switch (bits) {
    case 8: byte = uint8_t(c); break;
    case 4: byte |= uint8_t(c << (4 * i)); break;
    case 2: byte |= uint8_t(c << (2 * i)); break;
    default: {
      byte |= uint8_t((c & 3) << (2 * i));
      const int bit = 4 * r + j;
      blk[64 + 8 * i + bit / 8] |= uint8_t(((c >> 2) & 1) << (bit % 8));
    }
  }
}

}  // namespace

void pack_weights(ConstMatrixView<uint8_t> q, const QuantParams& p, const PackedShape& shape,
                  uint8_t* codes, float* scales, uint8_t* zeros) {
  check_packed_shape(shape);
  LOWBIT_CHECK(q.rows == shape.rows && q.cols == shape.cols,
               "codes must be (" << shape.rows << ", " << shape.cols << "), got (" << q.rows
                                 << ", " << q.cols << ")");
  LOWBIT_CHECK(p.R == 1 || p.R == shape.rows,
               "scale must have 1 or " << shape.rows << " rows, got " << p.R);
  LOWBIT_CHECK(p.G == shape.groups(),
               "scale must have " << shape.groups() << " groups per row for group_size "
                                  << shape.group_size << ", got " << p.G);
  const int qmax = (1 << shape.bits) - 1;
  // Checked before the parallel region: exceptions must not cross OpenMP.
  for (int64_t u = 0; u < p.R * p.G; ++u) {
    const float z = p.zero[u];
    LOWBIT_CHECK(std::nearbyint(z) == z && z >= 0 && z <= qmax,
                 "zero points must be integers in 0.." << qmax << ", got " << z << " at unit "
                                                       << u);
    LOWBIT_CHECK(std::isfinite(p.scale[u]), "scale must be finite, got " << p.scale[u]
                                                                         << " at unit " << u);
  }
  for (int64_t r = 0; r < q.rows; ++r)
    for (int64_t c = 0; c < q.cols; ++c)
      LOWBIT_CHECK(q(r, c) <= qmax, "code " << int(q(r, c)) << " at (" << r << ", " << c
                                            << ") does not fit in " << shape.bits << " bits");

  const int64_t N = shape.rows, K = shape.cols, Kp = shape.padded_cols(), G = shape.groups();
  const int64_t gcols = shape.group_cols(), kb = pack_block_cols(shape.bits);
  const int64_t bbytes = pack_block_bytes(shape.bits), tbytes = shape.tile_bytes();
  parallel_for(0, shape.tiles(), 4, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      uint8_t* tile = codes + t * tbytes;
      std::memset(tile, 0, size_t(tbytes));
      for (int r = 0; r < kTileRows; ++r) {
        const int64_t n = t * kTileRows + r;
        for (int64_t g = 0; g < G; ++g) {
          const int64_t m = (t * G + g) * kTileRows + r;
          const int64_t u = (p.R == 1 ? 0 : n) * p.G + g;
          scales[m] = n < N ? p.scale[u] : 0.0f;
          zeros[m] = n < N ? uint8_t(p.zero[u]) : 0;
        }
        if (n >= N) continue;
        const uint8_t* qr = q.row(n);
        for (int64_t k = 0; k < Kp; ++k) {
          const int64_t u = (p.R == 1 ? 0 : n) * p.G + k / gcols;
          const int c = k < K ? qr[k] : int(p.zero[u]);
          put_code(tile + (k / kb) * bbytes, shape.bits, r, int(k % kb), c);
        }
      }
    }
  });
}

void unpack_weights(const PackedMatrix& w, MatrixView<uint8_t> q, float* scale, float* zero) {
  const PackedShape& s = w.shape;
  check_packed_shape(s);
  LOWBIT_CHECK(q.rows == s.rows && q.cols == s.cols,
               "codes must be (" << s.rows << ", " << s.cols << "), got (" << q.rows << ", "
                                 << q.cols << ")");
  const int64_t G = s.groups();
  parallel_for(0, s.rows, 64, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) {
      uint8_t* qr = q.row(n);
      for (int64_t k = 0; k < s.cols; ++k) qr[k] = uint8_t(packed_code(w, n, k));
      for (int64_t g = 0; g < G; ++g) {
        scale[n * G + g] = packed_scale(w, n, g);
        zero[n * G + g] = float(packed_zero(w, n, g));
      }
    }
  });
}

void dequantize_rows(const PackedMatrix& w, const int32_t* rows, int64_t n, float* out) {
  const PackedShape& s = w.shape;
  check_packed_shape(s);
  for (int64_t i = 0; i < n; ++i)  // checked up front: nothing is thrown inside the parallel loop
    LOWBIT_CHECK(rows[i] >= 0 && rows[i] < s.rows,
                 "row index " << rows[i] << " is out of range for " << s.rows << " rows");
  const int64_t gc = s.group_cols();
  parallel_for(0, n, 16, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t r = rows[i];
      float* o = out + i * s.cols;
      for (int64_t k = 0; k < s.cols; ++k) {
        const int64_t g = k / gc;
        o[k] = float(packed_code(w, r, k) - packed_zero(w, r, g)) * packed_scale(w, r, g);
      }
    }
  });
}

}  // namespace lowbit
