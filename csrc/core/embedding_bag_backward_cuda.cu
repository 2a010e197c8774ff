// CUDA backward of the weighted embedding bag, atomic-free and deterministic
// (docs/embedding_bag.md):
//   plan:   CUB stable radix sort of (row, pair) over ceil(log2 N) bits,
//           run-length segments, chunk and partial offsets, the hot list,
//           the segment of each chunk;
//   reduce: a warp per chunk of at most C pairs (a short segment is one chunk)
//           computes the row gradient in fp32 and, with the row V[r] loaded
//           once per chunk, every pair's weight gradient <grad_out[t], V[r]>;
//           split (hot) segments leave partial rows that a second kernel adds
//           in chunk order. With an optimizer update (mk_embedding_bag_bwd_args
//           .update) each finished row is applied to the values in place
//           instead of being written: a whole short row in the chunk kernel,
//           a split row in the combining kernel. No atomics: every output
//           element has one writer.
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
using cuda::sm_count;
using cuda::warp_grid;

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

// The segment of each chunk (embedding_bag_backward_kernel_internal.cuh),
// into pair_ids: the sort's input, dead after it; chunks never outnumber
// pairs (a segment of L pairs has at most L chunks).
__global__ void map_chunks_kernel(const int32_t* counters, const int32_t* chunk_offsets, int32_t* chunk_segments) {
  ebbwd::map_chunks(counters, chunk_offsets, chunk_segments);
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
  map_chunks_kernel<<<elementwise_grid(P), 256, 0, stream>>>(counters, chunk_offsets, pair_ids);
  MK_LAUNCH_CHECK();
  return MK_OK;
}

// ---- reduce ----------------------------------------------------------------
// The kernel bodies are in embedding_bag_backward_kernel_internal.cuh.

using ebbwd::BwdParams;

template <class V, class K, int VEC, int NV, bool kUpdate>
__global__ void __launch_bounds__(kBlockThreads) eb_backward_chunks_kernel(BwdParams<V, K> p) {
  ebbwd::reduce_chunks<V, K, VEC, NV, kUpdate>(p);
}

template <class V, class K>
__global__ void eb_backward_combine_kernel(BwdParams<V, K> p) {
  ebbwd::combine_partials<V, K>(p, blockIdx.x, blockIdx.y, gridDim.y, blockDim.x);
}

template <class V, class K, int VEC>
__global__ void __launch_bounds__(kBlockThreads) eb_backward_combine_update_kernel(BwdParams<V, K> p) {
  ebbwd::combine_update_rows<V, K, VEC>(p);
}

// Zeroes the rows no pair touched (embedding_bag_backward_kernel_internal.cuh).
template <class V, class K, int VEC>
__global__ void __launch_bounds__(kBlockThreads)
    eb_zero_untouched_kernel(V* grad, const K* unique, const int32_t* counters, int64_t N, int64_t D) {
  ebbwd::zero_untouched_rows<V, K, VEC>(grad, unique, counters[kNumUnique], N, D);
}

template <class V, class K, int VEC, int NV>
mk_status launch_chunks(const BwdParams<V, K>& p, int64_t max_chunks, cudaStream_t stream) {
  if (p.has_update)
    eb_backward_chunks_kernel<V, K, VEC, NV, true><<<warp_grid(max_chunks), kBlockThreads, 0, stream>>>(p);
  else
    eb_backward_chunks_kernel<V, K, VEC, NV, false><<<warp_grid(max_chunks), kBlockThreads, 0, stream>>>(p);
  MK_LAUNCH_CHECK();
  return MK_OK;
}

// The split rows' partial sums and their update (a warp per hot row).
template <class V, class K, int VEC>
mk_status launch_combine_update(const BwdParams<V, K>& p, int64_t max_hot, cudaStream_t stream) {
  eb_backward_combine_update_kernel<V, K, VEC><<<warp_grid(max_hot), kBlockThreads, 0, stream>>>(p);
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
  p.chunk_segments = at<int32_t>(ws, l.pair_ids);  // map_chunks_kernel wrote it there
  p.partial_offsets = at<int32_t>(ws, l.partial_offsets);
  p.hot_list = at<int32_t>(ws, l.hot_list);
  p.N = a.num_rows;
  p.D = a.dim;
  p.B = a.bag_size;
  p.stride = a.values_row_stride;
  p.C = eb_chunk_size(a.bag_size);
  p.has_update = a.update != nullptr;
  p.table = static_cast<V*>(const_cast<void*>(a.values));
  p.update = a.update ? *a.update : mk_row_update{};
  p.update_consts = a.update ? row_update_consts(*a.update) : RowUpdateConsts{};
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
  if (!p.grad_weights && !p.grad_dense && !p.grad_sparse && !p.grad_sparse_acc && !p.has_update) return MK_OK;

  const int64_t max_chunks = P + P / p.C;
  // With an update the states' alignment counts too: the update's row
  // statistics then sum in the order of the standalone update's vectors.
  const bool vec =
      can_vectorize<V>(p.D, {{p.values, p.stride}, {p.grad_out, p.D}, {p.grad_dense, p.D}, {p.grad_sparse, p.D}}) &&
      (!p.has_update || row_states_aligned(p.update));
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
  if (p.has_update && max_hot > 0)
    return vec ? launch_combine_update<V, K, VEC>(p, max_hot, stream)
               : launch_combine_update<V, K, 1>(p, max_hot, stream);
  if ((p.grad_dense || p.grad_sparse || p.grad_sparse_acc) && max_hot > 0) {
    dim3 grid(unsigned((p.D + 255) / 256), unsigned(max_hot < 1024 ? max_hot : 1024));
    eb_backward_combine_kernel<V, K><<<grid, 256, 0, stream>>>(p);
    MK_LAUNCH_CHECK();
  }
  return MK_OK;
}

}  // namespace

mk_status eb_backward_scratch_cuda(const mk_embedding_bag_bwd_args& a, size_t* bytes) {
  const int64_t P = a.num_bags * a.bag_size;
  size_t cub = 0;
  const mk_status st = dispatch_index(a.index_dtype, [&](auto i) {
    using K = typename std::make_unsigned<decltype(i)>::type;
    return cub_temp_bytes<K>(P, eb_sort_bits(a.num_rows), &cub);
  });
  *bytes = align256(cub);
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
  // With an update, the reduction applies it to each finished row.
  return dispatch_value(a.value_dtype, [&](auto v) {
    using V = decltype(v);
    return dispatch_index(a.index_dtype, [&](auto i) { return reduce<V, decltype(i)>(a, ws, l, s); });
  });
}

}  // namespace mk
