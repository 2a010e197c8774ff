// Kernel bodies of the embedding bag's CUDA backward that use no CUDA header
// (embedding_bag_backward_cuda.cu wraps them in kernels and runs the plan),
// so that tests/core/test_eb_backward_emu.cpp runs them on the CPU under the
// warp emulation of tests/core/warp_emu.h: the zeroing of untouched rows,
// the segment reduction (a warp per chunk), the combination of split
// segments' partial rows, and the optimizer update applied inside the
// reduction.
#pragma once

#include <cstdint>

#include "cuda_device_internal.cuh"
#include "dtypes_internal.h"
#include "embedding_bag_internal.h"
#include "row_update_internal.h"
#include "row_update_kernel_internal.cuh"

namespace mk {
namespace ebbwd {

using cuda::kBlockThreads;
using cuda::kFullMask;
using cuda::kWarpsPerBlock;
using cuda::load_vec;
using cuda::store_vec;
using cuda::warp_sum;

// Zeroes the dense gradient's rows that no pair touched; the chunk and
// combine kernels, queued after it on the same stream, write the touched ones.
// So each row is written once, instead of a memset of all N rows followed by
// the touched rows again. A warp per block of 32 rows: a binary search finds
// the first distinct row at or after the block's first, lane i reads the i-th
// from there, an OR across the warp gives the block's touched rows, and the
// warp zeroes the others (16-byte streaming stores where the rows allow).
// Unchecked bad indices can leave the distinct rows out of order (the sort
// looks at the low bits only): a touched row may then be zeroed as well,
// which is harmless since its gradient is written after; an untouched row is
// never skipped, as only a distinct row below N sets a bit.
template <class V, class K, int VEC>
__device__ __forceinline__ void zero_untouched_rows(V* grad, const K* unique, int32_t n_unique, int64_t N,
                                                    int64_t D) {
  const int lane = threadIdx.x & 31;
  const int64_t blocks = (N + 31) / 32;
  const int64_t stride_w = int64_t(gridDim.x) * kWarpsPerBlock;
  for (int64_t b = int64_t(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5); b < blocks;
       b += stride_w) {
    const uint64_t r0 = uint64_t(b) * 32;
    int32_t lo = 0, hi = n_unique;  // the first s with unique[s] >= r0
    while (lo < hi) {
      const int32_t mid = (lo + hi) >> 1;
      if (uint64_t(unique[mid]) < r0) lo = mid + 1; else hi = mid;
    }
    uint32_t touched = 0;
    if (lo + lane < n_unique) {
      const uint64_t u = uint64_t(unique[lo + lane]);
      if (u >= r0 && u < r0 + 32 && u < uint64_t(N)) touched = 1u << (u - r0);
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) touched |= __shfl_xor_sync(kFullMask, touched, o);
    const int rows = N - int64_t(r0) < 32 ? int(N - int64_t(r0)) : 32;
    for (int i = 0; i < rows; ++i) {
      if ((touched >> i) & 1u) continue;
      V* row = grad + (int64_t(r0) + i) * D;
      if constexpr (VEC > 1) {
        uint4* v = reinterpret_cast<uint4*>(row);
        for (int64_t c = lane; c < D / VEC; c += 32) __stcs(v + c, make_uint4(0u, 0u, 0u, 0u));
      } else {
        for (int64_t c = lane; c < D; c += 32) row[c] = from_acc<V>(acc_t<V>(0));
      }
    }
  }
}

// ---- the segment reduction --------------------------------------------------

template <class V, class K>
struct BwdParams {
  using A = acc_t<V>;
  const V* values;
  const A* weights;
  const V* grad_out;
  A* grad_weights;   // may be null
  V* grad_dense;     // [N, D] or null
  V* grad_sparse;    // [U, D] or null
  A* grad_sparse_acc;  // [U, D] in the accumulation type, or null
  int64_t* sparse_rows;
  int64_t* sparse_count;  // or null
  int64_t cap;            // sparse outputs: rows written, 0 = exactly the count
  A* partials;
  const int32_t* counters;
  const K* unique;
  const int32_t* sorted_pairs;
  const int32_t* seg_offsets;
  const int32_t* chunk_offsets;
  const int32_t* chunk_segments;  // [chunks] the segment of each chunk (map_chunks)
  const int32_t* partial_offsets;
  const int32_t* hot_list;
  int64_t N, D, B, stride, C;
  // The optimizer update applied to each finished row instead of writing it
  // (has_update): table is the values, written in place.
  bool has_update;
  V* table;
  mk_row_update update;
  RowUpdateConsts update_consts;
};

// Where segment s's finished row gradient goes (null: row out of range, which
// only an unchecked bad index can produce; it is dropped).
template <class V, class K>
__device__ __forceinline__ V* row_dest(const BwdParams<V, K>& p, int32_t s) {
  const K r = p.unique[s];
  if (uint64_t(r) >= uint64_t(p.N)) return nullptr;
  if (p.grad_dense) return p.grad_dense + int64_t(r) * p.D;
  if (p.cap > 0 && int64_t(s) >= p.cap) return nullptr;
  return p.grad_sparse ? p.grad_sparse + int64_t(s) * p.D : nullptr;
}

// Segment s's row in the accumulation-type sparse output, or null.
template <class V, class K>
__device__ __forceinline__ acc_t<V>* row_dest_acc(const BwdParams<V, K>& p, int32_t s) {
  if (!p.grad_sparse_acc || (p.cap > 0 && int64_t(s) >= p.cap)) return nullptr;
  return p.grad_sparse_acc + int64_t(s) * p.D;
}

// The plan's last step: the segment of every chunk, so that a chunk's warp
// reads it instead of searching chunk_offsets (a chain of about log2(U)
// dependent loads per chunk). A thread per segment writes its chunks'
// entries (grid-stride; the count is read on the device).
__device__ __forceinline__ void map_chunks(const int32_t* counters, const int32_t* chunk_offsets,
                                           int32_t* chunk_segments) {
  const int32_t n_unique = counters[kNumUnique];
  const int64_t step = int64_t(gridDim.x) * blockDim.x;
  for (int64_t s = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; s < n_unique; s += step)
    for (int32_t c = chunk_offsets[s]; c < chunk_offsets[s + 1]; ++c) chunk_segments[c] = int32_t(s);
}

// The lane's pair of the chunk's first 32 (sorted_pairs[begin + lane]) and
// its weight, loaded once per chunk for every column tile and pass.
template <class A>
struct FirstPairs {
  int32_t pair = 0;
  A w = A(0);
};

// The gradient of one column tile (columns col0 + (q * 32 + lane) * VEC + e)
// of the chunk of pairs [begin, end), in pair order, into acc; with `dots`,
// also each pair's <grad_out[t], v> over the tile, added to the weights'
// gradient in tile order. v holds the tile of the value row (zeros for a
// row out of range); first, the chunk's first 32 pairs and weights. Called
// by the whole warp (`dots` is warp-uniform).
template <class V, class K, int VEC, int NV>
__device__ __forceinline__ void chunk_tile(const BwdParams<V, K>& p, int32_t begin, int32_t end, int64_t col0,
                                           bool dots, bool valid, const FirstPairs<acc_t<V>>& first,
                                           const acc_t<V> (&v)[NV][VEC], acc_t<V> (&acc)[NV][VEC]) {
  using A = acc_t<V>;
  const int lane = int(threadIdx.x & 31);
#pragma unroll
  for (int q = 0; q < NV; ++q)
#pragma unroll
    for (int e = 0; e < VEC; ++e) acc[q][e] = A(0);
  for (int32_t i0 = begin; i0 < end; i0 += 32) {
    int32_t my_pair = first.pair;
    A my_w = first.w;
    if (i0 != begin) {
      my_pair = 0;
      my_w = A(0);
      if (i0 + lane < end) {
        my_pair = p.sorted_pairs[i0 + lane];
        my_w = p.weights[my_pair];
      }
    }
    const int n = end - i0 < 32 ? end - i0 : 32;
    for (int ii = 0; ii < n; ++ii) {
      const int32_t pair = __shfl_sync(kFullMask, my_pair, ii);
      const A w = __shfl_sync(kFullMask, my_w, ii);
      const V* g = p.grad_out + (int64_t(pair) / p.B) * p.D + col0;
      A dot = A(0);
#pragma unroll
      for (int q = 0; q < NV; ++q) {
        const int64_t cc = (int64_t(q) * 32 + lane) * VEC;
        if (col0 + cc < p.D) {
          A x[VEC];
          load_vec<V, VEC>(g + cc, x);
#pragma unroll
          for (int e = 0; e < VEC; ++e) {
            acc[q][e] += w * x[e];
            dot += x[e] * v[q][e];
          }
        }
      }
      if (dots) {
        dot = warp_sum(dot);
        if (lane == 0) {
          // Column tiles add in order; the same lane wrote the last value.
          p.grad_weights[pair] = (col0 == 0 ? A(0) : p.grad_weights[pair]) + (valid ? dot : A(0));
        }
      }
    }
  }
}

// A warp per chunk, grid-stride over the chunks the plan counted. A chunk
// that is its segment's whole row writes the row's gradient (dense or sparse
// output), or with an update applies it to the row in place: the stat
// passes the rule needs compute the row's gradient tile by tile for its
// statistics alone, then the last pass computes it again, adds the weights'
// gradient and updates the values and states. A chunk of a split segment
// writes its partial row; the update of a split row is left to
// combine_update_rows, after every chunk of the row has read its old values.
// kUpdate: p.has_update, as a template parameter so that the kernels without
// an update compile without its code (and its registers).
template <class V, class K, int VEC, int NV, bool kUpdate>
__device__ __forceinline__ void reduce_chunks(const BwdParams<V, K>& p) {
  using A = acc_t<V>;
  constexpr int64_t kTile = 32 * NV * VEC;
  const int lane = int(threadIdx.x & 31);
  const int32_t n_unique = p.counters[kNumUnique];
  const int32_t n_chunks = p.counters[kNumChunks];
  const bool rows_wanted = kUpdate || p.grad_dense || p.grad_sparse || p.grad_sparse_acc;
  const bool wgrad = p.grad_weights != nullptr;
  const int64_t stride_w = int64_t(gridDim.x) * kWarpsPerBlock;
  rowupd::Resolved rs{p.update, p.update_consts};
  if (kUpdate) rs = rowupd::resolve(p.update, p.update_consts);
  const int npass = kUpdate ? rowupd::stat_passes(rs.u) : 0;

  if (p.sparse_count && blockIdx.x == 0 && threadIdx.x == 0) *p.sparse_count = n_unique;
  if (p.sparse_rows) {
    // Capacity form: rows past the count are -1 and their gradients zero.
    const int64_t rows = p.cap > 0 ? p.cap : n_unique;
    const int64_t step = int64_t(gridDim.x) * kBlockThreads;
    for (int64_t s = int64_t(blockIdx.x) * kBlockThreads + threadIdx.x; s < rows; s += step)
      p.sparse_rows[s] = s < n_unique ? int64_t(p.unique[s]) : int64_t(-1);
    if (p.cap > n_unique) {
      const int64_t first = int64_t(n_unique) * p.D, total = (p.cap - n_unique) * p.D;
      for (int64_t e = int64_t(blockIdx.x) * kBlockThreads + threadIdx.x; e < total; e += step) {
        if (p.grad_sparse_acc) p.grad_sparse_acc[first + e] = A(0);
        else p.grad_sparse[first + e] = from_acc<V>(A(0));
      }
    }
  }

  for (int64_t c = int64_t(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5); c < n_chunks;
       c += stride_w) {
    const int32_t s = p.chunk_segments[c];
    const int32_t k = int32_t(c) - p.chunk_offsets[s];
    const int32_t begin = p.seg_offsets[s] + k * int32_t(p.C);
    const int32_t seg_end = p.seg_offsets[s + 1];
    const int32_t end = begin + int32_t(p.C) < seg_end ? begin + int32_t(p.C) : seg_end;
    const bool split = p.chunk_offsets[s + 1] - p.chunk_offsets[s] > 1;
    const K r = p.unique[s];
    const bool valid = uint64_t(r) < uint64_t(p.N);
    const bool upd = kUpdate && !split && valid;
    V* dest = split ? nullptr : row_dest(p, s);
    A* partial = split ? p.partials + int64_t(p.partial_offsets[s] + k) * p.D : row_dest_acc(p, s);
    const V* vrow = valid ? p.values + int64_t(r) * p.stride : nullptr;
    FirstPairs<A> head;
    if (begin + lane < end) {
      head.pair = p.sorted_pairs[begin + lane];
      head.w = p.weights[head.pair];
    }

    rowupd::RowFactors<A> f;
    if (kUpdate && upd) {
      for (int pass = 0; pass < npass; ++pass) {
        A sq = A(0);
        for (int64_t col0 = 0; col0 < p.D; col0 += kTile) {
          A v[NV][VEC], acc[NV][VEC];
#pragma unroll
          for (int q = 0; q < NV; ++q)
#pragma unroll
            for (int e = 0; e < VEC; ++e) v[q][e] = A(0);
          chunk_tile<V, K, VEC, NV>(p, begin, end, col0, false, valid, head, v, acc);
#pragma unroll
          for (int q = 0; q < NV; ++q)
            if (col0 + (int64_t(q) * 32 + lane) * VEC < p.D) rowupd::add_squares<A, VEC>(sq, acc[q], f);
        }
        rowupd::finish_stat_pass<A>(rs.u, pass, sq, int64_t(r), p.D, f);
      }
    }

    for (int64_t col0 = 0; col0 < p.D; col0 += kTile) {
      A v[NV][VEC], acc[NV][VEC];
#pragma unroll
      for (int q = 0; q < NV; ++q) {
        const int64_t cc = (int64_t(q) * 32 + lane) * VEC;
#pragma unroll
        for (int e = 0; e < VEC; ++e) v[q][e] = A(0);
        if ((wgrad || upd) && valid && col0 + cc < p.D) load_vec<V, VEC>(vrow + col0 + cc, v[q]);
      }
      chunk_tile<V, K, VEC, NV>(p, begin, end, col0, wgrad, valid, head, v, acc);
      if (!rows_wanted) continue;
#pragma unroll
      for (int q = 0; q < NV; ++q) {
        const int64_t cc = (int64_t(q) * 32 + lane) * VEC;
        if (col0 + cc >= p.D) continue;
        if (kUpdate && upd) {
          rowupd::update_vec<V, VEC>(rs, p.table + int64_t(r) * p.stride + col0 + cc, v[q], acc[q], f,
                                     int64_t(r), col0 + cc, p.D);
        } else if (partial) {
#pragma unroll
          for (int e = 0; e < VEC; ++e) partial[col0 + cc + e] = acc[q][e];
        } else if (dest) {
          store_vec<V, VEC>(dest + col0 + cc, acc[q]);
        }
      }
    }
  }
}

// Adds each split segment's partial rows in chunk order into its output row:
// block_x picks a column block of block_threads columns, block_y strides over
// the hot list (grid_y blocks).
template <class V, class K>
__device__ __forceinline__ void combine_partials(const BwdParams<V, K>& p, unsigned block_x, unsigned block_y,
                                                 unsigned grid_y, unsigned block_threads) {
  using A = acc_t<V>;
  const int32_t n_hot = p.counters[kNumHot];
  const int64_t col = int64_t(block_x) * block_threads + threadIdx.x;
  if (col >= p.D) return;
  for (int32_t h = int32_t(block_y); h < n_hot; h += int32_t(grid_y)) {
    const int32_t s = p.hot_list[h];
    V* dest = row_dest(p, s);
    A* dest_acc = row_dest_acc(p, s);
    if (!dest && !dest_acc) continue;
    A sum = A(0);
    for (int32_t q = p.partial_offsets[s]; q < p.partial_offsets[s + 1]; ++q)
      sum += p.partials[int64_t(q) * p.D + col];
    if (dest_acc)
      dest_acc[col] = sum;
    else
      dest[col] = from_acc<V>(sum);
  }
}

// With an update: a warp per split segment (grid-stride over the hot list)
// adds its partial rows in chunk order, as combine_partials does, and applies
// the update to the row: each stat pass and the last pass add them again.
template <class V, class K, int VEC>
__device__ __forceinline__ void combine_update_rows(const BwdParams<V, K>& p) {
  using A = acc_t<V>;
  const int lane = int(threadIdx.x & 31);
  const int32_t n_hot = p.counters[kNumHot];
  const rowupd::Resolved rs = rowupd::resolve(p.update, p.update_consts);
  const int npass = rowupd::stat_passes(rs.u);
  const int64_t stride_w = int64_t(gridDim.x) * kWarpsPerBlock;
  for (int64_t h = int64_t(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5); h < n_hot; h += stride_w) {
    const int32_t s = p.hot_list[h];
    const K r = p.unique[s];
    if (uint64_t(r) >= uint64_t(p.N)) continue;
    const int32_t q0 = p.partial_offsets[s], q1 = p.partial_offsets[s + 1];
    auto row_sum = [&](int64_t col, A (&x)[VEC]) {
#pragma unroll
      for (int e = 0; e < VEC; ++e) x[e] = A(0);
      for (int32_t q = q0; q < q1; ++q) {
        A t[VEC];
        load_vec<A, VEC>(p.partials + int64_t(q) * p.D + col, t);
#pragma unroll
        for (int e = 0; e < VEC; ++e) x[e] += t[e];
      }
    };
    rowupd::RowFactors<A> f;
    for (int pass = 0; pass < npass; ++pass) {
      A sq = A(0);
      for (int64_t col = int64_t(lane) * VEC; col < p.D; col += 32 * VEC) {
        A x[VEC];
        row_sum(col, x);
        rowupd::add_squares<A, VEC>(sq, x, f);
      }
      rowupd::finish_stat_pass<A>(rs.u, pass, sq, int64_t(r), p.D, f);
    }
    V* w = p.table + int64_t(r) * p.stride;
    for (int64_t col = int64_t(lane) * VEC; col < p.D; col += 32 * VEC) {
      A x[VEC], old[VEC];
      row_sum(col, x);
      load_vec<V, VEC>(w + col, old);
      rowupd::update_vec<V, VEC>(rs, w + col, old, x, f, int64_t(r), col, p.D);
    }
  }
}

}  // namespace ebbwd
}  // namespace mk
