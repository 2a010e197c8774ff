// CPU kernels of the weighted embedding bag: forward, and the atomic-free
// backward (LSD radix sort of the pairs by row over ceil(log2 N) bits,
// run-length segments, chunked segment reduction with the weights' gradient in
// the same pass). Results do not depend on the thread count.
#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "cpu_types.h"
#include "embedding_bag.h"
#include "row_update_cpu.h"

// Row loops are compiled for several x86-64 levels and picked at load time,
// so one binary uses AVX-512 or AVX2 where the machine has it.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(MK_NO_CLONES)
#define MK_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define MK_CLONES
#endif

namespace mk {
namespace {

int resolve_threads(int requested) {
#ifdef _OPENMP
  return requested > 0 ? requested : omp_get_max_threads();
#else
  (void)requested;
  return 1;
#endif
}

bool wide_vectors() {
#if defined(__x86_64__) && defined(__GNUC__)
  static const bool avx512 = __builtin_cpu_supports("avx512f");
  return avx512;
#else
  return false;
#endif
}

// ---- row primitives (inlined into the cloned loops below) -----------------

#define MK_INLINE inline __attribute__((always_inline))

template <class V, class A>
MK_INLINE void axpy_row(A* __restrict acc, const V* __restrict x, A w, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) acc[i] += w * to_acc(x[i]);
}

template <class V, class A>
MK_INLINE void store_row(V* __restrict dst, const A* __restrict src, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) dst[i] = from_acc<V, A>(src[i]);
}

template <class A>
MK_INLINE void add_row(A* __restrict acc, const A* __restrict x, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) acc[i] += x[i];
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

// ---- forward --------------------------------------------------------------

// Rows are gathered at random, so the hardware prefetcher cannot see them
// coming: request the first kPrefetchRowBytes of the row `ahead` pairs later.
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

template <class V, class I>
struct FwdView {
  using A = typename acc_of<V>::type;
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
  for (int i = 0; i < W; ++i) o[i] = from_acc<V, A>(acc[i]);
}

// Bags [t0, t1): column tiles of kTile in registers, then the remainder
// through a D-long scratch row.
template <int kTile, class V, class I, class A>
MK_CLONES void forward_bags(const FwdView<V, I>& f, A* __restrict acc, int64_t t0, int64_t t1) {
  const int64_t full = f.D / kTile * kTile;
  const int64_t rest = f.D - full;
  const int64_t P = f.T * f.B;
  for (int64_t t = t0; t < t1; ++t) {
    for (int64_t c0 = 0; c0 < full; c0 += kTile) bag_tile<kTile, V, I, A>(f, t, c0);
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
  using A = typename acc_of<V>::type;
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
    // Column tiles held in registers: 16 AVX-512 vectors, or 8 AVX2 ones,
    // enough independent accumulators to hide the FMA latency.
    if (wide_vectors())
      forward_bags<256>(f, acc.data(), T * me / nt, T * (me + 1) / nt);
    else
      forward_bags<64>(f, acc.data(), T * me / nt, T * (me + 1) / nt);
  }
  return MK_OK;
}

// ---- backward: plan -------------------------------------------------------

// Stable LSD radix sort of (key, pair id) over the low `bits` bits. The first
// pass reads the keys straight from `keys_in` with implicit pair ids 0..P-1;
// the result lands in (keys_out, pairs_out); (keys_tmp, pairs_tmp) alternate.
// Each pass splits the input into one contiguous block per thread: per-block
// histograms, then every block scatters from its own offsets (bucket-major,
// block-minor), which keeps the sort stable for any thread count.
template <class K>
void radix_sort_pairs(const K* keys_in, int64_t P, int bits, K* keys_out, int32_t* pairs_out,
                      K* keys_tmp, int32_t* pairs_tmp, int threads) {
  const int passes = (bits + 10) / 11;
  const int width = (bits + passes - 1) / passes;
  const size_t buckets = size_t(1) << width;
  const K mask = K(buckets - 1);
  const int blocks = int(std::max<int64_t>(1, std::min<int64_t>(threads, P / 65536)));
  std::vector<int64_t> hist(buckets * size_t(blocks));

  // Choose the first destination so the last pass writes keys_out.
  K* dst_k = (passes % 2 == 1) ? keys_out : keys_tmp;
  int32_t* dst_p = (passes % 2 == 1) ? pairs_out : pairs_tmp;
  K* oth_k = (passes % 2 == 1) ? keys_tmp : keys_out;
  int32_t* oth_p = (passes % 2 == 1) ? pairs_tmp : pairs_out;
  const K* src_k = keys_in;
  const int32_t* src_p = nullptr;

  for (int pass = 0; pass < passes; ++pass) {
    const int shift = pass * width;
#pragma omp parallel num_threads(blocks)
    {
#ifdef _OPENMP
      const int b = omp_get_thread_num();
#else
      const int b = 0;
#endif
      const int64_t lo = P * b / blocks, hi = P * (b + 1) / blocks;
      int64_t* h = hist.data() + size_t(b) * buckets;
      std::fill(h, h + buckets, 0);
      for (int64_t i = lo; i < hi; ++i) ++h[size_t((src_k[i] >> shift) & mask)];
#pragma omp barrier
#pragma omp single
      {
        int64_t sum = 0;
        for (size_t d = 0; d < buckets; ++d)
          for (int t = 0; t < blocks; ++t) {
            int64_t& c = hist[size_t(t) * buckets + d];
            const int64_t n = c;
            c = sum;
            sum += n;
          }
      }
      for (int64_t i = lo; i < hi; ++i) {
        const K k = src_k[i];
        const int64_t at = h[size_t((k >> shift) & mask)]++;
        dst_k[at] = k;
        dst_p[at] = src_p ? src_p[i] : int32_t(i);
      }
    }
    src_k = dst_k;
    src_p = dst_p;
    std::swap(dst_k, oth_k);
    std::swap(dst_p, oth_p);
  }
}

template <class I>
mk_status plan(const mk_embedding_bag_bwd_args& a, char* ws, const EbWorkspaceLayout& l) {
  using K = typename std::make_unsigned<I>::type;
  const int64_t P = a.num_bags * a.bag_size;
  const int64_t C = eb_chunk_size(a.bag_size);
  const int threads = resolve_threads(a.num_threads);
  const I* idx = static_cast<const I*>(a.indices);
  if (first_bad_index(idx, P, a.num_rows, threads) >= 0) return MK_ERR_INDEX_OUT_OF_RANGE;

  K* keys = reinterpret_cast<K*>(ws + l.sorted_keys);
  int32_t* pairs = reinterpret_cast<int32_t*>(ws + l.sorted_pairs);
  K* keys_tmp = reinterpret_cast<K*>(ws + l.scratch);
  int32_t* pairs_tmp = reinterpret_cast<int32_t*>(ws + l.scratch + align256(sizeof(K) * P));
  radix_sort_pairs(reinterpret_cast<const K*>(idx), P, eb_sort_bits(a.num_rows), keys, pairs,
                   keys_tmp, pairs_tmp, threads);

  K* unique = reinterpret_cast<K*>(ws + l.unique_rows);
  int32_t* seg_off = reinterpret_cast<int32_t*>(ws + l.seg_offsets);
  int32_t* chunk_off = reinterpret_cast<int32_t*>(ws + l.chunk_offsets);
  int32_t* part_off = reinterpret_cast<int32_t*>(ws + l.partial_offsets);
  int32_t n_unique = 0;
  for (int64_t i = 0; i < P; ++i) {
    if (i == 0 || keys[i] != keys[i - 1]) {
      unique[n_unique] = keys[i];
      seg_off[n_unique] = int32_t(i);
      ++n_unique;
    }
  }
  seg_off[n_unique] = int32_t(P);
  int32_t* hot_list = reinterpret_cast<int32_t*>(ws + l.hot_list);
  int32_t chunks = 0, partials = 0, hot = 0;
  for (int32_t s = 0; s < n_unique; ++s) {
    const int32_t len = seg_off[s + 1] - seg_off[s];
    const int32_t nc = int32_t((len + C - 1) / C);
    chunk_off[s] = chunks;
    part_off[s] = partials;
    chunks += nc;
    if (nc > 1) {
      partials += nc;
      hot_list[hot++] = s;
    }
  }
  chunk_off[n_unique] = chunks;
  part_off[n_unique] = partials;
  int32_t* counters = reinterpret_cast<int32_t*>(ws + l.counters);
  counters[kNumUnique] = n_unique;
  counters[kNumChunks] = chunks;
  counters[kNumPartials] = partials;
  counters[kNumHot] = hot;
  return MK_OK;
}

// ---- backward: reduce -----------------------------------------------------

template <class V, class K>
struct ReduceView {
  using A = typename acc_of<V>::type;
  const V* values;
  const A* weights;
  const V* grad_out;
  A* grad_w;      // or null
  V* grad_dense;  // or null
  V* grad_sparse; // or null
  A* partials;
  const K* unique;
  const int32_t* pairs;
  const int32_t* seg_off;
  const int32_t* chunk_off;
  const int32_t* part_off;
  int32_t n_unique;
  int64_t D, B, C, stride;
  int64_t T, num_pairs, row_bytes, ahead;  // prefetching

  A* grad_sparse_acc;  // or null: sparse row gradients kept in the accumulation type
  const mk_row_update* update;  // or null: apply finished rows to the table instead
  RowUpdateConsts update_consts;
  V* table;  // the values, writable, when update is set

  bool rows_wanted() const { return grad_dense || grad_sparse || grad_sparse_acc || update; }
  // Writes columns [c0, c0 + w) of segment s's finished row gradient (with an
  // update, the whole row at once: c0 == 0, w == D).
  void write_row(int32_t s, const A* row, int64_t c0, int64_t w) const {
    if (update) {
      const int64_t r = int64_t(unique[s]);
      update_row_cpu<V>(update_consts, *update, table + r * stride, row, r, D);
      return;
    }
    if (grad_sparse_acc) {
      std::copy(row, row + w, grad_sparse_acc + int64_t(s) * D + c0);
      return;
    }
    V* dst = grad_dense ? grad_dense + int64_t(unique[s]) * D : grad_sparse + int64_t(s) * D;
    store_row(dst + c0, row, w);
  }
};

// Lanes of the per-pair dot-product partials; reduced by a fixed tree.
constexpr int kDotLanes = 16;
// Segments ahead whose value rows are prefetched.
constexpr int32_t kRowsAhead = 4;

// One pair of a chunk over a column tile of width w: acc += weight * g and
// the lane-wise partials of <g, v> added into dp.
template <class V, class K, class A>
MK_INLINE void chunk_pair(const ReduceView<V, K>& r, int32_t i, int64_t c0, int64_t w,
                          A* __restrict acc, const A* __restrict v, A* __restrict dp) {
  if (c0 == 0 && i + r.ahead < r.num_pairs) {
    // The pairs of a row come from scattered bags: prefetch a later pair's
    // weight and grad_out row.
    const uint32_t pn = uint32_t(r.pairs[i + r.ahead]);
    __builtin_prefetch(r.weights + pn);
    prefetch_row(r.grad_out, int64_t(pn / uint32_t(r.B)), r.T, r.D, r.row_bytes);
  }
  const uint32_t p = uint32_t(r.pairs[i]);  // pairs < 2^31: 32-bit division
  const V* __restrict g = r.grad_out + int64_t(p / uint32_t(r.B)) * r.D + c0;
  const A wt = r.weights[p];
  A d[kDotLanes];
#pragma omp simd
  for (int l = 0; l < kDotLanes; ++l) d[l] = A(0);
  const int64_t body = w / kDotLanes * kDotLanes;
  for (int64_t k = 0; k < body; k += kDotLanes) {
#pragma omp simd
    for (int l = 0; l < kDotLanes; ++l) {
      const A gi = to_acc(g[k + l]);
      acc[k + l] += wt * gi;
      d[l] += gi * v[k + l];
    }
  }
  for (int64_t k = body; k < w; ++k) {
    const A gi = to_acc(g[k]);
    acc[k] += wt * gi;
    d[k - body] += gi * v[k];
  }
#pragma omp simd
  for (int l = 0; l < kDotLanes; ++l) dp[l] += d[l];
}

// Columns [c0, c0 + W) of the chunk's pairs [begin, end): the row-gradient
// and value tiles are local arrays the compiler keeps in registers.
template <int W, class V, class K, class A>
MK_INLINE void chunk_tile(const ReduceView<V, K>& r, const V* __restrict vrow, int32_t begin,
                          int32_t end, int64_t c0, A* __restrict dots, A* __restrict out) {
  A acc[W], v[W];
#pragma omp simd
  for (int k = 0; k < W; ++k) {
    acc[k] = A(0);
    v[k] = vrow ? to_acc(vrow[c0 + k]) : A(0);
  }
  for (int32_t i = begin; i < end; ++i)
    chunk_pair(r, i, c0, W, acc, v, dots + int64_t(i - begin) * kDotLanes);
#pragma omp simd
  for (int k = 0; k < W; ++k) out[k] = acc[k];
}

// The last D % W columns, through scratch memory (acc is `out`).
template <class V, class K, class A>
MK_INLINE void chunk_tail(const ReduceView<V, K>& r, const V* __restrict vrow, int32_t begin,
                          int32_t end, int64_t c0, int64_t w, A* __restrict dots,
                          A* __restrict out, A* __restrict v) {
  for (int64_t k = 0; k < w; ++k) {
    out[k] = A(0);
    v[k] = vrow ? to_acc(vrow[c0 + k]) : A(0);
  }
  for (int32_t i = begin; i < end; ++i)
    chunk_pair(r, i, c0, w, out, v, dots + int64_t(i - begin) * kDotLanes);
}

// Chunks [c0, c1) of the plan, each a run of at most C pairs of one row.
// Scratch: row (D), dots (C * kDotLanes), tmp (W).
template <int W, class V, class K, class A>
MK_CLONES void reduce_chunks(const ReduceView<V, K>& r, A* __restrict row, A* __restrict dots,
                             A* __restrict tmp, int32_t c0, int32_t c1) {
  const int64_t D = r.D;
  const int64_t full = D / W * W;
  for (int32_t c = c0; c < c1; ++c) {
    const int32_t s =
        int32_t(std::upper_bound(r.chunk_off, r.chunk_off + r.n_unique + 1, c) - r.chunk_off) - 1;
    const int32_t k = c - r.chunk_off[s];
    const int32_t begin = r.seg_off[s] + int32_t(k * r.C);
    const int32_t end = std::min<int32_t>(begin + int32_t(r.C), r.seg_off[s + 1]);
    const V* vrow = r.grad_w ? r.values + int64_t(r.unique[s]) * r.stride : nullptr;
    if (vrow && s + kRowsAhead < r.n_unique)  // the next segments' value rows
      prefetch_row(r.values, r.unique[s + kRowsAhead], int64_t(r.unique[s + kRowsAhead]) + 1,
                   r.stride, r.row_bytes);
    const int64_t n_dots = int64_t(end - begin) * kDotLanes;
#pragma omp simd
    for (int64_t q = 0; q < n_dots; ++q) dots[q] = A(0);
    for (int64_t col = 0; col < full; col += W) chunk_tile<W>(r, vrow, begin, end, col, dots, row + col);
    if (full < D) chunk_tail(r, vrow, begin, end, full, D - full, dots, row + full, tmp);
    if (r.grad_w) {
      for (int32_t i = begin; i < end; ++i) {
        A* dp = dots + int64_t(i - begin) * kDotLanes;
        for (int h = kDotLanes / 2; h > 0; h /= 2)
          for (int l = 0; l < h; ++l) dp[l] += dp[l + h];
        r.grad_w[r.pairs[i]] = dp[0];
      }
    }
    if (!r.rows_wanted()) continue;
    if (r.chunk_off[s + 1] - r.chunk_off[s] > 1) {
      std::copy(row, row + D, r.partials + int64_t(r.part_off[s] + k) * D);
    } else {
      r.write_row(s, row, 0, D);
    }
  }
}

// Columns [c0, c0 + w) of a split segment: its partial rows added in order.
template <class V, class K, class A>
MK_CLONES void combine_columns(const ReduceView<V, K>& r, A* __restrict acc, int32_t s,
                               int64_t c0, int64_t w) {
  std::fill(acc, acc + w, A(0));
  for (int32_t q = r.part_off[s]; q < r.part_off[s + 1]; ++q)
    add_row(acc, r.partials + int64_t(q) * r.D + c0, w);
  r.write_row(s, acc, c0, w);
}

template <class V, class I>
mk_status reduce(const mk_embedding_bag_bwd_args& a, char* ws, const EbWorkspaceLayout& l) {
  using A = typename acc_of<V>::type;
  using K = typename std::make_unsigned<I>::type;
  const int64_t D = a.dim, N = a.num_rows;
  const int threads = resolve_threads(a.num_threads);
  const int32_t* counters = reinterpret_cast<const int32_t*>(ws + l.counters);
  ReduceView<V, K> r;
  r.values = static_cast<const V*>(a.values);
  r.weights = static_cast<const A*>(a.weights);
  r.grad_out = static_cast<const V*>(a.grad_out);
  r.grad_w = static_cast<A*>(a.grad_weights);
  r.grad_dense = static_cast<V*>(a.grad_values);
  r.grad_sparse = a.sparse_grads_acc ? nullptr : static_cast<V*>(a.sparse_grads);
  r.grad_sparse_acc = a.sparse_grads_acc ? static_cast<A*>(a.sparse_grads) : nullptr;
  r.update = a.update;
  if (a.update) r.update_consts = row_update_consts(*a.update);
  r.table = const_cast<V*>(static_cast<const V*>(a.values));
  r.partials = reinterpret_cast<A*>(ws + l.partials);
  r.unique = reinterpret_cast<const K*>(ws + l.unique_rows);
  r.pairs = reinterpret_cast<const int32_t*>(ws + l.sorted_pairs);
  r.seg_off = reinterpret_cast<const int32_t*>(ws + l.seg_offsets);
  r.chunk_off = reinterpret_cast<const int32_t*>(ws + l.chunk_offsets);
  r.part_off = reinterpret_cast<const int32_t*>(ws + l.partial_offsets);
  r.n_unique = counters[kNumUnique];
  r.D = D;
  r.B = a.bag_size;
  r.C = eb_chunk_size(a.bag_size);
  r.stride = a.values_row_stride;
  r.T = a.num_bags;
  r.num_pairs = a.num_bags * a.bag_size;
  r.row_bytes = std::min<int64_t>(D * int64_t(sizeof(V)), kPrefetchRowBytes);
  r.ahead = prefetch_distance(r.row_bytes);
  const int32_t n_chunks = counters[kNumChunks];

  if (r.grad_dense) {
    // Zero only the rows no segment writes: the gaps between consecutive
    // distinct rows (sorted ascending), so every row is written once.
    const int32_t U = r.n_unique;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int32_t s = 0; s <= U; ++s) {
      const int64_t lo = s == 0 ? 0 : int64_t(r.unique[s - 1]) + 1;
      const int64_t hi = s == U ? N : int64_t(r.unique[s]);
      if (hi > lo)
        std::memset(static_cast<void*>(r.grad_dense + lo * D), 0, size_t((hi - lo) * D) * sizeof(V));
    }
  }
  if (a.sparse_rows) {
    for (int32_t s = 0; s < r.n_unique; ++s) a.sparse_rows[s] = int64_t(r.unique[s]);
  }
  if (!r.rows_wanted() && !r.grad_w) return MK_OK;

  constexpr int32_t kChunksPerTask = 16;
  const bool wide = wide_vectors();
#pragma omp parallel num_threads(threads)
  {
    std::vector<A> row(static_cast<size_t>(D)), tmp(static_cast<size_t>(2 * D));
    std::vector<A> dots(static_cast<size_t>(r.C * kDotLanes));
#pragma omp for schedule(dynamic, 1)
    for (int32_t c = 0; c < n_chunks; c += kChunksPerTask) {
      const int32_t c1 = std::min(n_chunks, c + kChunksPerTask);
      // Row and value tiles of 8 machine vectors each.
      if (wide)
        reduce_chunks<128>(r, row.data(), dots.data(), tmp.data(), c, c1);
      else
        reduce_chunks<64>(r, row.data(), dots.data(), tmp.data(), c, c1);
    }
  }
  if (!r.rows_wanted()) return MK_OK;

  // Split (hot) segments, in column blocks so one very hot row still spreads
  // over the threads.
  const int32_t* hot = reinterpret_cast<const int32_t*>(ws + l.hot_list);
  // An update needs the whole row (row norms, row-wise Adagrad): one block.
  const int64_t col_block = r.update ? D : 512;
  const int64_t n_col_blocks = (D + col_block - 1) / col_block;
  const int64_t work = int64_t(counters[kNumHot]) * n_col_blocks;
#pragma omp parallel num_threads(threads)
  {
    std::vector<A> acc(static_cast<size_t>(col_block));
#pragma omp for schedule(dynamic, 1)
    for (int64_t item = 0; item < work; ++item) {
      const int64_t c0 = (item % n_col_blocks) * col_block;
      combine_columns(r, acc.data(), hot[item / n_col_blocks], c0, std::min(col_block, D - c0));
    }
  }
  return MK_OK;
}

}  // namespace

mk_status eb_forward_cpu(const mk_embedding_bag_fwd_args& a) {
  return dispatch_value_dtype(a.value_dtype, [&](auto v) {
    using V = decltype(v);
    return dispatch_index_dtype(a.index_dtype, [&](auto i) { return forward<V, decltype(i)>(a); });
  });
}

size_t eb_backward_scratch_cpu(const mk_embedding_bag_bwd_args& a) {
  const size_t P = size_t(a.num_bags) * size_t(a.bag_size);
  return align256(index_size(a.index_dtype) * P) + align256(sizeof(int32_t) * P);
}

mk_status eb_backward_plan_cpu(const mk_embedding_bag_bwd_args& a, char* ws,
                               const EbWorkspaceLayout& l) {
  return dispatch_index_dtype(a.index_dtype, [&](auto i) { return plan<decltype(i)>(a, ws, l); });
}

mk_status eb_backward_reduce_cpu(const mk_embedding_bag_bwd_args& a, char* ws,
                                 const EbWorkspaceLayout& l) {
  return dispatch_value_dtype(a.value_dtype, [&](auto v) {
    using V = decltype(v);
    return dispatch_index_dtype(a.index_dtype, [&](auto i) { return reduce<V, decltype(i)>(a, ws, l); });
  });
}

}  // namespace mk
