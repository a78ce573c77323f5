// Shared by bind_pack.cpp, bind_qmatmul.cpp and bind_multipoint.cpp: a packed matrix from its
// three arrays, checked against the shape it claims (pack.h), the activation quantizer of the
// int8 path, and optional float32 arguments.
#pragma once
#include "bind_util.h"
#include "lowbit/pack.h"
#include "lowbit/qmatmul.h"

namespace lowbit::bind {

inline PackedShape packed_shape_of(int bits, int64_t rows, int64_t cols, int64_t group_size) {
  PackedShape s;
  s.bits = bits;
  s.rows = rows;
  s.cols = cols;
  s.group_size = group_size;
  check_packed_shape(s);
  return s;
}

inline PackedMatrix packed_of(const Array<uint8_t>& codes, const Array<float>& scales,
                              const Array<uint8_t>& zeros, int bits, int64_t rows, int64_t cols,
                              int64_t group_size) {
  PackedMatrix w;
  w.shape = packed_shape_of(bits, rows, cols, group_size);
  check_shape(codes, {w.shape.code_bytes()}, "codes");
  check_shape(scales, {w.shape.tiles(), w.shape.groups(), kTileRows}, "scales");
  check_shape(zeros, {w.shape.tiles(), w.shape.groups(), kTileRows}, "zeros");
  w.codes = codes.data();
  w.scales = scales.data();
  w.zeros = zeros.data();
  return w;
}

inline ActQuant act_quant_of(bool dynamic, float scale, float zero, int bits) {
  ActQuant aq;
  aq.dynamic = dynamic;
  aq.scale = scale;
  aq.zero = zero;
  aq.bits = bits;
  check_act_quant(aq);
  return aq;
}

// None, or a C-contiguous float32 array of exactly `shape` (refused otherwise, never copied).
inline const float* optional_f32(const py::object& o, std::vector<int64_t> shape, const char* name) {
  if (o.is_none()) return nullptr;
  if (!py::isinstance<py::array>(o))
    throw py::type_error(std::string(name) + " must be a float32 array or None");
  auto a = py::cast<py::array>(o);
  if (!a.dtype().is(py::dtype::of<float>()) || !(a.flags() & py::array::c_style))
    throw py::type_error(std::string(name) + " must be a C-contiguous float32 array or None");
  check_shape(a, shape, name);
  return static_cast<const float*>(a.data());
}

}  // namespace lowbit::bind
