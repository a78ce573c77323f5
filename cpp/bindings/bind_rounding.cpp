#include <utility>
#include <vector>

#include "bind_util.h"
#include "lowbit/rounding.h"

namespace lowbit::bind {

namespace {

// A float32 C-contiguous array or None (refused, never converted, when anything else).
const float* optional_f32(const py::object& obj, const char* name, std::vector<int64_t> shape) {
  if (obj.is_none()) return nullptr;
  if (!py::isinstance<py::array>(obj))
    throw py::type_error(std::string(name) + " must be a float32 array or None");
  auto a = py::cast<py::array>(obj);
  if (!a.dtype().is(py::dtype::of<float>()) || !(a.flags() & py::array::c_style))
    throw py::type_error(std::string(name) + " must be a C-contiguous float32 array or None");
  check_shape(a, std::move(shape), name);
  return static_cast<const float*>(a.data());
}

float* optional_out_f32(const py::object& obj, const char* name, std::vector<int64_t> shape) {
  const float* p = optional_f32(obj, name, std::move(shape));
  if (p && !py::cast<py::array>(obj).writeable())
    throw py::value_error(std::string(name) + " must be writeable");
  return const_cast<float*>(p);
}

// W (o, d) with its grid (scale/zero (R, G)) and conv groups.
RoundingLayer layer_of(const Array<float>& W, const Array<float>& scale, const Array<float>& zero,
                       int bits, int groups) {
  auto wv = matrix_in(W, "W");
  check_ndim(scale, 2, "scale");
  check_shape(zero, {scale.shape(0), scale.shape(1)}, "zero");
  RoundingLayer L{wv, QuantParams{scale.data(), zero.data(), scale.shape(0), scale.shape(1), bits},
                  groups};
  check_rounding_layer(L);
  return L;
}

MatrixView<float> state_out(Array<float>& a, const RoundingLayer& L, const char* name) {
  check_shape(a, {L.W.rows, L.W.cols}, name);
  return matrix_out(a, name);
}

// The rows objective from X (N, P, d) for Linear or X (N, C, H, W) plus conv arguments.
RowsObjective rows_of(const RoundingLayer& L, const Array<float>& X, const Array<float>& Y,
                      const py::object& bias, const py::object& conv, bool relu, int64_t batch,
                      uint64_t seed) {
  RowsObjective r;
  const int64_t o = L.W.rows;
  r.X = X.data();
  r.Y = Y.data();
  r.relu = relu;
  r.batch = batch;
  r.seed = seed;
  r.bias = optional_f32(bias, "bias", {o});
  if (conv.is_none()) {
    check_ndim(X, 3, "X");
    check_shape(X, {-1, -1, L.W.cols}, "X");
    r.N = X.shape(0);
    r.P = X.shape(1);
    check_shape(Y, {r.N, r.P, o}, "Y");
  } else {
    check_ndim(X, 4, "X");
    auto t = py::cast<py::tuple>(conv);
    if (t.size() != 4)
      throw py::value_error("conv must be (kernel_size, stride, padding, dilation)");
    auto two = [&](int i, const char* name) {
      auto p = py::cast<py::tuple>(t[i]);
      if (p.size() != 2) throw py::value_error(std::string(name) + " must have 2 entries");
      return std::pair<int, int>(p[0].cast<int>(), p[1].cast<int>());
    };
    auto [kh, kw] = two(0, "kernel_size");
    auto [sh, sw] = two(1, "stride");
    auto [ph, pw] = two(2, "padding");
    auto [dh, dw] = two(3, "dilation");
    r.is_conv = true;
    r.geo = Conv2dGeometry{1, X.shape(1), X.shape(2), X.shape(3), kh, kw, sh, sw,
                           ph, pw,        dh,         dw,         L.groups};
    check_conv_geometry(r.geo);
    if (r.geo.row_len() != L.W.cols)
      throw py::value_error("X's im2col rows have length " + std::to_string(r.geo.row_len()) +
                            " but W has " + std::to_string(L.W.cols) + " columns");
    r.N = X.shape(0);
    r.P = r.geo.out_h() * r.geo.out_w();
    check_shape(Y, {r.N, o, r.geo.out_h(), r.geo.out_w()}, "Y");
  }
  if (batch < 1) throw py::value_error("batch must be >= 1, got " + std::to_string(batch));
  return r;
}

GramObjective gram_of(const RoundingLayer& L, const Array<float>& H, const Array<float>& C,
                      double c0, double n) {
  const int64_t d = L.W.cols;
  check_shape(H, {L.groups, d, d}, "H");
  check_shape(C, {L.groups, d, d}, "C");
  if (!(n > 0)) throw py::value_error("n must be positive");
  return GramObjective{H.data(), C.data(), c0, n};
}

py::tuple stats_tuple(const RoundingStats& s) { return py::make_tuple(s.reg_loss, s.soft_frac); }

// The engine's run loops: check the per-step loss outputs, run without the GIL, return the stats.
template <class Run>
py::tuple run_logged(int64_t nsteps, Array<float>& rec_loss, Array<float>& reg_loss, Run run) {
  check_shape(rec_loss, {nsteps}, "rec_loss");
  check_shape(reg_loss, {nsteps}, "reg_loss");
  float* rl = mutable_ptr(rec_loss, "rec_loss");
  float* gl = mutable_ptr(reg_loss, "reg_loss");
  RoundingStats s;
  {
    py::gil_scoped_release release;
    s = run(rl, gl);
  }
  return stats_tuple(s);
}

}  // namespace

void bind_rounding(py::module_& m) {
  py::class_<RoundingSchedule>(m, "RoundingSchedule")
      .def(py::init<>())
      .def_readwrite("iters", &RoundingSchedule::iters)
      .def_readwrite("warmup", &RoundingSchedule::warmup)
      .def_readwrite("beta_start", &RoundingSchedule::beta_start)
      .def_readwrite("beta_end", &RoundingSchedule::beta_end)
      .def_readwrite("reg_lambda", &RoundingSchedule::reg_lambda)
      .def_readwrite("lr", &RoundingSchedule::lr)
      .def_readwrite("adam_beta1", &RoundingSchedule::adam_beta1)
      .def_readwrite("adam_beta2", &RoundingSchedule::adam_beta2)
      .def_readwrite("adam_eps", &RoundingSchedule::adam_eps)
      .def("beta_at", &RoundingSchedule::beta_at, py::arg("t"))
      .def("reg_on", &RoundingSchedule::reg_on, py::arg("t"));

  m.def(
      "rounding_init",
      [](const Array<float>& W, const Array<float>& scale, const Array<float>& zero, int bits,
         Array<float>& V) {
        auto L = layer_of(W, scale, zero, bits, 1);
        auto vv = state_out(V, L, "V");
        py::gil_scoped_release release;
        rounding_init(L, vv);
      },
      py::arg("W").noconvert(), py::arg("scale").noconvert(), py::arg("zero").noconvert(),
      py::arg("bits"), py::arg("V").noconvert());
  m.def(
      "rounding_soft_weight",
      [](const Array<float>& W, const Array<float>& scale, const Array<float>& zero, int bits,
         const Array<float>& V, py::object Wt, py::object h) {
        auto L = layer_of(W, scale, zero, bits, 1);
        check_shape(V, {L.W.rows, L.W.cols}, "V");
        auto vv = matrix_in(V, "V");
        const std::vector<int64_t> shp{L.W.rows, L.W.cols};
        MatrixView<float> wt(optional_out_f32(Wt, "Wt", shp), L.W.rows, L.W.cols);
        MatrixView<float> hv(optional_out_f32(h, "h", shp), L.W.rows, L.W.cols);
        py::gil_scoped_release release;
        rounding_soft_weight(L, vv, wt, hv);
      },
      py::arg("W").noconvert(), py::arg("scale").noconvert(), py::arg("zero").noconvert(),
      py::arg("bits"), py::arg("V").noconvert(), py::arg("Wt"), py::arg("h"));
  m.def(
      "rounding_hard_codes",
      [](const Array<float>& W, const Array<float>& scale, const Array<float>& zero, int bits,
         const Array<float>& V, Array<uint8_t>& codes) {
        auto L = layer_of(W, scale, zero, bits, 1);
        check_shape(V, {L.W.rows, L.W.cols}, "V");
        check_shape(codes, {L.W.rows, L.W.cols}, "codes");
        auto vv = matrix_in(V, "V");
        auto cv = matrix_out(codes, "codes");
        py::gil_scoped_release release;
        rounding_hard_codes(L, vv, cv);
      },
      py::arg("W").noconvert(), py::arg("scale").noconvert(), py::arg("zero").noconvert(),
      py::arg("bits"), py::arg("V").noconvert(), py::arg("codes").noconvert());
  m.def(
      "rounding_apply_grad",
      [](const Array<float>& W, const Array<float>& scale, const Array<float>& zero, int bits,
         Array<float>& V, Array<float>& mom, Array<float>& vel, const Array<float>& grad,
         int64_t step, const RoundingSchedule& sch, py::object Wt_next) {
        auto L = layer_of(W, scale, zero, bits, 1);
        RoundingState st{state_out(V, L, "V"), state_out(mom, L, "m"), state_out(vel, L, "v")};
        check_shape(grad, {L.W.rows, L.W.cols}, "grad");
        auto gv = matrix_in(grad, "grad");
        if (step < 1) throw py::value_error("step must be >= 1, got " + std::to_string(step));
        MatrixView<float> wn(optional_out_f32(Wt_next, "Wt_next", {L.W.rows, L.W.cols}),
                             L.W.rows, L.W.cols);
        RoundingStats s;
        {
          py::gil_scoped_release release;
          s = rounding_apply_grad(L, st, gv, step, sch, wn);
        }
        return stats_tuple(s);
      },
      py::arg("W").noconvert(), py::arg("scale").noconvert(), py::arg("zero").noconvert(),
      py::arg("bits"), py::arg("V").noconvert(), py::arg("m").noconvert(),
      py::arg("v").noconvert(), py::arg("grad").noconvert(), py::arg("step"),
      py::arg("schedule"), py::arg("Wt_next") = py::none());
  m.def(
      "rounding_gram_loss_grad",
      [](const Array<float>& W, const Array<float>& scale, const Array<float>& zero, int bits,
         int groups, const Array<float>& Wt, const Array<float>& H, const Array<float>& C,
         double c0, double n, py::object grad) {
        auto L = layer_of(W, scale, zero, bits, groups);
        check_shape(Wt, {L.W.rows, L.W.cols}, "Wt");
        auto g = gram_of(L, H, C, c0, n);
        MatrixView<float> gv(optional_out_f32(grad, "grad", {L.W.rows, L.W.cols}), L.W.rows,
                             L.W.cols);
        auto wt = matrix_in(Wt, "Wt");
        py::gil_scoped_release release;
        return gram_loss_grad(L, wt, g, gv);
      },
      py::arg("W").noconvert(), py::arg("scale").noconvert(), py::arg("zero").noconvert(),
      py::arg("bits"), py::arg("groups"), py::arg("Wt").noconvert(), py::arg("H").noconvert(),
      py::arg("C").noconvert(), py::arg("c0"), py::arg("n"), py::arg("grad"));
  m.def(
      "rounding_rows_loss_grad",
      [](const Array<float>& W, const Array<float>& scale, const Array<float>& zero, int bits,
         int groups, const Array<float>& Wt, const Array<float>& X, const Array<float>& Y,
         py::object bias, py::object conv, bool relu, int64_t batch, uint64_t seed, int64_t step,
         py::object grad) {
        auto L = layer_of(W, scale, zero, bits, groups);
        check_shape(Wt, {L.W.rows, L.W.cols}, "Wt");
        auto r = rows_of(L, X, Y, bias, conv, relu, batch, seed);
        MatrixView<float> gv(optional_out_f32(grad, "grad", {L.W.rows, L.W.cols}), L.W.rows,
                             L.W.cols);
        auto wt = matrix_in(Wt, "Wt");
        py::gil_scoped_release release;
        return rows_loss_grad(L, wt, r, step, gv);
      },
      py::arg("W").noconvert(), py::arg("scale").noconvert(), py::arg("zero").noconvert(),
      py::arg("bits"), py::arg("groups"), py::arg("Wt").noconvert(), py::arg("X").noconvert(),
      py::arg("Y").noconvert(), py::arg("bias"), py::arg("conv"), py::arg("relu"),
      py::arg("batch"), py::arg("seed"), py::arg("step"), py::arg("grad"));
  m.def(
      "rounding_run_gram",
      [](const Array<float>& W, const Array<float>& scale, const Array<float>& zero, int bits,
         int groups, Array<float>& V, Array<float>& mom, Array<float>& vel, const Array<float>& H,
         const Array<float>& C, double c0, double n, const RoundingSchedule& sch, int64_t step0,
         int64_t nsteps, Array<float>& rec_loss, Array<float>& reg_loss) {
        auto L = layer_of(W, scale, zero, bits, groups);
        RoundingState st{state_out(V, L, "V"), state_out(mom, L, "m"), state_out(vel, L, "v")};
        auto g = gram_of(L, H, C, c0, n);
        return run_logged(nsteps, rec_loss, reg_loss, [&](float* rl, float* gl) {
          return rounding_run_gram(L, st, g, sch, step0, nsteps, rl, gl);
        });
      },
      py::arg("W").noconvert(), py::arg("scale").noconvert(), py::arg("zero").noconvert(),
      py::arg("bits"), py::arg("groups"), py::arg("V").noconvert(), py::arg("m").noconvert(),
      py::arg("v").noconvert(), py::arg("H").noconvert(), py::arg("C").noconvert(),
      py::arg("c0"), py::arg("n"), py::arg("schedule"), py::arg("step0"), py::arg("nsteps"),
      py::arg("rec_loss").noconvert(), py::arg("reg_loss").noconvert());
  m.def(
      "rounding_run_rows",
      [](const Array<float>& W, const Array<float>& scale, const Array<float>& zero, int bits,
         int groups, Array<float>& V, Array<float>& mom, Array<float>& vel, const Array<float>& X,
         const Array<float>& Y, py::object bias, py::object conv, bool relu, int64_t batch,
         uint64_t seed, const RoundingSchedule& sch, int64_t step0, int64_t nsteps,
         Array<float>& rec_loss, Array<float>& reg_loss) {
        auto L = layer_of(W, scale, zero, bits, groups);
        RoundingState st{state_out(V, L, "V"), state_out(mom, L, "m"), state_out(vel, L, "v")};
        auto r = rows_of(L, X, Y, bias, conv, relu, batch, seed);
        return run_logged(nsteps, rec_loss, reg_loss, [&](float* rl, float* gl) {
          return rounding_run_rows(L, st, r, sch, step0, nsteps, rl, gl);
        });
      },
      py::arg("W").noconvert(), py::arg("scale").noconvert(), py::arg("zero").noconvert(),
      py::arg("bits"), py::arg("groups"), py::arg("V").noconvert(), py::arg("m").noconvert(),
      py::arg("v").noconvert(), py::arg("X").noconvert(), py::arg("Y").noconvert(),
      py::arg("bias"), py::arg("conv"), py::arg("relu"), py::arg("batch"), py::arg("seed"),
      py::arg("schedule"), py::arg("step0"), py::arg("nsteps"), py::arg("rec_loss").noconvert(),
      py::arg("reg_loss").noconvert());
  m.def(
      "rounding_sample_batch",
      [](uint64_t seed, int64_t t, int64_t n, Array<int32_t>& out) {
        check_ndim(out, 1, "out");
        const int64_t k = out.shape(0);
        if (k > n) throw py::value_error("out is longer than the " + std::to_string(n) + " samples");
        std::vector<int64_t> idx(static_cast<size_t>(k));
        rounding_sample_batch(seed, t, n, k, idx.data());
        int32_t* o = mutable_ptr(out, "out");
        for (int64_t i = 0; i < k; ++i) o[i] = int32_t(idx[size_t(i)]);
      },
      py::arg("seed"), py::arg("t"), py::arg("n"), py::arg("out").noconvert());
  m.def("rounding_cost_gram", &rounding_cost_gram, py::arg("o"), py::arg("d"), py::arg("groups"));
  m.def("rounding_cost_rows", &rounding_cost_rows, py::arg("o"), py::arg("d"), py::arg("groups"),
        py::arg("rows_per_batch"));
}

}  // namespace lowbit::bind
