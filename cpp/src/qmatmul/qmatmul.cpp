// Dispatcher of the packed-weight products: checks, scratch buffers (padded activations,
// quantized activations), the run-time ISA choice and the parallel split over row tiles.
#include "lowbit/qmatmul.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "lowbit/check.h"
#include "lowbit/cpu.h"
#include "lowbit/parallel.h"
#include "qmatmul_kernels.h"

namespace lowbit {

namespace {

using kernels::ActArgs;
using kernels::QmmArgs;

struct KernelSet {
  kernels::QmmKernel f32, a8;
  kernels::ActKernel act;
};

KernelSet kernels_for(Isa isa) {
  switch (isa) {
    case Isa::scalar:
      return {kernels::qmm_f32_ref, kernels::qmm_a8_ref, kernels::quant_act_ref};
    case Isa::avx2:
    case Isa::avx512:  // no VNNI: the AVX2 kernels
      return {kernels::qmm_f32_avx2, kernels::qmm_a8_avx2, kernels::quant_act_avx2};
    case Isa::avx512vnni:
    case Isa::amx:  // AMX tiles are not used yet: VNNI
      return {kernels::qmm_f32_avx512vnni, kernels::qmm_a8_avx512vnni,
              kernels::quant_act_avx512vnni};
  }
  return {kernels::qmm_f32_ref, kernels::qmm_a8_ref, kernels::quant_act_ref};
}

void check_matrix(const PackedMatrix& w) {
  check_packed_shape(w.shape);
  LOWBIT_CHECK(w.codes && w.scales && w.zeros, "packed matrix arrays must not be null");
}

QmmArgs args_of(const PackedMatrix& w, int64_t M, MatrixView<float> y, const float* bias) {
  QmmArgs a;
  a.w = w;
  a.bits = w.shape.bits;
  a.N = w.shape.rows;
  a.Kp = w.shape.padded_cols();
  a.G = w.shape.groups();
  a.gcols = w.shape.group_cols();
  a.tile_bytes = w.shape.tile_bytes();
  a.codes = w.codes;
  a.scales = w.scales;
  a.zeros = w.zeros;
  a.M = M;
  a.bias = bias;
  a.y = y.data;
  a.ldy = y.stride;
  return a;
}

// Tiles per parallel chunk: about 128 KiB of weights (times M) per chunk, at least 8 chunks
// when there are enough tiles. Any split gives the same bits (tiles are independent).
int64_t tile_grain(const QmmArgs& a) {
  const int64_t tiles = (a.N + kTileRows - 1) / kTileRows;
  const int64_t work = a.tile_bytes * std::max<int64_t>(1, std::min<int64_t>(a.M, 64) / 4);
  int64_t grain = std::max<int64_t>(1, (int64_t(128) << 10) / std::max<int64_t>(work, 1));
  return std::max<int64_t>(1, std::min(grain, tiles / 8));
}

void run_tiles(kernels::QmmKernel k, const QmmArgs& a) {
  const int64_t tiles = (a.N + kTileRows - 1) / kTileRows;
  parallel_for(0, tiles, tile_grain(a), [&](int64_t t0, int64_t t1) { k(a, t0, t1); });
}

void check_io(const PackedMatrix& w, ConstMatrixView<float> x, MatrixView<float> y) {
  check_matrix(w);
  LOWBIT_CHECK(x.cols == w.shape.cols,
               "x must have " << w.shape.cols << " columns (K), got " << x.cols);
  LOWBIT_CHECK(y.rows == x.rows && y.cols == w.shape.rows,
               "y must be (" << x.rows << ", " << w.shape.rows << "), got (" << y.rows << ", "
                             << y.cols << ")");
}

}  // namespace

void qmatmul_f32(const PackedMatrix& w, ConstMatrixView<float> x, const float* bias,
                 MatrixView<float> y) {
  check_io(w, x, y);
  if (x.rows == 0) return;
  QmmArgs a = args_of(w, x.rows, y, bias);
  std::vector<float> padded;
  if (a.Kp == x.cols) {
    a.x = x.data;
    a.ldx = x.stride;
  } else {  // per-channel matrices with K not a multiple of the block width
    padded.assign(size_t(x.rows * a.Kp), 0.0f);
    for (int64_t m = 0; m < x.rows; ++m)
      std::memcpy(padded.data() + m * a.Kp, x.row(m), size_t(x.cols) * sizeof(float));
    a.x = padded.data();
    a.ldx = a.Kp;
  }
  run_tiles(kernels_for(active_isa()).f32, a);
}

void check_act_quant(const ActQuant& aq) {
  if (aq.dynamic) return;
  LOWBIT_CHECK(aq.bits >= kMinBits && aq.bits <= kMaxBits,
               "activation bits must be in [" << kMinBits << ", " << kMaxBits << "], got "
                                              << aq.bits);
  LOWBIT_CHECK(std::isfinite(aq.scale) && aq.scale > 0,
               "activation scale must be finite and > 0, got " << aq.scale);
  LOWBIT_CHECK(std::nearbyint(aq.zero) == aq.zero && aq.zero >= 0 &&
                   aq.zero <= float((1 << aq.bits) - 1),
               "activation zero point must be an integer in 0.." << (1 << aq.bits) - 1
                                                                << ", got " << aq.zero);
}

void packed_row_sums(const PackedMatrix& w, float* out) {
  check_matrix(w);
  const int64_t G = w.shape.groups(), gcols = w.shape.group_cols();
  parallel_for(0, w.shape.rows, 64, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) {
      float rs = 0.0f;
      for (int64_t g = 0; g < G; ++g) {
        const int z = packed_zero(w, n, g);
        int64_t c = 0;
        for (int64_t k = g * gcols; k < (g + 1) * gcols; ++k) c += packed_code(w, n, k) - z;
        rs = std::fma(packed_scale(w, n, g), float(c), rs);
      }
      out[n] = rs;
    }
  });
}

void qmatmul_a8(const PackedMatrix& w, ConstMatrixView<float> x, const ActQuant& aq,
                const float* row_sums, const float* bias, MatrixView<float> y) {
  check_io(w, x, y);
  check_act_quant(aq);
  const int64_t qmax_w = (1 << w.shape.bits) - 1;
  LOWBIT_CHECK(w.shape.group_cols() * qmax_w * 255 < (int64_t(1) << 31),
               "int8 path: " << w.shape.group_cols() << " columns per group at "
                             << w.shape.bits
                             << " bits could overflow int32 sums; use smaller groups or "
                                "qmatmul_f32");
  if (x.rows == 0) return;
  const KernelSet ks = kernels_for(active_isa());
  QmmArgs a = args_of(w, x.rows, y, bias);
  const int64_t M = x.rows;
  std::vector<int8_t> xq(size_t(M * a.Kp));
  std::vector<int32_t> xsum(static_cast<size_t>(M * a.G)), xoff(static_cast<size_t>(M));
  std::vector<float> xscale(static_cast<size_t>(M));

  ActArgs act;
  act.x = x.data;
  act.ldx = x.stride;
  act.K = x.cols;
  act.Kp = a.Kp;
  act.gcols = a.gcols;
  act.G = a.G;
  act.dynamic = aq.dynamic;
  act.scale = aq.scale;
  act.zero = aq.zero;
  act.qmax = (1 << aq.bits) - 1;
  act.off = aq.dynamic ? 0 : std::min(std::max(int(aq.zero), act.qmax - 127), 128);
  act.xq = xq.data();
  act.xsum = xsum.data();
  act.xscale = xscale.data();
  act.xoff = xoff.data();
  parallel_for(0, M, std::max<int64_t>(1, 8192 / std::max<int64_t>(x.cols, 1)),
               [&](int64_t m0, int64_t m1) { ks.act(act, m0, m1); });

  std::vector<float> own_sums;
  const bool need_sums = std::any_of(xoff.begin(), xoff.end(), [](int32_t d) { return d != 0; });
  if (need_sums && !row_sums) {
    own_sums.resize(size_t(w.shape.rows));
    packed_row_sums(w, own_sums.data());
    row_sums = own_sums.data();
  }
  a.xq = xq.data();
  a.xsum = xsum.data();
  a.xscale = xscale.data();
  a.xoff = xoff.data();
  a.row_sums = row_sums;
  run_tiles(ks.a8, a);
}

}  // namespace lowbit
