// Non-owning views of row-major arrays. C++ never owns the memory it computes into: Python
// allocates every output and passes it in (DESIGN.md section 3).
#pragma once
#include <cstdint>
#include <type_traits>

namespace lowbit {

// rows x cols, element (r, c) at data[r * stride + c]; stride >= cols.
template <class T>
struct MatrixView {
  T* data = nullptr;
  int64_t rows = 0;
  int64_t cols = 0;
  int64_t stride = 0;

  MatrixView() = default;
  MatrixView(T* d, int64_t r, int64_t c) : data(d), rows(r), cols(c), stride(c) {}
  MatrixView(T* d, int64_t r, int64_t c, int64_t s) : data(d), rows(r), cols(c), stride(s) {}

  // A mutable view reads as a const one.
  template <class U, class = std::enable_if_t<std::is_same_v<const U, T>>>
  MatrixView(const MatrixView<U>& o) : data(o.data), rows(o.rows), cols(o.cols), stride(o.stride) {}

  T* row(int64_t r) const { return data + r * stride; }
  T& operator()(int64_t r, int64_t c) const { return data[r * stride + c]; }
};

template <class T>
using ConstMatrixView = MatrixView<const T>;

}  // namespace lowbit
