#include "bind_util.h"
#include "lowbit/quant.h"

namespace lowbit::bind {

namespace {

QuantParams params_of(const Array<float>& scale, const Array<float>& zero, int bits,
                      int64_t rows, int64_t cols) {
  check_ndim(scale, 2, "scale");
  check_shape(zero, {scale.shape(0), scale.shape(1)}, "zero");
  QuantParams p{scale.data(), zero.data(), scale.shape(0), scale.shape(1), bits};
  check_quant_params(p, rows, cols);
  return p;
}

}  // namespace

void bind_quant(py::module_& m) {
  m.def(
      "quantize",
      [](const Array<float>& x, const Array<float>& scale, const Array<float>& zero, int bits,
         Array<uint8_t>& out) {
        auto xv = matrix_in(x, "x");
        check_shape(out, {xv.rows, xv.cols}, "out");
        auto p = params_of(scale, zero, bits, xv.rows, xv.cols);
        auto ov = matrix_out(out, "out");
        py::gil_scoped_release release;
        quantize(xv, p, ov);
      },
      py::arg("x").noconvert(), py::arg("scale").noconvert(), py::arg("zero").noconvert(),
      py::arg("bits"), py::arg("out").noconvert());
  m.def(
      "dequantize",
      [](const Array<uint8_t>& q, const Array<float>& scale, const Array<float>& zero, int bits,
         Array<float>& out) {
        auto qv = matrix_in(q, "q");
        check_shape(out, {qv.rows, qv.cols}, "out");
        auto p = params_of(scale, zero, bits, qv.rows, qv.cols);
        auto ov = matrix_out(out, "out");
        py::gil_scoped_release release;
        dequantize(qv, p, ov);
      },
      py::arg("q").noconvert(), py::arg("scale").noconvert(), py::arg("zero").noconvert(),
      py::arg("bits"), py::arg("out").noconvert());
  m.def(
      "fake_quantize",
      [](const Array<float>& x, const Array<float>& scale, const Array<float>& zero, int bits,
         Array<float>& out) {
        auto xv = matrix_in(x, "x");
        check_shape(out, {xv.rows, xv.cols}, "out");
        auto p = params_of(scale, zero, bits, xv.rows, xv.cols);
        auto ov = matrix_out(out, "out");
        py::gil_scoped_release release;
        fake_quantize(xv, p, ov);
      },
      py::arg("x").noconvert(), py::arg("scale").noconvert(), py::arg("zero").noconvert(),
      py::arg("bits"), py::arg("out").noconvert());
  m.def(
      "lp_range_search",
      [](const Array<float>& x, int bits, bool symmetric, float p, int n_grid, float shrink,
         Array<float>& scale, Array<float>& zero) {
        auto xv = matrix_in(x, "x");
        check_ndim(scale, 2, "scale");
        check_shape(zero, {scale.shape(0), scale.shape(1)}, "zero");
        RangeSearch rs{bits, symmetric, p, n_grid, shrink};
        float* s = mutable_ptr(scale, "scale");
        float* z = mutable_ptr(zero, "zero");
        const int64_t R = scale.shape(0), G = scale.shape(1);
        py::gil_scoped_release release;
        lp_range_search(xv, rs, R, G, s, z);
      },
      py::arg("x").noconvert(), py::arg("bits"), py::arg("symmetric"), py::arg("p"),
      py::arg("n_grid"), py::arg("shrink"), py::arg("scale").noconvert(),
      py::arg("zero").noconvert());
  m.def(
      "lp_error",
      [](const Array<float>& x, float s, float z, int bits, float p) {
        const float* d = x.data();
        const int64_t n = x.size();
        py::gil_scoped_release release;
        return lp_error(d, n, s, z, bits, p);
      },
      py::arg("x").noconvert(), py::arg("scale"), py::arg("zero"), py::arg("bits"),
      py::arg("p"));
  m.def(
      "hessian_loss",
      [](const Array<float>& dW, const Array<float>& H, Array<float>& out) {
        auto dv = matrix_in(dW, "dW");
        check_shape(H, {dv.cols, dv.cols}, "H");
        check_shape(out, {dv.rows}, "out");
        auto hv = matrix_in(H, "H");
        float* o = mutable_ptr(out, "out");
        py::gil_scoped_release release;
        hessian_loss(dv, hv, o);
      },
      py::arg("dW").noconvert(), py::arg("H").noconvert(), py::arg("out").noconvert());
}

}  // namespace lowbit::bind
