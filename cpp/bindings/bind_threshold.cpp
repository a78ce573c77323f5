// Threshold activation quantizers (threshold.h): AQuant borders and N2UQ's LTQ.
#include "bind_util.h"
#include "lowbit/threshold.h"

namespace lowbit::bind {

namespace {

int64_t levels(int bits) {
  if (bits < 2 || bits > 8)
    throw py::value_error("bits must be in [2, 8], got " + std::to_string(bits));
  return (int64_t(1) << bits) - 1;
}

void check_param_shape(const Array<float>& param, int64_t C, int bits, bool affine) {
  check_shape(param, {C, affine ? 2 : levels(bits)}, "param");
}

}  // namespace

void bind_threshold(py::module_& m) {
  m.def(
      "border_table",
      [](const Array<float>& param, int bits, bool affine, float eps, Array<float>& B) {
        check_ndim(param, 2, "param");
        const int64_t C = param.shape(0);
        check_param_shape(param, C, bits, affine);
        check_shape(B, {C, levels(bits)}, "B");
        float* b = mutable_ptr(B, "B");
        border_table(param.data(), C, bits, affine, eps, b);
      },
      py::arg("param").noconvert(), py::arg("bits"), py::arg("affine"), py::arg("eps"),
      py::arg("B").noconvert());
  m.def(
      "border_table_backward",
      [](const Array<float>& param, const Array<float>& gB, int bits, bool affine, float eps,
         Array<float>& gparam) {
        check_ndim(param, 2, "param");
        const int64_t C = param.shape(0);
        check_param_shape(param, C, bits, affine);
        check_shape(gB, {C, levels(bits)}, "gB");
        check_shape(gparam, {param.shape(0), param.shape(1)}, "gparam");
        float* g = mutable_ptr(gparam, "gparam");
        border_table_backward(param.data(), gB.data(), C, bits, affine, eps, g);
      },
      py::arg("param").noconvert(), py::arg("gB").noconvert(), py::arg("bits"),
      py::arg("affine"), py::arg("eps"), py::arg("gparam").noconvert());
  m.def(
      "border_quant_forward",
      [](const Array<float>& x, const Array<float>& B, int bits, float scale, float zero,
         float tau, bool hard, Array<float>& out) {
        auto xv = matrix_in(x, "x");
        check_ndim(B, 2, "B");
        check_shape(B, {B.shape(0), levels(bits)}, "B");
        check_shape(out, {xv.rows, xv.cols}, "out");
        BorderParams p{bits, B.shape(0), scale, zero, tau, hard};
        auto ov = matrix_out(out, "out");
        py::gil_scoped_release release;
        border_quant_forward(xv, B.data(), p, ov);
      },
      py::arg("x").noconvert(), py::arg("B").noconvert(), py::arg("bits"), py::arg("scale"),
      py::arg("zero"), py::arg("tau"), py::arg("hard"), py::arg("out").noconvert());
  m.def(
      "border_quant_backward",
      [](const Array<float>& x, const Array<float>& gy, const Array<float>& B, int bits,
         float scale, float zero, float tau, bool hard, Array<float>& gx, Array<float>& gB,
         Array<float>& gscale) {
        auto xv = matrix_in(x, "x");
        check_shape(gy, {xv.rows, xv.cols}, "gy");
        check_ndim(B, 2, "B");
        check_shape(B, {B.shape(0), levels(bits)}, "B");
        check_shape(gx, {xv.rows, xv.cols}, "gx");
        check_shape(gB, {B.shape(0), levels(bits)}, "gB");
        check_shape(gscale, {1}, "gscale");
        BorderParams p{bits, B.shape(0), scale, zero, tau, hard};
        auto gyv = matrix_in(gy, "gy");
        auto gxv = matrix_out(gx, "gx");
        float* gb = mutable_ptr(gB, "gB");
        float* gs = mutable_ptr(gscale, "gscale");
        py::gil_scoped_release release;
        border_quant_backward(xv, gyv, B.data(), p, gxv, gb, gs);
      },
      py::arg("x").noconvert(), py::arg("gy").noconvert(), py::arg("B").noconvert(),
      py::arg("bits"), py::arg("scale"), py::arg("zero"), py::arg("tau"), py::arg("hard"),
      py::arg("gx").noconvert(), py::arg("gB").noconvert(), py::arg("gscale").noconvert());

  auto ltq_params = [](const Array<float>& start, const Array<float>& a, const Array<float>& s1,
                       int bits, float out_scale, float zero, float a_min, float s1_min) {
    check_ndim(start, 1, "start");
    const int64_t C = start.shape(0);
    check_shape(a, {C, levels(bits)}, "a");
    check_shape(s1, {C}, "in_scale");
    return LtqParams{bits, C, out_scale, zero, a_min, s1_min};
  };
  m.def(
      "ltq_forward",
      [ltq_params](const Array<float>& x, const Array<float>& start, const Array<float>& a,
                   const Array<float>& s1, int bits, float out_scale, float zero, float a_min,
                   float s1_min, Array<float>& out) {
        auto xv = matrix_in(x, "x");
        auto p = ltq_params(start, a, s1, bits, out_scale, zero, a_min, s1_min);
        check_shape(out, {xv.rows, xv.cols}, "out");
        auto ov = matrix_out(out, "out");
        py::gil_scoped_release release;
        ltq_forward(xv, start.data(), a.data(), s1.data(), p, ov);
      },
      py::arg("x").noconvert(), py::arg("start").noconvert(), py::arg("a").noconvert(),
      py::arg("in_scale").noconvert(), py::arg("bits"), py::arg("out_scale"), py::arg("zero"),
      py::arg("a_min"), py::arg("s1_min"), py::arg("out").noconvert());
  m.def(
      "ltq_backward",
      [ltq_params](const Array<float>& x, const Array<float>& gy, const Array<float>& start,
                   const Array<float>& a, const Array<float>& s1, int bits, float out_scale,
                   float zero, float a_min, float s1_min, Array<float>& gx, Array<float>& gstart,
                   Array<float>& ga, Array<float>& gs1, Array<float>& gout_scale) {
        auto xv = matrix_in(x, "x");
        check_shape(gy, {xv.rows, xv.cols}, "gy");
        auto p = ltq_params(start, a, s1, bits, out_scale, zero, a_min, s1_min);
        check_shape(gx, {xv.rows, xv.cols}, "gx");
        check_shape(gstart, {p.C}, "gstart");
        check_shape(ga, {p.C, levels(bits)}, "ga");
        check_shape(gs1, {p.C}, "gin_scale");
        check_shape(gout_scale, {1}, "gout_scale");
        auto gyv = matrix_in(gy, "gy");
        auto gxv = matrix_out(gx, "gx");
        float* g0 = mutable_ptr(gstart, "gstart");
        float* g1 = mutable_ptr(ga, "ga");
        float* g2 = mutable_ptr(gs1, "gin_scale");
        float* g3 = mutable_ptr(gout_scale, "gout_scale");
        py::gil_scoped_release release;
        ltq_backward(xv, gyv, start.data(), a.data(), s1.data(), p, gxv, g0, g1, g2, g3);
      },
      py::arg("x").noconvert(), py::arg("gy").noconvert(), py::arg("start").noconvert(),
      py::arg("a").noconvert(), py::arg("in_scale").noconvert(), py::arg("bits"),
      py::arg("out_scale"), py::arg("zero"), py::arg("a_min"), py::arg("s1_min"),
      py::arg("gx").noconvert(), py::arg("gstart").noconvert(), py::arg("ga").noconvert(),
      py::arg("gin_scale").noconvert(), py::arg("gout_scale").noconvert());
  m.def(
      "ltq_thresholds",
      [ltq_params](const Array<float>& start, const Array<float>& a, const Array<float>& s1,
                   int bits, float a_min, float s1_min, Array<float>& t) {
        auto p = ltq_params(start, a, s1, bits, 1.0f, 0.0f, a_min, s1_min);
        check_shape(t, {p.C, levels(bits)}, "thresholds");
        float* tp = mutable_ptr(t, "thresholds");
        ltq_thresholds(start.data(), a.data(), s1.data(), p, tp);
      },
      py::arg("start").noconvert(), py::arg("a").noconvert(), py::arg("in_scale").noconvert(),
      py::arg("bits"), py::arg("a_min"), py::arg("s1_min"), py::arg("thresholds").noconvert());
  m.def(
      "threshold_quantize",
      [](const Array<float>& x, const Array<float>& t, int bits, Array<uint8_t>& codes) {
        auto xv = matrix_in(x, "x");
        check_ndim(t, 2, "thresholds");
        check_shape(t, {t.shape(0), levels(bits)}, "thresholds");
        check_shape(codes, {xv.rows, xv.cols}, "codes");
        auto cv = matrix_out(codes, "codes");
        const int64_t C = t.shape(0);
        py::gil_scoped_release release;
        threshold_quantize(xv, t.data(), C, bits, cv);
      },
      py::arg("x").noconvert(), py::arg("thresholds").noconvert(), py::arg("bits"),
      py::arg("codes").noconvert());
}

}  // namespace lowbit::bind
