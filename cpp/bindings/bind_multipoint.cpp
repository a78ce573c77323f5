#include <vector>

#include "bind_packed.h"
#include "bind_util.h"
#include "lowbit/multipoint.h"

namespace lowbit::bind {

void bind_multipoint(py::module_& m) {
  m.def(
      "multipoint_fold",
      [](const Array<float>& y_ext, const Array<int32_t>& channel, Array<float>& out) {
        auto yv = matrix_in(y_ext, "y_ext");
        check_ndim(channel, 1, "channel");
        const int64_t P = channel.shape(0);
        check_shape(out, {yv.rows, yv.cols - P}, "out");
        auto ov = matrix_out(out, "out");
        const int32_t* ch = channel.data();
        py::gil_scoped_release release;
        multipoint_fold(yv, ch, P, ov);
      },
      py::arg("y_ext").noconvert(), py::arg("channel").noconvert(), py::arg("out").noconvert());
  // The fused packed multipoint products (multipoint.h): the packed arrays of the N + P rows
  // (as qmatmul_f32 / qmatmul_a8 take them), the P point channels, out (M, N).
  m.def(
      "multipoint_qmatmul_f32",
      [](const Array<uint8_t>& codes, const Array<float>& scales, const Array<uint8_t>& zeros,
         int bits, int64_t rows, int64_t cols, int64_t group_size, const Array<float>& x,
         py::object bias, const Array<int32_t>& channel, Array<float>& out) {
        const PackedMatrix w = packed_of(codes, scales, zeros, bits, rows, cols, group_size);
        auto xv = matrix_in(x, "x");
        check_shape(x, {-1, cols}, "x");
        check_ndim(channel, 1, "channel");
        const int64_t P = channel.shape(0);
        check_shape(out, {xv.rows, rows - P}, "out");
        const float* b = optional_f32(bias, {rows}, "bias");
        auto ov = matrix_out(out, "out");
        const int32_t* ch = channel.data();
        py::gil_scoped_release release;
        multipoint_qmatmul_f32(w, xv, b, ch, P, ov);
      },
      py::arg("codes").noconvert(), py::arg("scales").noconvert(), py::arg("zeros").noconvert(),
      py::arg("bits"), py::arg("rows"), py::arg("cols"), py::arg("group_size"),
      py::arg("x").noconvert(), py::arg("bias"), py::arg("channel").noconvert(),
      py::arg("out").noconvert());
  m.def(
      "multipoint_qmatmul_a8",
      [](const Array<uint8_t>& codes, const Array<float>& scales, const Array<uint8_t>& zeros,
         int bits, int64_t rows, int64_t cols, int64_t group_size, const Array<float>& x,
         bool dynamic, float a_scale, float a_zero, int a_bits, py::object row_sums,
         py::object bias, const Array<int32_t>& channel, Array<float>& out) {
        const PackedMatrix w = packed_of(codes, scales, zeros, bits, rows, cols, group_size);
        auto xv = matrix_in(x, "x");
        check_shape(x, {-1, cols}, "x");
        check_ndim(channel, 1, "channel");
        const int64_t P = channel.shape(0);
        check_shape(out, {xv.rows, rows - P}, "out");
        const ActQuant aq = act_quant_of(dynamic, a_scale, a_zero, a_bits);
        const float* rs = optional_f32(row_sums, {rows}, "row_sums");
        const float* b = optional_f32(bias, {rows}, "bias");
        auto ov = matrix_out(out, "out");
        const int32_t* ch = channel.data();
        py::gil_scoped_release release;
        multipoint_qmatmul_a8(w, xv, aq, rs, b, ch, P, ov);
      },
      py::arg("codes").noconvert(), py::arg("scales").noconvert(), py::arg("zeros").noconvert(),
      py::arg("bits"), py::arg("rows"), py::arg("cols"), py::arg("group_size"),
      py::arg("x").noconvert(), py::arg("dynamic"), py::arg("a_scale"), py::arg("a_zero"),
      py::arg("a_bits"), py::arg("row_sums"), py::arg("bias"), py::arg("channel").noconvert(),
      py::arg("out").noconvert());
  m.def(
      "multipoint_sweep",
      [](const Array<float>& R, int bits, Array<float>& scale, Array<float>& zero,
         Array<uint8_t>& codes, Array<float>& err) {
        auto rv = matrix_in(R, "R");
        check_shape(scale, {rv.rows}, "scale");
        check_shape(zero, {rv.rows}, "zero");
        check_shape(codes, {rv.rows, rv.cols}, "codes");
        check_shape(err, {rv.rows}, "err");
        float* s = mutable_ptr(scale, "scale");
        float* z = mutable_ptr(zero, "zero");
        float* e = mutable_ptr(err, "err");
        auto cv = matrix_out(codes, "codes");
        py::gil_scoped_release release;
        std::vector<double> e64(static_cast<size_t>(rv.rows));
        multipoint_sweep(rv, bits, s, z, cv, e64.data());
        for (int64_t r = 0; r < rv.rows; ++r) e[r] = float(e64[size_t(r)]);
      },
      py::arg("R").noconvert(), py::arg("bits"), py::arg("scale").noconvert(),
      py::arg("zero").noconvert(), py::arg("codes").noconvert(), py::arg("err").noconvert());
  m.def(
      "multipoint_build",
      [](const Array<float>& W, const Array<float>& base, const Array<float>& H, int bits,
         int64_t budget, double tolerance, int max_points, bool output_scale, py::object order,
         py::object g0, py::object e0,
         Array<int32_t>& channel, Array<float>& scale, Array<float>& zero, Array<uint8_t>& codes,
         Array<float>& gain, Array<float>& err_before, Array<float>& err_after) {
        auto wv = matrix_in(W, "W");
        const int64_t C = wv.rows, d = wv.cols;
        check_shape(base, {C, d}, "base");
        check_ndim(H, 3, "H");
        check_shape(H, {-1, d, d}, "H");
        if (budget < 0) throw py::value_error("budget must be >= 0, got " + std::to_string(budget));
        check_shape(channel, {budget}, "channel");
        check_shape(scale, {budget}, "scale");
        check_shape(zero, {budget}, "zero");
        check_shape(codes, {budget, d}, "codes");
        check_shape(gain, {budget}, "gain");
        check_shape(err_before, {C}, "err_before");
        check_shape(err_after, {C}, "err_after");
        MultipointOptions opt;
        opt.bits = bits;
        opt.budget = budget;
        opt.tolerance = tolerance;
        opt.max_points = max_points;
        opt.output_scale = output_scale;
        if (!order.is_none()) {
          if (!py::isinstance<Array<int32_t>>(order) ||
              !(py::cast<py::array>(order).flags() & py::array::c_style) ||
              !py::cast<py::array>(order).dtype().is(py::dtype::of<int32_t>()))
            throw py::type_error("order must be a C-contiguous int32 array or None");
          auto o = py::cast<Array<int32_t>>(order);
          check_ndim(o, 1, "order");
          opt.order = o.data();  // `order` (the Python object) keeps the buffer alive
          opt.order_len = o.shape(0);
        }
        if (g0.is_none() != e0.is_none())
          throw py::value_error("g0 and e0 must be given together");
        if (!g0.is_none()) {
          auto as_f32 = [](py::object o, const char* name) {
            if (!py::isinstance<Array<float>>(o) ||
                !(py::cast<py::array>(o).flags() & py::array::c_style) ||
                !py::cast<py::array>(o).dtype().is(py::dtype::of<float>()))
              throw py::type_error(std::string(name) + " must be a C-contiguous float32 array or None");
            return py::cast<Array<float>>(o);
          };
          auto ga = as_f32(g0, "g0");
          auto ea = as_f32(e0, "e0");
          check_shape(ga, {C, d}, "g0");
          check_shape(ea, {C}, "e0");
          opt.g0 = ga.data();  // the Python objects keep the buffers alive
          opt.e0 = ea.data();
        }
        MultipointPoints pts{mutable_ptr(channel, "channel"), mutable_ptr(scale, "scale"),
                             mutable_ptr(zero, "zero"), matrix_out(codes, "codes"), nullptr};
        float* g = mutable_ptr(gain, "gain");
        float* eb = mutable_ptr(err_before, "err_before");
        float* ea = mutable_ptr(err_after, "err_after");
        auto bv = matrix_in(base, "base");
        const float* h = H.data();
        const int64_t groups = H.shape(0);
        int64_t n;
        {
          py::gil_scoped_release release;
          std::vector<double> g64(static_cast<size_t>(budget)), eb64(static_cast<size_t>(C)),
              ea64(static_cast<size_t>(C));
          pts.gain = g64.data();
          n = multipoint_build(wv, bv, h, groups, opt, pts, eb64.data(), ea64.data());
          for (int64_t i = 0; i < n; ++i) g[i] = float(g64[size_t(i)]);
          for (int64_t c = 0; c < C; ++c) {
            eb[c] = float(eb64[size_t(c)]);
            ea[c] = float(ea64[size_t(c)]);
          }
        }
        return n;
      },
      py::arg("W").noconvert(), py::arg("base").noconvert(), py::arg("H").noconvert(),
      py::arg("bits"), py::arg("budget"), py::arg("tolerance"), py::arg("max_points"),
      py::arg("output_scale"), py::arg("order"), py::arg("g0"), py::arg("e0"),
      py::arg("channel").noconvert(),
      py::arg("scale").noconvert(), py::arg("zero").noconvert(), py::arg("codes").noconvert(),
      py::arg("gain").noconvert(), py::arg("err_before").noconvert(),
      py::arg("err_after").noconvert());
}

}  // namespace lowbit::bind
