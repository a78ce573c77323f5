#include "bind_util.h"
#include "lowbit/gram.h"

namespace lowbit::bind {

namespace {

Conv2dGeometry geometry_of(const Array<float>& x, py::tuple kernel, py::tuple stride,
                           py::tuple padding, py::tuple dilation, int groups) {
  check_ndim(x, 4, "x");
  auto two = [](py::tuple t, const char* name) {
    if (t.size() != 2) throw py::value_error(std::string(name) + " must have 2 entries");
    return std::pair<int, int>(t[0].cast<int>(), t[1].cast<int>());
  };
  auto [kh, kw] = two(kernel, "kernel_size");
  auto [sh, sw] = two(stride, "stride");
  auto [ph, pw] = two(padding, "padding");
  auto [dh, dw] = two(dilation, "dilation");
  Conv2dGeometry g{x.shape(0), x.shape(1), x.shape(2), x.shape(3), kh, kw, sh, sw,
                   ph,         pw,         dh,         dw,         groups};
  check_conv_geometry(g);
  return g;
}

}  // namespace

void bind_gram(py::module_& m) {
  m.def(
      "gram_accumulate",
      [](const Array<float>& X, Array<float>& H) {
        auto xv = matrix_in(X, "X");
        check_shape(H, {xv.cols, xv.cols}, "H");
        auto hv = matrix_out(H, "H");
        py::gil_scoped_release release;
        gram_accumulate(xv, hv);
      },
      py::arg("X").noconvert(), py::arg("H").noconvert());
  m.def(
      "cross_gram_accumulate",
      [](const Array<float>& A, const Array<float>& B, Array<float>& C) {
        auto av = matrix_in(A, "A");
        check_shape(B, {av.rows, av.cols}, "B");
        check_shape(C, {av.cols, av.cols}, "C");
        auto bv = matrix_in(B, "B");
        auto cv = matrix_out(C, "C");
        py::gil_scoped_release release;
        cross_gram_accumulate(av, bv, cv);
      },
      py::arg("A").noconvert(), py::arg("B").noconvert(), py::arg("C").noconvert());
  m.def(
      "conv_gram_accumulate",
      [](const Array<float>& x, py::object x2, py::tuple kernel, py::tuple stride,
         py::tuple padding, py::tuple dilation, int groups, Array<float>& H) {
        auto g = geometry_of(x, kernel, stride, padding, dilation, groups);
        const float* x2p = nullptr;
        if (!x2.is_none()) {
          if (!py::isinstance<Array<float>>(x2) ||
              !(py::cast<py::array>(x2).flags() & py::array::c_style) ||
              !py::cast<py::array>(x2).dtype().is(py::dtype::of<float>()))
            throw py::type_error("x2 must be a C-contiguous float32 array or None");
          auto a2 = py::cast<Array<float>>(x2);
          check_shape(a2, {g.N, g.C, g.H, g.W}, "x2");
          x2p = a2.data();
        }
        const int64_t d = g.row_len();
        check_shape(H, {g.groups, d, d}, "H");
        float* h = mutable_ptr(H, "H");
        py::gil_scoped_release release;
        conv_gram_accumulate(x.data(), x2p, g, h);
      },
      py::arg("x").noconvert(), py::arg("x2"), py::arg("kernel_size"), py::arg("stride"),
      py::arg("padding"), py::arg("dilation"), py::arg("groups"), py::arg("H").noconvert());
}

}  // namespace lowbit::bind
