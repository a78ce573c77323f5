// Assembles the compiled module lowbit._lowbit from one bind file per capability.
#include <pybind11/pybind11.h>

namespace py = pybind11;

namespace lowbit::bind {
void bind_core(py::module_& m);
void bind_quant(py::module_& m);
void bind_gram(py::module_& m);
void bind_pack(py::module_& m);
void bind_qmatmul(py::module_& m);
void bind_threshold(py::module_& m);
void bind_rounding(py::module_& m);
void bind_linalg(py::module_& m);
}  // namespace lowbit::bind

PYBIND11_MODULE(_lowbit, m) {
  m.doc() = "lowbit C++ core (use it through lowbit._native, which checks and converts)";
#ifdef LOWBIT_VERSION
  m.attr("__version__") = LOWBIT_VERSION;
#endif
  lowbit::bind::bind_core(m);
  lowbit::bind::bind_quant(m);
  lowbit::bind::bind_gram(m);
  lowbit::bind::bind_pack(m);
  lowbit::bind::bind_qmatmul(m);
  lowbit::bind::bind_threshold(m);
  lowbit::bind::bind_rounding(m);
  lowbit::bind::bind_linalg(m);
}
