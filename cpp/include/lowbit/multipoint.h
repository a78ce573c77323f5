// Multipoint quantization (methods.md section 5): each output channel's weight row w (length d)
// is a base quantization plus a few extra low-bit "points" of the same bit width,
//
//   w ~ base + sum_p a_p * (u_p - z_p),     u_p in {0 .. 2^b - 1}^d (uint8 codes), a_p > 0,
//
// where z_p in {2^(b-1), 2^(b-1) - 1} says which way the b-bit grid leans: q = u - z covers
// {-2^(b-1) .. 2^(b-1) - 1} for z = 2^(b-1) and the mirrored {-(2^(b-1) - 1) .. 2^(b-1)} for
// z = 2^(b-1) - 1. Mirroring the grid is the same as allowing a < 0, so each point is the best
// over every non-zero real scale.
//
// The inner problem  min_{a, q} ||r - a q||^2  over a scale and a grid vector is solved exactly
// by a breakpoint sweep (section 5.2): for a fixed a the best q is nearest rounding, q_j changes
// only at a = |r_j| / (k + 1/2), and between breakpoints the error is a quadratic in a whose
// minimiser <r, q> / ||q||^2 is clamped to the interval. Sweeping a from large to small, each
// breakpoint moves one q_j one level away from zero, so <r, q> and ||q||^2 update in O(1); the
// best interval over the whole sweep is the global optimum. O(d 2^b log(d 2^b)) per row.
//
// Placement (section 5.3): the output error of channel c on inputs with Gram matrix H is
// e_c = (w_c - w~_c)^T H (w_c - w~_c). A point a q changes it by -2 a q^T H delta + a^2 q^T H q
// (rank-1 update of g = H delta). A max-heap over channels, keyed by the drop in e_c that the
// channel's next point would give, hands out points until the budget, the tolerance or
// max_points stops it.
#pragma once
#include <cstdint>

#include "lowbit/qmatmul.h"
#include "lowbit/view.h"

namespace lowbit {

// One row's best point: writes *scale (> 0, or 0 when r is all zero), *zero and codes[0..d).
// Returns the squared error ||r - scale * (codes - zero)||^2 (double, with the float scale).
double multipoint_best_point(const float* r, int64_t d, int bits, float* scale, float* zero,
                             uint8_t* codes);

// multipoint_best_point for every row of R (rows, d), parallel over rows; err may be null.
void multipoint_sweep(ConstMatrixView<float> R, int bits, float* scale, float* zero,
                      MatrixView<uint8_t> codes, double* err);

struct MultipointOptions {
  int bits = 2;
  int64_t budget = 0;        // extra points to hand out (stops earlier on tolerance/max_points)
  double tolerance = 0.0;    // a channel stops once e_c <= tolerance * w_c^T H w_c
  int max_points = 2;        // points per channel, the base counting as the first
  bool output_scale = true;  // refit each point's scale to the output error (q^T g / q^T H q)
  // Random placement: channels are offered in this order (no heap); each offer that is
  // still allowed adds one point. null: placement by the largest output-error drop.
  const int32_t* order = nullptr;
  int64_t order_len = 0;
  // Asymmetric start (quantized inputs xq, float targets): with g0 (C, d) = C_qf w_c - H w~_c
  // (C_qf the cross-Gram sum xq x^T, H that of xq) and e0 (C,) = the output errors
  // ||w^T x - w~^T xq||^2, the gain of a point a q is 2 a q^T g - a^2 q^T H q exactly as in
  // the symmetric case (where g0 = H delta and e0 = delta^T H delta, computed when null).
  const float* g0 = nullptr;
  const float* e0 = nullptr;
};

// The points chosen, in the order they were added. Arrays hold `budget` entries (rows).
struct MultipointPoints {
  int32_t* channel;           // (budget,) output channel the point belongs to
  float* scale;               // (budget,)
  float* zero;                // (budget,)
  MatrixView<uint8_t> codes;  // (budget, d)
  double* gain;               // (budget,) drop in that channel's output error
};

// Greedy multipoint construction for one layer.
//   W (C, d): float weight rows.  base (C, d): their base (first-point) approximation.
//   H: (groups, d, d) row-major Gram matrices; channel c uses H[c / (C / groups)].
//   err_before / err_after (C,): e_c with the base only / with every point added.
// Returns the number of points written (<= opt.budget). Deterministic and independent of
// the thread count: the first candidate of every channel is computed in parallel (each
// channel by one thread), the heap is popped sequentially with ties going to the lower channel.
int64_t multipoint_build(ConstMatrixView<float> W, ConstMatrixView<float> base, const float* H,
                         int64_t groups, const MultipointOptions& opt, MultipointPoints out,
                         double* err_before, double* err_after);

// The segmented sum that folds the rows of an expanded product back into channels (packed
// inference, section 5.4): with the point rows stacked under the N base rows of one packed
// matrix, y_ext (M, N + P) = x W_ext^T carries each row's own scale already, and
//   out[m][c] = y_ext[m][c] + sum over p with channel[p] = c, in order, of y_ext[m][N + p].
// Parallel over rows of y_ext; every output is summed in the same order at any thread count.
void multipoint_fold(ConstMatrixView<float> y_ext, const int32_t* channel, int64_t P,
                     MatrixView<float> out);

// The fused packed multipoint product: one call that runs the packed product of w (N + P rows:
// the N base rows, then the P point rows) into a per-thread scratch y_ext (M, N + P) and folds
// it into out (M, N) with multipoint_fold. The same bits as qmatmul_f32 / qmatmul_a8 followed by
// multipoint_fold (same operations, same order), without the round trip through the caller.
// bias (N + P entries, zeros for the point rows, as the two-call path takes it) may be null.
void multipoint_qmatmul_f32(const PackedMatrix& w, ConstMatrixView<float> x, const float* bias,
                            const int32_t* channel, int64_t P, MatrixView<float> out);
void multipoint_qmatmul_a8(const PackedMatrix& w, ConstMatrixView<float> x, const ActQuant& aq,
                           const float* row_sums, const float* bias, const int32_t* channel,
                           int64_t P, MatrixView<float> out);

}  // namespace lowbit
