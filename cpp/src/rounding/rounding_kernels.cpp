#include "rounding_kernels.inc"

#include "lowbit/cpu.h"

namespace lowbit::rounding_detail {

Kernels kernels_scalar() { return {update_segment, soft_segment, "scalar"}; }

Kernels kernels() {
  const Isa isa = active_isa();
  if (isa >= Isa::avx512) return kernels_avx512();
  if (isa >= Isa::avx2) return kernels_avx2();
  return kernels_scalar();
}

}  // namespace lowbit::rounding_detail
