// CUDA backward of the weighted embedding bag, atomic-free and deterministic
// (docs/embedding_bag.md):
//   plan:   CUB stable radix sort of (row, pair) over ceil(log2 N) bits,
//           run-length segments, chunk and partial offsets, the hot list;
//   reduce: a warp per chunk of at most C pairs (a short segment is one chunk)
//           computes the row gradient in fp32 and, with the row V[r] loaded
//           once per chunk, every pair's weight gradient <grad_out[t], V[r]>;
//           split (hot) segments leave partial rows that a second kernel adds
//           in chunk order. No atomics: every output element has one writer.
#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_run_length_encode.cuh>
#include <cub/device/device_scan.cuh>
#include <cstring>
#include <type_traits>

#include "cuda_internal.cuh"
#include "embedding_bag_backward_kernel_internal.cuh"
#include "embedding_bag_internal.h"
#include "row_update_internal.h"

namespace mk {
namespace {

using cuda::can_vectorize;
using cuda::kBlockThreads;
using cuda::kFullMask;
using cuda::kWarpsPerBlock;
using cuda::load_vec;
using cuda::sm_count;
using cuda::store_vec;
using cuda::warp_grid;
using cuda::warp_sum;

// ---- plan ------------------------------------------------------------------

__global__ void iota_kernel(int32_t* out, int64_t n) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    out[i] = int32_t(i);
}

// Per segment (0 past the last one): its chunk count, its partial-row count
// (0 unless split) and whether it is split.
__global__ void chunk_counts_kernel(const int32_t* seg_counts, int64_t n, int32_t C,
                                    int32_t* chunk_counts, int32_t* partial_counts,
                                    int32_t* hot_flags) {
  for (int64_t s = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; s < n;
       s += int64_t(gridDim.x) * blockDim.x) {
    const int32_t len = seg_counts[s];
    const int32_t nc = (len + C - 1) / C;
    chunk_counts[s] = nc;
    partial_counts[s] = nc > 1 ? nc : 0;
    hot_flags[s] = nc > 1 ? 1 : 0;
  }
}

__global__ void hot_list_kernel(const int32_t* hot_flags, const int32_t* hot_offsets, int64_t n,
                                int32_t* hot_list) {
  for (int64_t s = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; s < n;
       s += int64_t(gridDim.x) * blockDim.x)
    if (hot_flags[s]) hot_list[hot_offsets[s]] = int32_t(s);
}

__global__ void finalize_counters_kernel(int32_t* counters, const int32_t* chunk_offsets,
                                         const int32_t* hot_offsets, int64_t P) {
  counters[kNumChunks] = chunk_offsets[P];
  counters[kNumHot] = hot_offsets[P];
}

unsigned elementwise_grid(int64_t n) {
  const int64_t blocks = (n + 255) / 256;
  const int64_t cap = int64_t(sm_count()) * 8;
  return unsigned(blocks < 1 ? 1 : (blocks < cap ? blocks : cap));
}

// CUB temporary bytes: the largest of the sort, the run-length encoding and
// the scans (all run one after another on the same stream).
template <class K>
mk_status cub_temp_bytes(int64_t P, int bits, size_t* bytes) {
  size_t sort = 0, rle = 0, scan = 0;
  const int n = int(P);
  MK_CUDA_TRY(cub::DeviceRadixSort::SortPairs(nullptr, sort, static_cast<const K*>(nullptr),
                                              static_cast<K*>(nullptr),
                                              static_cast<const int32_t*>(nullptr),
                                              static_cast<int32_t*>(nullptr), n, 0, bits));
  MK_CUDA_TRY(cub::DeviceRunLengthEncode::Encode(nullptr, rle, static_cast<const K*>(nullptr),
                                                 static_cast<K*>(nullptr),
                                                 static_cast<int32_t*>(nullptr),
                                                 static_cast<int32_t*>(nullptr), n));
  MK_CUDA_TRY(cub::DeviceScan::ExclusiveSum(nullptr, scan, static_cast<const int32_t*>(nullptr),
                                            static_cast<int32_t*>(nullptr), n + 1));
  *bytes = sort > rle ? sort : rle;
  if (scan > *bytes) *bytes = scan;
  return MK_OK;
}

template <class T>
T* at(char* ws, size_t off) {
  return reinterpret_cast<T*>(ws + off);
}

template <class I>
mk_status plan(const mk_embedding_bag_bwd_args& a, char* ws, const EbWorkspaceLayout& l,
               cudaStream_t stream) {
  using K = typename std::make_unsigned<I>::type;
  const int64_t P = a.num_bags * a.bag_size;
  const int bits = eb_sort_bits(a.num_rows);
  const int32_t C = int32_t(eb_chunk_size(a.bag_size));
  int32_t* counters = at<int32_t>(ws, l.counters);
  MK_CUDA_TRY(cudaMemsetAsync(counters, 0, sizeof(int32_t) * kNumCounters, stream));
  if (P == 0) return MK_OK;

  void* temp = ws + l.scratch;
  size_t temp_bytes = l.scratch_bytes;
  int32_t* pair_ids = at<int32_t>(ws, l.pair_ids);
  K* sorted_keys = at<K>(ws, l.sorted_keys);
  int32_t* sorted_pairs = at<int32_t>(ws, l.sorted_pairs);
  K* unique = at<K>(ws, l.unique_rows);
  int32_t* seg_counts = at<int32_t>(ws, l.seg_counts);
  int32_t* seg_offsets = at<int32_t>(ws, l.seg_offsets);
  int32_t* chunk_counts = at<int32_t>(ws, l.chunk_counts);
  int32_t* chunk_offsets = at<int32_t>(ws, l.chunk_offsets);
  int32_t* partial_counts = at<int32_t>(ws, l.partial_counts);
  int32_t* partial_offsets = at<int32_t>(ws, l.partial_offsets);
  int32_t* hot_flags = at<int32_t>(ws, l.hot_flags);
  int32_t* hot_offsets = at<int32_t>(ws, l.hot_offsets);
  int32_t* hot_list = at<int32_t>(ws, l.hot_list);
  const int n = int(P);

  iota_kernel<<<elementwise_grid(P), 256, 0, stream>>>(pair_ids, P);
  MK_LAUNCH_CHECK();
  MK_CUDA_TRY(cub::DeviceRadixSort::SortPairs(temp, temp_bytes,
                                              static_cast<const K*>(a.indices), sorted_keys,
                                              pair_ids, sorted_pairs, n, 0, bits, stream));
  MK_CUDA_TRY(cudaMemsetAsync(seg_counts, 0, sizeof(int32_t) * (P + 1), stream));
  temp_bytes = l.scratch_bytes;
  MK_CUDA_TRY(cub::DeviceRunLengthEncode::Encode(temp, temp_bytes, sorted_keys, unique,
                                                 seg_counts, counters + kNumUnique, n, stream));
  temp_bytes = l.scratch_bytes;
  MK_CUDA_TRY(cub::DeviceScan::ExclusiveSum(temp, temp_bytes, seg_counts, seg_offsets, n + 1,
                                            stream));
  chunk_counts_kernel<<<elementwise_grid(P + 1), 256, 0, stream>>>(
      seg_counts, P + 1, C, chunk_counts, partial_counts, hot_flags);
  MK_LAUNCH_CHECK();
  temp_bytes = l.scratch_bytes;
  MK_CUDA_TRY(cub::DeviceScan::ExclusiveSum(temp, temp_bytes, chunk_counts, chunk_offsets, n + 1,
                                            stream));
  temp_bytes = l.scratch_bytes;
  MK_CUDA_TRY(cub::DeviceScan::ExclusiveSum(temp, temp_bytes, partial_counts, partial_offsets,
                                            n + 1, stream));
  temp_bytes = l.scratch_bytes;
  MK_CUDA_TRY(cub::DeviceScan::ExclusiveSum(temp, temp_bytes, hot_flags, hot_offsets, n + 1,
                                            stream));
  hot_list_kernel<<<elementwise_grid(P), 256, 0, stream>>>(hot_flags, hot_offsets, P, hot_list);
  MK_LAUNCH_CHECK();
  finalize_counters_kernel<<<1, 1, 0, stream>>>(counters, chunk_offsets, hot_offsets, P);
  MK_LAUNCH_CHECK();
  return MK_OK;
}

// ---- reduce ----------------------------------------------------------------

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
  const int32_t* partial_offsets;
  const int32_t* hot_list;
  int64_t N, D, B, stride, C;
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

// A warp per chunk, grid-stride over the chunks the plan counted.
template <class V, class K, int VEC, int NV>
__global__ void __launch_bounds__(kBlockThreads) eb_backward_chunks_kernel(BwdParams<V, K> p) {
  using A = acc_t<V>;
  constexpr int64_t kTile = 32 * NV * VEC;
  const int lane = threadIdx.x & 31;
  const int32_t n_unique = p.counters[kNumUnique];
  const int32_t n_chunks = p.counters[kNumChunks];
  const bool rows_wanted = p.grad_dense || p.grad_sparse || p.grad_sparse_acc;
  const bool wgrad = p.grad_weights != nullptr;
  const int64_t stride_w = int64_t(gridDim.x) * kWarpsPerBlock;

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
    // Segment of chunk c: the last s with chunk_offsets[s] <= c.
    int32_t lo = 0, hi = n_unique;
    while (hi - lo > 1) {
      const int32_t mid = (lo + hi) >> 1;
      if (p.chunk_offsets[mid] <= c) lo = mid; else hi = mid;
    }
    const int32_t s = lo;
    const int32_t k = int32_t(c) - p.chunk_offsets[s];
    const int32_t begin = p.seg_offsets[s] + k * int32_t(p.C);
    const int32_t seg_end = p.seg_offsets[s + 1];
    const int32_t end = begin + int32_t(p.C) < seg_end ? begin + int32_t(p.C) : seg_end;
    const bool split = p.chunk_offsets[s + 1] - p.chunk_offsets[s] > 1;
    const K r = p.unique[s];
    const bool valid = uint64_t(r) < uint64_t(p.N);
    V* dest = split ? nullptr : row_dest(p, s);
    A* partial = split ? p.partials + int64_t(p.partial_offsets[s] + k) * p.D : row_dest_acc(p, s);
    const V* vrow = valid ? p.values + int64_t(r) * p.stride : nullptr;

    for (int64_t col0 = 0; col0 < p.D; col0 += kTile) {
      A v[NV][VEC], acc[NV][VEC];
#pragma unroll
      for (int q = 0; q < NV; ++q) {
        const int64_t cc = (int64_t(q) * 32 + lane) * VEC;
#pragma unroll
        for (int e = 0; e < VEC; ++e) {
          v[q][e] = A(0);
          acc[q][e] = A(0);
        }
        if (wgrad && valid && col0 + cc < p.D) load_vec<V, VEC>(vrow + col0 + cc, v[q]);
      }
      for (int32_t i0 = begin; i0 < end; i0 += 32) {
        int32_t my_pair = 0;
        A my_w = A(0);
        if (i0 + lane < end) {
          my_pair = p.sorted_pairs[i0 + lane];
          my_w = p.weights[my_pair];
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
          if (wgrad) {
            dot = warp_sum(dot);
            if (lane == 0) {
              // Column tiles add in order; the same lane wrote the last value.
              p.grad_weights[pair] = (col0 == 0 ? A(0) : p.grad_weights[pair]) + (valid ? dot : A(0));
            }
          }
        }
      }
      if (!rows_wanted) continue;
#pragma unroll
      for (int q = 0; q < NV; ++q) {
        const int64_t cc = (int64_t(q) * 32 + lane) * VEC;
        if (col0 + cc >= p.D) continue;
        if (partial) {
#pragma unroll
          for (int e = 0; e < VEC; ++e) partial[col0 + cc + e] = acc[q][e];
        } else if (dest) {
          store_vec<V, VEC>(dest + col0 + cc, acc[q]);
        }
      }
    }
  }
}

// Adds each split segment's partial rows in chunk order: blockIdx.x picks a
// column block, blockIdx.y strides over the hot list.
template <class V, class K>
__global__ void eb_backward_combine_kernel(BwdParams<V, K> p) {
  using A = acc_t<V>;
  const int32_t n_hot = p.counters[kNumHot];
  const int64_t col = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (col >= p.D) return;
  for (int32_t h = blockIdx.y; h < n_hot; h += gridDim.y) {
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

// Zeroes the rows no pair touched (embedding_bag_backward_kernel_internal.cuh).
template <class V, class K, int VEC>
__global__ void __launch_bounds__(kBlockThreads)
    eb_zero_untouched_kernel(V* grad, const K* unique, const int32_t* counters, int64_t N, int64_t D) {
  ebbwd::zero_untouched_rows<V, K, VEC>(grad, unique, counters[kNumUnique], N, D);
}

template <class V, class K, int VEC, int NV>
mk_status launch_chunks(const BwdParams<V, K>& p, int64_t max_chunks, cudaStream_t stream) {
  eb_backward_chunks_kernel<V, K, VEC, NV><<<warp_grid(max_chunks), kBlockThreads, 0, stream>>>(p);
  MK_LAUNCH_CHECK();
  return MK_OK;
}

template <class V, class I>
mk_status reduce(const mk_embedding_bag_bwd_args& a, char* ws, const EbWorkspaceLayout& l,
                 cudaStream_t stream) {
  using K = typename std::make_unsigned<I>::type;
  using A = acc_t<V>;
  const int64_t P = a.num_bags * a.bag_size;
  if (a.grad_values && P == 0)
    MK_CUDA_TRY(cudaMemsetAsync(a.grad_values, 0,
                                size_t(a.num_rows) * size_t(a.dim) * sizeof(V), stream));
  if (P == 0) {
    // No pairs: no distinct rows; the capacity form is all padding.
    if (a.sparse_count) MK_CUDA_TRY(cudaMemsetAsync(a.sparse_count, 0, sizeof(int64_t), stream));
    if (a.sparse_rows && a.sparse_capacity > 0) {
      MK_CUDA_TRY(cudaMemsetAsync(a.sparse_rows, 0xff, size_t(a.sparse_capacity) * sizeof(int64_t), stream));
      MK_CUDA_TRY(cudaMemsetAsync(a.sparse_grads, 0,
                                  size_t(a.sparse_capacity) * size_t(a.dim) *
                                      (a.sparse_grads_acc ? sizeof(A) : sizeof(V)),
                                  stream));
    }
    return MK_OK;
  }

  BwdParams<V, K> p;
  p.values = static_cast<const V*>(a.values);
  p.weights = static_cast<const A*>(a.weights);
  p.grad_out = static_cast<const V*>(a.grad_out);
  p.grad_weights = static_cast<A*>(a.grad_weights);
  p.grad_dense = static_cast<V*>(a.grad_values);
  p.grad_sparse = a.sparse_grads_acc ? nullptr : static_cast<V*>(a.sparse_grads);
  p.grad_sparse_acc = a.sparse_grads_acc ? static_cast<A*>(a.sparse_grads) : nullptr;
  p.sparse_rows = a.sparse_rows;
  p.sparse_count = a.sparse_count;
  p.cap = a.sparse_capacity;
  p.partials = at<A>(ws, l.partials);
  p.counters = at<int32_t>(ws, l.counters);
  p.unique = at<K>(ws, l.unique_rows);
  p.sorted_pairs = at<int32_t>(ws, l.sorted_pairs);
  p.seg_offsets = at<int32_t>(ws, l.seg_offsets);
  p.chunk_offsets = at<int32_t>(ws, l.chunk_offsets);
  p.partial_offsets = at<int32_t>(ws, l.partial_offsets);
  p.hot_list = at<int32_t>(ws, l.hot_list);
  p.N = a.num_rows;
  p.D = a.dim;
  p.B = a.bag_size;
  p.stride = a.values_row_stride;
  p.C = eb_chunk_size(a.bag_size);
  constexpr int VEC = int(16 / sizeof(V));
  if (p.grad_dense && p.N > 0) {
    // Before the kernels that write the touched rows (see the kernel).
    const unsigned grid = warp_grid((p.N + 31) / 32);
    if (can_vectorize<V>(p.D, {{p.grad_dense, p.D}}))
      eb_zero_untouched_kernel<V, K, VEC><<<grid, kBlockThreads, 0, stream>>>(p.grad_dense, p.unique, p.counters, p.N, p.D);
    else
      eb_zero_untouched_kernel<V, K, 1><<<grid, kBlockThreads, 0, stream>>>(p.grad_dense, p.unique, p.counters, p.N, p.D);
    MK_LAUNCH_CHECK();
  }
  if (!p.grad_weights && !p.grad_dense && !p.grad_sparse && !p.grad_sparse_acc) return MK_OK;

  const int64_t max_chunks = P + P / p.C;
  const bool vec = can_vectorize<V>(
      p.D, {{p.values, p.stride}, {p.grad_out, p.D}, {p.grad_dense, p.D}, {p.grad_sparse, p.D}});
  mk_status st;
  if (vec) {
    st = p.D <= 64 * VEC ? launch_chunks<V, K, VEC, 1>(p, max_chunks, stream)
                         : launch_chunks<V, K, VEC, 4>(p, max_chunks, stream);
  } else {
    st = p.D <= 64 ? launch_chunks<V, K, 1, 1>(p, max_chunks, stream)
                   : launch_chunks<V, K, 1, 4>(p, max_chunks, stream);
  }
  if (st != MK_OK) return st;

  const int64_t max_hot = P / (p.C + 1);
  if ((p.grad_dense || p.grad_sparse || p.grad_sparse_acc) && max_hot > 0) {
    dim3 grid(unsigned((p.D + 255) / 256), unsigned(max_hot < 1024 ? max_hot : 1024));
    eb_backward_combine_kernel<V, K><<<grid, 256, 0, stream>>>(p);
    MK_LAUNCH_CHECK();
  }
  return MK_OK;
}

}  // namespace

namespace {

// The backward fused with an update keeps the capacity form of the row
// gradients (fp32, min(N, T * B) rows) at the end of the scratch region, then
// runs the update kernel on them: no count read back, nothing allocated.
int64_t update_capacity(const mk_embedding_bag_bwd_args& a) {
  const int64_t P = a.num_bags * a.bag_size;
  return std::max<int64_t>(1, std::min<int64_t>(a.num_rows, P));
}

size_t update_bytes(const mk_embedding_bag_bwd_args& a) {
  if (!a.update) return 0;
  const size_t cap = size_t(update_capacity(a));
  return align256(cap * sizeof(int64_t)) + cap * size_t(a.dim) * acc_size(a.value_dtype);
}

}  // namespace

mk_status eb_backward_scratch_cuda(const mk_embedding_bag_bwd_args& a, size_t* bytes) {
  const int64_t P = a.num_bags * a.bag_size;
  size_t cub = 0;
  const mk_status st = dispatch_index(a.index_dtype, [&](auto i) {
    using K = typename std::make_unsigned<decltype(i)>::type;
    return cub_temp_bytes<K>(P, eb_sort_bits(a.num_rows), &cub);
  });
  *bytes = align256(cub) + update_bytes(a);
  return st;
}

mk_status eb_backward_plan_cuda(const mk_embedding_bag_bwd_args& a, char* ws,
                                const EbWorkspaceLayout& l, void* stream) {
  auto s = static_cast<cudaStream_t>(stream);
  return dispatch_index(a.index_dtype, [&](auto i) { return plan<decltype(i)>(a, ws, l, s); });
}

mk_status eb_backward_count_cuda(const char* ws, const EbWorkspaceLayout& l, void* stream,
                                 int64_t* num_unique) {
  auto s = static_cast<cudaStream_t>(stream);
  int32_t host = 0;
  MK_CUDA_TRY(cudaMemcpyAsync(&host, ws + l.counters + sizeof(int32_t) * kNumUnique,
                              sizeof(int32_t), cudaMemcpyDeviceToHost, s));
  MK_CUDA_TRY(cudaStreamSynchronize(s));
  *num_unique = host;
  return MK_OK;
}

mk_status eb_backward_reduce_cuda(const mk_embedding_bag_bwd_args& a, char* ws,
                                  const EbWorkspaceLayout& l, void* stream) {
  auto s = static_cast<cudaStream_t>(stream);
  auto run = [&](const mk_embedding_bag_bwd_args& b) {
    return dispatch_value(b.value_dtype, [&](auto v) {
      using V = decltype(v);
      return dispatch_index(b.index_dtype, [&](auto i) { return reduce<V, decltype(i)>(b, ws, l, s); });
    });
  };
  if (!a.update) return run(a);
  // Fused update: row gradients into the capacity form, then the update.
  const int64_t cap = update_capacity(a);
  char* buf = ws + l.scratch + l.scratch_bytes - update_bytes(a);
  mk_embedding_bag_bwd_args b = a;
  b.update = nullptr;
  b.sparse_rows = reinterpret_cast<int64_t*>(buf);
  b.sparse_grads = buf + align256(size_t(cap) * sizeof(int64_t));
  b.sparse_grads_acc = 1;
  b.sparse_capacity = cap;
  b.sparse_count = nullptr;
  const mk_status st = run(b);
  if (st != MK_OK) return st;
  mk_sparse_row_update_args u{};
  u.num_rows = a.num_rows;
  u.dim = a.dim;
  u.value_dtype = a.value_dtype;
  u.table = const_cast<void*>(a.values);
  u.table_row_stride = a.values_row_stride;
  u.num_updates = cap;
  u.rows = b.sparse_rows;
  u.grads = b.sparse_grads;
  u.update = *a.update;
  return row_update_cuda(u, stream);
}

}  // namespace mk
