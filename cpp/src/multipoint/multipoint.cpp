#include "lowbit/multipoint.h"

#include <Eigen/Dense>
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "lowbit/check.h"
#include "lowbit/parallel.h"
#include "lowbit/quant.h"

namespace lowbit {

namespace {

inline size_t sz(int64_t x) { return static_cast<size_t>(x); }

struct Breakpoint {
  double a;   // the scale at which q_j moves one level further from zero
  int32_t j;  // the entry
};

struct SweepResult {
  double f;   // ||r - a q||^2 at the best a (from the quadratic, for choosing)
  int64_t t;  // number of breakpoints applied at the best interval
  double a;   // the best scale
};

// Per-thread scratch of the sweep.
struct SweepScratch {
  std::vector<Breakpoint> bp;
  std::vector<int32_t> level;
};

// Sweep of a over (0, inf) for the grid q in [-lneg, lpos]^d (see multipoint.h). Leaves the
// sorted breakpoints in s.bp so that the best q can be replayed from its first t entries.
SweepResult sweep(const float* r, int64_t d, int lneg, int lpos, SweepScratch& s) {
  s.bp.clear();
  double rr = 0.0;
  for (int64_t j = 0; j < d; ++j) {
    const double v = r[j];
    rr += v * v;
    const int levels = v > 0 ? lpos : (v < 0 ? lneg : 0);
    const double m = std::fabs(v);
    for (int k = 0; k < levels; ++k) s.bp.push_back({m / (k + 0.5), int32_t(j)});
  }
  // Largest a first; for one j the breakpoints fall with k, so (a desc, j asc) applies each
  // entry's levels in order, and the order is total (deterministic).
  std::sort(s.bp.begin(), s.bp.end(), [](const Breakpoint& x, const Breakpoint& y) {
    return x.a > y.a || (x.a == y.a && x.j < y.j);
  });
  s.level.assign(sz(d), 0);
  SweepResult best{rr, 0, 0.0};
  double S = 0.0, Q = 0.0, hi = std::numeric_limits<double>::infinity();
  const int64_t n = int64_t(s.bp.size());
  for (int64_t t = 0;; ++t) {
    // After t breakpoints q is fixed for a in [lo, hi].
    const double lo = t < n ? s.bp[sz(t)].a : 0.0;
    if (Q > 0) {
      const double a = std::min(std::max(S / Q, lo), hi);
      const double f = rr - 2.0 * a * S + a * a * Q;
      if (f < best.f) best = {f, t, a};
    }
    if (t == n) break;
    const Breakpoint& b = s.bp[sz(t)];
    const int32_t k = s.level[sz(b.j)]++;
    S += std::fabs(double(r[b.j]));
    Q += 2.0 * k + 1.0;
    hi = b.a;
  }
  return best;
}

// Writes the codes u = q + z of the sweep's first t breakpoints.
void replay(const float* r, int64_t d, int64_t t, int z, SweepScratch& s, uint8_t* codes) {
  s.level.assign(sz(d), 0);
  for (int64_t i = 0; i < t; ++i) ++s.level[sz(s.bp[sz(i)].j)];
  for (int64_t j = 0; j < d; ++j) {
    const int q = r[j] > 0 ? s.level[sz(j)] : -s.level[sz(j)];
    codes[j] = uint8_t(q + z);
  }
}

double best_point(const float* r, int64_t d, int bits, float* scale, float* zero, uint8_t* codes,
                  SweepScratch& s) {
  const int top = (1 << bits) - 1;
  const int half = 1 << (bits - 1);
  // Grid z = 2^(b-1): q in [-2^(b-1), 2^(b-1) - 1]; mirrored grid z = 2^(b-1) - 1.
  const SweepResult up = sweep(r, d, half, top - half, s);
  SweepResult best = up;
  int best_z = half;
  replay(r, d, up.t, half, s, codes);
  const SweepResult down = sweep(r, d, half - 1, top - (half - 1), s);
  if (down.f < up.f) {
    best = down;
    best_z = half - 1;
    replay(r, d, down.t, half - 1, s, codes);
  }
  const float a = float(best.a);
  *scale = a;
  *zero = float(best_z);
  double err = 0.0;
  for (int64_t j = 0; j < d; ++j) {
    const double e = double(r[j]) - double(a) * double(int(codes[j]) - best_z);
    err += e * e;
  }
  return err;
}

void check_bits(int bits) {
  LOWBIT_CHECK(bits >= kMinBits && bits <= kMaxBits,
               "bits must be in [" << kMinBits << ", " << kMaxBits << "], got " << bits);
}

using RowMat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using ConstMap = Eigen::Map<const RowMat>;

}  // namespace

double multipoint_best_point(const float* r, int64_t d, int bits, float* scale, float* zero,
                             uint8_t* codes) {
  check_bits(bits);
  SweepScratch s;
  return best_point(r, d, bits, scale, zero, codes, s);
}

void multipoint_sweep(ConstMatrixView<float> R, int bits, float* scale, float* zero,
                      MatrixView<uint8_t> codes, double* err) {
  check_bits(bits);
  LOWBIT_CHECK(codes.rows == R.rows && codes.cols == R.cols,
               "codes must be (" << R.rows << ", " << R.cols << "), got (" << codes.rows << ", "
                                 << codes.cols << ")");
  parallel_for(0, R.rows, 4, [&](int64_t r0, int64_t r1) {
    SweepScratch s;
    for (int64_t r = r0; r < r1; ++r) {
      const double e = best_point(R.row(r), R.cols, bits, scale + r, zero + r, codes.row(r), s);
      if (err) err[r] = e;
    }
  });
}

int64_t multipoint_build(ConstMatrixView<float> W, ConstMatrixView<float> base, const float* H,
                         int64_t groups, const MultipointOptions& opt, MultipointPoints out,
                         double* err_before, double* err_after) {
  check_bits(opt.bits);
  const int64_t C = W.rows, d = W.cols;
  LOWBIT_CHECK(base.rows == C && base.cols == d,
               "base must be (" << C << ", " << d << "), got (" << base.rows << ", " << base.cols
                                << ")");
  LOWBIT_CHECK(groups >= 1 && C % groups == 0,
               "groups=" << groups << " must divide the " << C << " output channels");
  LOWBIT_CHECK(opt.budget >= 0, "budget must be >= 0, got " << opt.budget);
  LOWBIT_CHECK(opt.max_points >= 1, "max_points must be >= 1, got " << opt.max_points);
  LOWBIT_CHECK(opt.tolerance >= 0, "tolerance must be >= 0, got " << opt.tolerance);
  LOWBIT_CHECK(out.codes.rows >= opt.budget && out.codes.cols == d,
               "point codes must be (" << opt.budget << ", " << d << "), got (" << out.codes.rows
                                       << ", " << out.codes.cols << ")");
  LOWBIT_CHECK((opt.g0 == nullptr) == (opt.e0 == nullptr), "g0 and e0 come together");
  for (int64_t i = 0; i < opt.order_len; ++i)
    LOWBIT_CHECK(opt.order[i] >= 0 && opt.order[i] < C,
                 "order[" << i << "] = " << opt.order[i] << " is not a channel in [0, " << C
                          << ")");
  const int64_t per_group = C / groups;
  const int top = (1 << opt.bits) - 1;
  auto H_of = [&](int64_t c) { return ConstMap(H + (c / per_group) * d * d, d, d); };

  // State per channel: residual delta = w - w~ (float, as the fake-quant weight sums), g = H
  // delta (double), output error e = delta^T H delta, energy = w^T H w, point count.
  std::vector<float> resid(sz(C * d));
  std::vector<double> g(sz(C * d));
  std::vector<double> e(sz(C)), energy(sz(C), 0.0);
  std::vector<int> npoints(sz(C), 1);
  // The next candidate point of each channel.
  std::vector<uint8_t> cand_codes(sz(C * d));
  std::vector<float> cand_scale(sz(C)), cand_zero(sz(C));
  std::vector<double> cand_gain(sz(C));

  // Fixed chunks of channels: every channel's numbers come from one thread in one order.
  constexpr int64_t kGrain = 8;
  parallel_for(0, C, kGrain, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const auto h = H_of(c);
      Eigen::VectorXf delta(d), w(d);
      for (int64_t j = 0; j < d; ++j) {
        w[j] = W(c, j);
        delta[j] = W(c, j) - base(c, j);
        resid[sz(c * d + j)] = delta[j];
      }
      if (opt.g0 != nullptr) {
        for (int64_t j = 0; j < d; ++j) g[sz(c * d + j)] = opt.g0[c * d + j];
        e[sz(c)] = opt.e0[c];
      } else {
        const Eigen::VectorXf hd = h * delta;
        double ec = 0.0;
        for (int64_t j = 0; j < d; ++j) {
          g[sz(c * d + j)] = hd[j];
          ec += double(delta[j]) * double(hd[j]);
        }
        e[sz(c)] = ec;
      }
      if (opt.tolerance > 0) {
        const Eigen::VectorXf hw = h * w;
        double en = 0.0;
        for (int64_t j = 0; j < d; ++j) en += double(w[j]) * double(hw[j]);
        energy[sz(c)] = en;
      }
    }
  });
  for (int64_t c = 0; c < C; ++c) err_before[c] = e[sz(c)];

  auto allowed = [&](int64_t c) {
    return npoints[sz(c)] < opt.max_points && e[sz(c)] > 0 &&
           e[sz(c)] > opt.tolerance * energy[sz(c)];
  };

  // H q for the integer vector q = codes - z (float matvec, like the fake-quant weights).
  auto h_times_q = [&](int64_t c, const uint8_t* codes, float z, Eigen::VectorXf& q,
                       Eigen::VectorXf& hq) {
    for (int64_t j = 0; j < d; ++j) q[j] = float(codes[j]) - z;
    hq.noalias() = H_of(c) * q;
  };

  // The next point of channel c: the sweep's q, its scale refit to the output error when
  // asked; gain = e_c before - e_c after.
  auto candidate = [&](int64_t c, SweepScratch& s, Eigen::VectorXf& q, Eigen::VectorXf& hq) {
    uint8_t* codes = cand_codes.data() + c * d;
    float a, z;
    best_point(resid.data() + c * d, d, opt.bits, &a, &z, codes, s);
    cand_gain[sz(c)] = -1.0;
    if (!(a > 0)) return;
    h_times_q(c, codes, z, q, hq);
    const double* gc = g.data() + c * d;
    double qg = 0.0, qhq = 0.0;
    for (int64_t j = 0; j < d; ++j) {
      qg += double(q[j]) * gc[j];
      qhq += double(q[j]) * double(hq[j]);
    }
    if (opt.output_scale && qhq > 0) {
      double ad = qg / qhq;
      if (ad < 0) {  // the mirrored grid: u -> 2^b - 1 - u, z -> 2^b - 1 - z
        for (int64_t j = 0; j < d; ++j) codes[j] = uint8_t(top - codes[j]);
        z = float(top) - z;
        ad = -ad;
        qg = -qg;
      }
      a = float(ad);
      if (!(a > 0)) return;
    }
    cand_scale[sz(c)] = a;
    cand_zero[sz(c)] = z;
    cand_gain[sz(c)] = 2.0 * double(a) * qg - double(a) * double(a) * qhq;
  };

  int64_t count = 0;
  Eigen::VectorXf q(d), hq(d);
  SweepScratch scratch;
  auto commit = [&](int64_t c) {
    const uint8_t* codes = cand_codes.data() + c * d;
    const float a = cand_scale[sz(c)], z = cand_zero[sz(c)];
    h_times_q(c, codes, z, q, hq);
    float* rc = resid.data() + c * d;
    double* gc = g.data() + c * d;
    for (int64_t j = 0; j < d; ++j) {
      rc[j] -= a * q[j];
      gc[j] -= double(a) * double(hq[j]);
    }
    e[sz(c)] -= cand_gain[sz(c)];
    ++npoints[sz(c)];
    out.channel[count] = int32_t(c);
    out.scale[count] = a;
    out.zero[count] = z;
    out.gain[count] = cand_gain[sz(c)];
    std::copy(codes, codes + d, out.codes.row(count));
    ++count;
  };

  if (opt.order != nullptr) {
    // Random placement: offers in the given order, no heap.
    for (int64_t i = 0; i < opt.order_len && count < opt.budget; ++i) {
      const int64_t c = opt.order[i];
      if (!allowed(c)) continue;
      candidate(c, scratch, q, hq);
      if (cand_gain[sz(c)] > 0) commit(c);
    }
  } else if (opt.budget > 0) {
    parallel_for(0, C, kGrain, [&](int64_t c0, int64_t c1) {
      SweepScratch s;
      Eigen::VectorXf qq(d), hh(d);
      for (int64_t c = c0; c < c1; ++c)
        if (allowed(c)) candidate(c, s, qq, hh);
        else cand_gain[sz(c)] = -1.0;
    });
    // Max-heap on the gain; equal gains go to the lower channel.
    using Entry = std::pair<double, int64_t>;
    auto less = [](const Entry& x, const Entry& y) {
      return x.first < y.first || (x.first == y.first && x.second > y.second);
    };
    std::vector<Entry> heap;
    for (int64_t c = 0; c < C; ++c)
      if (cand_gain[sz(c)] > 0) heap.push_back({cand_gain[sz(c)], c});
    std::make_heap(heap.begin(), heap.end(), less);
    while (!heap.empty() && count < opt.budget) {
      std::pop_heap(heap.begin(), heap.end(), less);
      const int64_t c = heap.back().second;
      heap.pop_back();
      commit(c);
      if (!allowed(c)) continue;
      candidate(c, scratch, q, hq);
      if (cand_gain[sz(c)] > 0) {
        heap.push_back({cand_gain[sz(c)], c});
        std::push_heap(heap.begin(), heap.end(), less);
      }
    }
  }
  for (int64_t c = 0; c < C; ++c) err_after[c] = e[sz(c)];
  return count;
}

namespace {

void check_channels(const int32_t* channel, int64_t P, int64_t N) {
  for (int64_t p = 0; p < P; ++p)
    LOWBIT_CHECK(channel[p] >= 0 && channel[p] < N,
                 "channel[" << p << "] = " << channel[p] << " is not a channel in [0, " << N << ")");
}

// Scratch of the fused product, kept per calling thread between calls (no allocation and no
// fresh pages per call); released when it grew past 64 MiB.
template <class Product>
void fused_product(const PackedMatrix& w, ConstMatrixView<float> x, const int32_t* channel,
                   int64_t P, MatrixView<float> out, Product&& product) {
  const int64_t rows = w.shape.rows;
  LOWBIT_CHECK(P >= 0 && P <= rows, "P = " << P << " points but the packed matrix has " << rows
                                           << " rows");
  const int64_t N = rows - P;
  LOWBIT_CHECK(out.rows == x.rows && out.cols == N,
               "out must be (" << x.rows << ", " << N << "), got (" << out.rows << ", " << out.cols
                               << ")");
  check_channels(channel, P, N);
  if (P == 0) {
    product(out);
    return;
  }
  thread_local std::vector<float> scratch;
  const size_t need = sz(x.rows * rows);
  if (scratch.size() < need) scratch.resize(need);
  MatrixView<float> y_ext{scratch.data(), x.rows, rows, rows};
  product(y_ext);
  multipoint_fold(ConstMatrixView<float>{scratch.data(), x.rows, rows, rows}, channel, P, out);
  if (scratch.size() > (size_t(64) << 20) / sizeof(float)) std::vector<float>().swap(scratch);
}

}  // namespace

void multipoint_qmatmul_f32(const PackedMatrix& w, ConstMatrixView<float> x, const float* bias,
                            const int32_t* channel, int64_t P, MatrixView<float> out) {
  fused_product(w, x, channel, P, out,
                [&](MatrixView<float> y) { qmatmul_f32(w, x, bias, y); });
}

void multipoint_qmatmul_a8(const PackedMatrix& w, ConstMatrixView<float> x, const ActQuant& aq,
                           const float* row_sums, const float* bias, const int32_t* channel,
                           int64_t P, MatrixView<float> out) {
  fused_product(w, x, channel, P, out,
                [&](MatrixView<float> y) { qmatmul_a8(w, x, aq, row_sums, bias, y); });
}

void multipoint_fold(ConstMatrixView<float> y_ext, const int32_t* channel, int64_t P,
                     MatrixView<float> out) {
  const int64_t N = out.cols;
  LOWBIT_CHECK(P >= 0 && y_ext.cols == N + P && y_ext.rows == out.rows,
               "y_ext must be (" << out.rows << ", " << N + P << "), got (" << y_ext.rows << ", "
                                 << y_ext.cols << ")");
  check_channels(channel, P, N);
  parallel_for(0, out.rows, 64, [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m) {
      const float* y = y_ext.row(m);
      float* o = out.row(m);
      std::copy(y, y + N, o);
      for (int64_t p = 0; p < P; ++p) o[channel[p]] += y[N + p];
    }
  });
}

}  // namespace lowbit
