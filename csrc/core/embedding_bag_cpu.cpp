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

// ---- row primitives -------------------------------------------------------

template <class V, class A>
MK_CLONES void axpy_row(A* __restrict acc, const V* __restrict x, A w, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) acc[i] += w * to_acc(x[i]);
}

// acc += w * g and returns <g, v>, reading g once.
template <class V, class A>
MK_CLONES A axpy_dot_row(A* __restrict acc, const V* __restrict g, const A* __restrict v, A w,
                         int64_t n) {
  A dot = 0;
#pragma omp simd reduction(+ : dot)
  for (int64_t i = 0; i < n; ++i) {
    A gi = to_acc(g[i]);
    acc[i] += w * gi;
    dot += gi * v[i];
  }
  return dot;
}

template <class V, class A>
MK_CLONES A dot_row(const V* __restrict g, const A* __restrict v, int64_t n) {
  A dot = 0;
#pragma omp simd reduction(+ : dot)
  for (int64_t i = 0; i < n; ++i) dot += to_acc(g[i]) * v[i];
  return dot;
}

template <class V, class A>
MK_CLONES void load_row(A* __restrict dst, const V* __restrict src, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) dst[i] = to_acc(src[i]);
}

template <class V, class A>
MK_CLONES void store_row(V* __restrict dst, const A* __restrict src, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) dst[i] = from_acc<V, A>(src[i]);
}

template <class A>
MK_CLONES void add_row(A* __restrict acc, const A* __restrict x, int64_t n) {
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

#pragma omp parallel num_threads(threads)
  {
    std::vector<A> acc(static_cast<size_t>(D));
#pragma omp for schedule(static)
    for (int64_t t = 0; t < T; ++t) {
      std::fill(acc.begin(), acc.end(), A(0));
      const I* bag = idx + t * B;
      const A* bw = w + t * B;
      for (int64_t j = 0; j < B; ++j) {
        const int64_t r = int64_t(bag[j]);
        if (r < 0 || r >= N) continue;  // never read outside the table
        if (j + 1 < B) {
          const int64_t rn = int64_t(bag[j + 1]);
          if (rn >= 0 && rn < N) __builtin_prefetch(values + rn * stride);
        }
        axpy_row(acc.data(), values + r * stride, bw[j], D);
      }
      store_row(out + t * D, acc.data(), D);
    }
  }
  return MK_OK;
}

// ---- backward: plan -------------------------------------------------------

// Stable LSD radix sort of (key, pair id) over the low `bits` bits. The first
// pass reads the keys straight from `keys_in` with implicit pair ids 0..P-1;
// the result lands in (keys_out, pairs_out); (keys_tmp, pairs_tmp) alternate.
template <class K>
void radix_sort_pairs(const K* keys_in, int64_t P, int bits, K* keys_out, int32_t* pairs_out,
                      K* keys_tmp, int32_t* pairs_tmp) {
  const int passes = (bits + 10) / 11;
  const int width = (bits + passes - 1) / passes;
  const size_t buckets = size_t(1) << width;
  const K mask = K(buckets - 1);
  std::vector<int64_t> hist(buckets);

  // Choose the first destination so the last pass writes keys_out.
  K* dst_k = (passes % 2 == 1) ? keys_out : keys_tmp;
  int32_t* dst_p = (passes % 2 == 1) ? pairs_out : pairs_tmp;
  K* oth_k = (passes % 2 == 1) ? keys_tmp : keys_out;
  int32_t* oth_p = (passes % 2 == 1) ? pairs_tmp : pairs_out;
  const K* src_k = keys_in;
  const int32_t* src_p = nullptr;

  for (int pass = 0; pass < passes; ++pass) {
    const int shift = pass * width;
    std::fill(hist.begin(), hist.end(), 0);
    for (int64_t i = 0; i < P; ++i) ++hist[size_t((src_k[i] >> shift) & mask)];
    int64_t sum = 0;
    for (size_t b = 0; b < buckets; ++b) {
      int64_t c = hist[b];
      hist[b] = sum;
      sum += c;
    }
    for (int64_t i = 0; i < P; ++i) {
      const K k = src_k[i];
      const int64_t at = hist[size_t((k >> shift) & mask)]++;
      dst_k[at] = k;
      dst_p[at] = src_p ? src_p[i] : int32_t(i);
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
                   keys_tmp, pairs_tmp);

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

template <class V, class I>
mk_status reduce(const mk_embedding_bag_bwd_args& a, char* ws, const EbWorkspaceLayout& l) {
  using A = typename acc_of<V>::type;
  using K = typename std::make_unsigned<I>::type;
  const int64_t D = a.dim, B = a.bag_size, N = a.num_rows;
  const int64_t C = eb_chunk_size(B);
  const int threads = resolve_threads(a.num_threads);
  const int32_t* counters = reinterpret_cast<const int32_t*>(ws + l.counters);
  const int32_t n_unique = counters[kNumUnique];
  const int32_t n_chunks = counters[kNumChunks];
  const K* unique = reinterpret_cast<const K*>(ws + l.unique_rows);
  const int32_t* pairs = reinterpret_cast<const int32_t*>(ws + l.sorted_pairs);
  const int32_t* seg_off = reinterpret_cast<const int32_t*>(ws + l.seg_offsets);
  const int32_t* chunk_off = reinterpret_cast<const int32_t*>(ws + l.chunk_offsets);
  const int32_t* part_off = reinterpret_cast<const int32_t*>(ws + l.partial_offsets);
  A* partials = reinterpret_cast<A*>(ws + l.partials);

  const V* values = static_cast<const V*>(a.values);
  const A* weights = static_cast<const A*>(a.weights);
  const V* grad_out = static_cast<const V*>(a.grad_out);
  A* grad_w = static_cast<A*>(a.grad_weights);
  V* grad_dense = static_cast<V*>(a.grad_values);
  V* grad_sparse = static_cast<V*>(a.sparse_grads);
  const bool rows_wanted = grad_dense || grad_sparse;

  if (grad_dense) {
    const int64_t total = N * D;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t blk = 0; blk < (total + 65535) / 65536; ++blk) {
      const int64_t lo = blk * 65536, hi = std::min(total, lo + 65536);
      std::memset(static_cast<void*>(grad_dense + lo), 0, size_t(hi - lo) * sizeof(V));
    }
  }
  if (a.sparse_rows) {
    for (int32_t s = 0; s < n_unique; ++s) a.sparse_rows[s] = int64_t(unique[s]);
  }

  auto row_dest = [&](int32_t s) -> V* {
    if (grad_dense) return grad_dense + int64_t(unique[s]) * D;
    return grad_sparse + int64_t(s) * D;
  };

#pragma omp parallel num_threads(threads)
  {
    std::vector<A> acc(static_cast<size_t>(D)), vrow(static_cast<size_t>(D));
#pragma omp for schedule(dynamic, 4)
    for (int32_t c = 0; c < n_chunks; ++c) {
      const int32_t s = int32_t(std::upper_bound(chunk_off, chunk_off + n_unique + 1, c) - chunk_off) - 1;
      const int32_t k = c - chunk_off[s];
      const int32_t begin = seg_off[s] + int32_t(k * C);
      const int32_t end = std::min<int32_t>(begin + int32_t(C), seg_off[s + 1]);
      const bool split = chunk_off[s + 1] - chunk_off[s] > 1;
      if (grad_w) load_row(vrow.data(), values + int64_t(unique[s]) * a.values_row_stride, D);
      if (rows_wanted) std::fill(acc.begin(), acc.end(), A(0));
      for (int32_t i = begin; i < end; ++i) {
        const int64_t p = pairs[i];
        const V* g = grad_out + (p / B) * D;
        if (rows_wanted && grad_w) {
          grad_w[p] = axpy_dot_row(acc.data(), g, vrow.data(), weights[p], D);
        } else if (rows_wanted) {
          axpy_row(acc.data(), g, weights[p], D);
        } else if (grad_w) {
          grad_w[p] = dot_row(g, vrow.data(), D);
        }
      }
      if (!rows_wanted) continue;
      if (split) {
        std::copy(acc.begin(), acc.end(), partials + int64_t(part_off[s] + k) * D);
      } else {
        store_row(row_dest(s), acc.data(), D);
      }
    }
  }
  if (!rows_wanted) return MK_OK;

  // Hot segments: add their chunks' partial rows in chunk order, in column
  // blocks so one very hot row still spreads over the threads.
  const int32_t* hot = reinterpret_cast<const int32_t*>(ws + l.hot_list);
  const int64_t col_block = 512;
  const int64_t n_col_blocks = (D + col_block - 1) / col_block;
  const int64_t work = int64_t(counters[kNumHot]) * n_col_blocks;
#pragma omp parallel num_threads(threads)
  {
    std::vector<A> acc(static_cast<size_t>(col_block));
#pragma omp for schedule(dynamic, 1)
    for (int64_t item = 0; item < work; ++item) {
      const int32_t s = hot[item / n_col_blocks];
      const int64_t c0 = (item % n_col_blocks) * col_block;
      const int64_t w = std::min(col_block, D - c0);
      std::fill(acc.begin(), acc.begin() + w, A(0));
      for (int32_t q = part_off[s]; q < part_off[s + 1]; ++q)
        add_row(acc.data(), partials + int64_t(q) * D + c0, w);
      store_row(row_dest(s) + c0, acc.data(), w);
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
