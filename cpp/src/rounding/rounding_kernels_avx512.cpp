#include "rounding_kernels.inc"

namespace lowbit::rounding_detail {

Kernels kernels_avx512() { return {update_segment, soft_segment, "avx512"}; }

}  // namespace lowbit::rounding_detail
