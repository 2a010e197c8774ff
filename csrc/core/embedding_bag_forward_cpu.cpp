// CPU forward of the weighted embedding bag: bags split over the threads,
// each bag's sum held in registers a column tile at a time. Results do not
// depend on the thread count.
#include <algorithm>
#include <vector>

#include "cpu_internal.h"
#include "embedding_bag_internal.h"

namespace mk {
namespace {

template <class V, class I>
struct FwdView {
  using A = acc_t<V>;
  const V* values;
  const I* idx;
  const A* w;
  V* out;
  int64_t N, D, T, B, stride, row_bytes, ahead;
};

// One bag's sum over columns [c0, c0 + W) with the W sums held in registers
// (W is a compile-time width), written straight to out.
template <int W, class V, class I, class A>
MK_INLINE void bag_tile(const FwdView<V, I>& f, int64_t t, int64_t c0) {
  A acc[W];
#pragma omp simd
  for (int i = 0; i < W; ++i) acc[i] = A(0);
  const int64_t P = f.T * f.B;
  constexpr int kLine = int(64 / sizeof(V));
  for (int64_t j = 0; j < f.B; ++j) {
    const int64_t p = t * f.B + j;
    if (p + f.ahead < P) {
      // Prefetch this tile's columns of a later pair's row (unrolled: W is
      // a constant), so no separate prefetch loop runs per row.
      const int64_t rn = int64_t(f.idx[p + f.ahead]);
      if (rn >= 0 && rn < f.N) {
        const V* nx = f.values + rn * f.stride + c0;
#pragma GCC unroll 64
        for (int k = 0; k < W; k += kLine) __builtin_prefetch(nx + k);
      }
    }
    const int64_t r = int64_t(f.idx[p]);
    if (r < 0 || r >= f.N) continue;  // never read outside the table
    const V* __restrict x = f.values + r * f.stride + c0;
    const A w = f.w[p];
#pragma omp simd
    for (int i = 0; i < W; ++i) acc[i] += w * to_acc(x[i]);
  }
  V* __restrict o = f.out + t * f.D + c0;
#pragma omp simd
  for (int i = 0; i < W; ++i) o[i] = from_acc<V>(acc[i]);
}

// Bags [t0, t1): column tiles of kTile in registers, then tiles of 64 (when
// kTile is wider), then the last D % 64 columns through a scratch row.
template <int kTile, class V, class I, class A>
MK_CLONES void forward_bags(const FwdView<V, I>& f, A* __restrict acc, int64_t t0, int64_t t1) {
  constexpr int64_t kNarrow = 64;
  const int64_t wide_end = f.D / kTile * kTile;
  const int64_t full = kTile > kNarrow ? f.D / kNarrow * kNarrow : wide_end;
  const int64_t rest = f.D - full;
  const int64_t P = f.T * f.B;
  for (int64_t t = t0; t < t1; ++t) {
    for (int64_t c0 = 0; c0 < wide_end; c0 += kTile) bag_tile<kTile, V, I, A>(f, t, c0);
    for (int64_t c0 = wide_end; c0 < full; c0 += kNarrow) bag_tile<kNarrow, V, I, A>(f, t, c0);
    if (rest == 0) continue;
    std::fill(acc, acc + rest, A(0));
    for (int64_t j = 0; j < f.B; ++j) {
      const int64_t p = t * f.B + j;
      if (full == 0 && p + f.ahead < P)
        prefetch_row(f.values, f.idx[p + f.ahead], f.N, f.stride, f.row_bytes);
      const int64_t r = int64_t(f.idx[p]);
      if (r < 0 || r >= f.N) continue;
      axpy_row(acc, f.values + r * f.stride + full, f.w[p], rest);
    }
    store_row(f.out + t * f.D + full, acc, rest);
  }
}

template <class V, class I>
mk_status forward(const mk_embedding_bag_fwd_args& a) {
  using A = acc_t<V>;
  const V* values = static_cast<const V*>(a.values);
  const I* idx = static_cast<const I*>(a.indices);
  const A* w = static_cast<const A*>(a.weights);
  V* out = static_cast<V*>(a.out);
  const int64_t N = a.num_rows, D = a.dim, T = a.num_bags, B = a.bag_size;
  const int64_t stride = a.values_row_stride;
  const int threads = resolve_threads(a.num_threads);

  if (a.check_indices) {
    int64_t bad = first_bad_index(idx, T * B, N, threads);
    if (bad >= 0) {
      if (a.bad_position) *a.bad_position = bad;
      return MK_ERR_INDEX_OUT_OF_RANGE;
    }
  }

  FwdView<V, I> f{values, idx, w, out, N, D, T, B, stride, 0, 0};
  f.row_bytes = std::min<int64_t>(D * int64_t(sizeof(V)), kPrefetchRowBytes);
  f.ahead = prefetch_distance(f.row_bytes);
#pragma omp parallel num_threads(threads)
  {
    std::vector<A> acc(static_cast<size_t>(D));
#ifdef _OPENMP
    const int64_t nt = omp_get_num_threads(), me = omp_get_thread_num();
#else
    const int64_t nt = 1, me = 0;
#endif
    // Column tiles held in registers: up to 16 AVX-512 vectors, or 8 AVX2
    // ones, enough independent accumulators to hide the FMA latency. The
    // widest tile that fits D, so a row narrower than 256 columns still
    // sums in registers rather than through the scratch row.
    const int64_t t0 = T * me / nt, t1 = T * (me + 1) / nt;
    if (wide_vectors() && D >= 256)
      forward_bags<256>(f, acc.data(), t0, t1);
    else if (wide_vectors() && D >= 128)
      forward_bags<128>(f, acc.data(), t0, t1);
    else
      forward_bags<64>(f, acc.data(), t0, t1);
  }
  return MK_OK;
}

}  // namespace

mk_status eb_forward_cpu(const mk_embedding_bag_fwd_args& a) {
  return dispatch_value(a.value_dtype, [&](auto v) {
    using V = decltype(v);
    return dispatch_index(a.index_dtype, [&](auto i) { return forward<V, decltype(i)>(a); });
  });
}

}  // namespace mk
