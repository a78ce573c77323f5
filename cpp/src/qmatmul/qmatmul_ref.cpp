// Scalar twins of the qmatmul kernels: the operation order of qmatmul.h written out plainly,
// reading codes through pack.h's packed_code(). The scalar ISA level runs these; every SIMD
// variant must reproduce their bits.
#include <algorithm>
#include <cmath>
#include <vector>

#include "qmatmul_kernels.h"

namespace lowbit::kernels {

void qmm_f32_ref(const QmmArgs& a, int64_t t0, int64_t t1) {
  std::vector<float> w(size_t(a.Kp));
  for (int64_t n = t0 * kTileRows; n < std::min(t1 * kTileRows, a.N); ++n) {
    for (int64_t g = 0; g < a.G; ++g) {
      const float z = float(packed_zero(a.w, n, g));
      for (int64_t k = g * a.gcols; k < (g + 1) * a.gcols; ++k)
        w[size_t(k)] = float(packed_code(a.w, n, k)) - z;  // exact
    }
    for (int64_t m = 0; m < a.M; ++m) {
      const float* x = a.x + m * a.ldx;
      float y = 0.0f;
      for (int64_t g = 0; g < a.G; ++g) {
        float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        for (int64_t k = g * a.gcols; k < (g + 1) * a.gcols; ++k)
          acc[k % 4] = std::fma(w[size_t(k)], x[k], acc[k % 4]);
        y = std::fma(packed_scale(a.w, n, g), (acc[0] + acc[1]) + (acc[2] + acc[3]), y);
      }
      if (a.bias) y = y + a.bias[n];
      a.y[m * a.ldy + n] = y;
    }
  }
}

void qmm_a8_ref(const QmmArgs& a, int64_t t0, int64_t t1) {
  std::vector<int32_t> q(size_t(a.Kp));
  for (int64_t n = t0 * kTileRows; n < std::min(t1 * kTileRows, a.N); ++n) {
    for (int64_t k = 0; k < a.Kp; ++k) q[size_t(k)] = packed_code(a.w, n, k);
    for (int64_t m = 0; m < a.M; ++m) {
      const int8_t* xq = a.xq + m * a.Kp;
      float y = 0.0f;
      for (int64_t g = 0; g < a.G; ++g) {
        // Unsigned arithmetic: wraps like the SIMD int32 lanes (exact when in range).
        uint32_t dot = 0;
        for (int64_t k = g * a.gcols; k < (g + 1) * a.gcols; ++k)
          dot += uint32_t(q[size_t(k)] * int32_t(xq[k]));
        const uint32_t I = dot - uint32_t(packed_zero(a.w, n, g)) * uint32_t(a.xsum[m * a.G + g]);
        y = std::fma(packed_scale(a.w, n, g), float(int32_t(I)), y);
      }
      if (a.xoff[m] != 0) y = std::fma(float(a.xoff[m]), a.row_sums[n], y);
      y = y * a.xscale[m];
      if (a.bias) y = y + a.bias[n];
      a.y[m * a.ldy + n] = y;
    }
  }
}

void quant_act_ref(const ActArgs& a, int64_t m0, int64_t m1) {
  for (int64_t m = m0; m < m1; ++m) {
    const float* x = a.x + m * a.ldx;
    int8_t* xq = a.xq + m * a.Kp;
    if (a.dynamic) {
      float amax = 0.0f;
      for (int64_t k = 0; k < a.K; ++k) amax = std::max(amax, std::fabs(x[k]));
      const float sx = amax > 0.0f ? amax / 127.0f : 1.0f;
      for (int64_t k = 0; k < a.K; ++k)
        xq[k] = int8_t(std::min(std::max(std::nearbyint(x[k] / sx), -127.0f), 127.0f));
      a.xscale[m] = sx;
      a.xoff[m] = 0;
    } else {
      const float qmax = float(a.qmax);
      for (int64_t k = 0; k < a.K; ++k) {
        const float c = std::min(std::max(std::nearbyint(x[k] / a.scale) + a.zero, 0.0f), qmax);
        xq[k] = int8_t(int(c) - a.off);
      }
      a.xscale[m] = a.scale;
      a.xoff[m] = a.off - int(a.zero);
    }
    for (int64_t k = a.K; k < a.Kp; ++k) xq[k] = 0;
    for (int64_t g = 0; g < a.G; ++g) {
      int32_t s = 0;
      for (int64_t k = g * a.gcols; k < (g + 1) * a.gcols; ++k) s += xq[k];
      a.xsum[m * a.G + g] = s;
    }
  }
}

}  // namespace lowbit::kernels
