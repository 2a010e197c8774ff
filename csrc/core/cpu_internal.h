// Helpers shared by the core's CPU kernels: the thread count, per-ISA clones
// of the hot loops, row primitives, software prefetch of gathered rows, the
// index check, and the stable radix sort of the embedding-bag backward.
#pragma once

#include <algorithm>
#include <cstdint>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "dtypes_internal.h"

// Row loops are compiled for several x86-64 levels and picked at load time,
// so one binary uses AVX-512 or AVX2 where the machine has it.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(MK_NO_CLONES)
#define MK_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define MK_CLONES
#endif

// Row primitives are inlined into the cloned loops, so each clone vectorises
// them for its own ISA.
#define MK_INLINE inline __attribute__((always_inline))

namespace mk {

// OpenMP threads for a call: the caller's request, or the OpenMP default for 0.
inline int resolve_threads(int requested) {
#ifdef _OPENMP
  return requested > 0 ? requested : omp_get_max_threads();
#else
  (void)requested;
  return 1;
#endif
}

inline bool wide_vectors() {
#if defined(__x86_64__) && defined(__GNUC__)
  static const bool avx512 = __builtin_cpu_supports("avx512f");
  return avx512;
#else
  return false;
#endif
}

template <class V, class A>
MK_INLINE void axpy_row(A* __restrict acc, const V* __restrict x, A w, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) acc[i] += w * to_acc(x[i]);
}

template <class V, class A>
MK_INLINE void store_row(V* __restrict dst, const A* __restrict src, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) dst[i] = from_acc<V>(src[i]);
}

template <class A>
MK_INLINE void add_row(A* __restrict acc, const A* __restrict x, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) acc[i] += x[i];
}

// Rows are gathered at random, so the hardware prefetcher cannot see them
// coming: the kernels request the first kPrefetchRowBytes of a row some pairs
// ahead of its use.
constexpr int64_t kPrefetchRowBytes = 4096;

inline int64_t prefetch_distance(int64_t row_bytes) {
  return std::max<int64_t>(1, std::min<int64_t>(16, 16384 / std::max<int64_t>(row_bytes, 1)));
}

template <class V, class I>
MK_INLINE void prefetch_row(const V* values, I r, int64_t N, int64_t stride, int64_t bytes) {
  if (r < 0 || int64_t(r) >= N) return;
  const char* p = reinterpret_cast<const char*>(values + int64_t(r) * stride);
  for (int64_t off = 0; off < bytes; off += 64) __builtin_prefetch(p + off);
}

// First flat position holding an index outside [0, N), or -1.
template <class I>
int64_t first_bad_index(const I* idx, int64_t count, int64_t num_rows, int threads) {
  int64_t first = -1;
#pragma omp parallel num_threads(threads)
  {
    int64_t mine = -1;
#pragma omp for schedule(static) nowait
    for (int64_t i = 0; i < count; ++i) {
      if ((idx[i] < 0 || int64_t(idx[i]) >= num_rows) && mine < 0) mine = i;
    }
#pragma omp critical
    {
      if (mine >= 0 && (first < 0 || mine < first)) first = mine;
    }
  }
  return first;
}

// Stable LSD radix sort of (key, pair id) over the low `bits` bits
// (radix_sort_cpu.cpp; K is uint32_t or uint64_t). The first pass reads the
// keys straight from `keys_in` with implicit pair ids 0..P-1; the result
// lands in (keys_out, pairs_out); (keys_tmp, pairs_tmp) alternate with them.
// The result does not depend on the thread count.
template <class K>
void radix_sort_pairs(const K* keys_in, int64_t P, int bits, K* keys_out, int32_t* pairs_out,
                      K* keys_tmp, int32_t* pairs_tmp, int threads);

}  // namespace mk
