// Shared helpers of the bind_*.cpp files: the boundary rules of DESIGN.md section 3 in one
// place. Arrays arrive as C-contiguous arrays of exactly the declared dtype (declare every
// array argument with .noconvert(), so a float64 or strided array is refused, never copied);
// shapes are checked here with the argument named.
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "lowbit/view.h"

namespace lowbit::bind {

namespace py = pybind11;

template <class T>
using Array = py::array_t<T, py::array::c_style>;

inline std::string shape_str(const py::array& a) {
  std::ostringstream os;
  os << "(";
  for (py::ssize_t i = 0; i < a.ndim(); ++i) os << (i ? ", " : "") << a.shape(i);
  os << (a.ndim() == 1 ? ",)" : ")");
  return os.str();
}

// Throws ValueError "name must have shape (a, b), got (c, d)"; -1 in `shape` matches any size.
inline void check_shape(const py::array& a, std::vector<int64_t> shape, const char* name) {
  bool ok = a.ndim() == py::ssize_t(shape.size());
  for (size_t i = 0; ok && i < shape.size(); ++i) ok = shape[i] < 0 || a.shape(i) == shape[i];
  if (!ok) {
    std::ostringstream os;
    os << name << " must have shape (";
    for (size_t i = 0; i < shape.size(); ++i)
      os << (i ? ", " : "") << (shape[i] < 0 ? std::string("*") : std::to_string(shape[i]));
    os << (shape.size() == 1 ? ",)" : ")") << ", got " << shape_str(a);
    throw py::value_error(os.str());
  }
}

inline void check_ndim(const py::array& a, int ndim, const char* name) {
  if (a.ndim() != ndim)
    throw py::value_error(std::string(name) + " must be " + std::to_string(ndim) +
                          "-D, got shape " + shape_str(a));
}

template <class T>
MatrixView<const T> matrix_in(const Array<T>& a, const char* name) {
  check_ndim(a, 2, name);
  return MatrixView<const T>(a.data(), a.shape(0), a.shape(1));
}

template <class T>
MatrixView<T> matrix_out(Array<T>& a, const char* name) {
  check_ndim(a, 2, name);
  if (!a.writeable()) throw py::value_error(std::string(name) + " must be writeable");
  return MatrixView<T>(a.mutable_data(), a.shape(0), a.shape(1));
}

template <class T>
T* mutable_ptr(Array<T>& a, const char* name) {
  if (!a.writeable()) throw py::value_error(std::string(name) + " must be writeable");
  return a.mutable_data();
}

}  // namespace lowbit::bind
