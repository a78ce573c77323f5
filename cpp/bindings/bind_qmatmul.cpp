#include "bind_packed.h"
#include "lowbit/qmatmul.h"

namespace lowbit::bind {

void bind_qmatmul(py::module_& m) {
  m.def(
      "qmatmul_f32",
      [](const Array<uint8_t>& codes, const Array<float>& scales, const Array<uint8_t>& zeros,
         int bits, int64_t rows, int64_t cols, int64_t group_size, const Array<float>& x,
         py::object bias, Array<float>& y) {
        const PackedMatrix w = packed_of(codes, scales, zeros, bits, rows, cols, group_size);
        auto xv = matrix_in(x, "x");
        check_shape(x, {-1, cols}, "x");
        check_shape(y, {xv.rows, rows}, "y");
        const float* b = optional_f32(bias, {rows}, "bias");
        auto yv = matrix_out(y, "y");
        py::gil_scoped_release release;
        qmatmul_f32(w, xv, b, yv);
      },
      py::arg("codes").noconvert(), py::arg("scales").noconvert(), py::arg("zeros").noconvert(),
      py::arg("bits"), py::arg("rows"), py::arg("cols"), py::arg("group_size"),
      py::arg("x").noconvert(), py::arg("bias"), py::arg("y").noconvert());
  m.def(
      "qmatmul_a8",
      [](const Array<uint8_t>& codes, const Array<float>& scales, const Array<uint8_t>& zeros,
         int bits, int64_t rows, int64_t cols, int64_t group_size, const Array<float>& x,
         bool dynamic, float a_scale, float a_zero, int a_bits, py::object row_sums,
         py::object bias, Array<float>& y) {
        const PackedMatrix w = packed_of(codes, scales, zeros, bits, rows, cols, group_size);
        auto xv = matrix_in(x, "x");
        check_shape(x, {-1, cols}, "x");
        check_shape(y, {xv.rows, rows}, "y");
        const ActQuant aq = act_quant_of(dynamic, a_scale, a_zero, a_bits);
        const float* rs = optional_f32(row_sums, {rows}, "row_sums");
        const float* b = optional_f32(bias, {rows}, "bias");
        auto yv = matrix_out(y, "y");
        py::gil_scoped_release release;
        qmatmul_a8(w, xv, aq, rs, b, yv);
      },
      py::arg("codes").noconvert(), py::arg("scales").noconvert(), py::arg("zeros").noconvert(),
      py::arg("bits"), py::arg("rows"), py::arg("cols"), py::arg("group_size"),
      py::arg("x").noconvert(), py::arg("dynamic"), py::arg("a_scale"), py::arg("a_zero"),
      py::arg("a_bits"), py::arg("row_sums"), py::arg("bias"), py::arg("y").noconvert());
  m.def(
      "packed_row_sums",
      [](const Array<uint8_t>& codes, const Array<float>& scales, const Array<uint8_t>& zeros,
         int bits, int64_t rows, int64_t cols, int64_t group_size, Array<float>& out) {
        const PackedMatrix w = packed_of(codes, scales, zeros, bits, rows, cols, group_size);
        check_shape(out, {rows}, "out");
        float* o = mutable_ptr(out, "out");
        py::gil_scoped_release release;
        packed_row_sums(w, o);
      },
      py::arg("codes").noconvert(), py::arg("scales").noconvert(), py::arg("zeros").noconvert(),
      py::arg("bits"), py::arg("rows"), py::arg("cols"), py::arg("group_size"),
      py::arg("out").noconvert());
}

}  // namespace lowbit::bind
