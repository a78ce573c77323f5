// Elementwise kernels of the rounding engine, one variant per instruction-set level
// (rounding_kernels.cpp, _avx2.cpp, _avx512.cpp, all from rounding_kernels.inc); the variants
// give the same bits. kernels() returns the best the active ISA (cpu.h) allows.
#pragma once
#include <cstdint>

namespace lowbit::rounding_detail {

// One grid segment (constant scale s and zero z) of one optimiser step.
struct UpdateArgs {
  float s, z, qmax;
  float b1, b2, one_m_b1, one_m_b2;  // Adam betas and 1 - betas
  float step_size, bc2_sqrt, eps;    // lr / (1 - b1^t), sqrt(1 - b2^t), eps
  float lam, beta;
  bool reg_on;
};

// Per element i < n, with base = floor(W/s + zf) + zi (zero point z = zi + zf, rounding.cpp),
// sig = sigma(V) at the current V and g the reconstruction gradient dL/dW~: chain rule through W~ and h, regulariser, Adam on V, m, v;
// then sig and Wt of the new V. When reg_on, g[i] is overwritten with 1 - |2h-1|^beta.
// Returns how many h were in (0.01, 0.99) before the update.
using UpdateFn = int64_t (*)(int64_t n, const float* base, float* g, float* V, float* m, float* v,
                             float* sig, float* Wt, const UpdateArgs& a);
// sigma(V), h(V) and W~(V) of a segment; any output may be nullptr.
using SoftFn = void (*)(int64_t n, const float* base, const float* V, float s, float z,
                        float qmax, float* sig, float* h, float* Wt);

struct Kernels {
  UpdateFn update;
  SoftFn soft;
  const char* isa;
};

Kernels kernels_scalar();
Kernels kernels_avx2();
Kernels kernels_avx512();
Kernels kernels();  // by active_isa()

}  // namespace lowbit::rounding_detail
