// CLADO's integer quadratic program (methods.md section 3.3), solved exactly.
//
//   minimise   x^T G x
//   subject to x in {0,1}^n, one-hot per layer: layer l owns the n_l consecutive variables
//              [start_l, start_l + n_l) and exactly one of them is 1 ("choice" c_l)
//              A x <= b                      (m budget rows: bytes, average bits, BitOps...)
//
// G may be indefinite and need not be symmetric (the solver uses (G + G^T) / 2). A
// configuration is written as choice[l] in [0, n_l); its objective is
//   sum_l sum_k Gs(start_l + c_l, start_k + c_k),   Gs = (G + G^T) / 2, in double,
// and it is feasible when for every row i
//   sum_l A(i, start_l + c_l)  <=  b_i + 1e-9 * sum_l max_s |A(i, start_l + s)|
// (sums in double, in layer order; the relative slack absorbs the rounding of those sums, so
// a budget set to the exact cost of a configuration admits it).
//
// solve_iqp is branch and bound (iqp.cpp):
//  - warm start: greedy feasible configurations + 1-opt / 2-opt local search and compound
//    moves (force one layer, repair, spend freed budget, 1-opt) with seeded perturbation
//    restarts; more restarts after a root bound far below the incumbent;
//  - bound: x^T diag(u) x = u^T x on one-hot points, so moving a diagonal shift u into the
//    linear term leaves the integer problem unchanged. u = t * s (s per variable, t the
//    smallest value making the quadratic convex on the tangent space of the simplex product)
//    gives a convex QP relaxation over the simplex product with the budget. The within-layer
//    blocks are free too: a low-rank completion of them (rank from the eigengap, diagonal
//    capped at diag(Gs)) recovers a Hessian form Dw^T H Dw and gives the tightest relaxation
//    on CLADO-like G; the root keeps the candidate with the best bound. It is solved by
//    FISTA with exact projections, and every node's lower bound is the Frank-Wolfe /
//    Lagrangian bound of the current iterate, which is valid whether or not the QP solver
//    has converged. When the completion is exactly low rank (U U^T, rank k), nodes use the
//    dual of that relaxation instead: a concave function of k + m variables, maximised by
//    Newton's method on a soft-min smoothing, every evaluated point a valid bound;
//  - reduced-cost fixing from that bound, branching on the most fractional layer, best-first
//    node order, rounding + local search at the nodes (pair and compound moves for roundings
//    near the incumbent, the compound ones within a share of the time);
//  - from half the time limit, when the search has closed less than half the root gap: reduced-
//    cost neighbourhoods, sub-problems of the choices whose root reduced costs are a small
//    fraction of the incumbent's gap, solved by the same solver from the incumbent.
// Single-threaded and deterministic apart from where the time limit falls; the local-search
// restarts run through parallel_for and are reduced in restart order, so the result does
// not depend on the thread count.
#pragma once
#include <cstdint>

#include "lowbit/view.h"

namespace lowbit {

enum class IQPStatus : int32_t {
  kOptimal = 0,     // gap <= gap_tol
  kTimeLimit = 1,   // stopped by time_limit; best configuration found so far returned
  kNodeLimit = 2,   // stopped by node_limit; best configuration found so far returned
  kInfeasible = 3,  // proven: no configuration satisfies A x <= b
};

const char* iqp_status_name(IQPStatus s);

constexpr int kIQPMaxChoices = 32;  // n_l <= 32 (a layer's choices are one bit mask)

struct IQPProblem {
  ConstMatrixView<float> G;         // (n, n)
  const int32_t* sizes = nullptr;   // (L,) choices per layer, each in [1, kIQPMaxChoices]
  int64_t L = 0;
  ConstMatrixView<double> A;        // (m, n) budget rows; m = 0 means no budget
  const double* b = nullptr;        // (m,)
};

struct IQPOptions {
  double time_limit = 10.0;         // seconds of wall time for the whole call (> 0), returned within it
  int64_t node_limit = 1000000;     // branch-and-bound nodes (relaxations solved)
  double gap_tol = 1e-9;            // stop when gap <= gap_tol
  uint64_t seed = 0;                // local-search perturbations (the only randomness)
  int restarts = 8;                 // local-search perturbation restarts for the warm start
};

struct IQPResult {
  IQPStatus status = IQPStatus::kInfeasible;
  double objective = 0;       // of the returned choice; +inf when none was found
  double bound = 0;           // proven lower bound on the optimum (+inf when infeasible)
  double gap = 0;             // (objective - bound) / max(|objective|, 1e-9 * max|Gs|)
  int64_t nodes = 0;          // branch-and-bound nodes solved (the root counts once)
  double seconds = 0;
  double warm_objective = 0;  // best local-search objective before branching (+inf: none)
  double root_bound = 0;      // lower bound from the root relaxation alone
  const char* relaxation = "";  // convexification kept: uniform / scaled / completion / lowrank-dual / none
  int64_t neighbourhoods = 0;              // reduced-cost neighbourhood sub-problems solved
  int64_t neighbourhood_improvements = 0;  // ... that improved the incumbent
};

// Throws std::invalid_argument naming what is wrong (sizes, shapes, non-finite values).
void check_iqp_problem(const IQPProblem& p);

// choice: (L,) output, -1 everywhere when no feasible configuration was found.
IQPResult solve_iqp(const IQPProblem& p, const IQPOptions& opt, int32_t* choice);

// Enumerates every configuration (iqp_ref.cpp; at most 1e8 of them). Keeps the first
// configuration in lexicographic order (layer 0 most significant) with the smallest objective.
// status is kOptimal or kInfeasible; nodes = configurations visited.
IQPResult solve_iqp_bruteforce(const IQPProblem& p, int32_t* choice);

// The objective of a configuration as defined above (every choice in range is checked).
double iqp_objective(const IQPProblem& p, const int32_t* choice);

// out = V max(Lambda, 0) V^T for Gs = V Lambda V^T (eigendecomposition in double), made
// exactly symmetric. Returns the clipped negative mass sum_{lambda < 0} |lambda|; the share
// of the spectrum that was clipped is mass / (trace(out) + mass).
double project_psd(ConstMatrixView<float> G, MatrixView<float> out);

}  // namespace lowbit
