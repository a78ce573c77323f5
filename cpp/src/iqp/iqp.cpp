// Exact branch and bound for CLADO's integer quadratic program (iqp.h).
//
// Notation. Gs = (G + G^T) / 2. W = Gs with every within-layer block set to zero (products of
// two choices of one layer are always 0 on one-hot points, so those entries never count),
// d = diag(Gs). On a one-hot x:  x^T Gs x = x^T W x + d^T x.
//
// Convexification. For binaries x_i^2 = x_i, so with Q = W + diag(u) and c = d - u the
// function f(x) = x^T Q x + c^T x equals the objective on every configuration, for any u.
// u is chosen so that Q is positive semidefinite on the tangent space T of the simplex
// product {d : sum_s d_ls = 0 for each l}; f is then convex on the affine hull of the
// simplex product, and its minimum over the relaxed polytope
//     P = {x >= 0, sum_s x_ls = 1 for each layer, A x <= b}
// is a lower bound. Several shifts are tried at the root (uniform u = t; u = t * s with s
// the absolute row sums of W, for which t <= 1 by Gershgorin; within-layer blocks filled by a
// low-rank completion or by PSD completions, see candidate_shifts) and the one with the best
// root bound is kept.
//
// Bounds that are always valid. For any y in the affine hull and any mu >= 0,
//     min_{x in P} f(x) >= f(y) - g^T y + sum_l min_s (g + A^T mu)_ls - mu^T b,
// g = grad f(y) (convexity on the hull, then weak Lagrangian duality of the linear program
// over P). The QP solver (FISTA with exact projections onto the simplex product, the budget
// handled by the projection's own dual) only has to produce good points; the bound never
// depends on it having converged. The same expression with layer l forced to choice s adds
// the reduced cost (g + A^T mu)_ls - min_s'(g + A^T mu)_ls', which prunes children and
// removes choices from a node's domain (reduced-cost fixing).
//
// Low-rank dual. When the within-layer completion converges to an exact low-rank form U U^T
// (a Hessian form Dw^T H Dw, as CLADO's G), nodes are bounded through the dual of that
// relaxation instead: k + m variables (the factor's rank and the budget rows) maximised by
// Newton's method, O(n (k + m)^2) a step instead of O(n^2) (see DualBound). A node that only
// the residual of the factor keeps open is decided by the QP relaxation above.
//
// Search. Best-first over nodes (per-layer domain bit masks) with plunging (the child the
// relaxed point leans to is solved next, until a prune), branching on the layer whose
// relaxed block is most fractional, one child per remaining choice. Incumbents come from the
// warm start (greedy + 1-opt / 2-opt local search + compound moves, with perturbation
// restarts), from rounding every node's relaxed point followed by a repair and 1-opt (and
// 2-opt when that lands within 10 % of the incumbent, compound moves within 3 %), and, when
// the search is far from a proof at half the time limit, from reduced-cost neighbourhoods:
// sub-problems of the layers whose root reduced costs leave them a choice, solved by this
// same solver (see solve_impl).
#include <Eigen/Dense>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <queue>
#include <unordered_set>
#include <vector>

#include "lowbit/check.h"
#include "lowbit/iqp.h"
#include "lowbit/parallel.h"

namespace lowbit {

const char* iqp_status_name(IQPStatus s) {
  switch (s) {
    case IQPStatus::kOptimal: return "optimal";
    case IQPStatus::kTimeLimit: return "time_limit";
    case IQPStatus::kNodeLimit: return "node_limit";
    case IQPStatus::kInfeasible: return "infeasible";
  }
  return "unknown";
}

void check_iqp_problem(const IQPProblem& p) {
  LOWBIT_CHECK(p.L >= 1, "the problem needs at least one layer, got L = " << p.L);
  LOWBIT_CHECK(p.sizes != nullptr, "sizes is missing");
  int64_t n = 0;
  for (int64_t l = 0; l < p.L; ++l) {
    LOWBIT_CHECK(p.sizes[l] >= 1 && p.sizes[l] <= kIQPMaxChoices,
                 "sizes[" << l << "] must be in [1, " << kIQPMaxChoices << "], got " << p.sizes[l]);
    n += p.sizes[l];
  }
  LOWBIT_CHECK(p.G.data != nullptr && p.G.rows == n && p.G.cols == n,
               "G must have shape (" << n << ", " << n << ") (n = sum(sizes)), got (" << p.G.rows << ", "
                                     << p.G.cols << ")");
  LOWBIT_CHECK(p.A.rows >= 0, "A must have a non-negative row count");
  if (p.A.rows > 0) {
    LOWBIT_CHECK(p.A.data != nullptr && p.A.cols == n,
                 "A must have shape (m, " << n << "), got (" << p.A.rows << ", " << p.A.cols << ")");
    LOWBIT_CHECK(p.b != nullptr, "b is missing for " << p.A.rows << " budget rows");
  }
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j)
      LOWBIT_CHECK(std::isfinite(p.G(i, j)), "G[" << i << ", " << j << "] is not finite");
  for (int64_t r = 0; r < p.A.rows; ++r) {
    LOWBIT_CHECK(std::isfinite(p.b[r]), "b[" << r << "] is not finite");
    for (int64_t j = 0; j < n; ++j)
      LOWBIT_CHECK(std::isfinite(p.A(r, j)), "A[" << r << ", " << j << "] is not finite");
  }
}

double iqp_objective(const IQPProblem& p, const int32_t* choice) {
  check_iqp_problem(p);
  std::vector<int64_t> idx(p.L);
  int64_t start = 0;
  for (int64_t l = 0; l < p.L; ++l) {
    LOWBIT_CHECK(choice[l] >= 0 && choice[l] < p.sizes[l],
                 "choice[" << l << "] must be in [0, " << p.sizes[l] << "), got " << choice[l]);
    idx[l] = start + choice[l];
    start += p.sizes[l];
  }
  double obj = 0;
  for (int64_t l = 0; l < p.L; ++l) {
    const int64_t i = idx[l];
    double add = double(p.G(i, i));
    for (int64_t k = 0; k < l; ++k) add += double(p.G(i, idx[k])) + double(p.G(idx[k], i));
    obj += add;
  }
  return obj;
}

double project_psd(ConstMatrixView<float> G, MatrixView<float> out) {
  LOWBIT_CHECK(G.rows == G.cols, "G must be square, got (" << G.rows << ", " << G.cols << ")");
  LOWBIT_CHECK(out.rows == G.rows && out.cols == G.cols, "out must have G's shape");
  const int64_t n = G.rows;
  Eigen::MatrixXd S(n, n);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j) {
      LOWBIT_CHECK(std::isfinite(G(i, j)), "G[" << i << ", " << j << "] is not finite");
      S(i, j) = 0.5 * (double(G(i, j)) + double(G(j, i)));
    }
  if (n == 0) return 0.0;
  Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> es(S);
  LOWBIT_CHECK(es.info() == Eigen::Success, "eigendecomposition of G failed");
  Eigen::VectorXd lam = es.eigenvalues();
  double mass = 0;
  for (int64_t k = 0; k < n; ++k)
    if (lam(k) < 0) {
      mass += -lam(k);
      lam(k) = 0;
    }
  const Eigen::MatrixXd& V = es.eigenvectors();
  Eigen::MatrixXd P = V * lam.asDiagonal() * V.transpose();
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j) out(i, j) = float(0.5 * (P(i, j) + P(j, i)));
  return mass;
}

namespace {

using Clock = std::chrono::steady_clock;
constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kBranchTol = 0.03;  // relative accuracy a node that cannot be pruned is solved to
// A node's rounding this close to the incumbent (relative) gets pair moves too: on vector-balancing
// structure (CLADO's E E^T) 1-opt stops several percent short, pair moves often reach below.
constexpr double kPolishRel = 0.1;
// ... and compound moves when pair moves leave it this close, within kCompoundShare of the
// elapsed time (they cost 5-20 ms each on 100 x 4; unbounded they delay proofs).
constexpr double kCompoundRel = 0.03;
constexpr double kCompoundShare = 0.2;
// Reduced-cost neighbourhoods (solve_impl): at kNeighbourhoodAt of the time limit, when the
// search has closed less than kNeighbourhoodGate of the root gap, one sub-problem per fraction
// of the incumbent's gap to the root bound, each given kNeighbourhoodShare of the time limit.
constexpr double kNeighbourhoodAt = 0.5;
constexpr double kNeighbourhoodGate = 0.5;
constexpr double kNeighbourhoodShare = 0.09;
constexpr double kNeighbourhoodFractions[] = {0.05, 0.1, 0.2, 0.3, 0.4};

uint64_t splitmix64(uint64_t& s) {
  uint64_t z = (s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

struct Deadline {
  Clock::time_point end;
  bool passed() const { return Clock::now() >= end; }
};

// The problem in double, with the derived quantities every part of the solver shares.
struct Data {
  int64_t L = 0, n = 0, m = 0;
  std::vector<int64_t> start;   // (L + 1,)
  std::vector<int32_t> layer;   // (n,) layer of each variable
  std::vector<double> W;        // (n, n) Gs without the within-layer blocks
  std::vector<double> d;        // (n,) diag(Gs)
  std::vector<double> A;        // (m, n)
  std::vector<double> b;        // (m,) including the relative slack of iqp.h
  std::vector<double> rscale;   // (m,) sum_l max_s |A(r, ls)|: the size of a row's costs
  double gmax = 0;              // max |Gs|
  double eps = 0;               // smallest objective change a move must make

  explicit Data(const IQPProblem& p) : L(p.L), m(p.A.rows) {
    start.assign(L + 1, 0);
    for (int64_t l = 0; l < L; ++l) start[l + 1] = start[l] + p.sizes[l];
    n = start[L];
    layer.resize(n);
    for (int64_t l = 0; l < L; ++l)
      for (int64_t i = start[l]; i < start[l + 1]; ++i) layer[i] = int32_t(l);
    W.assign(n * n, 0.0);
    d.resize(n);
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t j = 0; j < n; ++j) {
        const double g = 0.5 * (double(p.G(i, j)) + double(p.G(j, i)));
        gmax = std::max(gmax, std::fabs(g));
        if (layer[i] != layer[j]) W[i * n + j] = g;
      }
      d[i] = double(p.G(i, i));
    }
    A.resize(m * n);
    b.resize(m);
    rscale.resize(m);
    for (int64_t r = 0; r < m; ++r) {
      double s = 0;
      for (int64_t l = 0; l < L; ++l) {
        double mx = 0;
        for (int64_t i = start[l]; i < start[l + 1]; ++i) mx = std::max(mx, std::fabs(double(p.A(r, i))));
        s += mx;
      }
      for (int64_t i = 0; i < n; ++i) A[r * n + i] = double(p.A(r, i));
      b[r] = double(p.b[r]) + 1e-9 * s;
      rscale[r] = s > 0 ? s : 1.0;
    }
    eps = 1e-13 * std::max(gmax, 1e-300) * double(L);
  }
  int64_t size(int64_t l) const { return start[l + 1] - start[l]; }
};

// ---------------------------------------------------------------------------------------
// Local search over configurations. h_i = sum_l W(i, chosen_l) makes a move O(1) to price
// and O(n) to apply.

struct Search {
  const Data& D;
  std::vector<int32_t> c;
  std::vector<double> h, cost;
  double obj = 0;

  explicit Search(const Data& D_) : D(D_), c(D_.L, 0), h(D_.n, 0.0), cost(D_.m, 0.0) {}

  int64_t idx(int64_t l) const { return D.start[l] + c[l]; }

  void assign(const int32_t* choice) {
    c.assign(choice, choice + D.L);
    std::fill(h.begin(), h.end(), 0.0);
    std::fill(cost.begin(), cost.end(), 0.0);
    obj = 0;
    for (int64_t l = 0; l < D.L; ++l) {
      const int64_t i = idx(l);
      const double* w = &D.W[i * D.n];
      for (int64_t k = 0; k < D.n; ++k) h[k] += w[k];
      for (int64_t r = 0; r < D.m; ++r) cost[r] += D.A[r * D.n + i];
    }
    for (int64_t l = 0; l < D.L; ++l) obj += D.d[idx(l)] + h[idx(l)];
  }

  double delta(int64_t l, int64_t t) const {
    const int64_t i = idx(l), j = D.start[l] + t;
    return D.d[j] - D.d[i] + 2.0 * (h[j] - h[i]);
  }
  // Change of the objective when layer l goes to t and layer k (!= l) to v together.
  double delta2(int64_t l, int64_t t, int64_t k, int64_t v) const {
    const int64_t i = idx(l), j = D.start[l] + t, a = idx(k), bb = D.start[k] + v;
    const double* wj = &D.W[j * D.n];
    const double* wi = &D.W[i * D.n];
    return delta(l, t) + delta(k, v) + 2.0 * (wj[bb] - wj[a] - wi[bb] + wi[a]);
  }
  bool fits(int64_t l, int64_t t) const {
    const int64_t i = idx(l), j = D.start[l] + t;
    for (int64_t r = 0; r < D.m; ++r)
      if (cost[r] - D.A[r * D.n + i] + D.A[r * D.n + j] > D.b[r]) return false;
    return true;
  }
  bool fits2(int64_t l, int64_t t, int64_t k, int64_t v) const {
    const int64_t i = idx(l), j = D.start[l] + t, a = idx(k), bb = D.start[k] + v;
    for (int64_t r = 0; r < D.m; ++r) {
      const double* A = &D.A[r * D.n];
      if (cost[r] - A[i] + A[j] - A[a] + A[bb] > D.b[r]) return false;
    }
    return true;
  }
  void move(int64_t l, int64_t t) {
    const int64_t i = idx(l), j = D.start[l] + t;
    obj += delta(l, t);
    const double* wj = &D.W[j * D.n];
    const double* wi = &D.W[i * D.n];
    for (int64_t k = 0; k < D.n; ++k) h[k] += wj[k] - wi[k];
    for (int64_t r = 0; r < D.m; ++r) cost[r] += D.A[r * D.n + j] - D.A[r * D.n + i];
    c[l] = int32_t(t);
  }
  double violation_of(const double* cst) const {
    double v = 0;
    for (int64_t r = 0; r < D.m; ++r) v += std::max(0.0, cst[r] - D.b[r]) / D.rscale[r];
    return v;
  }
  double violation() const { return violation_of(cost.data()); }
  bool feasible() const {
    for (int64_t r = 0; r < D.m; ++r)
      if (cost[r] > D.b[r]) return false;
    return true;
  }
  double violation_after(int64_t l, int64_t t) const {
    const int64_t i = idx(l), j = D.start[l] + t;
    double v = 0;
    for (int64_t r = 0; r < D.m; ++r)
      v += std::max(0.0, cost[r] - D.A[r * D.n + i] + D.A[r * D.n + j] - D.b[r]) / D.rscale[r];
    return v;
  }
  double norm_cost_change(int64_t l, int64_t t) const {
    const int64_t i = idx(l), j = D.start[l] + t;
    double s = 0;
    for (int64_t r = 0; r < D.m; ++r) s += (D.A[r * D.n + j] - D.A[r * D.n + i]) / D.rscale[r];
    return s;
  }

  // Greedy towards feasibility: the move with the least objective increase per unit of
  // violation removed. Returns whether the configuration is feasible at the end.
  bool repair() {
    for (int64_t guard = 0; guard < 4 * D.L * 32 && !feasible(); ++guard) {
      const double v0 = violation();
      double best_key = kInf;
      int64_t bl = -1, bt = -1;
      for (int64_t l = 0; l < D.L; ++l)
        for (int64_t t = 0; t < D.size(l); ++t) {
          if (t == c[l]) continue;
          const double red = v0 - violation_after(l, t);
          if (red <= 0) continue;
          const double key = delta(l, t) / red;
          if (key < best_key) {
            best_key = key;
            bl = l;
            bt = t;
          }
        }
      if (bl < 0) return false;
      move(bl, bt);
    }
    return feasible();
  }

  // From a feasible configuration: take improving feasible moves, best ratio of objective
  // decrease to budget use first (improving moves that free budget rank first).
  void upgrade(const Deadline& dl) {
    while (!dl.passed()) {
      // Tier 0: improving moves that use no budget (by gain); tier 1: gain per budget used.
      int best_tier = 2;
      double best_key = kInf;
      int64_t bl = -1, bt = -1;
      for (int64_t l = 0; l < D.L; ++l)
        for (int64_t t = 0; t < D.size(l); ++t) {
          if (t == c[l]) continue;
          const double dlt = delta(l, t);
          if (dlt >= -D.eps || !fits(l, t)) continue;
          const double dc = norm_cost_change(l, t);
          const int tier = dc <= 0 ? 0 : 1;
          const double key = tier == 0 ? dlt : dlt / dc;
          if (tier < best_tier || (tier == best_tier && key < best_key)) {
            best_tier = tier;
            best_key = key;
            bl = l;
            bt = t;
          }
        }
      if (bl < 0) return;
      move(bl, bt);
    }
  }

  // Best-improvement 1-opt sweeps until no feasible improving move is left.
  void one_opt(const Deadline& dl) {
    bool improved = true;
    while (improved && !dl.passed()) {
      improved = false;
      for (int64_t l = 0; l < D.L; ++l) {
        double best = -D.eps;
        int64_t bt = -1;
        for (int64_t t = 0; t < D.size(l); ++t) {
          if (t == c[l]) continue;
          const double dlt = delta(l, t);
          if (dlt < best && fits(l, t)) {
            best = dlt;
            bt = t;
          }
        }
        if (bt >= 0) {
          move(l, bt);
          improved = true;
        }
      }
    }
  }

  // One best-improvement pass over all pairs of layers; applies the best pair move.
  bool two_opt() {
    double best = -D.eps;
    int64_t bl = -1, bt = -1, bk = -1, bv = -1;
    for (int64_t l = 0; l < D.L; ++l)
      for (int64_t t = 0; t < D.size(l); ++t) {
        if (t == c[l]) continue;
        for (int64_t k = l + 1; k < D.L; ++k)
          for (int64_t v = 0; v < D.size(k); ++v) {
            if (v == c[k]) continue;
            const double dlt = delta2(l, t, k, v);
            if (dlt < best && fits2(l, t, k, v)) {
              best = dlt;
              bl = l;
              bt = t;
              bk = k;
              bv = v;
            }
          }
      }
    if (bl < 0) return false;
    move(bl, bt);
    move(bk, bv);
    return true;
  }

  void local_search(const Deadline& dl, bool pairs) {
    for (;;) {
      one_opt(dl);
      if (!pairs || dl.passed() || !two_opt()) break;
    }
    assign(c.data());  // exact objective again after the incremental updates
  }

};

// Compound moves: force one layer to another choice, restore feasibility greedily (repair),
// spend freed budget greedily (upgrade), then feasible 1-opt; keep the result when it beats the
// start. A large layer dropping a few bits can pay for many small layers going up, which no
// feasible 1-opt / 2-opt move reaches. First improvement, layers in order: deterministic.
// Returns whether `s` improved.
bool compound_pass(Search& s, Search& t, const Deadline& dl) {
  const Data& D = s.D;
  bool any = false;
  for (int64_t l = 0; l < D.L && !dl.passed(); ++l)
    for (int64_t v = 0; v < D.size(l); ++v) {
      if (v == s.c[l]) continue;
      if (dl.passed()) break;  // (a repair has no deadline of its own)
      t.c = s.c;
      t.h = s.h;
      t.cost = s.cost;
      t.obj = s.obj;
      t.move(l, v);
      if (!t.feasible() && !t.repair()) continue;
      t.upgrade(dl);
      t.one_opt(dl);
      if (t.obj < s.obj - D.eps * 4) {
        t.assign(t.c.data());
        if (t.feasible() && t.obj < s.obj - D.eps * 4) {
          s.c = t.c;
          s.h = t.h;
          s.cost = t.cost;
          s.obj = t.obj;
          any = true;
        }
      }
    }
  return any;
}

// ---------------------------------------------------------------------------------------
// The node relaxation.

// The convexified objective f(x) = x^T Q x + c^T x: Q = W + B with B block diagonal (the
// within-layer blocks, free on one-hot points) and c = d - diag(B).
struct Shift {
  std::vector<double> Q;  // (n, n)
  std::vector<double> c;  // (n,)
  double lip = 0;         // Lipschitz constant of grad f on the tangent space (Euclidean)
  std::vector<double> m;  // (n,) block-constant metric with 2Q <= diag(m) on T: the step is 1/m
  const char* kind = "";
};

// Euclidean projection of v (k entries) onto the unit simplex, in place.
void project_simplex(double* v, int64_t k, double* scratch) {
  if (k == 1) {
    v[0] = 1.0;
    return;
  }
  std::memcpy(scratch, v, sizeof(double) * k);
  std::sort(scratch, scratch + k, [](double a, double b) { return a > b; });
  double cum = 0, tau = 0;
  for (int64_t i = 0; i < k; ++i) {
    cum += scratch[i];
    const double t = (cum - 1.0) / double(i + 1);
    if (i + 1 == k || scratch[i + 1] <= t) {
      tau = t;
      break;
    }
  }
  for (int64_t i = 0; i < k; ++i) v[i] = std::max(v[i] - tau, 0.0);
}

// A node's variables: layers with one allowed choice are fixed, the others are free blocks of
// consecutive entries of `vars` (block bl: layer blocks[bl], entries [bstart[bl], bstart[bl+1])).
struct Layout {
  std::vector<int64_t> vars, blocks, bstart, fixed;

  void set(const Data& D, const std::vector<uint32_t>& mask) {
    vars.clear();
    blocks.clear();
    bstart.assign(1, 0);
    fixed.clear();
    for (int64_t l = 0; l < D.L; ++l) {
      const uint32_t mk = mask[l];
      if ((mk & (mk - 1)) == 0) {
        int64_t s = 0;
        while (!((mk >> s) & 1u)) ++s;
        fixed.push_back(D.start[l] + s);
        continue;
      }
      for (int64_t s = 0; s < D.size(l); ++s)
        if ((mk >> s) & 1u) vars.push_back(D.start[l] + s);
      blocks.push_back(l);
      bstart.push_back(int64_t(vars.size()));
    }
  }
};

struct NodeResult {
  bool infeasible = false;  // the node's polytope is empty (by a budget row)
  bool pruned = false;      // lb >= cutoff
  double lb = -kInf;
  std::vector<double> x;    // (nf,) last relaxed point (free variables)
  std::vector<double> rc;   // (nf,) reduced costs at the best bound
};

class Relaxation {
 public:
  Relaxation(const Data& D, const Shift& S) : D_(D), S_(S) {}

  // Domain masks (L,), a warm point in full coordinates (n,) or nullptr, the pruning cutoff.
  NodeResult solve(const std::vector<uint32_t>& mask, const double* warm, double cutoff, double tol_scale,
                   int max_iter, const Deadline& dl) {
    NodeResult res;
    setup(mask);
    // Fixed part and remaining budget.
    for (int64_t r = 0; r < D_.m; ++r) {
      double rem = D_.b[r];
      for (int64_t f : lay_.fixed) rem -= D_.A[r * D_.n + f];
      double need = 0;
      for (size_t bl = 0; bl < lay_.blocks.size(); ++bl) {
        double mn = kInf;
        for (int64_t j = lay_.bstart[bl]; j < lay_.bstart[bl + 1]; ++j) mn = std::min(mn, Af_[r * nf_ + j]);
        need += mn;
      }
      bres_[r] = rem;
      if (need > rem) {
        res.infeasible = true;
        res.lb = kInf;
        return res;
      }
    }
    if (nf_ == 0) {
      res.lb = const_;
      return res;
    }
    // Starting point.
    x_.assign(nf_, 0.0);
    for (int64_t j = 0; j < nf_; ++j) x_[j] = warm ? warm[lay_.vars[j]] : 1.0;
    mu_proj_.assign(D_.m, 0.0);
    project(x_.data());

    std::vector<double>& y = y_;
    y = x_;
    double t = 1.0;
    double best_lb = -kInf;
    mu_lp_.assign(D_.m, 0.0);
    double last_lb = -kInf;
    int stall = 0;
    const int check_every = 4;
    for (int it = 0;; ++it) {
      if (it % check_every == 0 || it >= max_iter) {
        // f and grad at x, the bound there.
        matvec(x_.data(), gx_.data());
        double fx = const_;
        for (int64_t j = 0; j < nf_; ++j) {
          fx += x_[j] * (gx_[j] + 2.0 * qf_[j] + cf_[j]);
          gx_[j] = 2.0 * (gx_[j] + qf_[j]) + cf_[j];
        }
        const double lb = bound(x_.data(), fx, gx_.data());
        if (lb > best_lb) {
          best_lb = lb;
          best_g_ = gx_;
          best_mu_ = mu_lp_;
        }
        if (best_lb >= cutoff) {
          res.pruned = true;
          break;
        }
        const double tol = 1e-9 * std::max({std::fabs(fx), std::fabs(best_lb), tol_scale});
        const double gap = fx - best_lb;
        if (gap <= tol || it >= max_iter || dl.passed()) break;
        // The node cannot be pruned (a feasible relaxed point lies below the cutoff) and the
        // bound is already tight relative to the distance to the cutoff: branch now.
        if (std::isfinite(cutoff) && fx < cutoff && gap <= kBranchTol * (cutoff - best_lb)) break;
        if (!std::isfinite(cutoff) && gap <= 1e-6 * std::max(std::fabs(fx), tol_scale)) break;
        if (best_lb <= last_lb + 1e-12 * std::max(std::fabs(best_lb), tol_scale)) {
          if (++stall >= 25) break;
        } else {
          stall = 0;
        }
        last_lb = std::max(last_lb, best_lb);
      }
      // FISTA step from y with gradient-based adaptive restart.
      matvec(y.data(), gy_.data());
      for (int64_t j = 0; j < nf_; ++j) xn_[j] = y[j] - (2.0 * (gy_[j] + qf_[j]) + cf_[j]) / mf_[j];
      project(xn_.data());
      double dir = 0;
      for (int64_t j = 0; j < nf_; ++j) dir += mf_[j] * (y[j] - xn_[j]) * (xn_[j] - x_[j]);
      if (dir > 0) {
        t = 1.0;
        y = xn_;
      } else {
        const double tn = 0.5 * (1.0 + std::sqrt(1.0 + 4.0 * t * t));
        const double beta = (t - 1.0) / tn;
        for (int64_t j = 0; j < nf_; ++j) y[j] = xn_[j] + beta * (xn_[j] - x_[j]);
        t = tn;
      }
      std::swap(x_, xn_);
    }
    res.lb = best_lb;
    res.x = x_;
    // Reduced costs at the best bound.
    res.rc.assign(nf_, 0.0);
    if (best_lb > -kInf) {
      for (size_t bl = 0; bl < lay_.blocks.size(); ++bl) {
        double mn = kInf;
        for (int64_t j = lay_.bstart[bl]; j < lay_.bstart[bl + 1]; ++j) {
          double v = best_g_[j];
          for (int64_t r = 0; r < D_.m; ++r) v += best_mu_[r] * Af_[r * nf_ + j];
          res.rc[j] = v;
          mn = std::min(mn, v);
        }
        for (int64_t j = lay_.bstart[bl]; j < lay_.bstart[bl + 1]; ++j) res.rc[j] -= mn;
      }
    }
    return res;
  }

  // Layout of the last solve.
  const Layout& layout() const { return lay_; }

 private:
  void setup(const std::vector<uint32_t>& mask) {
    lay_.set(D_, mask);
    nf_ = int64_t(lay_.vars.size());
    const int64_t n = D_.n;
    Qf_.resize(nf_ * nf_);
    for (int64_t a = 0; a < nf_; ++a) {
      const double* q = &S_.Q[lay_.vars[a] * n];
      for (int64_t bb = 0; bb < nf_; ++bb) Qf_[a * nf_ + bb] = q[lay_.vars[bb]];
    }
    qf_.assign(nf_, 0.0);
    cf_.resize(nf_);
    for (int64_t a = 0; a < nf_; ++a) {
      const double* w = &D_.W[lay_.vars[a] * n];
      double s = 0;
      for (int64_t f : lay_.fixed) s += w[f];
      qf_[a] = s;
      cf_[a] = S_.c[lay_.vars[a]];
    }
    const_ = 0;
    for (int64_t f : lay_.fixed) {
      const_ += D_.d[f];
      for (int64_t g : lay_.fixed) const_ += D_.W[f * n + g];
    }
    mf_.resize(nf_);
    for (int64_t a = 0; a < nf_; ++a) mf_[a] = S_.m[lay_.vars[a]];
    if (!lay_.fixed.empty()) tighten();
    Af_.resize(D_.m * nf_);
    for (int64_t r = 0; r < D_.m; ++r)
      for (int64_t a = 0; a < nf_; ++a) Af_[r * nf_ + a] = D_.A[r * n + lay_.vars[a]];
    bres_.resize(D_.m);
    gx_.resize(nf_);
    gy_.resize(nf_);
    xn_.resize(nf_);
    z_.resize(nf_);
    scratch_.resize(kIQPMaxChoices);
  }

  // The free part of Q usually has slack on its own tangent space: subtract the largest
  // multiple t of diag(|d|) keeping it PSD there, moving it into the linear term. Exact on
  // one-hot points; at fractional points the bound gains t * sum |d_i| (x_i - x_i^2).
  void tighten() {
    const int64_t nb = int64_t(lay_.blocks.size()), nt = nf_ - nb;
    if (nt <= 0) return;
    Eigen::MatrixXd Z = Eigen::MatrixXd::Zero(nf_, nt);
    int64_t col = 0;
    for (int64_t bl = 0; bl < nb; ++bl) {
      const int64_t s0 = lay_.bstart[bl], k = lay_.bstart[bl + 1] - s0;
      for (int64_t j = 1; j < k; ++j, ++col) {
        const double a = 1.0 / std::sqrt(double(j) * double(j + 1));
        for (int64_t i = 0; i < j; ++i) Z(s0 + i, col) = a;
        Z(s0 + j, col) = -double(j) * a;
      }
    }
    Eigen::Map<const Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>> Qm(Qf_.data(), nf_, nf_);
    Eigen::MatrixXd M = Z.transpose() * Qm * Z;
    M = 0.5 * (M + M.transpose());
    Eigen::VectorXd w(nf_);
    double wmax = 0;
    for (int64_t a = 0; a < nf_; ++a) wmax = std::max(wmax, std::fabs(D_.d[lay_.vars[a]]));
    for (int64_t a = 0; a < nf_; ++a) w(a) = std::max(std::fabs(D_.d[lay_.vars[a]]), 1e-9 * wmax + 1e-300);
    Eigen::MatrixXd N = Z.transpose() * w.asDiagonal() * Z;
    N = 0.5 * (N + N.transpose());
    Eigen::GeneralizedSelfAdjointEigenSolver<Eigen::MatrixXd> ge(M, N, Eigen::EigenvaluesOnly);
    if (ge.info() != Eigen::Success) return;
    const double lmin = ge.eigenvalues()(0);
    if (!(lmin > 0)) return;
    const double t = lmin * (1 - 1e-6);
    for (int64_t a = 0; a < nf_; ++a) {
      Qf_[a * nf_ + a] -= t * w(a);
      cf_[a] += t * w(a);
    }
  }

  void matvec(const double* x, double* out) const {
    using RowMat = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
    Eigen::Map<Eigen::VectorXd>(out, nf_).noalias() =
        Eigen::Map<const RowMat>(Qf_.data(), nf_, nf_) * Eigen::Map<const Eigen::VectorXd>(x, nf_);
  }

  void project_blocks(const double* y, const double* mu, double* out) {
    for (int64_t j = 0; j < nf_; ++j) {
      double v = y[j];
      for (int64_t r = 0; r < D_.m; ++r) v -= mu[r] * Af_[r * nf_ + j] / mf_[j];
      out[j] = v;
    }
    for (size_t bl = 0; bl < lay_.blocks.size(); ++bl)
      project_simplex(out + lay_.bstart[bl], lay_.bstart[bl + 1] - lay_.bstart[bl], scratch_.data());
  }

  double row_use(int64_t r, const double* x) const {
    double s = 0;
    for (int64_t j = 0; j < nf_; ++j) s += Af_[r * nf_ + j] * x[j];
    return s;
  }

  // Projection onto the simplex product intersected with the budget rows: the dual variable
  // of each row by a safeguarded secant search (exact for one row, cyclic for several).
  void project(double* y) {
    z_.assign(y, y + nf_);
    if (D_.m == 0) {
      project_blocks(z_.data(), mu_proj_.data(), y);
      return;
    }
    const int cycles = D_.m == 1 ? 1 : 6;
    for (int cyc = 0; cyc < cycles; ++cyc) {
      for (int64_t r = 0; r < D_.m; ++r) {
        auto excess = [&](double mu_r) {
          mu_proj_[r] = mu_r;
          project_blocks(z_.data(), mu_proj_.data(), y);
          return row_use(r, y) - bres_[r];
        };
        const double tol = 1e-12 * D_.rscale[r];
        double e0 = excess(0.0);
        if (e0 <= tol) continue;  // mu_r = 0 is optimal
        double lo = 0.0, elo = e0;
        double hi = std::max(mu_proj_[r], 1e-300);
        double ehi = excess(hi);
        if (ehi > tol) {
          hi = std::max(hi, 1e-12);
          for (int k = 0; k < 500 && (ehi = excess(hi)) > tol; ++k) {
            lo = hi;
            elo = ehi;
            hi *= 4.0;
          }
        }
        if (ehi > tol) continue;  // cannot be met (rounding); keep the last point
        // Illinois regula falsi on the monotone piecewise-linear excess.
        int side = 0;
        double mu = hi;
        for (int k = 0; k < 100; ++k) {
          if (elo - ehi <= 0) break;
          mu = hi - ehi * (hi - lo) / (ehi - elo);
          if (!(mu > lo && mu < hi)) mu = 0.5 * (lo + hi);
          const double e = excess(mu);
          if (std::fabs(e) <= tol || hi - lo <= 1e-15 * hi) {
            break;
          }
          if (e > 0) {
            lo = mu;
            elo = e;
            if (side == -1) ehi *= 0.5;
            side = -1;
          } else {
            hi = mu;
            ehi = e;
            if (side == 1) elo *= 0.5;
            side = 1;
          }
        }
        if (excess(mu) > tol) excess(hi);  // end on the feasible side
      }
    }
  }

  // f(x) - g^T x + max over mu >= 0 of [sum_l min_s (g + A^T mu)_ls - mu^T b]; any mu is a
  // valid bound, mu is maximised row by row (exactly for one row).
  double bound(const double* x, double fx, const double* g) {
    double lin = fx;
    for (int64_t j = 0; j < nf_; ++j) lin -= g[j] * x[j];
    auto phi = [&](const std::vector<double>& mu, int64_t r, double* slope) {
      double val = 0, sl = 0;
      for (size_t bl = 0; bl < lay_.blocks.size(); ++bl) {
        double mn = kInf;
        int64_t arg = lay_.bstart[bl];
        for (int64_t j = lay_.bstart[bl]; j < lay_.bstart[bl + 1]; ++j) {
          double v = g[j];
          for (int64_t q = 0; q < D_.m; ++q) v += mu[q] * Af_[q * nf_ + j];
          if (v < mn) {
            mn = v;
            arg = j;
          }
        }
        val += mn;
        if (r >= 0) sl += Af_[r * nf_ + arg];
      }
      for (int64_t q = 0; q < D_.m; ++q) val -= mu[q] * bres_[q];
      if (r >= 0) *slope = sl - bres_[r];
      return val;
    };
    if (D_.m == 0) return lin + phi(mu_lp_, -1, nullptr);
    std::vector<double>& mu = mu_lp_;
    double best = phi(mu, -1, nullptr);
    const int cycles = D_.m == 1 ? 1 : 8;
    for (int cyc = 0; cyc < cycles; ++cyc) {
      const double before = best;
      for (int64_t r = 0; r < D_.m; ++r) {
        // phi is concave in mu_r; its slope (row use of the minimiser minus budget) falls.
        double slope;
        const double keep = mu[r];
        mu[r] = 0;
        double v0 = phi(mu, r, &slope);
        double lo = 0, hi;
        if (slope <= 0) {
          hi = 0;
        } else {
          hi = std::max(keep, 1e-300);
          double sh;
          mu[r] = hi;
          phi(mu, r, &sh);
          if (sh > 0) hi = std::max(hi, 1e-12);
          for (int k = 0; k < 500; ++k) {
            mu[r] = hi;
            phi(mu, r, &sh);
            if (sh <= 0) break;
            lo = hi;
            hi *= 4.0;
          }
          for (int k = 0; k < 60 && hi - lo > 1e-15 * hi; ++k) {
            mu[r] = 0.5 * (lo + hi);
            phi(mu, r, &sh);
            if (sh > 0)
              lo = mu[r];
            else
              hi = mu[r];
          }
        }
        // The maximum lies in [lo, hi]: take the better end (and the starting value).
        double cand[3] = {lo, hi, keep};
        double bv = v0;
        double bm = 0;
        for (double c : cand) {
          mu[r] = c;
          const double v = phi(mu, -1, nullptr);
          if (v > bv) {
            bv = v;
            bm = c;
          }
        }
        mu[r] = bm;
        best = std::max(best, bv);
      }
      if (best <= before + 1e-15 * std::fabs(best)) break;
    }
    // Recompute at the final mu (the best coordinate values); keep mu consistent.
    return lin + phi(mu, -1, nullptr);
  }

  const Data& D_;
  const Shift& S_;
  Layout lay_;
  int64_t nf_ = 0;
  std::vector<double> Qf_, qf_, cf_, Af_, bres_, mf_;
  double const_ = 0;
  std::vector<double> x_, y_, xn_, z_, gx_, gy_, mu_proj_, mu_lp_, best_g_, best_mu_, scratch_;
};

// Candidate convexifications; the root keeps the one with the best bound.
//  "uniform": B = t I, t the smallest making W + B PSD on the tangent space T;
//  "scaled":  B = t diag(s), s the absolute row sums of W (Gershgorin: t <= 1);
//  "lowrank": the within-layer blocks, diagonal included (capped at diag(Gs)), refilled from
//    the best rank-k approximation until they agree (hard impute), then the uniform shift;
//    when it converges the full-rank completions below are skipped;
//  "completion": the within-layer off-diagonal entries filled by alternating projections
//    between the PSD cone and the matrices that agree with Gs off those entries (a PSD
//    completion when one exists, as for a Hessian form Dw^T H Dw; the linear term is then
//    zero), then the remaining uniform shift.
// Orthonormal basis (n, n - L) of the tangent space T of the simplex product.
Eigen::MatrixXd tangent_basis(const Data& D) {
  const int64_t n = D.n, nt = n - D.L;
  Eigen::MatrixXd Z = Eigen::MatrixXd::Zero(n, nt);
  int64_t col = 0;
  for (int64_t l = 0; l < D.L; ++l) {
    const int64_t k = D.size(l), s0 = D.start[l];
    for (int64_t j = 1; j < k; ++j, ++col) {  // Helmert basis of {1}^perp in R^k
      const double a = 1.0 / std::sqrt(double(j) * double(j + 1));
      for (int64_t i = 0; i < j; ++i) Z(s0 + i, col) = a;
      Z(s0 + j, col) = -double(j) * a;
    }
  }
  return Z;
}

// The FISTA metric: m_i = 2 lambda sigma_l(i), sigma_l the largest |Q_ii| of layer l (block
// constant, so the projection stays a per-block simplex projection) and lambda the largest
// eigenvalue of diag(sigma)^-1/2 Q diag(sigma)^-1/2 on T (block-constant scaling maps T to T).
void set_metric(const Data& D, const Eigen::MatrixXd& Z, Shift& s) {
  const int64_t n = D.n;
  std::vector<double> sig(n);
  double qmax = 0;
  for (int64_t i = 0; i < n; ++i) qmax = std::max(qmax, std::fabs(s.Q[i * n + i]));
  for (int64_t l = 0; l < D.L; ++l) {
    double mx = 1e-9 * qmax + 1e-300;
    for (int64_t i = D.start[l]; i < D.start[l + 1]; ++i) mx = std::max(mx, std::fabs(s.Q[i * n + i]));
    for (int64_t i = D.start[l]; i < D.start[l + 1]; ++i) sig[i] = mx;
  }
  s.m.assign(n, 1.0);
  if (Z.cols() == 0) return;
  Eigen::MatrixXd Qn(n, n);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j) Qn(i, j) = s.Q[i * n + j] / std::sqrt(sig[i] * sig[j]);
  Eigen::MatrixXd M = Z.transpose() * Qn * Z;
  M = 0.5 * (M + M.transpose());
  Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> es(M, Eigen::EigenvaluesOnly);
  const double lam = es.info() == Eigen::Success ? es.eigenvalues()(M.rows() - 1) : 0.0;
  if (!(lam > 0)) {  // degenerate: fall back to the Euclidean constant
    for (int64_t i = 0; i < n; ++i) s.m[i] = s.lip;
    return;
  }
  for (int64_t i = 0; i < n; ++i) s.m[i] = 2.0 * lam * (1 + 1e-9) * sig[i];
}

// Gs in correlation scale: entries over sc_i sc_j, sc = sqrt|d| (PSD-ness and rank do not
// change under diagonal scaling, and layers' loss scales span decades).
struct CorrelationScale {
  std::vector<double> sc, w2;  // (n,) sqrt|d| and |d|, floored at 1e-9 max|d|

  explicit CorrelationScale(const Data& D) : sc(D.n), w2(D.n) {
    double dmax = 0;
    for (int64_t i = 0; i < D.n; ++i) dmax = std::max(dmax, std::fabs(D.d[i]));
    for (int64_t i = 0; i < D.n; ++i) {
      w2[i] = std::max(std::fabs(D.d[i]), 1e-9 * dmax + 1e-300);
      sc[i] = std::sqrt(w2[i]);
    }
  }
  // W with the diagonal diag_factor * d, scaled.
  Eigen::MatrixXd matrix(const Data& D, double diag_factor) const {
    const int64_t n = D.n;
    Eigen::MatrixXd X(n, n);
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < n; ++j) X(i, j) = (i == j ? diag_factor * D.d[i] : D.W[i * n + j]) / (sc[i] * sc[j]);
    return X;
  }
};

// The converged low-rank completion as a factor: Q_lr = U U^T matches W off the within-layer
// blocks up to a residual R = W - U U^T (float32 rounding of a low-rank G). On the simplex
// product x^T R x >= rho^T x, rho_ls = sum_{k != l} min_t R(ls, kt), so
//     f_lr(x) = |U^T x|^2 + c^T x,   c = d - diag(U U^T) + rho,
// is convex, at most the objective on every one-hot point, and its minimum is a valid bound.
struct LowRank {
  int64_t k = 0;
  std::vector<double> U;  // (n, k) row-major
  std::vector<double> c;  // (n,)
  double slack = 0;       // sum_l max_s |rho_ls|: how much rho can cost a bound
  double residual = 0;    // max |R|
};

LowRank low_rank_factor(const Data& D, const Eigen::MatrixXd& Vk, const Eigen::VectorXd& lam,
                        const std::vector<double>& sc) {
  const int64_t n = D.n, k = Vk.cols();
  LowRank f;
  f.k = k;
  f.U.resize(n * k);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < k; ++j) f.U[i * k + j] = sc[i] * Vk(i, j) * std::sqrt(std::max(lam(j), 0.0));
  Eigen::Map<const Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>> Um(f.U.data(), n, k);
  const Eigen::MatrixXd UU = Um * Um.transpose();
  f.c.resize(n);
  for (int64_t l = 0; l < D.L; ++l) {
    double worst = 0;
    for (int64_t i = D.start[l]; i < D.start[l + 1]; ++i) {
      double rho = 0;
      for (int64_t q = 0; q < D.L; ++q) {
        if (q == l) continue;
        double mn = kInf;
        for (int64_t j = D.start[q]; j < D.start[q + 1]; ++j) {
          mn = std::min(mn, D.W[i * n + j] - UU(i, j));
          f.residual = std::max(f.residual, std::fabs(D.W[i * n + j] - UU(i, j)));
        }
        rho += mn;
      }
      f.c[i] = D.d[i] - UU(i, i) + rho;
      worst = std::max(worst, std::fabs(rho));
    }
    f.slack += worst;
  }

  return f;
}

// Low-rank completion (hard impute, in correlation scale): the within-layer blocks, their
// diagonal included (capped at diag(Gs): the rest moves to the linear term), are refilled from
// the best rank-k approximation, k at the largest relative eigengap. A measured Hessian form
// Dw^T H Dw of low rank is recovered with a small diagonal, which keeps the relaxation's loss
// at fractional points small. Any outcome is valid: a uniform shift on top makes it convex.
struct Completion {
  CorrelationScale scale;
  int64_t rank = 0;    // 0: none was found
  bool exact = false;  // converged: the blocks agree with a rank-`rank` matrix
  Eigen::MatrixXd B;   // (n, n) the completed within-layer blocks (zero elsewhere)
  LowRank factor;      // when exact

  explicit Completion(const Data& D) : scale(D) {}
};

// Top eigenpairs of the symmetric X: the q largest Ritz pairs (ascending) of a subspace
// iteration from a fixed start, `iters` multiplications by X. O(n^2 q) a step where a full
// eigendecomposition costs O(n^3).
void top_ritz(const Eigen::MatrixXd& X, Eigen::MatrixXd& V, Eigen::VectorXd& lam, int iters) {
  const int64_t n = X.rows(), q = V.cols();
  for (int it = 0; it < iters; ++it) {
    Eigen::HouseholderQR<Eigen::MatrixXd> qr(X * V);
    V = qr.householderQ() * Eigen::MatrixXd::Identity(n, q);
  }
  const Eigen::MatrixXd T = V.transpose() * X * V;
  Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> es(0.5 * (T + T.transpose()));
  V = V * es.eigenvectors();
  lam = es.eigenvalues();
}

Completion complete_low_rank(const Data& D, const Deadline& dl, double budget_s) {
  const auto t0 = Clock::now();
  const int64_t n = D.n, L = D.L;
  Completion comp(D);
  const std::vector<double>& sc = comp.scale.sc;
  const std::vector<double>& w2 = comp.scale.w2;
  Eigen::MatrixXd X = comp.scale.matrix(D, 1.0);
  // The rank at the largest relative eigengap among the top quarter of the spectrum (a full
  // eigendecomposition up to n = 160, then the top 48 Ritz values), then subspace iteration:
  // X changes little per step.
  Eigen::MatrixXd Vs;  // the tracked subspace: the rank's vectors and a few spare, ascending
  Eigen::VectorXd ev;
  if (n <= 160) {
    Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> es(X);
    if (es.info() != Eigen::Success) return comp;
    Vs = es.eigenvectors();
    ev = es.eigenvalues();
  } else {
    uint64_t seed = 7;
    Vs.resize(n, 48);
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < 48; ++j) Vs(i, j) = double(splitmix64(seed) >> 11) * 0x1.0p-53 - 0.5;
    top_ritz(X, Vs, ev, 6);
  }
  const int64_t m = ev.size();
  const double top = ev(m - 1);
  if (!(top > 0)) return comp;
  int64_t rank = 1;
  double gap = 0;
  for (int64_t k = 1; k <= std::min<int64_t>(std::max<int64_t>(1, n / 4), m - 4) && k < m; ++k) {
    const double a = ev(m - k), bb = std::max(ev(m - k - 1), 1e-12 * top);
    if (a > 0 && a / bb > gap) {
      gap = a / bb;
      rank = k;
    }
  }
  Vs = Vs.rightCols(std::min<int64_t>(m, rank + 4)).eval();
  Eigen::VectorXd lam;
  for (int it = 0; it < 200; ++it) {
    if (dl.passed() || std::chrono::duration<double>(Clock::now() - t0).count() > budget_s) break;
    top_ritz(X, Vs, lam, 1);
    const Eigen::MatrixXd Vk = Vs.rightCols(rank);
    const Eigen::VectorXd lk = lam.tail(rank);
    double change = 0;
    for (int64_t l = 0; l < L; ++l) {
      const int64_t s0 = D.start[l], k = D.size(l);
      for (int64_t i = s0; i < s0 + k; ++i)
        for (int64_t j = s0; j < s0 + k; ++j) {
          double v = (Vk.row(i).array() * lk.transpose().array() * Vk.row(j).array()).sum();
          if (i == j) v = std::min(std::max(v, 0.0), D.d[i] / w2[i]);
          change = std::max(change, std::fabs(v - X(i, j)));
          X(i, j) = v;
        }
    }
    comp.rank = rank;
    if (change < 1e-7) {
      comp.exact = true;
      // The dual needs G itself of low rank (up to float32 rounding), not only the blocks.
      if (lk.minCoeff() > 0) {
        LowRank f = low_rank_factor(D, Vk, lk, sc);
        if (f.residual <= 1e-5 * D.gmax) comp.factor = std::move(f);
      }
      break;
    }
  }
  if (comp.rank > 0) {
    comp.B = Eigen::MatrixXd::Zero(n, n);
    for (int64_t l = 0; l < L; ++l)
      for (int64_t i = D.start[l]; i < D.start[l + 1]; ++i)
        for (int64_t j = D.start[l]; j < D.start[l + 1]; ++j) comp.B(i, j) = X(i, j) * sc[i] * sc[j];
  }
  return comp;
}

std::vector<Shift> candidate_shifts(const Data& D, const Deadline& dl, double budget_s, const Completion& comp,
                                    bool lowrank_only);

std::vector<Shift> make_shifts(const Data& D, const Deadline& dl, double budget_s, const Completion& comp,
                               bool lowrank_only) {
  std::vector<Shift> out = candidate_shifts(D, dl, budget_s, comp, lowrank_only);
  const Eigen::MatrixXd Z = tangent_basis(D);
  for (size_t k = 0; k < out.size(); ++k) {
    if (k > 0 && dl.passed()) {  // out of time: keep the candidates that have a metric
      out.resize(k);
      break;
    }
    set_metric(D, Z, out[k]);
  }
  return out;
}

std::vector<Shift> candidate_shifts(const Data& D, const Deadline& dl, double budget_s, const Completion& comp,
                                    bool lowrank_only) {
  const auto t0 = Clock::now();
  const int64_t n = D.n, L = D.L, nt = n - L;
  std::vector<Shift> out;
  using RowMat = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  Eigen::Map<const RowMat> Wm(D.W.data(), n, n);
  auto make = [&](const Eigen::MatrixXd& B, const char* kind) {
    Shift s;
    s.kind = kind;
    s.Q.resize(n * n);
    s.c.resize(n);
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t j = 0; j < n; ++j) s.Q[i * n + j] = D.W[i * n + j] + (D.layer[i] == D.layer[j] ? B(i, j) : 0.0);
      s.c[i] = D.d[i] - B(i, i);
    }
    return s;
  };
  if (nt == 0) {
    Shift s = make(Eigen::MatrixXd::Zero(n, n), "none");
    s.lip = 1.0;
    s.m.assign(n, 1.0);
    out.push_back(std::move(s));
    return out;
  }
  const Eigen::MatrixXd Z = tangent_basis(D);
  // Uniform shift of W + B0 on T (B0 block diagonal): returns B0 + t I with its lip.
  auto uniform = [&](const Eigen::MatrixXd& B0, const char* kind) {
    Eigen::MatrixXd M = Z.transpose() * (Wm + B0) * Z;
    M = 0.5 * (M + M.transpose());
    Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> es(M, Eigen::EigenvaluesOnly);
    LOWBIT_CHECK(es.info() == Eigen::Success, "eigenvalues of the IQP matrix failed");
    const double lmin = es.eigenvalues()(0), lmax = es.eigenvalues()(nt - 1);
    const double mag = std::max({std::fabs(lmin), std::fabs(lmax), 1e-300});
    const double t = lmin < 1e-12 * mag ? -lmin * (1 + 1e-9) + 1e-11 * mag : 0.0;
    Eigen::MatrixXd B = B0;
    B.diagonal().array() += t;
    Shift s = make(B, kind);
    s.lip = std::max(2.0 * (lmax + t), 1e-300);
    return std::make_pair(std::move(s), lmin);
  };
  // Shift of W + B0 by t * diag(w), t from the generalized eigenproblem on T, then the
  // uniform check on top (absorbs the rounding of the generalized eigenvalue).
  auto scaled = [&](const Eigen::MatrixXd& B0, const std::vector<double>& w, const char* kind) {
    Eigen::MatrixXd M = Z.transpose() * (Wm + B0) * Z;
    M = 0.5 * (M + M.transpose());
    const Eigen::VectorXd wv = Eigen::Map<const Eigen::VectorXd>(w.data(), n);
    Eigen::MatrixXd N = Z.transpose() * wv.asDiagonal() * Z;
    N = 0.5 * (N + N.transpose());
    Eigen::GeneralizedSelfAdjointEigenSolver<Eigen::MatrixXd> ge(M, N, Eigen::EigenvaluesOnly);
    Eigen::MatrixXd B = B0;
    if (ge.info() == Eigen::Success && ge.eigenvalues()(0) < 0) {
      const double t = -ge.eigenvalues()(0) * (1 + 1e-6);
      for (int64_t i = 0; i < n; ++i) B(i, i) += t * w[i];
    }
    return uniform(B, kind).first;
  };
  // Beside the low-rank dual only the exact completion's own shift is wanted (it decides the
  // nodes the factor's float residual keeps open): the other candidates cost 4x the time.
  if (lowrank_only && comp.rank > 0) {
    out.push_back(uniform(comp.B, "lowrank").first);
    return out;
  }
  const Eigen::MatrixXd B0 = Eigen::MatrixXd::Zero(n, n);
  auto [su, lmin] = uniform(B0, "uniform");
  out.push_back(std::move(su));
  if (lmin >= 0 || dl.passed()) return out;  // W is already convex on T (or no time is left)

  {  // scaled by the row sums
    std::vector<double> rs(n, 0.0);
    double smax = 0;
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t j = 0; j < n; ++j) rs[i] += std::fabs(D.W[i * n + j]);
      smax = std::max(smax, rs[i]);
    }
    for (int64_t i = 0; i < n; ++i) rs[i] = std::max(rs[i], 1e-3 * smax);
    out.push_back(scaled(B0, rs, "scaled"));
  }
  if (comp.rank > 0) {
    out.push_back(uniform(comp.B, "lowrank").first);
    if (!dl.passed()) out.push_back(scaled(comp.B, comp.scale.w2, "lowrank-scaled"));
    // A converged completion of low rank: the full-rank completions below only add diagonal.
    if (comp.exact) return out;
  }
  const std::vector<double>& sc = comp.scale.sc;
  const std::vector<double>& w2 = comp.scale.w2;
  const double alphas[] = {0.0, 0.2, 0.4};
  for (int ai = 0; ai < 3 && !dl.passed(); ++ai) {
    const double alpha = alphas[ai];
    const double until = budget_s * double(ai + 1) / 3.0;
    // PSD completion of the within-layer blocks, in correlation scale (PSD-ness does not change
    // under diagonal scaling, and layers' loss scales span decades)
    Eigen::MatrixXd X = comp.scale.matrix(D, 1 - alpha);
    for (int it = 0; it < 200; ++it) {
      if (dl.passed() || std::chrono::duration<double>(Clock::now() - t0).count() > until) break;
      Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> es(X);
      if (es.info() != Eigen::Success) break;
      const Eigen::VectorXd& lam = es.eigenvalues();
      if (lam(0) >= -1e-7 * std::fabs(lam(n - 1))) break;  // PSD enough: the shift does the rest
      const Eigen::MatrixXd& V = es.eigenvectors();
      const Eigen::MatrixXd Y = V * lam.cwiseMax(0.0).asDiagonal() * V.transpose();
      for (int64_t l = 0; l < L; ++l) {
        const int64_t s0 = D.start[l], k = D.size(l);
        for (int64_t i = s0; i < s0 + k; ++i)
          for (int64_t j = s0; j < s0 + k; ++j)
            if (i != j) X(i, j) = 0.5 * (Y(i, j) + Y(j, i));  // the diagonal stays diag(Gs)
      }
    }
    Eigen::MatrixXd B = Eigen::MatrixXd::Zero(n, n);
    for (int64_t l = 0; l < L; ++l) {
      const int64_t s0 = D.start[l], k = D.size(l);
      for (int64_t i = s0; i < s0 + k; ++i)
        for (int64_t j = s0; j < s0 + k; ++j) B(i, j) = i == j ? (1 - alpha) * D.d[i] : X(i, j) * sc[i] * sc[j];
    }
    static const char* names[3][2] = {{"completion", "completion-scaled"}, {"completion-0.2", "completion-0.2-scaled"}, {"completion-0.4", "completion-0.4-scaled"}};
    out.push_back(uniform(B, names[ai][0]).first);
    if (dl.passed()) break;
    out.push_back(scaled(B, w2, names[ai][1]));
  }
  return out;
}

// The low-rank dual bound. With |y|^2 = max_z 2 z^T y - |z|^2 and the budget rows dualised,
// for every z in R^k and mu >= 0 (LowRank: f_lr <= objective on one-hot points)
//     min over the node's configurations >= D(z, mu) = -|z|^2 - mu^T b
//                                          + sum_l min_{s allowed} (c + 2 U z + A^T mu)_ls,
// and max D = min of f_lr over the node's polytope (strong duality). D is concave in k + m
// variables and costs O(n (k + m)) to evaluate, where the QP relaxation iterates on n
// variables at O(n^2) a step. It is maximised by Newton's method on its smoothing (each min_s
// replaced by the soft-min at temperature tau, which lies below the min, by at most
// tau log(choices)), tau shrinking as Newton catches up; every D(z, mu) evaluated is a valid
// bound. The softmax weights are the relaxed point: branching and rounding use it.
class DualBound {
 public:
  DualBound(const Data& D, const LowRank& F) : D_(D), F_(F), K_(F.k + D.m), p_(D.n, 0.0), v_(D.n, 0.0) {}

  // theta (k + m,) = (z, mu) and tau warm-start the solve and return its best point and last
  // temperature (empty theta / tau <= 0: start from the data).
  NodeResult solve(const std::vector<uint32_t>& mask, std::vector<double>& theta, double& tau, double cutoff,
                   double tol_scale, const Deadline& dl) {
    NodeResult res;
    lay_.set(D_, mask);
    mask_ = &mask;
    for (int64_t r = 0; r < D_.m; ++r) {  // the cheapest allowed configuration must fit
      double need = 0;
      for (int64_t l = 0; l < D_.L; ++l) {
        double mn = kInf;
        for (int64_t i = D_.start[l]; i < D_.start[l + 1]; ++i)
          if (allowed(l, i)) mn = std::min(mn, D_.A[r * D_.n + i]);
        need += mn;
      }
      if (need > D_.b[r]) {
        res.infeasible = true;
        res.lb = kInf;
        return res;
      }
    }
    double log_choices = 0;  // tau * log_choices: the most the smoothing costs
    for (size_t bl = 0; bl < lay_.blocks.size(); ++bl)
      log_choices += std::log(double(lay_.bstart[bl + 1] - lay_.bstart[bl]));
    if (int64_t(theta.size()) != K_) theta.assign(K_, 0.0);
    if (!(tau > 0)) tau = initial_tau(theta);
    std::vector<double> best_theta = theta, trial(K_);
    Eigen::VectorXd g(K_), step(K_);
    Eigen::MatrixXd H(K_, K_);
    double best_lb = -kInf;
    for (int it = 0; it < 400; ++it) {
      double exact;
      const double smooth = evaluate(theta, tau, &exact, &g, &H);
      if (exact > best_lb) {
        best_lb = exact;
        best_theta = theta;
      }
      if (best_lb >= cutoff) {
        res.pruned = true;
        break;
      }
      // Newton step on the free coordinates (mu_r at 0 with a falling slope stays at 0).
      for (int64_t r = 0; r < D_.m; ++r)
        if (theta[F_.k + r] <= 0 && g(F_.k + r) <= 0) {
          H.row(F_.k + r).setZero();
          H.col(F_.k + r).setZero();
          H(F_.k + r, F_.k + r) = 1;
          g(F_.k + r) = 0;
        }
      H.diagonal() *= 1.0 + 1e-10;  // per coordinate: z and mu differ in scale by decades
      step = H.ldlt().solve(g);
      const double decrement = std::max(0.0, g.dot(step));  // the Newton model's gain, times 2
      const double upper = smooth + 0.5 * decrement + tau * log_choices;  // estimate of max D
      const double gap = upper - best_lb;
      if (gap <= 1e-10 * std::max(std::fabs(best_lb), tol_scale) || dl.passed()) break;
      // A smoothing below the rounding of the bound cannot sharpen further (nor can tau reach 0).
      if (tau * std::max(log_choices, 1.0) < 1e-16 * std::max(std::fabs(best_lb), tol_scale)) break;
      if (upper < cutoff && gap <= kBranchTol * (cutoff - best_lb)) break;  // cannot prune: branch
      if (0.5 * decrement <= tau) {  // Newton has caught up with this smoothing: sharpen it
        tau *= 0.1;
        continue;
      }
      double t = 1.0;
      bool moved = false;
      for (int ls = 0; ls < 40; ++ls, t *= 0.5) {
        for (int64_t q = 0; q < K_; ++q) trial[q] = theta[q] + t * step(q);
        for (int64_t r = 0; r < D_.m; ++r) trial[F_.k + r] = std::max(0.0, trial[F_.k + r]);
        if (evaluate(trial, tau, nullptr, nullptr, nullptr) >= smooth + 1e-4 * t * decrement) {
          theta = trial;
          moved = true;
          break;
        }
      }
      if (!moved) tau *= 0.1;  // rounding at this temperature: go finer
    }
    // The relaxed point at the last temperature, the reduced costs at the best bound.
    evaluate(theta, tau, nullptr, nullptr, nullptr);
    point_ = p_;
    res.x.resize(lay_.vars.size());
    for (size_t j = 0; j < lay_.vars.size(); ++j) res.x[j] = p_[lay_.vars[j]];
    evaluate(best_theta, 0.0, nullptr, nullptr, nullptr);
    res.lb = best_lb;
    res.rc.resize(lay_.vars.size());
    for (size_t bl = 0; bl < lay_.blocks.size(); ++bl) {
      double mn = kInf;
      for (int64_t j = lay_.bstart[bl]; j < lay_.bstart[bl + 1]; ++j) mn = std::min(mn, v_[lay_.vars[j]]);
      for (int64_t j = lay_.bstart[bl]; j < lay_.bstart[bl + 1]; ++j) res.rc[j] = v_[lay_.vars[j]] - mn;
    }
    theta = best_theta;
    return res;
  }

  const Layout& layout() const { return lay_; }
  const std::vector<double>& point() const { return point_; }  // (n,) the last relaxed point

 private:
  bool allowed(int64_t l, int64_t i) const { return ((*mask_)[l] >> (i - D_.start[l])) & 1u; }

  // v_ = c + 2 U z + A^T mu; p_ the soft-min weights. Returns the smoothed D (the exact D
  // when tau = 0); exact, g = grad and H = -Hessian of the smoothed D on request.
  double evaluate(const std::vector<double>& theta, double tau, double* exact, Eigen::VectorXd* g,
                  Eigen::MatrixXd* H) {
    const int64_t k = F_.k, n = D_.n;
    double base = 0;
    for (int64_t q = 0; q < k; ++q) base -= theta[q] * theta[q];
    for (int64_t r = 0; r < D_.m; ++r) base -= theta[k + r] * D_.b[r];
    if (g) {
      for (int64_t q = 0; q < k; ++q) (*g)(q) = -2.0 * theta[q];
      for (int64_t r = 0; r < D_.m; ++r) (*g)(k + r) = -D_.b[r];
      H->setZero();
      for (int64_t q = 0; q < k; ++q) (*H)(q, q) = 2.0;
    }
    Eigen::VectorXd phi(K_), mean(K_);
    Eigen::MatrixXd second(K_, K_);
    double smooth = base, ex = base;
    for (int64_t l = 0; l < D_.L; ++l) {
      double mn = kInf;
      for (int64_t i = D_.start[l]; i < D_.start[l + 1]; ++i) {
        if (!allowed(l, i)) continue;
        const double* u = &F_.U[i * k];
        double v = F_.c[i];
        for (int64_t q = 0; q < k; ++q) v += 2.0 * u[q] * theta[q];
        for (int64_t r = 0; r < D_.m; ++r) v += theta[k + r] * D_.A[r * n + i];
        v_[i] = v;
        mn = std::min(mn, v);
      }
      ex += mn;
      if (!(tau > 0)) {
        smooth += mn;
        continue;
      }
      double Z = 0;
      for (int64_t i = D_.start[l]; i < D_.start[l + 1]; ++i)
        if (allowed(l, i)) Z += (p_[i] = std::exp(-(v_[i] - mn) / tau));
      smooth += mn - tau * std::log(Z);
      if (!g) {
        for (int64_t i = D_.start[l]; i < D_.start[l + 1]; ++i) p_[i] = allowed(l, i) ? p_[i] / Z : 0.0;
        continue;
      }
      mean.setZero();
      second.setZero();
      for (int64_t i = D_.start[l]; i < D_.start[l + 1]; ++i) {
        if (!allowed(l, i)) {
          p_[i] = 0;
          continue;
        }
        p_[i] /= Z;
        for (int64_t q = 0; q < k; ++q) phi(q) = 2.0 * F_.U[i * k + q];
        for (int64_t r = 0; r < D_.m; ++r) phi(k + r) = D_.A[r * n + i];
        mean += p_[i] * phi;
        second.noalias() += p_[i] * phi * phi.transpose();
      }
      *g += mean;
      *H += (second - mean * mean.transpose()) / tau;
    }
    if (exact) *exact = ex;
    return smooth;
  }

  // A temperature at the scale of the spread of each layer's costs at theta.
  double initial_tau(const std::vector<double>& theta) {
    double ex;
    evaluate(theta, 0.0, &ex, nullptr, nullptr);
    double spread = 0;
    for (int64_t l = 0; l < D_.L; ++l) {
      double mn = kInf, mx = -kInf;
      for (int64_t i = D_.start[l]; i < D_.start[l + 1]; ++i)
        if (allowed(l, i)) {
          mn = std::min(mn, v_[i]);
          mx = std::max(mx, v_[i]);
        }
      spread += mx - mn;
    }
    return std::max(spread / double(D_.L), 1e-300);
  }

  const Data& D_;
  const LowRank& F_;
  const int64_t K_;
  Layout lay_;
  const std::vector<uint32_t>* mask_ = nullptr;
  std::vector<double> p_, v_, point_;
};

struct Node {
  std::vector<uint32_t> mask;
  double lb;
  int64_t id;
  std::shared_ptr<const std::vector<double>> warm;  // (n,) the parent's relaxed point
  std::shared_ptr<const std::vector<double>> dual;  // low-rank dual: the parent's (z, mu) and tau
  bool plunge = false;  // the child the search dives into next
};
struct NodeOrder {
  bool operator()(const Node& a, const Node& b) const {
    if (a.plunge != b.plunge) return b.plunge;  // the dive first
    if (a.lb != b.lb) return a.lb > b.lb;      // then the smallest bound
    return a.id < b.id;                    // then the newest (dives)
  }
};


// ---------------------------------------------------------------------------------------
// Banded G (interactions only between layers at most w apart in order, w <= 2: CLADO's
// pairs="neighbors" or a small window, and w = 0 for the diagonal-only search). Relaxing
// the budget rows with multipliers lam >= 0 leaves a chain whose minimum is an exact dynamic
// program over windows of w consecutive choices, so
//     L(lam) = min_config [x^T Gs x + lam^T (A x - b)]
// is a valid bound for every lam (the Lagrangian dual), maximised over lam by bisection on
// its slope. Forward and backward values give, for every (layer, choice), the bound with
// that choice forced (fixing and child bounds at once), and the minimisers on the two sides
// of the optimal lam give a feasible configuration and the layers to branch on.

struct Chain {
  const Data& D;
  int w;
  std::vector<int64_t> lo, nst;            // per layer: first layer of its window, state count
  std::vector<std::vector<int64_t>> stride;  // per layer: mixed-radix strides over the window
  std::vector<double> cost;                // (n,) d + lam^T A of the current lam
  std::vector<std::vector<double>> F, B;   // forward / backward values per layer and state
  std::vector<std::vector<int32_t>> arg;   // forward argmin (predecessor's leading choice)

  Chain(const Data& D_, int w_) : D(D_), w(w_) {
    const int64_t L = D.L;
    lo.resize(L);
    nst.resize(L);
    stride.resize(L);
    for (int64_t l = 0; l < L; ++l) {
      lo[l] = std::max<int64_t>(0, l - std::max(w, 1) + 1);
      if (w == 0) lo[l] = l;
      int64_t k = 1;
      stride[l].assign(l - lo[l] + 1, 0);
      for (int64_t j = l; j >= lo[l]; --j) {  // the last layer varies fastest
        stride[l][j - lo[l]] = k;
        k *= D.size(j);
      }
      nst[l] = k;
    }
    F.resize(L);
    B.resize(L);
    arg.resize(L);
    for (int64_t l = 0; l < L; ++l) {
      F[l].resize(nst[l]);
      B[l].resize(nst[l]);
      arg[l].resize(nst[l]);
    }
    cost.resize(D.n);
  }

  int64_t digit(int64_t l, int64_t state, int64_t layer) const {
    return (state / stride[l][layer - lo[l]]) % D.size(layer);
  }
  // Interaction of layer l's choice with the earlier layers inside its own window (state st).
  double pair_cost(int64_t l, int64_t st) const {
    if (w == 0) return 0.0;
    const int64_t i = D.start[l] + digit(l, st, l);
    double s = 0;
    for (int64_t k = lo[l]; k < l; ++k) s += 2.0 * D.W[i * D.n + D.start[k] + digit(l, st, k)];
    return s;
  }
  bool allowed(const std::vector<uint32_t>& mask, int64_t l, int64_t st) const {
    for (int64_t k = lo[l]; k <= l; ++k)
      if (!((mask[k] >> digit(l, st, k)) & 1u)) return false;
    return true;
  }

  // Forward and backward passes for the current cost; returns min over configurations.
  // F[l][st]: best cost of layers <= l (their pairs included) ending in window state st.
  // B[l][st]: best cost of layers > l and of every pair touching them, given st.
  double run(const std::vector<uint32_t>& mask) {
    const int64_t L = D.L, n = D.n;
    for (int64_t l = 0; l < L; ++l) {
      const bool drops = l > 0 && lo[l - 1] < lo[l];  // layer lo[l-1] leaves the window
      const bool far = drops && w >= 1;                // ... and interacts with l (distance w)
      const int64_t kd = drops ? D.size(lo[l - 1]) : 1;
      for (int64_t st = 0; st < nst[l]; ++st) {
        if (!allowed(mask, l, st)) {
          F[l][st] = kInf;
          continue;
        }
        const int64_t i = D.start[l] + digit(l, st, l);
        const double add = cost[i] + pair_cost(l, st);
        if (l == 0) {
          F[l][st] = add;
          continue;
        }
        int64_t base = 0;
        for (int64_t k = lo[l]; k < l; ++k) base += digit(l, st, k) * stride[l - 1][k - lo[l - 1]];
        double best = kInf;
        int32_t ba = -1;
        for (int64_t c = 0; c < kd; ++c) {
          const int64_t ps = base + (drops ? c * stride[l - 1][0] : 0);
          double v = F[l - 1][ps];
          if (far) v += 2.0 * D.W[i * n + D.start[lo[l - 1]] + c];
          if (v < best) {
            best = v;
            ba = int32_t(ps);
          }
        }
        F[l][st] = best + add;
        arg[l][st] = ba;
      }
    }
    for (int64_t l = L - 1; l >= 0; --l) {
      for (int64_t st = 0; st < nst[l]; ++st) {
        if (l == L - 1) {
          B[l][st] = 0;
          continue;
        }
        int64_t base = 0;
        for (int64_t k = lo[l + 1]; k <= l; ++k) base += digit(l, st, k) * stride[l + 1][k - lo[l + 1]];
        double best = kInf;
        for (int64_t c = 0; c < D.size(l + 1); ++c) {
          const int64_t ns = base + c;  // layer l+1 is the last digit (stride 1)
          if (!allowed(mask, l + 1, ns)) continue;
          const int64_t j = D.start[l + 1] + c;
          double v = cost[j] + B[l + 1][ns];
          if (w >= 1)  // pairs of l+1 with layers max(0, l+1-w)..l, all in this state's window
            for (int64_t k = std::max<int64_t>(0, l + 1 - w); k <= l; ++k)
              v += 2.0 * D.W[j * n + D.start[k] + digit(l, st, k)];
          best = std::min(best, v);
        }
        B[l][st] = best;
      }
    }
    double mn = kInf;
    for (int64_t st = 0; st < nst[L - 1]; ++st) mn = std::min(mn, F[L - 1][st]);
    return mn;
  }

  void argmin(std::vector<int32_t>& c) const {
    const int64_t L = D.L;
    int64_t st = 0;
    double mn = kInf;
    for (int64_t s = 0; s < nst[L - 1]; ++s)
      if (F[L - 1][s] < mn) {
        mn = F[L - 1][s];
        st = s;
      }
    for (int64_t l = L - 1; l >= 0; --l) {
      c[l] = int32_t(digit(l, st, l));
      if (l > 0) st = arg[l][st];
    }
  }

  // Per variable: the minimum over configurations with that choice forced (current cost).
  void forced(std::vector<double>& out) const {
    out.assign(D.n, kInf);
    for (int64_t l = 0; l < D.L; ++l)
      for (int64_t st = 0; st < nst[l]; ++st) {
        const double v = F[l][st] + B[l][st];
        const int64_t i = D.start[l] + digit(l, st, l);
        out[i] = std::min(out[i], v);
      }
  }

  void set_lambda(const std::vector<double>& lam) {
    for (int64_t i = 0; i < D.n; ++i) {
      double c = D.d[i];
      for (int64_t r = 0; r < D.m; ++r) c += lam[r] * D.A[r * D.n + i];
      cost[i] = c;
    }
  }
  double lam_b(const std::vector<double>& lam) const {
    double s = 0;
    for (int64_t r = 0; r < D.m; ++r) s += lam[r] * D.b[r];
    return s;
  }
  double use(int64_t r, const std::vector<int32_t>& c) const {
    double s = 0;
    for (int64_t l = 0; l < D.L; ++l) s += D.A[r * D.n + D.start[l] + c[l]];
    return s;
  }

  struct Bound {
    double lb = -kInf;
    bool infeasible = false;
    std::vector<double> lam;
    std::vector<int32_t> below, above;  // minimisers just below / above the optimal lam
    std::vector<double> forced;         // per variable, at lam
  };

  // max over lam >= 0 of L(lam) on the masked problem (coordinate bisection per row).
  Bound dual(const std::vector<uint32_t>& mask, std::vector<double> lam) {
    Bound bd;
    const int64_t L = D.L;
    std::vector<int32_t> c(L);
    auto value = [&](const std::vector<double>& lm) {
      set_lambda(lm);
      return run(mask) - lam_b(lm);
    };
    lam.resize(D.m, 0.0);
    double best = value(lam);
    if (!std::isfinite(best)) {
      bd.infeasible = true;
      bd.lb = kInf;
      return bd;
    }
    bd.above.assign(L, 0);
    bd.below.assign(L, 0);
    const int cycles = D.m <= 1 ? 1 : 8;
    for (int cyc = 0; cyc < cycles && D.m > 0; ++cyc) {
      const double before = best;
      for (int64_t r = 0; r < D.m; ++r) {
        auto slope = [&](double v) {
          lam[r] = v;
          set_lambda(lam);
          run(mask);
          argmin(c);
          return use(r, c) - D.b[r];
        };
        const double keep = lam[r];
        double lo_v = 0, hi_v;
        if (slope(0.0) <= 0) {
          hi_v = 0;
        } else {
          hi_v = std::max(keep, 1e-300);
          if (slope(hi_v) > 0) hi_v = std::max(hi_v, 1e-12 * std::max(D.gmax, 1e-300) / std::max(D.rscale[r], 1e-300));
          int k = 0;
          while (slope(hi_v) > 0 && k++ < 500) {
            lo_v = hi_v;
            hi_v *= 4.0;
          }
          if (k >= 500) {  // this row cannot be met in the masked problem
            bd.infeasible = true;
            bd.lb = kInf;
            return bd;
          }
          for (int it = 0; it < 64 && hi_v - lo_v > 1e-15 * hi_v; ++it) {
            const double mid = 0.5 * (lo_v + hi_v);
            if (slope(mid) > 0)
              lo_v = mid;
            else
              hi_v = mid;
          }
        }
        double bv = -kInf, bm = 0;
        for (double cand : {lo_v, hi_v, keep}) {
          lam[r] = cand;
          const double v = value(lam);
          if (v > bv) {
            bv = v;
            bm = cand;
          }
        }
        lam[r] = bm;
        best = std::max(best, bv);
        if (D.m == 1) {
          lam[r] = lo_v;
          set_lambda(lam);
          run(mask);
          argmin(bd.below);
          lam[r] = hi_v;
          set_lambda(lam);
          run(mask);
          argmin(bd.above);
          lam[r] = bm;
        }
      }
      if (best <= before + 1e-15 * std::fabs(best)) break;
    }
    const double v = value(lam);
    if (D.m != 1) {
      argmin(bd.above);
      bd.below = bd.above;
    }
    bd.lb = v;
    forced(bd.forced);
    for (auto& f : bd.forced) f -= lam_b(lam);
    bd.lam = lam;
    return bd;
  }
};

// Bandwidth of W in layer order: the largest |l - k| with a nonzero interaction.
int bandwidth(const Data& D) {
  int bw = 0;
  for (int64_t i = 0; i < D.n; ++i)
    for (int64_t j = i + 1; j < D.n; ++j)
      if (D.W[i * D.n + j] != 0.0) bw = std::max<int>(bw, int(std::abs(D.layer[j] - D.layer[i])));
  return bw;
}

// Branch and bound with the chain bound. best/best_obj carry the incumbent in and out.
struct ChainOutcome {
  int64_t nodes = 0;
  bool stopped_time = false, stopped_nodes = false;
  double lb = kInf;  // proven bound over the unexplored part (min of open and discarded nodes)
  double root_bound = -kInf;
};

ChainOutcome chain_bnb(const Data& D, int w, const IQPOptions& opt, const Deadline& dl,
                       const std::function<double(double)>& cutoff_of, std::vector<int32_t>& best,
                       double& best_obj) {
  ChainOutcome out;
  Chain ch(D, w);
  Search rs(D);
  struct CNode {
    std::vector<uint32_t> mask;
    double lb;
    int64_t id;
    std::vector<double> lam;
  };
  auto order = [](const CNode& a, const CNode& b) { return a.lb != b.lb ? a.lb > b.lb : a.id < b.id; };
  std::priority_queue<CNode, std::vector<CNode>, decltype(order)> queue(order);
  std::vector<uint32_t> root(D.L);
  for (int64_t l = 0; l < D.L; ++l) root[l] = D.size(l) == 32 ? 0xFFFFFFFFu : ((1u << D.size(l)) - 1u);
  int64_t next_id = 0;
  queue.push(CNode{root, -kInf, next_id++, {}});
  double closed = kInf;
  auto offer = [&](const std::vector<int32_t>& c) {
    rs.assign(c.data());
    if (!rs.feasible()) return;
    rs.local_search(dl, false);
    if (rs.feasible() && rs.obj < best_obj) {
      best_obj = rs.obj;
      best = rs.c;
    }
  };
  bool first = true;
  while (!queue.empty()) {
    if (queue.top().lb >= cutoff_of(best_obj)) {
      closed = std::min(closed, queue.top().lb);
      queue.pop();
      continue;
    }
    if (dl.passed()) {
      out.stopped_time = true;
      break;
    }
    if (out.nodes >= opt.node_limit) {
      out.stopped_nodes = true;
      break;
    }
    CNode nd = queue.top();
    queue.pop();
    Chain::Bound bd = ch.dual(nd.mask, nd.lam);
    ++out.nodes;
    const double lb = std::max(bd.lb, nd.lb);
    if (first) {
      out.root_bound = bd.lb;
      first = false;
    }
    if (bd.infeasible) continue;
    offer(bd.above);
    const double cutoff = cutoff_of(best_obj);
    if (lb >= cutoff) {
      closed = std::min(closed, lb);
      continue;
    }
    // Forced-choice bounds: fixing, and the branching layer (minimisers disagree there).
    std::vector<uint32_t> mask = nd.mask;
    int64_t branch = -1;
    int free_layers = 0;
    for (int64_t l = 0; l < D.L; ++l) {
      for (int64_t s = 0; s < D.size(l); ++s)
        if (((mask[l] >> s) & 1u) && bd.forced[D.start[l] + s] >= cutoff) {
          mask[l] &= ~(1u << s);
          closed = std::min(closed, bd.forced[D.start[l] + s]);
        }
      if (mask[l] == 0) {
        closed = std::min(closed, lb);
        branch = -2;
        break;
      }
      if ((mask[l] & (mask[l] - 1)) != 0) {
        ++free_layers;
        if (branch == -1 && bd.below[l] != bd.above[l]) branch = l;
      }
    }
    if (branch == -2) continue;
    if (free_layers == 0) {  // a single configuration is left
      std::vector<int32_t> c(D.L);
      for (int64_t l = 0; l < D.L; ++l) {
        int64_t s = 0;
        while (!((mask[l] >> s) & 1u)) ++s;
        c[l] = int32_t(s);
      }
      offer(c);
      continue;
    }
    if (branch == -1) {
      // The minimisers agree on every free layer: the feasible one is optimal here when the
      // complementary slackness holds; otherwise split the free layer with most choices.
      if (bd.above == bd.below) {
        bool slack = true;
        for (int64_t r = 0; r < D.m; ++r)
          if (bd.lam.size() > size_t(r) && bd.lam[r] > 0 && ch.use(r, bd.above) < D.b[r] - 1e-12 * D.rscale[r])
            slack = false;
        rs.assign(bd.above.data());
        if (slack && rs.feasible()) {
          if (rs.obj < best_obj) {
            best_obj = rs.obj;
            best = rs.c;
          }
          closed = std::min(closed, std::max(lb, rs.obj));
          continue;
        }
      }
      int best_cnt = 0;
      for (int64_t l = 0; l < D.L; ++l) {
        const int cnt = __builtin_popcount(mask[l]);
        if (cnt > 1 && cnt > best_cnt) {
          best_cnt = cnt;
          branch = l;
        }
      }
    }
    for (int64_t s = 0; s < D.size(branch); ++s) {
      if (!((mask[branch] >> s) & 1u)) continue;
      CNode c{mask, std::max(lb, bd.forced[D.start[branch] + s]), next_id++, bd.lam};
      c.mask[branch] = 1u << s;
      queue.push(std::move(c));
    }
  }
  out.lb = closed;
  if (!queue.empty()) out.lb = std::min(out.lb, queue.top().lb);
  return out;
}

}  // namespace

namespace {

// solve_iqp, from the configuration `start` (L,) when given; `nested` marks the sub-problems of
// the reduced-cost neighbourhoods, which search none of their own.
IQPResult solve_impl(const IQPProblem& p, const IQPOptions& opt, const int32_t* start, bool nested, int32_t* choice) {
  LOWBIT_CHECK(opt.time_limit > 0 && std::isfinite(opt.time_limit),
               "time_limit must be a positive number of seconds, got " << opt.time_limit);
  LOWBIT_CHECK(opt.node_limit >= 1, "node_limit must be >= 1, got " << opt.node_limit);
  LOWBIT_CHECK(opt.gap_tol >= 0 && std::isfinite(opt.gap_tol), "gap_tol must be >= 0, got " << opt.gap_tol);
  LOWBIT_CHECK(opt.restarts >= 0, "restarts must be >= 0, got " << opt.restarts);
  const auto t0 = Clock::now();
  // The search stops a little early (2 %, at most 20 ms): the node in progress when its deadline
  // passes and the result still have to fit in the time limit.
  const double search_s = opt.time_limit - std::min(0.02 * opt.time_limit, 0.02);
  const Deadline dl{t0 + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(search_s))};
  const Data D(p);
  const int64_t L = D.L;
  IQPResult res;

  // ---- incumbent: greedy starts + local search, then perturbation restarts -----------------
  std::vector<int32_t> best(L, -1);
  double best_obj = kInf;
  auto offer = [&](const Search& s) {
    if (s.feasible() && s.obj < best_obj) {
      best_obj = s.obj;
      best = s.c;
    }
  };
  {
    Search s(D);
    if (start) {
      s.assign(start);
      offer(s);
    }
    std::vector<int32_t> c0(L);
    // (a) cheapest configuration (normalised budget use; ties by the diagonal), upgraded.
    for (int64_t l = 0; l < L; ++l) {
      double bc = kInf, bd = kInf;
      for (int64_t t = 0; t < D.size(l); ++t) {
        const int64_t i = D.start[l] + t;
        double cst = 0;
        for (int64_t r = 0; r < D.m; ++r) cst += D.A[r * D.n + i] / D.rscale[r];
        if (cst < bc - 1e-15 || (cst <= bc + 1e-15 && D.d[i] < bd)) {
          bc = cst;
          bd = D.d[i];
          c0[l] = int32_t(t);
        }
      }
    }
    s.assign(c0.data());
    if (s.repair()) {
      s.upgrade(dl);
      s.local_search(dl, true);
      offer(s);
    }
    // (b) the best diagonal choice per layer, repaired down to the budget.
    for (int64_t l = 0; l < L; ++l) {
      int64_t bt = 0;
      for (int64_t t = 1; t < D.size(l); ++t)
        if (D.d[D.start[l] + t] < D.d[D.start[l] + bt]) bt = t;
      c0[l] = int32_t(bt);
    }
    s.assign(c0.data());
    s.one_opt(dl);  // (feasible moves only: from an infeasible point this only lowers)
    s.assign(s.c.data());
    if (s.repair()) {
      s.local_search(dl, true);
      offer(s);
    }
  }
  // Compound moves (force, repair, upgrade, 1-opt) from the incumbent until none improves.
  if (best_obj < kInf) {
    Search s(D), t(D);
    s.assign(best.data());
    for (int pass = 0; pass < 50 && !dl.passed(); ++pass) {
      if (!compound_pass(s, t, dl)) break;
      s.local_search(dl, true);
      offer(s);
    }
  }
  // Iterated local search: rounds of `restarts` perturbations of the incumbent (run through
  // parallel_for, reduced in restart order: the same result for any thread count), each a
  // kick, repair, 1-opt / 2-opt and compound moves, until three rounds in a row find nothing
  // better, at most 16 rounds or 30 % of the time limit.
  int ils_round = 0;
  auto run_ils = [&](Clock::time_point ils_end, int max_rounds, int max_stall) {
  for (int stall = 0, k = 0; best_obj < kInf && opt.restarts > 0 && k < max_rounds && stall < max_stall &&
                             !dl.passed() && Clock::now() < ils_end;
       ++k) {
    const int round = ils_round++;
    const int R = opt.restarts;
    std::vector<std::vector<int32_t>> rc(R);
    std::vector<double> ro(R, kInf);
    const std::vector<int32_t> base = best;
    parallel_for(0, R, 1, [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) {
        uint64_t st = opt.seed * 0x100000001B3ull + uint64_t(round * R + r) * 0x9E3779B97F4A7C15ull + 12345;
        std::vector<int32_t> c = base;
        const int64_t kicks = 1 + (r % 4) * std::max<int64_t>(1, L / 8) + (r / 4);
        for (int64_t k = 0; k < kicks; ++k) {
          const int64_t l = int64_t(splitmix64(st) % uint64_t(L));
          c[l] = int32_t(splitmix64(st) % uint64_t(D.size(l)));
        }
        Search s(D), t(D);
        s.assign(c.data());
        if (!s.repair()) continue;
        s.local_search(dl, true);
        for (int pass = 0; pass < 50 && !dl.passed() && Clock::now() < ils_end; ++pass) {
          if (!compound_pass(s, t, dl)) break;
          s.local_search(dl, true);
        }
        if (s.feasible()) {
          ro[r] = s.obj;
          rc[r] = s.c;
        }
      }
    });
    bool improved = false;
    for (int r = 0; r < R; ++r)
      if (ro[r] < best_obj - D.eps) {
        best_obj = ro[r];
        best = rc[r];
        improved = true;
      }
    stall = improved ? 0 : stall + 1;
  }
  };
  // ---- bound: the chain dynamic program for banded G, else convex relaxations --------------
  const int bw = bandwidth(D);
  int64_t window_states = 1;
  for (int64_t l = 0; l < L; ++l) {
    int64_t k = 1;
    for (int64_t j = std::max<int64_t>(0, l - bw + 1); j <= l; ++j) k *= D.size(j);
    window_states = std::max(window_states, k);
  }
  const bool banded = bw <= 2 && window_states <= 4096;
  const double shift_budget_s = 0.25 * opt.time_limit;
  Completion comp(D);
  if (!banded) comp = complete_low_rank(D, dl, shift_budget_s / 3.0);
  // The low-rank dual's search rounds its way to better configurations than long local
  // search does: the local search gets a short start then.
  const double ils_share = comp.factor.k > 0 ? 0.05 : 0.3;
  run_ils(t0 + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(ils_share * opt.time_limit)), 16, 3);
  res.warm_objective = best_obj;

  // ---- branch and bound ---------------------------------------------------------------------
  if (banded) {
    auto denom_c = [&](double inc) { return std::max(std::fabs(inc), 1e-9 * std::max(D.gmax, 1e-300)); };
    std::function<double(double)> cut = [&](double inc) {
      return std::isfinite(inc) ? inc - opt.gap_tol * denom_c(inc) : kInf;
    };
    ChainOutcome co = chain_bnb(D, bw, opt, dl, cut, best, best_obj);
    res.nodes = co.nodes;
    res.root_bound = co.root_bound;
    res.relaxation = "chain";
    res.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    const bool stopped = co.stopped_time || co.stopped_nodes;
    if (!std::isfinite(best_obj)) {
      for (int64_t l = 0; l < L; ++l) choice[l] = -1;
      res.objective = kInf;
      res.status = stopped ? (co.stopped_time ? IQPStatus::kTimeLimit : IQPStatus::kNodeLimit) : IQPStatus::kInfeasible;
      res.bound = stopped ? co.lb : kInf;
      res.gap = stopped ? kInf : 0.0;
      return res;
    }
    for (int64_t l = 0; l < L; ++l) choice[l] = best[l];
    res.objective = iqp_objective(p, choice);
    res.bound = std::min(co.lb, res.objective);
    res.gap = std::max(0.0, (res.objective - res.bound) / denom_c(res.objective));
    res.status = !stopped || res.gap <= opt.gap_tol ? IQPStatus::kOptimal
                 : co.stopped_time                 ? IQPStatus::kTimeLimit
                                                   : IQPStatus::kNodeLimit;
    return res;
  }
  std::vector<uint32_t> root_mask(L);
  for (int64_t l = 0; l < L; ++l)
    root_mask[l] = D.size(l) == 32 ? 0xFFFFFFFFu : ((1u << D.size(l)) - 1u);
  const double tol_scale = std::max(1e-12, 1e-9 * D.gmax) * 1e-3;
  auto denom = [&](double inc) { return std::max(std::fabs(inc), 1e-9 * std::max(D.gmax, 1e-300)); };
  auto cutoff_of = [&](double inc) { return std::isfinite(inc) ? inc - opt.gap_tol * denom(inc) : kInf; };

  const LowRank& lowrank = comp.factor;
  NodeResult root;
  int64_t nodes = 1;  // the root counts once, whatever the number of candidates

  // The QP relaxation: a short root solve of each candidate shift picks one. With the low-rank
  // dual it is only needed for the nodes that the factor's residual keeps open, so it is built
  // on the first of those.
  std::unique_ptr<DualBound> dual;
  std::vector<Shift> shifts;
  std::unique_ptr<Relaxation> qp;
  const char* qp_kind = "";
  auto qp_relaxation = [&]() -> Relaxation& {
    if (qp) return *qp;
    shifts = make_shifts(D, dl, shift_budget_s, comp, dual != nullptr);
    NodeResult best_root;
    for (size_t k = 0; k < shifts.size(); ++k) {
      auto r = std::make_unique<Relaxation>(D, shifts[k]);
      NodeResult nr = r->solve(root_mask, nullptr, cutoff_of(best_obj), tol_scale, 200, dl);
      if (!qp || nr.lb > best_root.lb || nr.infeasible) {
        best_root = std::move(nr);
        qp = std::move(r);
        qp_kind = shifts[k].kind;
      }
      if (best_root.infeasible || best_root.pruned) break;
    }
    if (!dual) root = std::move(best_root);
    return *qp;
  };
  const Layout* root_layout = nullptr;
  double root_inherited = -kInf;
  // The low-rank dual when the completion converged, else the QP relaxation at the root
  // (the chosen shift solved to convergence).
  std::vector<double> root_dual;
  if (lowrank.k > 0) {
    dual = std::make_unique<DualBound>(D, lowrank);
    std::vector<double> theta;
    double tau = 0;
    root = dual->solve(root_mask, theta, tau, cutoff_of(best_obj), tol_scale, dl);
    root_layout = &dual->layout();
    root_dual = theta;
    root_dual.push_back(tau);
  } else {
    Relaxation& R = qp_relaxation();
    root_layout = &R.layout();
    if (!root.infeasible && !root.pruned) {
      std::vector<double> warm(D.n, 0.0);
      for (size_t j = 0; j < R.layout().vars.size(); ++j) warm[R.layout().vars[j]] = root.x[j];
      NodeResult r = R.solve(root_mask, warm.data(), cutoff_of(best_obj), tol_scale, 4000, dl);
      root_inherited = root.lb;  // the short solve's bound (its reduced costs are not r's)
      root = std::move(r);
    }
  }
  res.root_bound = std::max(root.lb, root_inherited);
  res.relaxation = dual ? "lowrank-dual" : qp_kind;
  // A root bound this far below the incumbent gives branching little chance: more local
  // search first (until six rounds in a row find nothing better, or 80 % of the time limit).
  if (!root.infeasible && !root.pruned && std::isfinite(best_obj) && best_obj - res.root_bound > 0.5 * denom(best_obj))
    run_ils(t0 + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(0.8 * opt.time_limit)),
            1 << 30, 6);

  std::priority_queue<Node, std::vector<Node>, NodeOrder> queue;
  int64_t next_id = 0;
  bool stopped_time = false, stopped_nodes = false;
  double closed_lb = kInf;  // smallest bound of everything discarded by the cutoff
  auto discard = [&](double lb) { closed_lb = std::min(closed_lb, lb); };

  Search rs(D), rt(D);
  std::vector<int32_t> cand(L);
  // Incumbents from a rounding `cand`: repair and 1-opt, then pair moves when the result comes
  // within kPolishRel of the incumbent (once per configuration: sibling nodes often round
  // alike) and compound moves within kCompoundRel, and compound moves on a new incumbent, as
  // the warm start.
  std::unordered_set<uint64_t> polished;
  double compound_s = 0;  // time in compound moves on roundings that were not yet incumbents
  auto try_rounding = [&]() {
    rs.assign(cand.data());
    if (!rs.repair()) return;
    rs.local_search(dl, false);
    if (!rs.feasible()) return;
    if (rs.obj >= best_obj) {
      if (!(rs.obj < best_obj + kPolishRel * std::fabs(best_obj))) return;
      uint64_t h = 1469598103934665603ull;  // FNV-1a of the configuration
      for (int64_t l = 0; l < L; ++l) h = (h ^ uint64_t(rs.c[l])) * 1099511628211ull;
      if (!polished.insert(h).second) return;
      rs.local_search(dl, true);
      if (rs.obj >= best_obj && rs.obj < best_obj + kCompoundRel * std::fabs(best_obj) &&
          compound_s <= kCompoundShare * std::chrono::duration<double>(Clock::now() - t0).count()) {
        const auto c0 = Clock::now();
        for (int pass = 0; pass < 50 && !dl.passed() && compound_pass(rs, rt, dl); ++pass) rs.local_search(dl, true);
        compound_s += std::chrono::duration<double>(Clock::now() - c0).count();
      }
      if (!(rs.obj < best_obj)) return;
    }
    rs.local_search(dl, true);
    for (int pass = 0; pass < 50 && !dl.passed() && compound_pass(rs, rt, dl); ++pass) rs.local_search(dl, true);
    if (rs.feasible() && rs.obj < best_obj) {
      best_obj = rs.obj;
      best = rs.c;
    }
  };

  // Processes a node whose relaxation `nr` was solved on `mask` with layout `lay`; `inherited`
  // is the bound it came with (the parent's), `dual_state` its low-rank dual point, handed to
  // the children. The reduced costs are relative to nr.lb, the bound they were computed at.
  auto expand = [&](std::vector<uint32_t> mask, NodeResult& nr, double inherited, const Layout& lay,
                    std::shared_ptr<const std::vector<double>> dual_state) {
    if (nr.infeasible || nr.pruned) {
      discard(std::max(nr.lb, inherited));
      return;
    }
    const double lb = std::max(nr.lb, inherited);
    const auto& vars = lay.vars;
    const auto& blocks = lay.blocks;
    const auto& bstart = lay.bstart;
    if (vars.empty()) {  // a leaf: every layer fixed and the budget met
      for (int64_t l = 0; l < L; ++l) {
        int64_t s = 0;
        while (!((mask[l] >> s) & 1u)) ++s;
        cand[l] = int32_t(s);
      }
      rs.assign(cand.data());
      if (rs.feasible() && rs.obj < best_obj) {
        best_obj = rs.obj;
        best = rs.c;
      }
      return;
    }
    // Incumbent from the relaxed point: round, repair, 1-opt.
    for (int64_t l = 0; l < L; ++l) {
      int64_t s = 0;
      while (!((mask[l] >> s) & 1u)) ++s;
      cand[l] = int32_t(s);
    }
    for (size_t bl = 0; bl < blocks.size(); ++bl) {
      int64_t arg = bstart[bl];
      for (int64_t j = bstart[bl]; j < bstart[bl + 1]; ++j)
        if (nr.x[j] > nr.x[arg]) arg = j;
      cand[blocks[bl]] = int32_t(vars[arg] - D.start[blocks[bl]]);
    }
    try_rounding();
    const double cutoff = cutoff_of(best_obj);
    if (lb >= cutoff) {
      discard(lb);
      return;
    }
    // Reduced-cost fixing, then the most fractional remaining layer.
    int64_t branch = -1;
    double frac = -1;
    for (size_t bl = 0; bl < blocks.size(); ++bl) {
      const int64_t l = blocks[bl];
      double mx = 0;
      for (int64_t j = bstart[bl]; j < bstart[bl + 1]; ++j) {
        const int64_t s = vars[j] - D.start[l];
        const double child_lb = std::max(lb, nr.lb + nr.rc[j]);
        if (child_lb >= cutoff) {
          mask[l] &= ~(1u << s);
          discard(child_lb);
        } else
          mx = std::max(mx, nr.x[j]);
      }
      if (mask[l] == 0) return;  // nothing in this node beats the incumbent
      if ((mask[l] & (mask[l] - 1)) != 0 && 1.0 - mx > frac) {
        frac = 1.0 - mx;
        branch = l;
      }
    }
    auto warm = std::make_shared<std::vector<double>>(D.n, 0.0);
    for (size_t j = 0; j < vars.size(); ++j) (*warm)[vars[j]] = nr.x[j];
    if (branch < 0) {  // fixing left one choice per layer: one child, a leaf
      queue.push(Node{std::move(mask), lb, next_id++, warm, dual_state});
      return;
    }
    size_t bl = 0;
    while (blocks[bl] != branch) ++bl;
    // Plunging: the child the relaxed point leans to most is solved next, down to a prune or
    // a leaf (incumbents early), then the search goes back to the smallest bound.
    int64_t lean = -1;
    for (int64_t j = bstart[bl]; j < bstart[bl + 1]; ++j)
      if (((mask[branch] >> (vars[j] - D.start[branch])) & 1u) && (lean < 0 || nr.x[j] > nr.x[lean])) lean = j;
    for (int64_t j = bstart[bl]; j < bstart[bl + 1]; ++j) {
      const int64_t s = vars[j] - D.start[branch];
      if (!((mask[branch] >> s) & 1u)) continue;
      Node ch{mask, std::max(lb, nr.lb + nr.rc[j]), next_id++, warm, dual_state, j == lean};
      ch.mask[branch] = 1u << s;
      queue.push(std::move(ch));
    }
  };

  // Reduced-cost neighbourhoods. A configuration costs at least the root bound plus the sum of
  // its choices' root reduced costs, so one that beats the incumbent takes only choices whose
  // reduced cost is below the incumbent's gap to the root bound, most of them far below. The
  // sub-problem keeps per layer the incumbent's choice and the choices below a fraction of that
  // gap; layers left with one choice are fixed (their products with the rest folded into the
  // diagonal, their costs into the budget) and this solver runs on the others, from the
  // incumbent, for kNeighbourhoodShare of the time limit. The fractions grow, each from the best
  // configuration so far. On CLADO-like instances a better configuration often differs in a
  // dozen layers at once, which the node roundings reach only deep in the tree. Run once, when
  // the search is far from a proof; the branch and bound goes on afterwards.
  std::vector<double> root_rc(D.n, kInf);  // per variable; +inf where the root layout has none
  if (!root.infeasible && !root.pruned)
    for (size_t j = 0; j < root_layout->vars.size(); ++j) root_rc[root_layout->vars[j]] = root.rc[j];
  const double root_lb = res.root_bound;
  auto neighbourhoods = [&]() {
    for (const double frac : kNeighbourhoodFractions) {
      const double left = std::chrono::duration<double>(dl.end - Clock::now()).count();
      if (!(left > 0)) return;
      const double thr = frac * (best_obj - root_lb);
      std::vector<int64_t> vars, fixed;  // the sub-problem's variables; the fixed layers' choices
      std::vector<int32_t> sub_sizes, sub_start;
      for (int64_t l = 0; l < L; ++l) {
        const int64_t inc = D.start[l] + best[l];
        const size_t first = vars.size();
        int32_t at_inc = 0;  // the incumbent's position among the kept choices
        for (int64_t i = D.start[l]; i < D.start[l + 1]; ++i) {
          if (i == inc) at_inc = int32_t(vars.size() - first);
          if (i == inc || root_rc[i] < thr) vars.push_back(i);
        }
        if (vars.size() - first == 1) {
          vars.pop_back();
          fixed.push_back(inc);
        } else {
          sub_sizes.push_back(int32_t(vars.size() - first));
          sub_start.push_back(at_inc);
        }
      }
      if (sub_sizes.size() < 2) continue;
      const int64_t nf = int64_t(vars.size());
      std::vector<float> g(nf * nf);
      for (int64_t a = 0; a < nf; ++a) {
        for (int64_t c = 0; c < nf; ++c)
          g[a * nf + c] = float(0.5 * (double(p.G(vars[a], vars[c])) + double(p.G(vars[c], vars[a]))));
        double fold = 0;  // products with the fixed choices: linear on one-hot points
        for (const int64_t f : fixed) fold += D.W[vars[a] * D.n + f];
        g[a * nf + a] = float(double(g[a * nf + a]) + 2.0 * fold);
      }
      std::vector<double> sub_a(D.m * nf), sub_b(D.m);
      for (int64_t r = 0; r < D.m; ++r) {
        for (int64_t a = 0; a < nf; ++a) sub_a[r * nf + a] = double(p.A(r, vars[a]));
        sub_b[r] = double(p.b[r]);
        for (const int64_t f : fixed) sub_b[r] -= double(p.A(r, f));
      }
      IQPProblem sub;
      sub.G = ConstMatrixView<float>(g.data(), nf, nf);
      sub.sizes = sub_sizes.data();
      sub.L = int64_t(sub_sizes.size());
      sub.A = ConstMatrixView<double>(sub_a.data(), D.m, nf);
      sub.b = sub_b.data();
      IQPOptions so = opt;
      so.time_limit = std::min(kNeighbourhoodShare * opt.time_limit, left);
      std::vector<int32_t> sub_choice(sub.L);
      solve_impl(sub, so, sub_start.data(), true, sub_choice.data());
      ++res.neighbourhoods;
      if (sub_choice[0] < 0) continue;
      // Back to the full configuration, priced on the full problem (the fold is in float).
      for (int64_t a = 0, k = 0; a < nf; ++k) {
        const int64_t l = D.layer[vars[a]];
        cand[l] = int32_t(vars[a + sub_choice[k]] - D.start[l]);
        a += sub_sizes[k];
      }
      for (const int64_t f : fixed) cand[D.layer[f]] = int32_t(f - D.start[D.layer[f]]);
      rs.assign(cand.data());
      if (rs.feasible() && rs.obj < best_obj - D.eps) {
        best_obj = rs.obj;
        best = rs.c;
        ++res.neighbourhood_improvements;
      }
    }
  };
  // The search's bound: everything discarded and every open node (the top may be a dive).
  auto search_bound = [&]() {
    double lb = closed_lb;
    for (auto q = queue; !q.empty(); q.pop()) lb = std::min(lb, q.top().lb);
    return lb;
  };
  bool neighbourhoods_due = !nested && std::isfinite(root_lb);
  const auto neighbourhoods_at =
      t0 + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(kNeighbourhoodAt * opt.time_limit));

  expand(root_mask, root, root_inherited, *root_layout,
         root_dual.empty() ? nullptr : std::make_shared<const std::vector<double>>(root_dual));
  while (!queue.empty()) {
    if (neighbourhoods_due && Clock::now() >= neighbourhoods_at && std::isfinite(best_obj)) {
      neighbourhoods_due = false;
      if (search_bound() - root_lb < kNeighbourhoodGate * (best_obj - root_lb)) neighbourhoods();
      continue;  // the incumbent may have moved: the cutoff test first
    }
    if (queue.top().lb >= cutoff_of(best_obj)) {
      discard(queue.top().lb);
      queue.pop();
      continue;
    }
    if (dl.passed()) {
      stopped_time = true;
      break;
    }
    if (nodes >= opt.node_limit) {
      stopped_nodes = true;
      break;
    }
    Node nd = queue.top();
    queue.pop();
    const double cutoff = cutoff_of(best_obj);
    NodeResult nr;
    const Layout* lay = nullptr;
    std::shared_ptr<const std::vector<double>> dual_state;
    if (dual) {
      std::vector<double> theta;
      double tau = 0;
      if (nd.dual) {  // the parent's point, a little warmer: the child's optimum moved
        theta.assign(nd.dual->begin(), nd.dual->end() - 1);
        tau = 10.0 * nd.dual->back();
      }
      nr = dual->solve(nd.mask, theta, tau, cutoff, tol_scale, dl);
      lay = &dual->layout();
      theta.push_back(tau);
      dual_state = std::make_shared<const std::vector<double>>(std::move(theta));
      // Building the QP relaxation takes eigendecompositions of order n (0.12 s on 100 x 4) that
      // do not stop at the deadline: late in the search the node stays open instead.
      const bool qp_affordable = qp || dl.end - Clock::now() > std::chrono::duration<double>(0.25 * search_s);
      if (!nr.infeasible && !nr.pruned && nr.lb + lowrank.slack >= cutoff && qp_affordable) {
        // Only the residual term (rho) may keep this node: the exact QP relaxation decides.
        Relaxation& R = qp_relaxation();
        NodeResult q = R.solve(nd.mask, dual->point().data(), cutoff, tol_scale, 600, dl);
        if (q.infeasible || q.pruned || q.lb > nr.lb) {
          nr = std::move(q);
          lay = &R.layout();
        }
      }
    } else {
      nr = qp->solve(nd.mask, nd.warm ? nd.warm->data() : nullptr, cutoff, tol_scale, 600, dl);
      lay = &qp->layout();
    }
    ++nodes;
    expand(std::move(nd.mask), nr, nd.lb, *lay, dual_state);  // (a relaxation cut short by the deadline is still a bound)
  }

  // ---- result -------------------------------------------------------------------------------
  double lb = search_bound();
  res.nodes = nodes;
  res.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  if (!std::isfinite(best_obj)) {
    for (int64_t l = 0; l < L; ++l) choice[l] = -1;
    res.objective = kInf;
    if (!stopped_time && !stopped_nodes) {
      res.status = IQPStatus::kInfeasible;
      res.bound = kInf;  // every node was empty
      res.gap = 0;
    } else {
      res.status = stopped_time ? IQPStatus::kTimeLimit : IQPStatus::kNodeLimit;
      res.bound = lb;
      res.gap = kInf;
    }
    return res;
  }
  for (int64_t l = 0; l < L; ++l) choice[l] = best[l];
  res.objective = iqp_objective(p, choice);
  lb = std::min(lb, res.objective);
  res.bound = lb;
  res.gap = std::max(0.0, (res.objective - lb) / denom(res.objective));
  if (!stopped_time && !stopped_nodes)
    res.status = IQPStatus::kOptimal;  // the queue emptied: every node pruned by the cutoff
  else
    res.status = res.gap <= opt.gap_tol ? IQPStatus::kOptimal
                 : stopped_time         ? IQPStatus::kTimeLimit
                                        : IQPStatus::kNodeLimit;
  if (res.status == IQPStatus::kOptimal) res.bound = std::min(res.bound, res.objective);
  return res;
}

}  // namespace

IQPResult solve_iqp(const IQPProblem& p, const IQPOptions& opt, int32_t* choice) {
  check_iqp_problem(p);
  return solve_impl(p, opt, nullptr, false, choice);
}

}  // namespace lowbit
