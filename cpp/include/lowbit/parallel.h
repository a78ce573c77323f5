// The one door to OpenMP. Every parallel loop in lowbit goes through parallel_for, which
// splits [begin, end) into chunks whose boundaries do not depend on the thread count, so any
// per-chunk result (and a reduction over chunks done in chunk order) is bit-identical whether
// 1 or 64 threads run it.
#pragma once
#include <cstdint>

namespace lowbit {

// Threads used by parallel_for (0 = OpenMP default). Set from Python by set_num_threads().
void set_num_threads(int n);
int get_num_threads();

// Calls fn(chunk_begin, chunk_end) for consecutive chunks of `grain` items (the last may be
// shorter). Chunks run concurrently; fn must only write state owned by its chunk.
template <class Fn>
void parallel_for(int64_t begin, int64_t end, int64_t grain, Fn&& fn) {
  if (end <= begin) return;
  if (grain < 1) grain = 1;
  const int64_t nchunks = (end - begin + grain - 1) / grain;
  const int nthreads = get_num_threads();
  if (nchunks == 1 || nthreads == 1) {
    for (int64_t c = 0; c < nchunks; ++c) {
      const int64_t b = begin + c * grain;
      fn(b, b + grain < end ? b + grain : end);
    }
    return;
  }
#pragma omp parallel for schedule(dynamic, 1) num_threads(nthreads)
  for (int64_t c = 0; c < nchunks; ++c) {
    const int64_t b = begin + c * grain;
    fn(b, b + grain < end ? b + grain : end);
  }
}

}  // namespace lowbit
