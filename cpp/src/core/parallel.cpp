#include "lowbit/parallel.h"

#include <omp.h>

namespace lowbit {

namespace {
int g_num_threads = 0;  // 0: OpenMP's default (OMP_NUM_THREADS or the core count)
}

void set_num_threads(int n) { g_num_threads = n < 0 ? 0 : n; }

int get_num_threads() { return g_num_threads > 0 ? g_num_threads : omp_get_max_threads(); }

}  // namespace lowbit
