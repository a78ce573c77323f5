#include "lowbit/rounding.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "lowbit/check.h"
#include "lowbit/parallel.h"
#include "matmul.h"
#include "rounding_kernels.h"

namespace lowbit {

using rounding_detail::matmul;

namespace {

// Rows of W per parallel chunk of the elementwise passes: about 16k weights, fixed by d only.
int64_t row_grain(int64_t d) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(d, 1)); }

inline float qmax_of(const QuantParams& qp) { return float((1 << qp.bits) - 1); }

// Calls fn(c0, c1, s, z) for each grid segment of row r (constant scale and zero).
template <class Fn>
void for_segments(const RoundingLayer& L, int64_t r, Fn&& fn) {
  const int64_t u0 = (L.qp.R == 1 ? 0 : r) * L.qp.G, gsize = L.W.cols / L.qp.G;
  for (int64_t g = 0; g < L.qp.G; ++g)
    fn(g * gsize, (g + 1) * gsize, L.qp.scale[u0 + g], L.qp.zero[u0 + g]);
}

// A zero point z = zi + zf splits into an integer part and a fraction zf in [0, 1): 0 for the
// usual integer zero points, 1/2 for mid-rise grids (N2UQ's weight grid, no zero level). The grid
// position of w is w / s + z; its integer part is floor(w / s + zf) + zi. With zf = 0 this is
// floor(w / s) + z bit for bit (w / s + 0.0f == w / s).
inline float zero_frac(float z) { return z - std::floor(z); }

// base = floor(W / s + zf) + zi (o, d): the integer part of every soft weight's grid position.
std::vector<float> grid_base(const RoundingLayer& L) {
  const int64_t d = L.W.cols;
  std::vector<float> base(size_t(L.W.rows * d));
  parallel_for(0, L.W.rows, row_grain(d), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r)
      for_segments(L, r, [&](int64_t c0, int64_t c1, float s, float z) {
        const float* w = L.W.row(r);
        float* b = base.data() + r * d;
        const float zf = zero_frac(z), zi = z - zf;
        for (int64_t c = c0; c < c1; ++c) b[c] = std::floor(w[c] / s + zf) + zi;
      });
  });
  return base;
}

// sigma(V), h(V), W~(V) of all rows; outputs (o, d) contiguous or nullptr.
void soft_all(const RoundingLayer& L, const float* base, const float* V, int64_t v_stride,
              float* sig, float* h, float* Wt) {
  const int64_t d = L.W.cols;
  const float qmax = qmax_of(L.qp);
  const auto k = rounding_detail::kernels();
  parallel_for(0, L.W.rows, row_grain(d), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r)
      for_segments(L, r, [&](int64_t c0, int64_t c1, float s, float z) {
        const int64_t i = r * d + c0;
        k.soft(c1 - c0, base + i, V + r * v_stride + c0, s, z, qmax, sig ? sig + i : nullptr,
               h ? h + i : nullptr, Wt ? Wt + i : nullptr);
      });
  });
}

struct Partial {
  double reg = 0;
  int64_t soft = 0;
};

// The fused elementwise step (rounding_kernels.h) over all rows; g is overwritten.
RoundingStats update_all(const RoundingLayer& L, RoundingState st, const float* base, float* g,
                         float* sig, float* Wt, int64_t t, const RoundingSchedule& sch) {
  const int64_t o = L.W.rows, d = L.W.cols, grain = row_grain(d);
  const auto k = rounding_detail::kernels();
  rounding_detail::UpdateArgs a{};
  a.qmax = qmax_of(L.qp);
  a.b1 = sch.adam_beta1;
  a.b2 = sch.adam_beta2;
  a.one_m_b1 = 1.0f - a.b1;
  a.one_m_b2 = 1.0f - a.b2;
  a.step_size = float(double(sch.lr) / (1.0 - std::pow(double(a.b1), double(t))));
  a.bc2_sqrt = float(std::sqrt(1.0 - std::pow(double(a.b2), double(t))));
  a.eps = sch.adam_eps;
  a.lam = sch.reg_lambda;
  a.beta = sch.beta_at(t);
  a.reg_on = sch.reg_on(t);
  std::vector<Partial> parts(size_t((o + grain - 1) / grain));
  parallel_for(0, o, grain, [&](int64_t r0, int64_t r1) {
    Partial p;
    for (int64_t r = r0; r < r1; ++r)
      for_segments(L, r, [&](int64_t c0, int64_t c1, float s, float z) {
        rounding_detail::UpdateArgs as = a;
        as.s = s;
        as.z = z;
        const int64_t i = r * d + c0, n = c1 - c0;
        p.soft += k.update(n, base + i, g + i, st.V.row(r) + c0, st.m.row(r) + c0,
                           st.v.row(r) + c0, sig + i, Wt + i, as);
        if (a.reg_on) {
          double acc = 0;
          for (int64_t j = 0; j < n; ++j) acc += double(g[i + j]);
          p.reg += acc;
        }
      });
    parts[size_t(r0 / grain)] = p;
  });
  RoundingStats out;
  int64_t soft = 0;
  for (const Partial& p : parts) {
    out.reg_loss += p.reg;
    soft += p.soft;
  }
  out.reg_loss *= double(sch.reg_lambda);
  out.soft_frac = double(soft) / double(std::max<int64_t>(1, o * d));
  return out;
}

void check_state(const RoundingLayer& L, const RoundingState& st) {
  const int64_t o = L.W.rows, d = L.W.cols;
  for (auto* mv : {&st.V, &st.m, &st.v})
    LOWBIT_CHECK(mv->rows == o && mv->cols == d,
                 "optimiser state must be (" << o << ", " << d << "), got (" << mv->rows << ", "
                                             << mv->cols << ")");
}

// P = W C^T per group: (o, d); group g's rows use C[g].
void gram_target(const RoundingLayer& L, const GramObjective& gobj, float* P) {
  const int64_t o = L.W.rows, d = L.W.cols, og = o / L.groups;
  for (int g = 0; g < L.groups; ++g)
    matmul(false, true, og, d, d, 1.0f, L.W.row(g * og), L.W.stride, gobj.C + int64_t(g) * d * d,
           d, 0.0f, P + g * og * d, d);
}

// Gram objective at W~: writes 2 (W~ H - P) / n into grad (o, d), returns the loss.
// Out is scratch (o, d); grad may alias Out.
double gram_eval(const RoundingLayer& L, const float* Wt, const GramObjective& gobj,
                 const float* P, float* Out, float* grad) {
  const int64_t o = L.W.rows, d = L.W.cols, og = o / L.groups;
  for (int g = 0; g < L.groups; ++g)
    matmul(false, false, og, d, d, 1.0f, Wt + g * og * d, d, gobj.H + int64_t(g) * d * d, d,
           0.0f, Out + g * og * d, d);
  const int64_t grain = row_grain(d);
  std::vector<double> parts(size_t((o + grain - 1) / grain));
  const float scale = float(2.0 / gobj.n);
  parallel_for(0, o, grain, [&](int64_t r0, int64_t r1) {
    double acc = 0;
    for (int64_t i = r0 * d; i < r1 * d; ++i) {
      acc += double(Wt[i]) * (double(Out[i]) - 2.0 * double(P[i]));
      if (grad) grad[i] = scale * (Out[i] - P[i]);
    }
    parts[size_t(r0 / grain)] = acc;
  });
  double tr = 0;
  for (double x : parts) tr += x;
  return (tr + gobj.c0) / gobj.n;
}

// --- rows objective ----------------------------------------------------------------------

struct RowsScratch {
  std::vector<int64_t> idx;
  std::vector<float> Xb, Z;
};

void check_rows(const RoundingLayer& L, const RowsObjective& r) {
  LOWBIT_CHECK(r.N > 0 && r.P > 0, "rows objective needs samples, got N=" << r.N << ", P=" << r.P);
  LOWBIT_CHECK(r.batch > 0, "batch must be positive, got " << r.batch);
  if (r.is_conv) {
    Conv2dGeometry g = r.geo;
    g.N = 1;
    check_conv_geometry(g);
    LOWBIT_CHECK(g.groups == L.groups, "conv groups " << g.groups << " differ from the layer's "
                                                      << L.groups);
    LOWBIT_CHECK(g.row_len() == L.W.cols, "conv rows have length " << g.row_len()
                                                                   << " but W has " << L.W.cols
                                                                   << " columns");
    LOWBIT_CHECK(g.out_h() * g.out_w() == r.P,
                 "P=" << r.P << " differs from the conv output size " << g.out_h() * g.out_w());
  } else {
    LOWBIT_CHECK(L.groups == 1, "Linear rows need groups == 1");
  }
}

// The samples of step t: all in order when batch >= N, else a seeded draw.
void batch_of(const RowsObjective& r, int64_t t, std::vector<int64_t>& idx) {
  if (r.batch >= r.N) {
    idx.resize(size_t(r.N));
    std::iota(idx.begin(), idx.end(), int64_t(0));
  } else {
    idx.resize(size_t(r.batch));
    rounding_sample_batch(r.seed, t, r.N, r.batch, idx.data());
  }
}

// Reconstruction loss of the minibatch `idx` at W~ and, if grad, 2 (R f')^T Xb / rows.
double rows_eval(const RoundingLayer& L, const float* Wt, const RowsObjective& r,
                 const std::vector<int64_t>& idx, RowsScratch& sc, float* grad) {
  const int64_t o = L.W.rows, d = L.W.cols, G = L.groups, og = o / G;
  const int64_t B = int64_t(idx.size()), P = r.P, rows = B * P;
  sc.Xb.resize(size_t(rows * d));
  sc.Z.resize(size_t(rows * og));
  const float gscale = float(2.0 / double(rows));
  const int64_t rgrain = std::max<int64_t>(1, 8192 / std::max<int64_t>(og, 1));
  std::vector<double> parts(size_t((rows + rgrain - 1) / rgrain));
  double loss = 0;
  Conv2dGeometry geo = r.geo;
  geo.N = 1;
  const int64_t sample_in = r.is_conv ? geo.C * geo.H * geo.W : P * d;
  for (int64_t g = 0; g < G; ++g) {
    // Xb (rows, d): the minibatch's rows of group g.
    parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const float* xs = r.X + idx[size_t(b)] * sample_in;
        MatrixView<float> out(sc.Xb.data() + b * P * d, P, d);
        if (r.is_conv) {
          im2col_rows(xs, geo, int(g), 0, P, out);
        } else {
          std::copy(xs, xs + P * d, out.data);
        }
      }
    });
    // Z = Xb W~_g^T (rows, og), then R = f(Z + b) - Y, times f' and 2/rows, in place.
    matmul(false, true, rows, og, d, 1.0f, sc.Xb.data(), d, Wt + g * og * d, d, 0.0f,
           sc.Z.data(), og);
    parallel_for(0, rows, rgrain, [&](int64_t i0, int64_t i1) {
      double acc = 0;
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t b = i / P, p = i % P, n = idx[size_t(b)];
        float* z = sc.Z.data() + i * og;
        for (int64_t j = 0; j < og; ++j) {
          const int64_t ch = g * og + j;
          const float pre = z[j] + (r.bias ? r.bias[ch] : 0.0f);
          const float y = r.is_conv ? r.Y[(n * o + ch) * P + p] : r.Y[(n * P + p) * o + ch];
          const bool pass = !r.relu || pre > 0.0f;
          const float res = (pass ? pre : 0.0f) - y;
          acc += double(res) * double(res);
          z[j] = pass ? gscale * res : 0.0f;
        }
      }
      parts[size_t(i0 / rgrain)] = acc;
    });
    for (double x : parts) loss += x;
    if (grad)  // grad_g (og, d) = Z^T Xb
      matmul(true, false, og, d, rows, 1.0f, sc.Z.data(), og, sc.Xb.data(), d, 0.0f,
             grad + g * og * d, d);
  }
  return loss / double(rows);
}

uint64_t splitmix64(uint64_t& x) {
  uint64_t z = (x += 0x9E3779B97F4A7C15ULL);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

}  // namespace

// --- schedule ----------------------------------------------------------------------------

float RoundingSchedule::beta_at(int64_t t) const {
  const double t0 = warmup * double(iters);
  if (double(t) < t0) return beta_start;
  const double rel = (double(t) - t0) / std::max(1.0, double(iters) - t0);
  return float(double(beta_end) + double(beta_start - beta_end) * std::max(0.0, 1.0 - rel));
}

bool RoundingSchedule::reg_on(int64_t t) const {
  return double(t) >= warmup * double(iters);
}

// --- public entries ----------------------------------------------------------------------

void check_rounding_layer(const RoundingLayer& L) {
  check_quant_params(L.qp, L.W.rows, L.W.cols);
  LOWBIT_CHECK(L.groups >= 1 && L.W.rows % L.groups == 0,
               "groups=" << L.groups << " must divide the " << L.W.rows << " output channels");
  const int64_t units = L.qp.R * L.qp.G;
  for (int64_t u = 0; u < units; ++u)
    LOWBIT_CHECK(L.qp.scale[u] > 0 && std::isfinite(L.qp.scale[u]),
                 "scale must be positive and finite, got " << L.qp.scale[u] << " at unit " << u);
}

void rounding_init(const RoundingLayer& L, MatrixView<float> V) {
  check_rounding_layer(L);
  const int64_t d = L.W.cols;
  parallel_for(0, L.W.rows, row_grain(d), [&](int64_t r0, int64_t r1) {
    const float span = kRoundZeta - kRoundGamma;
    for (int64_t r = r0; r < r1; ++r)
      for_segments(L, r, [&](int64_t c0, int64_t c1, float s, float z) {
        const float zf = zero_frac(z);
        for (int64_t c = c0; c < c1; ++c) {
          const float x = L.W(r, c) / s + zf;
          const float frac = x - std::floor(x);  // [0, 1): V is finite
          V(r, c) = -std::log(span / (frac - kRoundGamma) - 1.0f);
        }
      });
  });
}

void rounding_soft_weight(const RoundingLayer& L, ConstMatrixView<float> V, MatrixView<float> Wt,
                          MatrixView<float> h) {
  check_rounding_layer(L);
  const int64_t o = L.W.rows, d = L.W.cols;
  const std::vector<float> base = grid_base(L);
  std::vector<float> wt_buf, h_buf;
  // Outputs with a row stride other than d go through a contiguous buffer.
  float* wt = Wt.data && Wt.stride == d ? Wt.data : nullptr;
  float* hh = h.data && h.stride == d ? h.data : nullptr;
  if (Wt.data && !wt) wt_buf.resize(size_t(o * d)), wt = wt_buf.data();
  if (h.data && !hh) h_buf.resize(size_t(o * d)), hh = h_buf.data();
  soft_all(L, base.data(), V.data, V.stride, nullptr, hh, wt);
  for (int64_t r = 0; r < o; ++r) {
    if (!wt_buf.empty()) std::copy(wt + r * d, wt + (r + 1) * d, Wt.row(r));
    if (!h_buf.empty()) std::copy(hh + r * d, hh + (r + 1) * d, h.row(r));
  }
}

void rounding_hard_codes(const RoundingLayer& L, ConstMatrixView<float> V,
                         MatrixView<uint8_t> codes) {
  check_rounding_layer(L);
  const int64_t d = L.W.cols;
  const float qmax = qmax_of(L.qp);
  parallel_for(0, L.W.rows, row_grain(d), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r)
      for_segments(L, r, [&](int64_t c0, int64_t c1, float s, float z) {
        const float zf = zero_frac(z), zi = z - zf;
        for (int64_t c = c0; c < c1; ++c) {
          const float q = std::floor(L.W(r, c) / s + zf) + zi + (V(r, c) >= 0.0f ? 1.0f : 0.0f);
          codes(r, c) = uint8_t(std::min(std::max(q, 0.0f), qmax));
        }
      });
  });
}

RoundingStats rounding_apply_grad(const RoundingLayer& L, RoundingState st,
                                  ConstMatrixView<float> grad_Wt, int64_t t,
                                  const RoundingSchedule& sch, MatrixView<float> Wt_next) {
  check_rounding_layer(L);
  check_state(L, st);
  LOWBIT_CHECK(t >= 1, "step must be >= 1, got " << t);
  const int64_t o = L.W.rows, d = L.W.cols;
  LOWBIT_CHECK(grad_Wt.rows == o && grad_Wt.cols == d && grad_Wt.stride == d,
               "grad must be (" << o << ", " << d << ")");
  const std::vector<float> base = grid_base(L);
  std::vector<float> sig(size_t(o * d)), Wt(size_t(o * d));
  std::vector<float> g(grad_Wt.data, grad_Wt.data + o * d);
  soft_all(L, base.data(), st.V.data, st.V.stride, sig.data(), nullptr, Wt.data());
  const RoundingStats stats = update_all(L, st, base.data(), g.data(), sig.data(), Wt.data(), t, sch);
  if (Wt_next.data) {
    LOWBIT_CHECK(Wt_next.rows == o && Wt_next.cols == d, "Wt_next must be (" << o << ", " << d << ")");
    for (int64_t r = 0; r < o; ++r) std::copy(Wt.data() + r * d, Wt.data() + (r + 1) * d, Wt_next.row(r));
  }
  return stats;
}

double gram_loss_grad(const RoundingLayer& L, ConstMatrixView<float> Wt, const GramObjective& g,
                      MatrixView<float> grad_Wt) {
  check_rounding_layer(L);
  const int64_t o = L.W.rows, d = L.W.cols;
  LOWBIT_CHECK(g.n > 0, "n must be positive, got " << g.n);
  std::vector<float> P(size_t(o * d)), Out(size_t(o * d));
  gram_target(L, g, P.data());
  const double loss = gram_eval(L, Wt.data, g, P.data(), Out.data(), Out.data());
  if (grad_Wt.data) std::copy(Out.begin(), Out.end(), grad_Wt.data);
  return loss;
}

double rows_loss_grad(const RoundingLayer& L, ConstMatrixView<float> Wt, const RowsObjective& r,
                      int64_t step, MatrixView<float> grad_Wt) {
  check_rounding_layer(L);
  check_rows(L, r);
  RowsScratch sc;
  batch_of(r, step, sc.idx);
  return rows_eval(L, Wt.data, r, sc.idx, sc, grad_Wt.data);
}

RoundingStats rounding_run_gram(const RoundingLayer& L, RoundingState st, const GramObjective& g,
                                const RoundingSchedule& sch, int64_t step0, int64_t nsteps,
                                float* rec_loss, float* reg_loss) {
  check_rounding_layer(L);
  check_state(L, st);
  LOWBIT_CHECK(g.n > 0, "n must be positive, got " << g.n);
  LOWBIT_CHECK(step0 >= 0 && nsteps >= 0, "step0 and nsteps must be >= 0");
  const int64_t o = L.W.rows, d = L.W.cols;
  std::vector<float> P(size_t(o * d)), Out(size_t(o * d)), sig(size_t(o * d)),
      Wt(size_t(o * d));
  gram_target(L, g, P.data());
  const std::vector<float> base = grid_base(L);
  soft_all(L, base.data(), st.V.data, st.V.stride, sig.data(), nullptr, Wt.data());
  RoundingStats stats;
  for (int64_t i = 0; i < nsteps; ++i) {
    const int64_t t = step0 + i + 1;
    const double rec = gram_eval(L, Wt.data(), g, P.data(), Out.data(), Out.data());
    stats = update_all(L, st, base.data(), Out.data(), sig.data(), Wt.data(), t, sch);
    if (rec_loss) rec_loss[i] = float(rec);
    if (reg_loss) reg_loss[i] = float(stats.reg_loss);
  }
  return stats;
}

RoundingStats rounding_run_rows(const RoundingLayer& L, RoundingState st, const RowsObjective& r,
                                const RoundingSchedule& sch, int64_t step0, int64_t nsteps,
                                float* rec_loss, float* reg_loss) {
  check_rounding_layer(L);
  check_state(L, st);
  check_rows(L, r);
  LOWBIT_CHECK(step0 >= 0 && nsteps >= 0, "step0 and nsteps must be >= 0");
  const int64_t o = L.W.rows, d = L.W.cols;
  std::vector<float> grad(size_t(o * d)), sig(size_t(o * d)), Wt(size_t(o * d));
  const std::vector<float> base = grid_base(L);
  soft_all(L, base.data(), st.V.data, st.V.stride, sig.data(), nullptr, Wt.data());
  RowsScratch sc;
  RoundingStats stats;
  for (int64_t i = 0; i < nsteps; ++i) {
    const int64_t t = step0 + i + 1;
    batch_of(r, t, sc.idx);
    const double rec = rows_eval(L, Wt.data(), r, sc.idx, sc, grad.data());
    stats = update_all(L, st, base.data(), grad.data(), sig.data(), Wt.data(), t, sch);
    if (rec_loss) rec_loss[i] = float(rec);
    if (reg_loss) reg_loss[i] = float(stats.reg_loss);
  }
  return stats;
}

void rounding_sample_batch(uint64_t seed, int64_t t, int64_t n, int64_t k, int64_t* out) {
  LOWBIT_CHECK(k >= 0 && k <= n, "cannot draw " << k << " of " << n << " samples");
  std::vector<int64_t> perm(static_cast<size_t>(n));
  std::iota(perm.begin(), perm.end(), int64_t(0));
  uint64_t x = seed ^ (uint64_t(t) * 0xD1B54A32D192ED03ULL);
  for (int64_t i = 0; i < k; ++i) {
    // Modulo bias is below n / 2^64: irrelevant for sample counts.
    const int64_t j = i + int64_t(splitmix64(x) % uint64_t(n - i));
    std::swap(perm[size_t(i)], perm[size_t(j)]);
    out[i] = perm[size_t(i)];
  }
}

double rounding_cost_gram(int64_t o, int64_t d, int groups) {
  return double(o) * double(d) * double(d) + 30.0 * double(o) * double(d);
}

double rounding_cost_rows(int64_t o, int64_t d, int groups, int64_t rows_per_batch) {
  // forward and weight-gradient products, im2col of every group, elementwise pass
  return 2.0 * double(rows_per_batch) * double(o) * double(d) +
         double(rows_per_batch) * double(d) * double(groups) + 30.0 * double(o) * double(d);
}

}  // namespace lowbit
