#include "bind_util.h"
#include "lowbit/linalg.h"

namespace lowbit::bind {

namespace {

// The BLAS-style form takes each matrix as a flat C-contiguous buffer plus a leading
// dimension, so tests can exercise strides; the buffer must hold the whole strided matrix.
void check_holds(const py::array& a, int64_t rows, int64_t cols, int64_t ld, const char* name) {
  if (rows == 0 || cols == 0) return;
  const int64_t need = (rows - 1) * ld + cols;
  if (a.size() < need)
    throw py::value_error(std::string(name) + " holds " + std::to_string(a.size()) +
                          " floats but a (" + std::to_string(rows) + ", " +
                          std::to_string(cols) + ") matrix with leading dimension " +
                          std::to_string(ld) + " needs " + std::to_string(need));
}

// C must not share memory with A or B (the product reads them while C is written).
void check_disjoint(const py::array& c, const py::array& a, const char* name) {
  const char* c0 = static_cast<const char*>(c.data());
  const char* a0 = static_cast<const char*>(a.data());
  const py::ssize_t cb = c.nbytes(), ab = a.nbytes();
  if (cb > 0 && ab > 0 && c0 < a0 + ab && a0 < c0 + cb)
    throw py::value_error(std::string("C must not share memory with ") + name);
}

}  // namespace

void bind_linalg(py::module_& m) {
  m.def(
      "sgemm",
      [](bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
         const Array<float>& A, int64_t lda, const Array<float>& B, int64_t ldb, float beta,
         Array<float>& C, int64_t ldc) {
        if (M < 0 || N < 0 || K < 0) throw py::value_error("M, N and K must be non-negative");
        if (lda < (trans_a ? M : K) || ldb < (trans_b ? K : N) || ldc < N)
          throw py::value_error("a leading dimension is smaller than its matrix's columns");
        check_holds(A, trans_a ? K : M, trans_a ? M : K, lda, "A");
        check_holds(B, trans_b ? N : K, trans_b ? K : N, ldb, "B");
        check_holds(C, M, N, ldc, "C");
        check_disjoint(C, A, "A");
        check_disjoint(C, B, "B");
        float* c = mutable_ptr(C, "C");
        py::gil_scoped_release release;
        sgemm(trans_a, trans_b, M, N, K, alpha, A.data(), lda, B.data(), ldb, beta, c, ldc);
      },
      py::arg("trans_a"), py::arg("trans_b"), py::arg("M"), py::arg("N"), py::arg("K"),
      py::arg("alpha"), py::arg("A").noconvert(), py::arg("lda"), py::arg("B").noconvert(),
      py::arg("ldb"), py::arg("beta"), py::arg("C").noconvert(), py::arg("ldc"));
  m.def(
      "ssyrk_tn_acc",
      [](const Array<float>& A, Array<float>& C) {
        auto av = matrix_in(A, "A");
        check_shape(C, {av.cols, av.cols}, "C");
        auto cv = matrix_out(C, "C");
        check_disjoint(C, A, "A");
        py::gil_scoped_release release;
        syrk_tn_acc(av, cv);
      },
      py::arg("A").noconvert(), py::arg("C").noconvert());
}

}  // namespace lowbit::bind
