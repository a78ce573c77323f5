// AdaRound's layer engine: learned up/down rounding of a weight matrix (Nagel et al. 2020),
// with the whole optimisation loop in C++ (no per-step Python).
//
// Symbols (paper -> here):
//   W (o, d)      float weight, one row per output channel; d = in_features or C/groups*kh*kw
//   s, z          scale and zero point (QuantParams: per tensor, channel or group, as quant.h)
//   V (o, d)      the learned rounding variable, one per weight
//   h(V)          rectified sigmoid clamp(sigmoid(V) * (zeta - gamma) + gamma, 0, 1),
//                 zeta = 1.1, gamma = -0.1
//   W~(V)         soft quantized weight s * (clamp(floor(W/s) + h(V) + z, 0, qmax) - z)
//   lambda, beta  rounding regulariser lambda * sum(1 - |2h - 1|^beta); beta anneals linearly
//                 from beta_start to beta_end after the warm-up, the regulariser is off during it
//
// Reconstruction loss, normalised like BRECQ/QDrop so lambda keeps its meaning:
//   rec = mean over rows of sum over output channels of (f(X~ W~^T + b) - Y)^2
// with X~ the layer's inputs in the network whose earlier layers are already quantized, Y the
// FP network's output of the layer, f the identity or ReLU. Two objectives evaluate it:
//
//   gram  (f = identity; every step exact over all n calibration rows, memory O(d^2)):
//         rec = ( tr(W~ H W~^T) - 2 tr(W~ P^T) + c0 ) / n,   grad_W~ = 2 (W~ H - P) / n
//         H = X~^T X~ (d, d),  P = W C^T (o, d) with C = X~^T X,  c0 = tr(W X^T X W^T)
//         (expand ||X~ W~^T - X W^T||_F^2: the bias cancels; C is the cross-Gram).
//   rows  (f identity or ReLU; minibatches of `batch` samples, each contributing all its rows):
//         R = f(Xb W~^T + b) - Yb,  grad_W~ = 2 (R * f'(.))^T Xb / rows(Xb)
//
// Grouped / depthwise layers: G groups, each with o/G output rows and its own (d, d) Gram.
//
// Schedule (BRECQ's LinearTempDecay, steps t = 1..T): t0 = warmup * T;
//   beta(t) = beta_start                                           t < t0
//           = beta_end + (beta_start - beta_end) * max(0, 1 - (t - t0) / (T - t0))   t >= t0
//   the regulariser enters the loss when t >= t0.
// Adam (PyTorch's form): m = b1 m + (1-b1) g, v = b2 v + (1-b2) g^2,
//   V -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps).
//
// All state (V, m, v) lives in caller-owned arrays; a run of k steps starting at step t0+1 gives
// the same bits as k single steps, so Python can chunk the loop for a progress bar. Minibatches
// are drawn by a counter-based generator of (seed, step): no hidden state, no thread dependence.
// Every reduction is split into fixed blocks and summed in block order, so results are
// bit-identical for any thread count.
#pragma once
#include <cstdint>

#include "lowbit/gram.h"
#include "lowbit/quant.h"
#include "lowbit/view.h"

namespace lowbit {

constexpr float kRoundZeta = 1.1f, kRoundGamma = -0.1f;

struct RoundingSchedule {
  int64_t iters = 10000;    // T
  double warmup = 0.2;      // fraction of T with the regulariser off and beta = beta_start
  float beta_start = 20.0f;
  float beta_end = 2.0f;
  float reg_lambda = 0.01f;  // lambda
  float lr = 1e-3f;          // Adam
  float adam_beta1 = 0.9f, adam_beta2 = 0.999f, adam_eps = 1e-8f;

  // beta at step t (1-based) and whether the regulariser is on.
  float beta_at(int64_t t) const;
  bool reg_on(int64_t t) const;
};

// The fixed description of one layer's weight: W (o, d) and its grid.
struct RoundingLayer {
  ConstMatrixView<float> W;  // (o, d)
  QuantParams qp;            // scale/zero (R, Gq) as quant.h; R in {1, o}
  int groups = 1;            // conv groups: rows [g*o/G, (g+1)*o/G) read Gram g
};

// Mutable optimiser state, caller-owned, all (o, d).
struct RoundingState {
  MatrixView<float> V, m, v;
};

void check_rounding_layer(const RoundingLayer& L);

// V such that h(V) = frac(W/s) (clamped into (0, 1) so V is finite): W~ starts at W.
void rounding_init(const RoundingLayer& L, MatrixView<float> V);

// W~(V) (o, d) and h(V) (o, d). Either output may be empty (data == nullptr).
void rounding_soft_weight(const RoundingLayer& L, ConstMatrixView<float> V, MatrixView<float> Wt,
                          MatrixView<float> h);

// Hard codes floor(W/s) + [V >= 0] + z clamped to [0, qmax], uint8 (o, d).
void rounding_hard_codes(const RoundingLayer& L, ConstMatrixView<float> V,
                         MatrixView<uint8_t> codes);

struct RoundingStats {
  double reg_loss = 0;    // lambda * sum(1 - |2h-1|^beta) at the step's V (0 when off)
  double soft_frac = 0;   // share of h in (0.01, 0.99)
};

// One optimiser step given dL/dW~ (o, d) of the reconstruction loss at the current V: chain
// rule through W~ and h, add the regulariser's gradient (step t, 1-based), Adam-update V, m, v.
// This is the block-mode door: the reconstruction gradient may come from anywhere.
// Wt_next (o, d, optional): receives W~ of the updated V (what the next forward pass uses).
RoundingStats rounding_apply_grad(const RoundingLayer& L, RoundingState st,
                                  ConstMatrixView<float> grad_Wt, int64_t t,
                                  const RoundingSchedule& sch, MatrixView<float> Wt_next = {});

// Gram objective statistics (caller-owned): H, C (G, d, d) as gram.h writes them, c0 and n.
struct GramObjective {
  const float* H = nullptr;  // (G, d, d) = X~^T X~ per group
  const float* C = nullptr;  // (G, d, d) = X~^T X per group
  double c0 = 0;             // tr(W X^T X W^T) summed over groups (only for the reported loss)
  double n = 1;              // number of rows the Grams summed (the mean's divisor)
};

// Rows objective data (caller-owned). Inputs are stored per sample and turned into rows on the
// fly: either Linear rows X~ (N, P, d) (P rows per sample, G = 1), or a conv input X~ (N, C, H, W)
// with its geometry (im2col per minibatch). Targets Y are the FP outputs after f:
// (N, P, o) for Linear, (N, o, out_h, out_w) for conv.
struct RowsObjective {
  const float* X = nullptr;
  const float* Y = nullptr;
  const float* bias = nullptr;  // (o,) or nullptr
  int64_t N = 0, P = 0;         // samples and rows per sample (conv: out_h * out_w)
  bool is_conv = false;
  Conv2dGeometry geo{};         // when is_conv: C, H, W, kernel, ... (geo.N is not read)
  bool relu = false;            // f = ReLU in the loss
  int64_t batch = 32;           // samples per minibatch
  uint64_t seed = 0;
};

// Loss and gradient of the reconstruction term at V (no update). grad_Wt (o, d) may be empty.
// rows: `step` picks the minibatch (the same one the run uses at that step); step = 0 and
// batch >= N use all samples in order.
double gram_loss_grad(const RoundingLayer& L, ConstMatrixView<float> Wt, const GramObjective& g,
                      MatrixView<float> grad_Wt);
double rows_loss_grad(const RoundingLayer& L, ConstMatrixView<float> Wt, const RowsObjective& r,
                      int64_t step, MatrixView<float> grad_Wt);

// Run steps t = step0+1 .. step0+nsteps of the full loop (soft weight, objective, chain rule,
// regulariser, Adam). Per step, rec_loss[i] and reg_loss[i] get the losses at the step's V
// (before its update); either may be nullptr. Returns the stats of the last step.
RoundingStats rounding_run_gram(const RoundingLayer& L, RoundingState st, const GramObjective& g,
                                const RoundingSchedule& sch, int64_t step0, int64_t nsteps,
                                float* rec_loss, float* reg_loss);
RoundingStats rounding_run_rows(const RoundingLayer& L, RoundingState st, const RowsObjective& r,
                                const RoundingSchedule& sch, int64_t step0, int64_t nsteps,
                                float* rec_loss, float* reg_loss);

// The minibatch of step t: `k` distinct sample indices of [0, n) in draw order (a partial
// Fisher-Yates shuffle driven by splitmix64(seed, t)). reference.py reproduces it exactly.
void rounding_sample_batch(uint64_t seed, int64_t t, int64_t n, int64_t k, int64_t* out);

// Estimated multiply-adds per step of each objective, the basis of objective="auto".
double rounding_cost_gram(int64_t o, int64_t d, int groups);
double rounding_cost_rows(int64_t o, int64_t d, int groups, int64_t rows_per_batch);

}  // namespace lowbit
