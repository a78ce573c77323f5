#include "rounding_kernels.inc"

namespace lowbit::rounding_detail {

Kernels kernels_avx2() { return {update_segment, soft_segment, "avx2"}; }

}  // namespace lowbit::rounding_detail
