// CPU backward of the weighted embedding bag, atomic-free (docs/embedding_bag.md):
// plan   LSD radix sort of the pairs by row over ceil(log2 N) bits
//        (radix_sort_cpu.cpp), run-length segments, chunk and partial offsets;
// reduce chunked segment reduction with the weights' gradient in the same
//        pass, hot segments' partial rows combined in chunk order; with an
//        optimizer update, each finished row is applied to the table instead
//        of being written.
// Results do not depend on the thread count.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "cpu_internal.h"
#include "embedding_bag_internal.h"
#include "row_update_internal.h"

namespace mk {
namespace {

// ---- plan ------------------------------------------------------------------

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
  counters[kNumHot] = hot;
  return MK_OK;
}

// ---- reduce ----------------------------------------------------------------

template <class V, class K>
struct ReduceView {
  using A = acc_t<V>;
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
  int64_t cap;  // sparse outputs: segments at or past it are dropped
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
    if ((grad_sparse_acc || grad_sparse) && int64_t(s) >= cap) return;
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
  using A = acc_t<V>;
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
  mk_row_update update;  // with its run-time step and learning-rate scale read
  if (a.update) {
    update = resolve_update(*a.update);
    r.update = &update;
    r.update_consts = row_update_consts(update);
  } else {
    r.update = nullptr;
  }
  r.table = const_cast<V*>(static_cast<const V*>(a.values));
  r.partials = reinterpret_cast<A*>(ws + l.partials);
  r.unique = reinterpret_cast<const K*>(ws + l.unique_rows);
  r.pairs = reinterpret_cast<const int32_t*>(ws + l.sorted_pairs);
  r.seg_off = reinterpret_cast<const int32_t*>(ws + l.seg_offsets);
  r.chunk_off = reinterpret_cast<const int32_t*>(ws + l.chunk_offsets);
  r.part_off = reinterpret_cast<const int32_t*>(ws + l.partial_offsets);
  r.n_unique = counters[kNumUnique];
  r.cap = a.sparse_capacity > 0 ? a.sparse_capacity : INT64_MAX;
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
  if (a.sparse_count) *a.sparse_count = r.n_unique;
  if (a.sparse_rows) {
    const int64_t rows = a.sparse_capacity > 0 ? a.sparse_capacity : r.n_unique;
    for (int64_t s = 0; s < rows; ++s) a.sparse_rows[s] = s < r.n_unique ? int64_t(r.unique[s]) : -1;
    if (a.sparse_capacity > r.n_unique) {
      // The capacity form: rows past the count have zero gradients.
      const size_t elt = a.sparse_grads_acc ? sizeof(A) : sizeof(V);
      std::memset(static_cast<char*>(a.sparse_grads) + size_t(r.n_unique) * size_t(D) * elt, 0,
                  size_t(a.sparse_capacity - r.n_unique) * size_t(D) * elt);
    }
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

size_t eb_backward_scratch_cpu(const mk_embedding_bag_bwd_args& a) {
  const size_t P = size_t(a.num_bags) * size_t(a.bag_size);
  return align256(index_size(a.index_dtype) * P) + align256(sizeof(int32_t) * P);
}

mk_status eb_backward_plan_cpu(const mk_embedding_bag_bwd_args& a, char* ws,
                               const EbWorkspaceLayout& l) {
  return dispatch_index(a.index_dtype, [&](auto i) { return plan<decltype(i)>(a, ws, l); });
}

mk_status eb_backward_reduce_cpu(const mk_embedding_bag_bwd_args& a, char* ws,
                                 const EbWorkspaceLayout& l) {
  return dispatch_value(a.value_dtype, [&](auto v) {
    using V = decltype(v);
    return dispatch_index(a.index_dtype, [&](auto i) { return reduce<V, decltype(i)>(a, ws, l); });
  });
}

}  // namespace mk
