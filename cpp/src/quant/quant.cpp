#include "lowbit/quant.h"

#include "lp_kernels.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "lowbit/check.h"
#include "lowbit/cpu.h"
#include "lowbit/linalg.h"
#include "lowbit/parallel.h"

namespace lowbit {

namespace {

// Round half to even without a libm call: adding and removing 1.5 * 2^23 leaves the nearest
// integer under the default rounding mode, exactly, for |v| <= 2^22 (no -ffast-math, so the
// compiler keeps the pair). Vectorises at the SSE2 baseline, unlike nearbyint.
inline float round_even(float v) {
  constexpr float kMagic = 12582912.0f;
  return (v + kMagic) - kMagic;
}

inline float quant_code(float x, float s, float z, float qmax) {
  // Clamping x/s to +-2^22 keeps round_even in its exact range (and Inf finite); it changes
  // no code for any zero point with |z| < 2^21.
  constexpr float kLimit = 4194304.0f;
  const float v = std::min(std::max(x / s, -kLimit), kLimit);
  return std::min(std::max(round_even(v) + z, 0.0f), qmax);
}

// Calls fn(row, col_begin, col_end, unit_index) for every (row, group) cell of x.
template <class Fn>
void for_each_cell(int64_t rows, int64_t cols, const QuantParams& p, Fn&& fn) {
  const int64_t gsize = cols / p.G;
  parallel_for(0, rows, std::max<int64_t>(1, 16384 / std::max<int64_t>(cols, 1)),
               [&](int64_t r0, int64_t r1) {
                 for (int64_t r = r0; r < r1; ++r)
                   for (int64_t g = 0; g < p.G; ++g)
                     fn(r, g * gsize, (g + 1) * gsize, (p.R == 1 ? 0 : r) * p.G + g);
               });
}

void range_to_params(float lo, float hi, int bits, bool symmetric, float* s, float* z) {
  const float qmax = float((1 << bits) - 1);
  if (symmetric) {
    const float amax = std::max(-lo, hi);
    *s = amax > 0 ? 2.0f * amax / qmax : 1.0f;
    *z = float(1 << (bits - 1));
  } else {
    *s = hi > lo ? (hi - lo) / qmax : 1.0f;
    *z = std::min(std::max(std::nearbyint(-lo / *s), 0.0f), qmax);
  }
}

lp_detail::LpAccFn lp_kernel() {
  const int isa = static_cast<int>(active_isa());
  if (isa >= static_cast<int>(Isa::avx512)) return lp_detail::lp_acc_avx512;
  if (isa >= static_cast<int>(Isa::avx2)) return lp_detail::lp_acc_avx2;
  return lp_detail::lp_acc_scalar;
}

constexpr int64_t kLpPiece = 1024;  // elements between bound checks (a multiple of 16)

// lp_error of one run without argument checks, or +inf as soon as before + (the run's partial
// sum) exceeds `bound`: terms are >= 0 and rounded adds are monotone, so the full sum (and
// any total it is added to) could only be larger. The kernels scale by 1/s where quantize()
// divides by s: a value can only move across a rounding tie, whose error is s/2 either way,
// so the sums (and the range the search picks) do not move.
double lp_run_error(const float* x, int64_t n, float s, float z, float qmax, float p,
                    double before = 0.0,
                    double bound = std::numeric_limits<double>::infinity()) {
  if (p == 2.0f || (p > 0.0f && p <= lp_detail::kMaxFastP)) {
    const lp_detail::LpAccFn acc_fn = lp_kernel();
    const float inv_s = 1.0f / s;
    double acc[16] = {};
    for (int64_t c = 0; c < n; c += kLpPiece) {
      acc_fn(x + c, std::min(kLpPiece, n - c), inv_s, s, z, qmax, p, acc);
      if (c + kLpPiece < n && before + lp_detail::lp_lanes_sum(acc) > bound)
        return std::numeric_limits<double>::infinity();
    }
    return lp_detail::lp_lanes_sum(acc);
  }
  double err = 0;
  for (int64_t c = 0; c < n; ++c) {
    const float e = std::fabs(x[c] - (quant_code(x[c], s, z, qmax) - z) * s);
    err += double(std::pow(e, p));
  }
  return err;
}

}  // namespace

double lp_error(const float* x, int64_t n, float s, float z, int bits, float p) {
  LOWBIT_CHECK(bits >= kMinBits && bits <= kMaxBits,
               "bits must be in [" << kMinBits << ", " << kMaxBits << "], got " << bits);
  LOWBIT_CHECK(std::isfinite(s) && s > 0, "scale must be finite and positive, got " << s);
  LOWBIT_CHECK(std::isfinite(z), "zero must be finite, got " << z);
  LOWBIT_CHECK(p > 0, "p must be positive, got " << p);
  return lp_run_error(x, n, s, z, float((1 << bits) - 1), p);
}

void check_quant_params(const QuantParams& p, int64_t rows, int64_t cols) {
  LOWBIT_CHECK(p.bits >= kMinBits && p.bits <= kMaxBits,
               "bits must be in [" << kMinBits << ", " << kMaxBits << "], got " << p.bits);
  LOWBIT_CHECK(p.R == 1 || p.R == rows,
               "scale must have 1 or " << rows << " rows (one per output channel), got " << p.R);
  LOWBIT_CHECK(p.G >= 1 && cols % p.G == 0,
               "scale has " << p.G << " groups per row, which does not divide " << cols
                            << " columns");
}

void quantize(ConstMatrixView<float> x, const QuantParams& p, MatrixView<uint8_t> q) {
  check_quant_params(p, x.rows, x.cols);
  const float qmax = float((1 << p.bits) - 1);
  for_each_cell(x.rows, x.cols, p, [&](int64_t r, int64_t c0, int64_t c1, int64_t u) {
    const float s = p.scale[u], z = p.zero[u];
    const float* xr = x.row(r);
    uint8_t* qr = q.row(r);
    for (int64_t c = c0; c < c1; ++c) qr[c] = uint8_t(quant_code(xr[c], s, z, qmax));
  });
}

void dequantize(ConstMatrixView<uint8_t> q, const QuantParams& p, MatrixView<float> out) {
  check_quant_params(p, q.rows, q.cols);
  for_each_cell(q.rows, q.cols, p, [&](int64_t r, int64_t c0, int64_t c1, int64_t u) {
    const float s = p.scale[u], z = p.zero[u];
    const uint8_t* qr = q.row(r);
    float* o = out.row(r);
    for (int64_t c = c0; c < c1; ++c) o[c] = (float(qr[c]) - z) * s;
  });
}

void fake_quantize(ConstMatrixView<float> x, const QuantParams& p, MatrixView<float> out) {
  check_quant_params(p, x.rows, x.cols);
  const float qmax = float((1 << p.bits) - 1);
  for_each_cell(x.rows, x.cols, p, [&](int64_t r, int64_t c0, int64_t c1, int64_t u) {
    const float s = p.scale[u], z = p.zero[u];
    const float* xr = x.row(r);
    float* o = out.row(r);
    for (int64_t c = c0; c < c1; ++c) o[c] = (quant_code(xr[c], s, z, qmax) - z) * s;
  });
}

void lp_range_search(ConstMatrixView<float> x, const RangeSearch& rs, int64_t R, int64_t G,
                     float* scale, float* zero) {
  LOWBIT_CHECK(rs.bits >= kMinBits && rs.bits <= kMaxBits,
               "bits must be in [" << kMinBits << ", " << kMaxBits << "], got " << rs.bits);
  LOWBIT_CHECK(R == 1 || R == x.rows, "R must be 1 or " << x.rows << ", got " << R);
  LOWBIT_CHECK(G >= 1 && x.cols % G == 0,
               G << " groups per row do not divide " << x.cols << " columns");
  LOWBIT_CHECK(rs.n_grid >= 1 && rs.shrink >= 0 && rs.shrink * (rs.n_grid - 1) < 1,
               "range grid must stay above zero: n_grid=" << rs.n_grid
                                                          << ", shrink=" << rs.shrink);
  // Checked here, before any parallel region (an exception must not cross OpenMP).
  for (int64_t r = 0; r < x.rows; ++r)
    for (int64_t c = 0; c < x.cols; ++c)
      LOWBIT_CHECK(std::isfinite(x(r, c)), "non-finite value at row " << r << ", column " << c);
  const int64_t gsize = x.cols / G;
  const int64_t rows_per_unit = R == 1 ? x.rows : 1;
  const int64_t units = R * G;
  const int n_grid = rs.p > 0 ? rs.n_grid : 1;
  const float qmax = float((1 << rs.bits) - 1);

  // One unit's error for one candidate range: lp_error per row of the unit, added in row
  // order; +inf once it is sure to exceed `bound`.
  auto unit_error = [&](int64_t u, float s, float z, double bound) {
    const int64_t r0 = (R == 1 ? 0 : u / G), g = u % G;
    double err = 0;
    for (int64_t r = r0; r < r0 + rows_per_unit; ++r) {
      err += lp_run_error(x.row(r) + g * gsize, gsize, s, z, qmax, rs.p, err, bound);
      if (err > bound) return std::numeric_limits<double>::infinity();
    }
    return err;
  };
  auto unit_range = [&](int64_t u, float* lo, float* hi) {
    const int64_t r0 = (R == 1 ? 0 : u / G), g = u % G;
    float l = 0, h = 0;
    for (int64_t r = r0; r < r0 + rows_per_unit; ++r) {
      const float* xr = x.row(r) + g * gsize;
      for (int64_t c = 0; c < gsize; ++c) {
        l = std::min(l, xr[c]);
        h = std::max(h, xr[c]);
      }
    }
    *lo = l;
    *hi = h;
  };
  // The first smallest error wins (ties keep the wider range, as the reference does).
  auto pick = [&](int64_t u, float lo, float hi, const double* errs) {
    int best = 0;
    for (int k = 1; k < n_grid; ++k)
      if (errs[k] < errs[best]) best = k;
    const float ratio = 1.0f - float(best) * rs.shrink;
    range_to_params(lo * ratio, hi * ratio, rs.bits, rs.symmetric, &scale[u], &zero[u]);
    return best;
  };
  auto candidate_error = [&](int64_t u, float lo, float hi, int k, double bound) {
    float s, z;
    const float ratio = 1.0f - float(k) * rs.shrink;
    range_to_params(lo * ratio, hi * ratio, rs.bits, rs.symmetric, &s, &z);
    return unit_error(u, s, z, bound);
  };
  // Candidates are abandoned (error +inf) once their partial error exceeds the best complete
  // one: they cannot be the minimum, so the pick is exactly that of the full grid, whatever
  // the order the candidates are tried in. The order only sets how early that happens.
  LOWBIT_CHECK(n_grid <= 1024, "n_grid must be at most 1024, got " << n_grid);

  if (units == 1) {
    // One large unit: the candidates are the parallel axis. Every 8th candidate first, in
    // full; the rest under the best of those as bound.
    float lo, hi;
    unit_range(0, &lo, &hi);
    double errs[1024];
    const int64_t coarse = (n_grid + 7) / 8;
    parallel_for(0, coarse, 1, [&](int64_t k0, int64_t k1) {
      for (int64_t k = k0; k < k1; ++k)
        errs[8 * k] = candidate_error(0, lo, hi, int(8 * k), std::numeric_limits<double>::infinity());
    });
    double bound = std::numeric_limits<double>::infinity();
    for (int64_t k = 0; k < coarse; ++k) bound = std::min(bound, errs[8 * k]);
    parallel_for(0, n_grid, 1, [&](int64_t k0, int64_t k1) {
      for (int64_t k = k0; k < k1; ++k)
        if (k % 8) errs[k] = candidate_error(0, lo, hi, int(k), bound);
    });
    pick(0, lo, hi, errs);
    return;
  }
  parallel_for(0, units, 8, [&](int64_t u0, int64_t u1) {
    double errs[1024];
    int guess = 0;  // neighbouring units (rows of one layer) have similar best candidates
    for (int64_t u = u0; u < u1; ++u) {
      float lo, hi;
      unit_range(u, &lo, &hi);
      double best = std::numeric_limits<double>::infinity();
      // guess, guess - 1, guess + 1, guess - 2, ...
      for (int i = 0, tried = 0; tried < n_grid; ++i) {
        const int k = guess + ((i & 1) ? -(i + 1) / 2 : i / 2);
        if (k < 0 || k >= n_grid) continue;
        ++tried;
        errs[k] = candidate_error(u, lo, hi, k, best);
        best = std::min(best, errs[k]);
      }
      guess = pick(u, lo, hi, errs);
    }
  });
}

void hessian_loss(ConstMatrixView<float> dW, ConstMatrixView<float> H, float* loss) {
  LOWBIT_CHECK(H.rows == dW.cols && H.cols == dW.cols,
               "H must be (" << dW.cols << ", " << dW.cols << "), got (" << H.rows << ", "
                             << H.cols << ")");
  // dW H in one product (threads over its tiles), then each row's dot in double, in order.
  std::vector<float> dh(size_t(dW.rows * dW.cols));
  MatrixView<float> DH(dh.data(), dW.rows, dW.cols);
  gemm(dW, false, H, false, DH);
  parallel_for(0, dW.rows, 32, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* d = dW.row(r);
      const float* h = DH.row(r);
      double acc = 0;
      for (int64_t k = 0; k < dW.cols; ++k) acc += double(d[k]) * double(h[k]);
      loss[r] = float(acc);
    }
  });
}

}  // namespace lowbit
