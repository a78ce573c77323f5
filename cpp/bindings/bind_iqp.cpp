#include "bind_util.h"
#include "lowbit/iqp.h"

namespace lowbit::bind {

namespace {

IQPProblem problem_of(const Array<float>& G, const Array<int32_t>& sizes, const Array<double>& A,
                      const Array<double>& b) {
  check_ndim(sizes, 1, "sizes");
  auto gv = matrix_in(G, "G");
  auto av = matrix_in(A, "A");
  check_shape(b, {av.rows}, "b");
  IQPProblem p;
  p.G = gv;
  p.sizes = sizes.data();
  p.L = sizes.shape(0);
  p.A = av;
  p.b = b.data();
  return p;
}

py::dict result_dict(const IQPResult& r) {
  py::dict d;
  d["status"] = iqp_status_name(r.status);
  d["objective"] = r.objective;
  d["bound"] = r.bound;
  d["gap"] = r.gap;
  d["nodes"] = r.nodes;
  d["seconds"] = r.seconds;
  d["warm_objective"] = r.warm_objective;
  d["root_bound"] = r.root_bound;
  d["relaxation"] = r.relaxation;
  d["neighbourhoods"] = r.neighbourhoods;
  d["neighbourhood_improvements"] = r.neighbourhood_improvements;
  return d;
}

}  // namespace

void bind_iqp(py::module_& m) {
  m.def(
      "solve_iqp",
      [](const Array<float>& G, const Array<int32_t>& sizes, const Array<double>& A, const Array<double>& b,
         double time_limit, int64_t node_limit, double gap_tol, uint64_t seed, int restarts,
         Array<int32_t>& choice) {
        IQPProblem p = problem_of(G, sizes, A, b);
        check_shape(choice, {p.L}, "choice");
        int32_t* out = mutable_ptr(choice, "choice");
        IQPOptions o;
        o.time_limit = time_limit;
        o.node_limit = node_limit;
        o.gap_tol = gap_tol;
        o.seed = seed;
        o.restarts = restarts;
        IQPResult r;
        {
          py::gil_scoped_release release;
          r = solve_iqp(p, o, out);
        }
        return result_dict(r);
      },
      py::arg("G").noconvert(), py::arg("sizes").noconvert(), py::arg("A").noconvert(),
      py::arg("b").noconvert(), py::arg("time_limit"), py::arg("node_limit"), py::arg("gap_tol"),
      py::arg("seed"), py::arg("restarts"), py::arg("choice").noconvert());
  m.def(
      "solve_iqp_bruteforce",
      [](const Array<float>& G, const Array<int32_t>& sizes, const Array<double>& A, const Array<double>& b,
         Array<int32_t>& choice) {
        IQPProblem p = problem_of(G, sizes, A, b);
        check_shape(choice, {p.L}, "choice");
        int32_t* out = mutable_ptr(choice, "choice");
        IQPResult r;
        {
          py::gil_scoped_release release;
          r = solve_iqp_bruteforce(p, out);
        }
        return result_dict(r);
      },
      py::arg("G").noconvert(), py::arg("sizes").noconvert(), py::arg("A").noconvert(),
      py::arg("b").noconvert(), py::arg("choice").noconvert());
  m.def(
      "iqp_objective",
      [](const Array<float>& G, const Array<int32_t>& sizes, const Array<int32_t>& choice) {
        check_ndim(sizes, 1, "sizes");
        check_shape(choice, {sizes.shape(0)}, "choice");
        IQPProblem p;
        p.G = matrix_in(G, "G");
        p.sizes = sizes.data();
        p.L = sizes.shape(0);
        return iqp_objective(p, choice.data());
      },
      py::arg("G").noconvert(), py::arg("sizes").noconvert(), py::arg("choice").noconvert());
  m.def(
      "project_psd",
      [](const Array<float>& G, Array<float>& out) {
        auto gv = matrix_in(G, "G");
        check_shape(out, {gv.rows, gv.cols}, "out");
        auto ov = matrix_out(out, "out");
        py::gil_scoped_release release;
        return project_psd(gv, ov);
      },
      py::arg("G").noconvert(), py::arg("out").noconvert());
}

}  // namespace lowbit::bind
