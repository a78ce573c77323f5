// The GEMM driver: argument checks, blocking, packing and threading, all at the baseline ISA.
// The arithmetic lives in the tile kernels (gemm_kernels.h), picked per call by active_isa().
//
// What is computed (linalg.h): K is cut into blocks of kGemmKc and the blocks into chunks of
// kGemmChunk; a block sum s comes from one micro-kernel call, a chunk partial p is its block
// sums added from zero in order, and C takes the chunk partials in order. Two schedules give
// those same bits:
//
//  * 2-D tiles (Goto/BLIS style, row-major). C is cut into macro tiles (MC x NC), each owned
//    by one thread for the whole of K. Per K block the owner packs the MC x kc block of op(A)
//    into MR-row strips and the kc x NC panel of op(B) into NR-column strips (L2-resident),
//    then runs the micro-kernel with one A strip in L1 against the B strips from L2, adding
//    into a tile-sized partial that is folded into C at the end of each chunk.
//  * Split K, for several threads on a product too small to give each of them several big
//    tiles (the Gram of a 576-wide layer): each thread computes whole chunk partials of all of
//    C with big tiles, into its own M x N buffer, and the partials are folded into C in chunk
//    order. Small tiles would cost more in packing than the split costs in memory.
//
// Tile shapes and the schedule change no result: each element's arithmetic is fixed by K
// alone, so the bits are the same for any thread count (linalg.h).
#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <vector>

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
  int64_t mc, nc;    // default macro tile: A strips stream through L1, the kc x NC panel in L2
  TileKernel tile;
};

Kernel kernel_for(Isa isa) {
  if (static_cast<int>(isa) >= static_cast<int>(Isa::avx512))
    return {kMrAvx512, kNrAvx512, kMrAvx512 * 48, kNrAvx512 * 32, tile_avx512};
  if (static_cast<int>(isa) >= static_cast<int>(Isa::avx2))
    return {kMrAvx2, kNrAvx2, kMrAvx2 * 48, kNrAvx2 * 16, tile_avx2};
  return {kMrScalar, kNrScalar, kMrScalar * 64, kNrScalar * 32, tile_scalar};
}

// A stored operand seen as the (strip-index, k) matrix the packer walks: element (s, k) is at
// p[k * ld + s] when `k_major` (rows of storage run along k), else at p[s * ld + k].
struct Operand {
  const float* p;
  int64_t ld;
  bool k_major;
};

// Distance between packed strips: one cache line more than a strip, so that the W-float rows
// a k-major pack writes to consecutive strips (W * kc * 4 bytes apart, a multiple of 4 KiB)
// do not all land in one L1 set.
inline int64_t strip_stride(int W, int64_t kc) { return W * kc + 16; }

// Packs [s_lo, s_hi) x [k0, k0 + kc) into strips of W: strip t (s from s_lo + t * W) goes to
// dst + t * strip_stride(W, kc) as dst[k * W + s'], zero-padded past s_hi. W is a template
// argument so the per-row copies of the k-major case compile to a few fixed moves.
template <int W>
void pack_block_w(const Operand& op, int64_t s_lo, int64_t s_hi, int64_t k0, int64_t kc,
                  float* dst) {
  const int64_t len = s_hi - s_lo, full = len / W, nstrips = (len + W - 1) / W;
  const int tail = int(len - full * W);
  const int64_t ss = strip_stride(W, kc);
  if (op.k_major) {
    // One storage row per k: read each row segment once, left to right.
    for (int64_t k = 0; k < kc; ++k) {
      const float* src = op.p + (k0 + k) * op.ld + s_lo;
      float* d = dst + k * W;
      for (int64_t t = 0; t < full; ++t, d += ss, src += W)
        for (int s = 0; s < W; ++s) d[s] = src[s];
      if (tail) {
        for (int s = 0; s < tail; ++s) d[s] = src[s];
        for (int s = tail; s < W; ++s) d[s] = 0.0f;
      }
    }
  } else {
    for (int64_t t = 0; t < nstrips; ++t) {
      const int64_t s0 = s_lo + t * W;
      const int w = int(std::min<int64_t>(W, s_hi - s0));
      float* d = dst + t * ss;
      for (int s = 0; s < w; ++s) {
        const float* src = op.p + (s0 + s) * op.ld + k0;
        for (int64_t k = 0; k < kc; ++k) d[k * W + s] = src[k];
      }
      for (int s = w; s < W; ++s)
        for (int64_t k = 0; k < kc; ++k) d[k * W + s] = 0.0f;
    }
  }
}

using PackFn = void (*)(const Operand&, int64_t, int64_t, int64_t, int64_t, float*);

PackFn pack_for(int W) {
  switch (W) {
    case kMrScalar: return pack_block_w<kMrScalar>;
    case kNrScalar: return pack_block_w<kNrScalar>;
    case kMrAvx2: return pack_block_w<kMrAvx2>;
    case kNrAvx2: return pack_block_w<kNrAvx2>;
    case kMrAvx512: return pack_block_w<kMrAvx512>;
    case kNrAvx512: return pack_block_w<kNrAvx512>;
  }
  return nullptr;
}

// 64-byte aligned scratch that never throws (it is allocated inside parallel regions, where
// an exception must not escape): null on failure, which the caller reports after the region.
struct AlignedFree {
  void operator()(float* p) const { std::free(p); }
};
using Buffer = std::unique_ptr<float[], AlignedFree>;

Buffer aligned_floats(int64_t n) {
  const size_t bytes = (size_t(std::max<int64_t>(n, 1)) * sizeof(float) + 63) / 64 * 64;
  return Buffer(static_cast<float*>(std::aligned_alloc(64, bytes)));
}

// C = beta * C for the alpha == 0 / K == 0 cases (beta == 0 writes zeros without reading).
void scale_c(int64_t M, int64_t N, float beta, float* C, int64_t ldc) {
  if (beta == 1.0f) return;
  for (int64_t i = 0; i < M; ++i) {
    float* c = C + i * ldc;
    for (int64_t j = 0; j < N; ++j) c[j] = beta == 0.0f ? 0.0f : beta * c[j];
  }
}

// One product: C (M, N) = alpha * opA * opB + beta * C. With `upper` (M == N, the syrk case)
// only elements j >= i are computed and stored, then mirrored to (j, i).
struct Problem {
  Kernel kr;
  PackFn pack_a, pack_b;
  bool upper;
  int64_t M, N, K;
  float alpha;
  Operand A, B;
  float beta;
  float* C;
  int64_t ldc;
};

constexpr int64_t kChunkK = kGemmKc * kGemmChunk;  // K per chunk

// A thread's scratch: packed A block and B panel for one K block, and a chunk partial tile.
struct Workspace {
  Buffer apack, bpack, part;
  int64_t mc = 0, nc = 0;
  // Row stride of the partial tile: a cache line past NC, so that the rows of a micro-tile
  // (NC * 4 bytes apart, often a multiple of 4 KiB) do not share one L1 set.
  int64_t part_ld() const { return nc + 16; }
  bool alloc(const Kernel& kr, int64_t MC, int64_t NC, int64_t kcmax, bool want_part) {
    mc = MC, nc = NC;
    apack = aligned_floats(MC / kr.mr * strip_stride(kr.mr, kcmax));
    bpack = aligned_floats(NC / kr.nr * strip_stride(kr.nr, kcmax));
    if (want_part) part = aligned_floats(MC * part_ld());
    return apack && bpack && (!want_part || part);
  }
};

// The block sums of tile [i_lo, i_hi) x [j_lo, j_hi) over the K blocks of [k_lo, k_hi) (one
// chunk), added from zero in order into P (the tile's (i_lo, j_lo) element, leading dimension
// ldp): P = s_0, then P = P + s_q (kernel epilogues with alpha 1 and beta 0 or 1, exact
// except for the add).
void chunk_tile(const Problem& pr, Workspace& ws, int64_t i_lo, int64_t i_hi, int64_t j_lo,
                int64_t j_hi, int64_t k_lo, int64_t k_hi, float* P, int64_t ldp) {
  const int MR = pr.kr.mr, NR = pr.kr.nr;
  float scratch[kMrMax * kNrMax];
  for (int64_t kb = k_lo; kb < k_hi; kb += kGemmKc) {
    const int64_t kc = std::min(kGemmKc, k_hi - kb);
    const float bq = kb == k_lo ? 0.0f : 1.0f;
    pr.pack_a(pr.A, i_lo, i_hi, kb, kc, ws.apack.get());
    pr.pack_b(pr.B, j_lo, j_hi, kb, kc, ws.bpack.get());
    // A strip (MR x kc) stays in L1 while the B strips stream from L2.
    for (int64_t ir = i_lo; ir < i_hi; ir += MR) {
      const int m = int(std::min<int64_t>(MR, i_hi - ir));
      const float* a = ws.apack.get() + ((ir - i_lo) / MR) * strip_stride(MR, kc);
      for (int64_t jr = j_lo; jr < j_hi; jr += NR) {
        const int n = int(std::min<int64_t>(NR, j_hi - jr));
        if (pr.upper && jr + n - 1 < ir) continue;  // strictly lower micro-tile
        const float* b = ws.bpack.get() + ((jr - j_lo) / NR) * strip_stride(NR, kc);
        float* c = P + (ir - i_lo) * ldp + (jr - j_lo);
        const bool diag = pr.upper && jr < ir + m - 1;  // holds some j < i
        if (m == MR && n == NR && !diag) {
          pr.kr.tile(kc, a, b, c, ldp, 1.0f, bq);
        } else {
          // Edge or diagonal tile: sums into scratch, then the kernels' epilogue for the
          // elements that exist (and j >= i), one by one.
          pr.kr.tile(kc, a, b, scratch, NR, 1.0f, 0.0f);
          for (int i = 0; i < m; ++i)
            for (int j = diag ? int(std::max<int64_t>(0, ir + i - jr)) : 0; j < n; ++j) {
              const float sij = scratch[i * NR + j];
              float& cij = c[i * ldp + j];
              cij = bq == 0.0f ? 1.0f * sij : bq * cij + 1.0f * sij;
            }
        }
      }
    }
  }
}

// C = bq == 0 ? alpha * p : bq * C + alpha * p over rows [i_lo, i_hi), columns [j_lo, j_hi)
// (j >= i only when upper); P points at element (i_lo, j_lo) of the partial.
void fold(const Problem& pr, int64_t i_lo, int64_t i_hi, int64_t j_lo, int64_t j_hi,
          const float* P, int64_t ldp, float bq) {
  const float alpha = pr.alpha;
  for (int64_t i = i_lo; i < i_hi; ++i) {
    const int64_t j0 = pr.upper ? std::max(j_lo, i) : j_lo;
    const float* p = P + (i - i_lo) * ldp - j_lo;
    float* c = pr.C + i * pr.ldc;
    if (bq == 0.0f)
      for (int64_t j = j0; j < j_hi; ++j) c[j] = alpha * p[j];
    else
      for (int64_t j = j0; j < j_hi; ++j) c[j] = bq * c[j] + alpha * p[j];
  }
}

void mirror(const Problem& pr, int64_t i_lo, int64_t i_hi, int64_t j_lo, int64_t j_hi) {
  float* C = pr.C;
  const int64_t ldc = pr.ldc;
  for (int64_t i = i_lo; i < i_hi; ++i)
    for (int64_t j = std::max(j_lo, i + 1); j < j_hi; ++j) C[j * ldc + i] = C[i * ldc + j];
}

// All of K for one tile: per chunk, its partial (straight into C when C = 1 * partial, i.e.
// a single chunk with alpha 1 and beta 0), folded into C.
void tile_all_k(const Problem& pr, Workspace& ws, int64_t i_lo, int64_t i_hi, int64_t j_lo,
                int64_t j_hi) {
  float* Ct = pr.C + i_lo * pr.ldc + j_lo;
  if (pr.K <= kChunkK && pr.alpha == 1.0f && pr.beta == 0.0f) {
    chunk_tile(pr, ws, i_lo, i_hi, j_lo, j_hi, 0, pr.K, Ct, pr.ldc);
  } else {
    for (int64_t k0 = 0; k0 < pr.K; k0 += kChunkK) {
      chunk_tile(pr, ws, i_lo, i_hi, j_lo, j_hi, k0, std::min(pr.K, k0 + kChunkK),
                 ws.part.get(), ws.part_ld());
      fold(pr, i_lo, i_hi, j_lo, j_hi, ws.part.get(), ws.part_ld(), k0 == 0 ? pr.beta : 1.0f);
    }
  }
  if (pr.upper) mirror(pr, i_lo, i_hi, j_lo, j_hi);
}

struct Tile {
  int64_t i_lo, j_lo, work;
};

// Macro tiles of size MC x NC that hold some element to compute, largest first (dynamic
// scheduling then balances uneven syrk tiles).
std::vector<Tile> list_tiles(const Problem& pr, int64_t MC, int64_t NC) {
  std::vector<Tile> tiles;
  for (int64_t i_lo = 0; i_lo < pr.M; i_lo += MC)
    for (int64_t j_lo = 0; j_lo < pr.N; j_lo += NC) {
      const int64_t i_hi = std::min(pr.M, i_lo + MC), j_hi = std::min(pr.N, j_lo + NC);
      if (pr.upper && j_hi - 1 < i_lo) continue;  // strictly below the diagonal
      int64_t work = (i_hi - i_lo) * (j_hi - j_lo);
      if (pr.upper)  // elements with j >= i only
        for (int64_t i = i_lo; i < i_hi; ++i) work -= std::min(j_hi, i) - std::min(j_lo, i);
      tiles.push_back({i_lo, j_lo, work});
    }
  std::stable_sort(tiles.begin(), tiles.end(),
                   [](const Tile& a, const Tile& b) { return a.work > b.work; });
  return tiles;
}

int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

constexpr int64_t kSplitBudget = int64_t(1) << 23;  // floats of split-K partials (32 MB)

void drive(Problem& pr) {
  const int64_t M = pr.M, N = pr.N, K = pr.K;
  if (M == 0 || N == 0) return;
  if (K == 0 || pr.alpha == 0.0f) {
    scale_c(M, N, pr.beta, pr.C, pr.ldc);
    return;
  }
  const Kernel& kr = pr.kr;
  const int MR = kr.mr, NR = kr.nr;
  pr.pack_a = pack_for(MR);
  pr.pack_b = pack_for(NR);
  const int nthreads = get_num_threads();
  const int64_t kcmax = std::min(K, kGemmKc);
  const int64_t nchunks = (K + kChunkK - 1) / kChunkK;
  // Tiny products run on one thread: a parallel region would cost more than it saves.
  const bool serial = nthreads == 1 || double(M) * double(N) * double(K) < double(1 << 21);
  int64_t MC = std::min(kr.mc, round_up(M, MR)), NC = std::min(kr.nc, round_up(N, NR));
  std::vector<Tile> tiles = list_tiles(pr, MC, NC);
  std::atomic<bool> alloc_failed{false};

  const int64_t slots = std::min<int64_t>(nthreads, nchunks);
  const bool split = !serial && slots > 1 && int64_t(tiles.size()) < 4 * nthreads &&
                     slots * M * N <= kSplitBudget;
  if (split) {
    // Work items (chunk, tile): the tile's part of the chunk's partial, into the chunk's own
    // M x N buffer, in one parallel region per wave of `slots` chunks (one wave unless C is
    // large); then the partials are folded into C in chunk order, row block by row block.
    const int64_t slots_all = std::min(nchunks, std::max<int64_t>(slots, kSplitBudget / (M * N)));
    Buffer parts = aligned_floats(slots_all * M * N);
    if (!parts) throw std::bad_alloc();
    const int64_t ntiles = int64_t(tiles.size());
    for (int64_t c0 = 0; c0 < nchunks; c0 += slots_all) {
      const int64_t c1 = std::min(nchunks, c0 + slots_all);
      parallel_for(0, (c1 - c0) * ntiles, 1, [&](int64_t b, int64_t e) {
        Workspace ws;
        if (!ws.alloc(kr, MC, NC, kcmax, false)) {
          alloc_failed = true;
          return;
        }
        for (int64_t it = b; it < e; ++it) {
          const int64_t c = c0 + it / ntiles;
          const Tile& t = tiles[size_t(it % ntiles)];
          float* P = parts.get() + (c - c0) * M * N;
          chunk_tile(pr, ws, t.i_lo, std::min(M, t.i_lo + MC), t.j_lo, std::min(N, t.j_lo + NC),
                     c * kChunkK, std::min(K, (c + 1) * kChunkK), P + t.i_lo * N + t.j_lo, N);
        }
      });
      if (alloc_failed) throw std::bad_alloc();
      const bool last = c1 == nchunks;
      // Small folds run on the calling thread: a parallel region costs more than they do.
      const int64_t grain = (c1 - c0) * M * N < (int64_t(1) << 22) ? M : std::max<int64_t>(1, 16384 / N);
      parallel_for(0, M, grain, [&](int64_t i0, int64_t i1) {
        for (int64_t c = c0; c < c1; ++c)
          fold(pr, i0, i1, 0, N, parts.get() + (c - c0) * M * N + i0 * N, N,
               c == 0 ? pr.beta : 1.0f);
        if (pr.upper && last) mirror(pr, i0, i1, 0, N);  // rows i0..i1 are final
      });
    }
    return;
  }

  // 2-D tiles: shrunk (which changes no result) until every thread has several to take.
  const int64_t want = serial ? 1 : 4 * nthreads;
  while (int64_t(tiles.size()) < want && (MC > MR || NC > NR)) {
    if (NC / NR >= MC / MR && NC > NR)
      NC = (NC / NR + 1) / 2 * NR;
    else
      MC = (MC / MR + 1) / 2 * MR;
    tiles = list_tiles(pr, MC, NC);
  }
  const bool need_part = !(K <= kChunkK && pr.alpha == 1.0f && pr.beta == 0.0f);
  const int64_t ntiles = int64_t(tiles.size());
  parallel_for(0, ntiles, serial ? ntiles : 1, [&](int64_t t0, int64_t t1) {
    Workspace ws;
    if (!ws.alloc(kr, MC, NC, kcmax, need_part)) {
      alloc_failed = true;
      return;
    }
    for (int64_t t = t0; t < t1; ++t) {
      const Tile& tl = tiles[size_t(t)];
      tile_all_k(pr, ws, tl.i_lo, std::min(M, tl.i_lo + MC), tl.j_lo, std::min(N, tl.j_lo + NC));
    }
  });
  if (alloc_failed) throw std::bad_alloc();
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
  Problem pr{kernel_for(active_isa()), nullptr, nullptr, false, M, N, K, alpha,
             Operand{A, lda, trans_a}, Operand{B, ldb, !trans_b}, beta, C, ldc};
  drive(pr);
}

void ssyrk_tn_acc(int64_t n, int64_t d, const float* A, int64_t lda, float* C, int64_t ldc) {
  LOWBIT_CHECK(n >= 0 && d >= 0, "sizes must be non-negative, got n=" << n << ", d=" << d);
  check_ld(lda, d, "lda");
  check_ld(ldc, d, "ldc");
  if (n == 0) return;
  const Operand x{A, lda, true};
  Problem pr{kernel_for(active_isa()), nullptr, nullptr, true, d, d, n, 1.0f, x, x, 1.0f,
             C, ldc};
  drive(pr);
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
