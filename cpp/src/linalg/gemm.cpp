// The GEMM driver: argument checks, blocking, packing and threading, all at the baseline ISA.
// The arithmetic lives in the tile kernels (gemm_kernels.h), picked per call by active_isa().
//
// Blocking (Goto/BLIS style, row-major): K is cut into kGemmKc blocks; for a run of K blocks
// (a "super block", sized to keep the packed panels near 8 MB) all of op(A) and op(B) are
// packed once, in parallel, into MR-row strips and NR-column strips; then the threads share
// out macro tiles of C (MC x NC), each walking its K blocks in order and, per K block, its NR
// strips (one B strip, kc x NR, stays in L1) and its MR strips (the MC x kc block of A stays
// in L2). Threads never split K and an element's arithmetic does not depend on the tiling,
// which is what makes results independent of the thread count (linalg.h).
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <memory>

#include "gemm_kernels.h"
#include "lowbit/check.h"
#include "lowbit/cpu.h"
#include "lowbit/linalg.h"
#include "lowbit/parallel.h"

namespace lowbit {

namespace {

using namespace gemm_detail;

struct Kernel {
  int mr, nr;        // register tile
  int64_t mc, nc;    // default macro tile: MC x kc of A in L2, NC wide panel of B
  TileKernel tile;
};

Kernel kernel_for(Isa isa) {
  if (static_cast<int>(isa) >= static_cast<int>(Isa::avx512))
    return {kMrAvx512, kNrAvx512, kMrAvx512 * 12, kNrAvx512 * 8, tile_avx512};
  if (static_cast<int>(isa) >= static_cast<int>(Isa::avx2))
    return {kMrAvx2, kNrAvx2, kMrAvx2 * 24, kNrAvx2 * 16, tile_avx2};
  return {kMrScalar, kNrScalar, kMrScalar * 32, kNrScalar * 32, tile_scalar};
}

// A stored operand seen as the (strip-index, k) matrix the packer walks: element (s, k) is at
// p[k * ld + s] when `k_major` (rows of storage run along k), else at p[s * ld + k].
struct Operand {
  const float* p;
  int64_t ld;
  bool k_major;
};

// Packs strip [s0, s0 + w) x [k0, k0 + kc) into dst[k * W + s], zero-padding s >= w.
void pack_strip(const Operand& op, int64_t s0, int w, int64_t k0, int64_t kc, int W,
                float* dst) {
  if (op.k_major) {
    for (int64_t k = 0; k < kc; ++k) {
      float* d = dst + k * W;
      std::memcpy(d, op.p + (k0 + k) * op.ld + s0, sizeof(float) * size_t(w));
      for (int s = w; s < W; ++s) d[s] = 0.0f;
    }
  } else {
    for (int s = 0; s < w; ++s) {
      const float* src = op.p + (s0 + s) * op.ld + k0;
      for (int64_t k = 0; k < kc; ++k) dst[k * W + s] = src[k];
    }
    for (int s = w; s < W; ++s)
      for (int64_t k = 0; k < kc; ++k) dst[k * W + s] = 0.0f;
  }
}

struct AlignedFree {
  void operator()(float* p) const { std::free(p); }
};

std::unique_ptr<float[], AlignedFree> aligned_floats(int64_t n) {
  const size_t bytes = (size_t(std::max<int64_t>(n, 1)) * sizeof(float) + 63) / 64 * 64;
  float* p = static_cast<float*>(std::aligned_alloc(64, bytes));
  if (!p) throw std::bad_alloc();
  return std::unique_ptr<float[], AlignedFree>(p);
}

// C = beta * C for the alpha == 0 / K == 0 cases (beta == 0 writes zeros without reading).
void scale_c(int64_t M, int64_t N, float beta, float* C, int64_t ldc) {
  if (beta == 1.0f) return;
  for (int64_t i = 0; i < M; ++i) {
    float* c = C + i * ldc;
    for (int64_t j = 0; j < N; ++j) c[j] = beta == 0.0f ? 0.0f : beta * c[j];
  }
}

constexpr int64_t kChunk = 6144;           // rows/cols of C per packed chunk (bounds memory)
constexpr int64_t kPackBudget = 2 << 20;   // floats of packed panels per super block (8 MB)

// C (M, N) = alpha * opA * opB + beta * C. With `upper` (M == N, the syrk case) only tiles
// touching j >= i are computed, only elements j >= i are stored, and each is mirrored to
// (j, i) once final.
void drive(const Kernel& kr, bool upper, int64_t M, int64_t N, int64_t K, float alpha,
           const Operand& A, const Operand& B, float beta, float* C, int64_t ldc) {
  if (M == 0 || N == 0) return;
  if (K == 0 || alpha == 0.0f) {
    scale_c(M, N, beta, C, ldc);
    return;
  }
  const int MR = kr.mr, NR = kr.nr;
  const int nthreads = get_num_threads();
  // Tiny products run on one thread: a parallel region would cost more than it saves.
  const bool serial = double(M) * double(N) * double(K) < double(1 << 20);

  for (int64_t ic = 0; ic < M; ic += kChunk) {
    const int64_t mb = std::min(kChunk, M - ic);
    for (int64_t jc = 0; jc < N; jc += kChunk) {
      const int64_t nb = std::min(kChunk, N - jc);
      if (upper && jc + nb - 1 < ic) continue;  // chunk strictly below the diagonal
      const int64_t sa = (mb + MR - 1) / MR, sb = (nb + NR - 1) / NR;
      const int64_t mpad = sa * MR, npad = sb * NR;
      const int64_t kq = std::max<int64_t>(1, kPackBudget / ((mpad + npad) * kGemmKc));
      const int64_t ks = std::min(K, kq * kGemmKc);  // K per super block
      auto apack = aligned_floats(mpad * ks), bpack = aligned_floats(npad * ks);

      // Macro tiles: the defaults, shrunk (which changes no result) until every thread has
      // several to take, so small products still use all cores.
      int64_t MC = std::min(kr.mc, mpad), NC = std::min(kr.nc, npad);
      auto count = [&] { return ((mb + MC - 1) / MC) * ((nb + NC - 1) / NC); };
      while (!serial && count() < 4 * nthreads && (MC > MR || NC > NR)) {
        if (NC / NR >= MC / MR && NC > NR)
          NC = (NC / NR + 1) / 2 * NR;
        else
          MC = (MC / MR + 1) / 2 * MR;
      }
      const int64_t tm = (mb + MC - 1) / MC, tn = (nb + NC - 1) / NC;

      for (int64_t k0 = 0; k0 < K; k0 += ks) {
        const int64_t kn = std::min(ks, K - k0);
        const int64_t nq = (kn + kGemmKc - 1) / kGemmKc;  // K blocks in this super block
        // Block q of the super block starts at q * kGemmKc * pad in each packed buffer; its
        // strip s at s * width * kc.
        parallel_for(0, nq * (sa + sb), serial ? nq * (sa + sb) : 4, [&](int64_t t0, int64_t t1) {
          for (int64_t t = t0; t < t1; ++t) {
            const int64_t q = t / (sa + sb), s = t % (sa + sb);
            const int64_t kb = k0 + q * kGemmKc, kc = std::min(kGemmKc, K - kb);
            if (s < sa)
              pack_strip(A, ic + s * MR, int(std::min<int64_t>(MR, mb - s * MR)), kb, kc, MR,
                         apack.get() + q * kGemmKc * mpad + s * MR * kc);
            else
              pack_strip(B, jc + (s - sa) * NR, int(std::min<int64_t>(NR, nb - (s - sa) * NR)),
                         kb, kc, NR, bpack.get() + q * kGemmKc * npad + (s - sa) * NR * kc);
          }
        });
        parallel_for(0, tm * tn, serial ? tm * tn : 1, [&](int64_t t0, int64_t t1) {
          float scratch[kMrMax * kNrMax];
          for (int64_t t = t0; t < t1; ++t) {
            const int64_t i_lo = (t / tn) * MC, i_hi = std::min(mb, i_lo + MC);
            const int64_t j_lo = (t % tn) * NC, j_hi = std::min(nb, j_lo + NC);
            if (upper && jc + j_hi - 1 < ic + i_lo) continue;
            for (int64_t q = 0; q < nq; ++q) {
              const int64_t kb = k0 + q * kGemmKc, kc = std::min(kGemmKc, K - kb);
              const float bq = kb == 0 ? beta : 1.0f;
              const bool last = kb + kc == K;
              const float* ablk = apack.get() + q * kGemmKc * mpad;
              const float* bblk = bpack.get() + q * kGemmKc * npad;
              for (int64_t jr = j_lo; jr < j_hi; jr += NR) {
                const int n = int(std::min<int64_t>(NR, j_hi - jr));
                const float* b = bblk + (jr / NR) * NR * kc;
                for (int64_t ir = i_lo; ir < i_hi; ir += MR) {
                  const int m = int(std::min<int64_t>(MR, i_hi - ir));
                  const int64_t gi = ic + ir, gj = jc + jr;
                  if (upper && gj + n - 1 < gi) continue;  // strictly lower tile
                  const float* a = ablk + (ir / MR) * MR * kc;
                  float* c = C + gi * ldc + gj;
                  const bool diag = upper && gj < gi + m - 1;  // holds some j < i
                  if (m == MR && n == NR && !diag) {
                    kr.tile(kc, a, b, c, ldc, alpha, bq);
                  } else {
                    // Edge or diagonal tile: sums into scratch (alpha 1, beta 0 leave them
                    // exact), then the same epilogue as the kernels, element by element.
                    kr.tile(kc, a, b, scratch, NR, 1.0f, 0.0f);
                    for (int i = 0; i < m; ++i)
                      for (int j = diag ? std::max<int64_t>(0, gi + i - gj) : 0; j < n; ++j) {
                        const float s = scratch[i * NR + j];
                        float& cij = c[i * ldc + j];
                        cij = bq == 0.0f ? alpha * s : bq * cij + alpha * s;
                      }
                  }
                  if (upper && last)
                    for (int i = 0; i < m; ++i)
                      for (int j = std::max<int64_t>(0, gi + i + 1 - gj); j < n; ++j)
                        C[(gj + j) * ldc + gi + i] = c[i * ldc + j];
                }
              }
            }
          }
        });
      }
    }
  }
}

void check_ld(int64_t ld, int64_t cols, const char* name) {
  LOWBIT_CHECK(ld >= cols, name << " = " << ld << " is smaller than the " << cols
                                << " columns of the stored matrix");
}

}  // namespace

void sgemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
           const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C,
           int64_t ldc) {
  LOWBIT_CHECK(M >= 0 && N >= 0 && K >= 0,
               "sizes must be non-negative, got M=" << M << ", N=" << N << ", K=" << K);
  check_ld(lda, trans_a ? M : K, "lda");
  check_ld(ldb, trans_b ? K : N, "ldb");
  check_ld(ldc, N, "ldc");
  // op(A) strips run along M: contiguous in storage when A is stored (K, M), i.e. trans_a.
  // op(B) strips run along N: contiguous when B is stored (K, N), i.e. not trans_b.
  drive(kernel_for(active_isa()), false, M, N, K, alpha, Operand{A, lda, trans_a},
        Operand{B, ldb, !trans_b}, beta, C, ldc);
}

void ssyrk_tn_acc(int64_t n, int64_t d, const float* A, int64_t lda, float* C, int64_t ldc) {
  LOWBIT_CHECK(n >= 0 && d >= 0, "sizes must be non-negative, got n=" << n << ", d=" << d);
  check_ld(lda, d, "lda");
  check_ld(ldc, d, "ldc");
  if (n == 0) return;
  const Operand x{A, lda, true};
  drive(kernel_for(active_isa()), true, d, d, n, 1.0f, x, x, 1.0f, C, ldc);
}

void gemm(ConstMatrixView<float> A, bool trans_a, ConstMatrixView<float> B, bool trans_b,
          MatrixView<float> C, float alpha, float beta) {
  const int64_t M = trans_a ? A.cols : A.rows, K = trans_a ? A.rows : A.cols;
  const int64_t Kb = trans_b ? B.cols : B.rows, N = trans_b ? B.rows : B.cols;
  LOWBIT_CHECK(K == Kb, "op(A) is (" << M << ", " << K << ") but op(B) is (" << Kb << ", " << N
                                     << "): inner sizes differ");
  LOWBIT_CHECK(C.rows == M && C.cols == N, "C must be (" << M << ", " << N << "), got ("
                                                         << C.rows << ", " << C.cols << ")");
  sgemm(trans_a, trans_b, M, N, K, alpha, A.data, A.stride, B.data, B.stride, beta, C.data,
        C.stride);
}

void syrk_tn_acc(ConstMatrixView<float> A, MatrixView<float> C) {
  LOWBIT_CHECK(C.rows == A.cols && C.cols == A.cols,
               "C must be (" << A.cols << ", " << A.cols << "), got (" << C.rows << ", "
                             << C.cols << ")");
  ssyrk_tn_acc(A.rows, A.cols, A.data, A.stride, C.data, C.stride);
}

}  // namespace lowbit
