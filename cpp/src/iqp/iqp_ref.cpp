// Brute-force twin of solve_iqp: every configuration, in lexicographic order (layer 0 most
// significant), objective and budgets built layer by layer down a depth-first enumeration.
// Slow and obvious; the tests hold solve_iqp to it.
#include <cmath>
#include <limits>
#include <vector>

#include "lowbit/check.h"
#include "lowbit/iqp.h"

namespace lowbit {

IQPResult solve_iqp_bruteforce(const IQPProblem& p, int32_t* choice) {
  check_iqp_problem(p);
  const int64_t L = p.L, n = p.G.rows, m = p.A.rows;
  std::vector<int64_t> start(L + 1, 0);
  double configs = 1;
  for (int64_t l = 0; l < L; ++l) {
    start[l + 1] = start[l] + p.sizes[l];
    configs *= p.sizes[l];
  }
  LOWBIT_CHECK(configs <= 1e8, "brute force refuses " << configs << " configurations (> 1e8)");
  auto gs = [&](int64_t i, int64_t j) { return 0.5 * (double(p.G(i, j)) + double(p.G(j, i))); };
  std::vector<double> slack(m, 0.0);
  for (int64_t i = 0; i < m; ++i) {
    double s = 0;
    for (int64_t l = 0; l < L; ++l) {
      double mx = 0;
      for (int64_t c = 0; c < p.sizes[l]; ++c) mx = std::max(mx, std::fabs(double(p.A(i, start[l] + c))));
      s += mx;
    }
    slack[i] = 1e-9 * s;
  }

  IQPResult res;
  const double inf = std::numeric_limits<double>::infinity();
  double best = inf;
  std::vector<int32_t> cur(L, 0), best_choice(L, -1);
  std::vector<double> partial(L + 1, 0.0);        // objective of layers [0, l)
  std::vector<double> cost((L + 1) * m, 0.0);     // budget use of layers [0, l)
  int64_t visited = 0;

  // Iterative odometer: level l picks cur[l]; partial sums are rebuilt from level l down.
  int64_t l = 0;
  cur[0] = -1;
  while (l >= 0) {
    if (++cur[l] >= p.sizes[l]) {
      --l;
      continue;
    }
    const int64_t i = start[l] + cur[l];
    double add = gs(i, i);
    for (int64_t k = 0; k < l; ++k) add += 2.0 * gs(i, start[k] + cur[k]);
    partial[l + 1] = partial[l] + add;
    for (int64_t r = 0; r < m; ++r) cost[(l + 1) * m + r] = cost[l * m + r] + double(p.A(r, i));
    if (l + 1 < L) {
      ++l;
      cur[l] = -1;
      continue;
    }
    ++visited;
    bool feasible = true;
    for (int64_t r = 0; r < m; ++r) feasible = feasible && cost[L * m + r] <= double(p.b[r]) + slack[r];
    if (feasible && partial[L] < best) {
      best = partial[L];
      best_choice = cur;
    }
  }
  (void)n;
  for (int64_t k = 0; k < L; ++k) choice[k] = best_choice[k];
  res.nodes = visited;
  if (best == inf) {
    res.status = IQPStatus::kInfeasible;
    res.objective = res.bound = res.warm_objective = inf;
    res.gap = 0;
  } else {
    res.status = IQPStatus::kOptimal;
    res.objective = res.bound = res.warm_objective = iqp_objective(p, choice);
    res.gap = 0;
  }
  return res;
}

}  // namespace lowbit
