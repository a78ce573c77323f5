#include "bind_util.h"
#include "lowbit/cpu.h"
#include "lowbit/parallel.h"

namespace lowbit::bind {

void bind_core(py::module_& m) {
  m.def("set_num_threads", &set_num_threads, py::arg("n"));
  m.def("get_num_threads", &get_num_threads);
  m.def("detected_isa", [] { return std::string(isa_name(detected_isa())); });
  m.def("active_isa", [] { return std::string(isa_name(active_isa())); });
  m.def("set_isa", [](const std::string& name) { set_isa(isa_from_name(name)); },
        py::arg("name"));
  m.def("reset_isa", &reset_isa);
}

}  // namespace lowbit::bind
