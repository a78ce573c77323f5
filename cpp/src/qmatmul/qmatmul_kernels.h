// Internal: the plain arguments the per-ISA qmatmul kernels receive from the dispatcher
// (qmatmul.cpp). ISA files (*_avx2.cpp, *_avx512vnni.cpp) read only these POD fields: they must
// not call inline functions shared with baseline files (see CMakeLists.txt).
#pragma once
#include <cstdint>

#include "lowbit/pack.h"

namespace lowbit::kernels {

struct QmmArgs {
  PackedMatrix w;  // for the _ref kernels (packed_code); ISA kernels use the fields below
  int bits = 0;
  int64_t N = 0, Kp = 0, G = 0, gcols = 0, tile_bytes = 0;
  const uint8_t* codes = nullptr;
  const float* scales = nullptr;  // (tiles, G, 16)
  const uint8_t* zeros = nullptr; // (tiles, G, 16)
  int64_t M = 0;
  const float* x = nullptr;  // f32 path: (M, Kp) rows, zero beyond K
  int64_t ldx = 0;
  const int8_t* xq = nullptr;  // a8 path: (M, Kp), zero beyond K
  const int32_t* xsum = nullptr;  // (M, G)
  const float* xscale = nullptr;  // (M)
  const int32_t* xoff = nullptr;  // (M): d
  const float* row_sums = nullptr;  // (N), read only where d != 0
  const float* bias = nullptr;      // (N) or null
  float* y = nullptr;               // (M, N)
  int64_t ldy = 0;
};

struct ActArgs {
  const float* x = nullptr;
  int64_t ldx = 0, K = 0, Kp = 0, gcols = 0, G = 0;
  bool dynamic = true;
  float scale = 1.0f, zero = 0.0f;
  int qmax = 255, off = 128;
  int8_t* xq = nullptr;     // (M, Kp)
  int32_t* xsum = nullptr;  // (M, G)
  float* xscale = nullptr;  // (M)
  int32_t* xoff = nullptr;  // (M)
};

// Tiles [t0, t1) of W against all M rows.
using QmmKernel = void (*)(const QmmArgs&, int64_t t0, int64_t t1);
// Activation rows [m0, m1).
using ActKernel = void (*)(const ActArgs&, int64_t m0, int64_t m1);

void qmm_f32_ref(const QmmArgs& a, int64_t t0, int64_t t1);
void qmm_a8_ref(const QmmArgs& a, int64_t t0, int64_t t1);
void quant_act_ref(const ActArgs& a, int64_t m0, int64_t m1);

void qmm_f32_avx2(const QmmArgs& a, int64_t t0, int64_t t1);
void qmm_a8_avx2(const QmmArgs& a, int64_t t0, int64_t t1);
void quant_act_avx2(const ActArgs& a, int64_t m0, int64_t m1);

void qmm_f32_avx512vnni(const QmmArgs& a, int64_t t0, int64_t t1);
void qmm_a8_avx512vnni(const QmmArgs& a, int64_t t0, int64_t t1);
void quant_act_avx512vnni(const ActArgs& a, int64_t m0, int64_t m1);

}  // namespace lowbit::kernels
