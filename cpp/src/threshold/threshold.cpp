#include "lowbit/threshold.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "lowbit/check.h"
#include "lowbit/parallel.h"

namespace lowbit {

namespace {

constexpr int64_t kChunkElems = 16384;  // elements per work unit / parallel chunk (shape-only)

void check_bits(int bits) {
  LOWBIT_CHECK(bits >= 2 && bits <= 8, "bits must be in [2, 8], got " << bits);
}

void check_layout(int64_t rows, int64_t inner, int64_t C) {
  LOWBIT_CHECK(C >= 1, "C (channels) must be >= 1, got " << C);
  LOWBIT_CHECK(rows % C == 0, "x has " << rows << " rows, not a multiple of C = " << C
                                       << " (row r belongs to channel r % C)");
  LOWBIT_CHECK(inner >= 0, "x must have non-negative columns");
}

inline float sigmoidf(float t) { return 1.0f / (1.0f + std::exp(-t)); }

// The deterministic decomposition of a backward pass: unit u = (c, j) covers the rows
// o*C + c for outer rows o in [j*OB, min((j+1)*OB, outer)). OB depends on the shape alone.
struct Units {
  int64_t C, outer, inner, OB, nOB;
  Units(int64_t rows, int64_t inner_, int64_t C_) : C(C_), outer(rows / C_), inner(inner_) {
    OB = std::max<int64_t>(1, kChunkElems / std::max<int64_t>(inner, 1));
    nOB = outer == 0 ? 0 : (outer + OB - 1) / OB;
  }
  int64_t count() const { return C * nOB; }
  int64_t channel(int64_t u) const { return u / nOB; }
  int64_t row_begin(int64_t u) const { return (u % nOB) * OB; }  // outer row index
  int64_t row_end(int64_t u) const { return std::min(outer, row_begin(u) + OB); }
  // Units per parallel chunk, so small units are batched (still shape-only).
  int64_t grain() const {
    return std::max<int64_t>(1, kChunkElems / std::max<int64_t>(OB * std::max<int64_t>(inner, 1), 1));
  }
};

int64_t row_grain(int64_t inner) {
  return std::max<int64_t>(1, kChunkElems / std::max<int64_t>(inner, 1));
}

// Parallel loop over rows that records NaN inputs per chunk and throws after the region
// (an exception must not cross OpenMP).
template <class Fn>
void rows_checked(int64_t rows, int64_t inner, const char* what, Fn&& fn) {
  const int64_t grain = row_grain(inner);
  const int64_t nchunks = rows == 0 ? 0 : (rows + grain - 1) / grain;
  std::vector<char> bad(size_t(std::max<int64_t>(nchunks, 1)), 0);
  parallel_for(0, rows, grain, [&](int64_t r0, int64_t r1) {
    if (fn(r0, r1)) bad[size_t(r0 / grain)] = 1;
  });
  for (char b : bad) LOWBIT_CHECK(!b, what << ": x contains NaN");
}

// Number of t[0..n) that are <= u, for non-decreasing t and n = 2^b - 1: a branch-free
// binary search of b steps (t[pos + step - 1] is the last threshold of the lower half).
inline int count_le(const float* t, int n, float u) {
  int pos = 0;
  for (int step = (n + 1) >> 1; step > 0; step >>= 1) pos += (u >= t[pos + step - 1]) ? step : 0;
  return pos;
}

// codes[i] = count_le(t, n, x[i] * mul) for a row. Up to 15 thresholds: compare-and-add per
// threshold across a block of elements (vectorises); more: the binary search per element.
template <class T>
void count_row(const float* t, int n, const float* x, float mul, int64_t len, T* codes) {
  if (n > 15) {
    for (int64_t i = 0; i < len; ++i) codes[i] = T(count_le(t, n, x[i] * mul));
    return;
  }
  constexpr int64_t kBlock = 256;
  float u[kBlock];
  int32_t acc[kBlock];
  for (int64_t i0 = 0; i0 < len; i0 += kBlock) {
    const int64_t m = std::min(kBlock, len - i0);
    for (int64_t i = 0; i < m; ++i) {
      u[i] = x[i0 + i] * mul;
      acc[i] = 0;
    }
    for (int k = 0; k < n; ++k) {
      const float tk = t[k];
      for (int64_t i = 0; i < m; ++i) acc[i] += u[i] >= tk ? 1 : 0;
    }
    for (int64_t i = 0; i < m; ++i) codes[i0 + i] = T(acc[i]);
  }
}

inline bool has_nan(const float* x, int64_t len) {
  bool bad = false;
  for (int64_t i = 0; i < len; ++i) bad |= x[i] != x[i];
  return bad;
}

}  // namespace

// ---- AQuant borders ------------------------------------------------------------------------

namespace {
void check_border_args(int64_t C, int bits, float eps) {
  check_bits(bits);
  LOWBIT_CHECK(C >= 1, "C (channels) must be >= 1, got " << C);
  LOWBIT_CHECK(eps > 0.0f && eps < 0.5f, "eps must be in (0, 0.5), got " << eps);
}

void check_border_params(const BorderParams& p) {
  check_bits(p.bits);
  LOWBIT_CHECK(std::isfinite(p.scale) && p.scale > 0, "scale must be > 0, got " << p.scale);
  LOWBIT_CHECK(std::isfinite(p.zero) && p.zero == std::nearbyint(p.zero),
               "zero must be an integer, got " << p.zero);
  LOWBIT_CHECK(std::isfinite(p.tau) && p.tau > 0, "tau must be > 0, got " << p.tau);
}

inline float border_pre(const float* param, int64_t c, int k, bool affine, int n) {
  if (affine) return 0.5f + (param[2 * c] * ((float(k) + 0.5f) / float(n)) + param[2 * c + 1]);
  return 0.5f + param[c * n + k];
}
}  // namespace

void border_table(const float* param, int64_t C, int bits, bool affine, float eps, float* B) {
  check_border_args(C, bits, eps);
  const int n = (1 << bits) - 1;
  const int64_t P = affine ? 2 : n;
  for (int64_t i = 0; i < C * P; ++i)
    LOWBIT_CHECK(std::isfinite(param[i]), "border parameters must be finite (entry " << i << ")");
  for (int64_t c = 0; c < C; ++c)
    for (int k = 0; k < n; ++k)
      B[c * n + k] = std::min(std::max(border_pre(param, c, k, affine, n), eps), 1.0f - eps);
}

void border_table_backward(const float* param, const float* gB, int64_t C, int bits, bool affine,
                           float eps, float* gparam) {
  check_border_args(C, bits, eps);
  const int n = (1 << bits) - 1;
  for (int64_t c = 0; c < C; ++c) {
    double ga = 0, gb = 0;
    for (int k = 0; k < n; ++k) {
      const float pre = border_pre(param, c, k, affine, n);
      // One-sided straight-through clamp: a clamped border passes only a gradient whose
      // descent step moves it back inside [eps, 1 - eps].
      float g = gB[c * n + k];
      if ((pre < eps && g > 0.0f) || (pre > 1.0f - eps && g < 0.0f)) g = 0.0f;
      if (affine) {
        ga += double(g) * double((float(k) + 0.5f) / float(n));
        gb += double(g);
      } else {
        gparam[c * n + k] = g;
      }
    }
    if (affine) {
      gparam[2 * c] = float(ga);
      gparam[2 * c + 1] = float(gb);
    }
  }
}

void border_quant_forward(ConstMatrixView<float> x, const float* B, const BorderParams& p,
                          MatrixView<float> out) {
  check_border_params(p);
  check_layout(x.rows, x.cols, p.C);
  const int n = (1 << p.bits) - 1;
  const float qmax = float(n), s = p.scale, z = p.zero, inv_tau = 1.0f / p.tau;
  const int64_t C = p.C;
  rows_checked(x.rows, x.cols, "border_quant_forward", [&](int64_t r0, int64_t r1) {
    bool bad = false;
    for (int64_t r = r0; r < r1; ++r) {
      const float* Bc = B + (r % C) * n;
      const float* xr = x.row(r);
      float* o = out.row(r);
      for (int64_t i = 0; i < x.cols; ++i) {
        const float v = xr[i] / s + z;
        float q;
        if (!(v >= 0.0f)) {
          bad |= v != v;
          q = 0.0f;
        } else if (v >= qmax) {
          q = qmax;
        } else {
          const float kf = std::floor(v), f = v - kf;
          const float b = Bc[int(kf)];
          q = p.hard ? kf + (f >= b ? 1.0f : 0.0f) : kf + sigmoidf((f - b) * inv_tau);
        }
        o[i] = s * (q - z);
      }
    }
    return bad;
  });
}

void border_quant_backward(ConstMatrixView<float> x, ConstMatrixView<float> gy, const float* B,
                           const BorderParams& p, MatrixView<float> gx, float* gB, float* gscale) {
  check_border_params(p);
  check_layout(x.rows, x.cols, p.C);
  const int n = (1 << p.bits) - 1;
  const float qmax = float(n), s = p.scale, z = p.zero, inv_tau = 1.0f / p.tau;
  const Units U(x.rows, x.cols, p.C);
  const int64_t nu = U.count();
  const int64_t stride = n + 1;  // per unit: n border sums, then the scale sum
  std::vector<double> part(size_t(std::max<int64_t>(nu, 1) * stride), 0.0);
  std::vector<char> bad(size_t(std::max<int64_t>(nu, 1)), 0);
  parallel_for(0, nu, U.grain(), [&](int64_t u0, int64_t u1) {
    for (int64_t u = u0; u < u1; ++u) {
      const int64_t c = U.channel(u);
      const float* Bc = B + c * n;
      double* acc = part.data() + u * stride;
      double gs = 0;
      for (int64_t o = U.row_begin(u); o < U.row_end(u); ++o) {
        const int64_t r = o * U.C + c;
        const float* xr = x.row(r);
        const float* gr = gy.row(r);
        float* gxr = gx.row(r);
        for (int64_t i = 0; i < x.cols; ++i) {
          const float v = xr[i] / s + z, g = gr[i];
          if (!(v >= 0.0f)) {
            bad[size_t(u)] |= v != v;
            gxr[i] = 0.0f;
            gs += double(g) * double(0.0f - z);
          } else if (v >= qmax) {
            gxr[i] = 0.0f;
            gs += double(g) * double(qmax - z);
          } else {
            const float kf = std::floor(v), f = v - kf;
            const int k = int(kf);
            const float h = sigmoidf((f - Bc[k]) * inv_tau);
            const float q = p.hard ? kf + (f >= Bc[k] ? 1.0f : 0.0f) : kf + h;
            gxr[i] = g;
            gs += double(g) * double(q - v);
            acc[k] -= double(g) * double(s) * double(h * (1.0f - h)) * double(inv_tau);
          }
        }
      }
      acc[n] = gs;
    }
  });
  for (char b : bad) LOWBIT_CHECK(!b, "border_quant_backward: x contains NaN");
  double gs = 0;
  for (int64_t c = 0; c < U.C; ++c) {
    for (int k = 0; k < n; ++k) {
      double t = 0;
      for (int64_t j = 0; j < U.nOB; ++j) t += part[size_t((c * U.nOB + j) * stride + k)];
      gB[c * n + k] = float(t);
    }
    for (int64_t j = 0; j < U.nOB; ++j) gs += part[size_t((c * U.nOB + j) * stride + n)];
  }
  *gscale = float(gs);
}

// ---- N2UQ LTQ ------------------------------------------------------------------------------

namespace {

void check_ltq_params(const LtqParams& p) {
  check_bits(p.bits);
  LOWBIT_CHECK(p.C >= 1, "C (channels) must be >= 1, got " << p.C);
  LOWBIT_CHECK(std::isfinite(p.out_scale) && p.out_scale > 0,
               "out_scale must be > 0, got " << p.out_scale);
  LOWBIT_CHECK(std::isfinite(p.zero) && p.zero == std::nearbyint(p.zero),
               "zero must be an integer, got " << p.zero);
  LOWBIT_CHECK(std::isfinite(p.a_min) && p.a_min > 0, "a_min must be > 0, got " << p.a_min);
  LOWBIT_CHECK(std::isfinite(p.s1_min) && p.s1_min > 0, "s1_min must be > 0, got " << p.s1_min);
}

// Effective (floored) parameters, segment ends D (C, n+1) and thresholds T (C, n), u units.
struct LtqTables {
  int n;
  std::vector<float> a, s1, D, T;
  LtqTables(const float* start, const float* a_raw, const float* s1_raw, const LtqParams& p)
      : n((1 << p.bits) - 1) {
    const int64_t C = p.C;
    a.resize(size_t(C * n));
    s1.resize(size_t(C));
    D.resize(size_t(C * (n + 1)));
    T.resize(size_t(C * n));
    for (int64_t c = 0; c < C; ++c) {
      LOWBIT_CHECK(std::isfinite(start[c]) && std::isfinite(s1_raw[c]),
                   "start and in_scale must be finite (channel " << c << ")");
      s1[c] = std::max(s1_raw[c], p.s1_min);
      float d = start[c];
      D[c * (n + 1)] = d;
      for (int i = 0; i < n; ++i) {
        LOWBIT_CHECK(std::isfinite(a_raw[c * n + i]),
                     "interval lengths a must be finite (channel " << c << ", interval " << i << ")");
        const float ai = std::max(a_raw[c * n + i], p.a_min);
        a[c * n + i] = ai;
        T[c * n + i] = d + ai * 0.5f;
        d = d + ai;
        D[c * (n + 1) + i + 1] = d;
      }
    }
  }
};

}  // namespace

void ltq_forward(ConstMatrixView<float> x, const float* start, const float* a, const float* s1,
                 const LtqParams& p, MatrixView<float> out) {
  check_ltq_params(p);
  check_layout(x.rows, x.cols, p.C);
  const LtqTables tb(start, a, s1, p);
  const int n = tb.n;
  const int64_t C = p.C;
  const float s2 = p.out_scale, z = p.zero;
  rows_checked(x.rows, x.cols, "ltq_forward", [&](int64_t r0, int64_t r1) {
    bool bad = false;
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t c = r % C;
      const float* Tc = tb.T.data() + c * n;
      const float* xr = x.row(r);
      float* o = out.row(r);
      bad |= has_nan(xr, x.cols);
      count_row(Tc, n, xr, tb.s1[c], x.cols, o);  // u = s1 x, as in the backward
      for (int64_t i = 0; i < x.cols; ++i) o[i] = s2 * (o[i] - z);
    }
    return bad;
  });
}

void ltq_backward(ConstMatrixView<float> x, ConstMatrixView<float> gy, const float* start,
                  const float* a, const float* s1, const LtqParams& p, MatrixView<float> gx,
                  float* gstart, float* ga, float* gs1, float* gout_scale) {
  check_ltq_params(p);
  check_layout(x.rows, x.cols, p.C);
  const LtqTables tb(start, a, s1, p);
  const int n = tb.n;
  const float s2 = p.out_scale, z = p.zero;
  const Units U(x.rows, x.cols, p.C);
  const int64_t nu = U.count();
  // Per unit: S_i = sum g, M_i = sum g (u - d_{i-1}), P_i = sum g x for each segment, then the
  // output-scale sum.
  const int64_t stride = 3 * int64_t(n) + 1;
  std::vector<double> part(size_t(std::max<int64_t>(nu, 1) * stride), 0.0);
  std::vector<char> bad(size_t(std::max<int64_t>(nu, 1)), 0);
  // d out / d x by segment, 0 outside [d_0, d_n): w[j] for j = #{segment ends d_k <= u}.
  std::vector<float> w(size_t(p.C * (n + 2)), 0.0f);
  for (int64_t c = 0; c < p.C; ++c)
    for (int i = 0; i < n; ++i) w[size_t(c * (n + 2) + i + 1)] = (s2 / tb.a[c * n + i]) * tb.s1[c];
  // A block of a row at a time: the code k of every element (count_row) and its segment index j
  // by compare-and-add (vectorises); then the sums, each split over kLanes
  // interleaved accumulators (element i of a block feeds lane i % kLanes) so that consecutive
  // elements of one segment do not wait on each other's additions. Elements outside every
  // segment add to a spare slot n. Lanes are summed in order: the result depends on the
  // shape alone.
  constexpr int kLanes = 4;
  const int ns = n + 1;  // slots per sum: the n segments and the spare
  parallel_for(0, nu, U.grain(), [&](int64_t u0, int64_t u1) {
    constexpr int64_t kBlock = 256;
    float ub[kBlock];
    int32_t kb[kBlock], jb[kBlock];
    std::vector<double> acc(size_t(kLanes * (3 * ns + 1)));
    for (int64_t u = u0; u < u1; ++u) {
      const int64_t c = U.channel(u);
      const float* Dc = tb.D.data() + c * (n + 1);
      const float* Tc = tb.T.data() + c * n;
      const float* wc = w.data() + c * (n + 2);
      const float sc = tb.s1[c];
      std::fill(acc.begin(), acc.end(), 0.0);
      bool nan = false;
      for (int64_t o = U.row_begin(u); o < U.row_end(u); ++o) {
        const int64_t r = o * U.C + c;
        const float* xr = x.row(r);
        const float* gr = gy.row(r);
        float* gxr = gx.row(r);
        for (int64_t i0 = 0; i0 < x.cols; i0 += kBlock) {
          const int64_t m = std::min(kBlock, x.cols - i0);
          for (int64_t i = 0; i < m; ++i) ub[i] = sc * xr[i0 + i];
          for (int64_t i = 0; i < m; ++i) nan |= ub[i] != ub[i];
          count_row(Tc, n, xr + i0, sc, m, kb);  // the output codes, as ltq_forward's
          // n + 1 = 2^b segment ends: not count_le's 2^b - 1, so std::upper_bound above 4 bits
          if (n <= 15) {
            for (int64_t i = 0; i < m; ++i) jb[i] = 0;
            for (int k = 0; k <= n; ++k) {
              const float dk = Dc[k];
              for (int64_t i = 0; i < m; ++i) jb[i] += ub[i] >= dk ? 1 : 0;
            }
          } else {
            for (int64_t i = 0; i < m; ++i) jb[i] = int32_t(std::upper_bound(Dc, Dc + n + 1, ub[i]) - Dc);
          }
          for (int64_t i = 0; i < m; ++i) gxr[i0 + i] = gr[i0 + i] * wc[jb[i]];
          for (int64_t i = 0; i < m; ++i) {
            const double g = gr[i0 + i];
            const int j = jb[i];
            const int s = (j == 0 || j == n + 1) ? n : j - 1;
            double* A = acc.data() + (i % kLanes) * (3 * ns + 1);
            A[s] += g;                                     // S
            A[ns + s] += g * double(ub[i] - Dc[s]);        // M
            A[2 * ns + s] += g * double(xr[i0 + i]);       // P
            A[3 * ns] += g * double(float(kb[i]) - z);     // the output-scale sum
          }
        }
      }
      if (nan) bad[size_t(u)] = 1;
      double* S = part.data() + u * stride;
      double* M = S + n;
      double* P = M + n;
      double g2 = 0;
      for (int l = 0; l < kLanes; ++l) {
        const double* A = acc.data() + l * (3 * ns + 1);
        for (int i = 0; i < n; ++i) {
          S[i] += A[i];
          M[i] += A[ns + i];
          P[i] += A[2 * ns + i];
        }
        g2 += A[3 * ns];
      }
      part[size_t(u * stride + 3 * n)] = g2;
    }
  });
  for (char b : bad) LOWBIT_CHECK(!b, "ltq_backward: x contains NaN");
  std::vector<double> S(n), M(n), P(n);
  double g2 = 0;
  for (int64_t c = 0; c < U.C; ++c) {
    std::fill(S.begin(), S.end(), 0.0);
    std::fill(M.begin(), M.end(), 0.0);
    std::fill(P.begin(), P.end(), 0.0);
    for (int64_t j = 0; j < U.nOB; ++j) {
      const double* q = part.data() + (c * U.nOB + j) * stride;
      for (int i = 0; i < n; ++i) {
        S[i] += q[i];
        M[i] += q[n + i];
        P[i] += q[2 * n + i];
      }
      g2 += q[3 * n];
    }
    const float* ac = tb.a.data() + c * n;
    // d out / d a_j = -s2 (sum_{i>j} S_i / a_i + M_j / a_j^2); d/d start = -s2 sum_i S_i / a_i;
    // d/d s1 = s2 sum_i P_i / a_i.
    double suffix = 0, ps = 0;
    for (int i = n - 1; i >= 0; --i) {
      const double ai = ac[i];
      const bool live = a[c * n + i] >= p.a_min;
      ga[c * n + i] = live ? float(-double(s2) * (suffix + M[i] / (ai * ai))) : 0.0f;
      suffix += S[i] / ai;
      ps += P[i] / ai;
    }
    gstart[c] = float(-double(s2) * suffix);
    gs1[c] = s1[c] >= p.s1_min ? float(double(s2) * ps) : 0.0f;
  }
  *gout_scale = float(g2);
}

void ltq_thresholds(const float* start, const float* a, const float* s1, const LtqParams& p,
                    float* thresholds) {
  check_ltq_params(p);
  const LtqTables tb(start, a, s1, p);
  const int n = tb.n;
  for (int64_t c = 0; c < p.C; ++c)
    for (int i = 0; i < n; ++i) thresholds[c * n + i] = tb.T[c * n + i] / tb.s1[c];
}

// ---- shared inference form -----------------------------------------------------------------

void threshold_quantize(ConstMatrixView<float> x, const float* t, int64_t C, int bits,
                        MatrixView<uint8_t> codes) {
  check_bits(bits);
  check_layout(x.rows, x.cols, C);
  const int n = (1 << bits) - 1;
  for (int64_t c = 0; c < C; ++c)
    for (int k = 0; k < n; ++k) {
      LOWBIT_CHECK(!std::isnan(t[c * n + k]), "thresholds must not be NaN (channel " << c << ")");
      LOWBIT_CHECK(k == 0 || t[c * n + k - 1] <= t[c * n + k],
                   "thresholds must be non-decreasing: channel " << c << ", t[" << k - 1
                                                                 << "] > t[" << k << "]");
    }
  rows_checked(x.rows, x.cols, "threshold_quantize", [&](int64_t r0, int64_t r1) {
    bool bad = false;
    for (int64_t r = r0; r < r1; ++r) {
      const float* xr = x.row(r);
      bad |= has_nan(xr, x.cols);
      count_row(t + (r % C) * n, n, xr, 1.0f, x.cols, codes.row(r));
    }
    return bad;
  });
}

}  // namespace lowbit
