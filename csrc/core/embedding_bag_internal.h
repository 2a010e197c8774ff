// Internal side of the embedding-bag kernels: argument validation, the
// backward's workspace layout and chunking rule, shared by the CPU and CUDA
// implementations, and their entry points. Torch-free.
#pragma once

#include <cstddef>
#include <cstdint>

#include "dtypes_internal.h"
#include "memkernels.h"

namespace mk {

// The atomic-free backward splits each row's segment of (token, slot) pairs
// into chunks of at most chunk_size pairs. A segment with one chunk writes its
// row directly; the chunks of a longer (hot) segment each write an fp32/fp64
// partial row, combined afterwards in chunk order. With chunk_size >= 2 * B the
// partial rows never exceed 2 * T * B / chunk_size <= T, so the partial buffer
// is bounded by the size of grad_out.
inline int64_t eb_chunk_size(int64_t bag_size) {
  int64_t c = 2 * bag_size;
  if (c < 64) c = 64;
  return (c + 31) / 32 * 32;
}

inline int64_t eb_max_partials(int64_t num_pairs, int64_t bag_size) {
  return 2 * num_pairs / eb_chunk_size(bag_size);
}

// Number of key bits the radix sort needs: ceil(log2(num_rows)), at least 1.
inline int eb_sort_bits(int64_t num_rows) {
  int bits = 1;
  while (bits < 63 && (int64_t(1) << bits) < num_rows) ++bits;
  return bits;
}

// Counters written by the plan into the workspace (int32: pairs < 2^31).
enum EbCounter { kNumUnique = 0, kNumChunks = 1, kNumHot = 2, kNumCounters = 3 };

// Byte offsets of the backward's buffers inside one workspace allocation.
// P = T * B pairs. Every buffer is 256-byte aligned.
struct EbWorkspaceLayout {
  size_t counters;         // int32[kNumCounters]
  size_t pair_ids;         // int32[P]      0..P-1, the sort's values (CUDA: then each chunk's segment)
  size_t sorted_keys;      // index[P]
  size_t sorted_pairs;     // int32[P]
  size_t unique_rows;      // index[P]
  size_t seg_counts;       // int32[P + 1]  pairs per segment (0 past the last)
  size_t seg_offsets;      // int32[P + 1]
  size_t chunk_counts;     // int32[P + 1]
  size_t chunk_offsets;    // int32[P + 1]
  size_t partial_counts;   // int32[P + 1]
  size_t partial_offsets;  // int32[P + 1]
  size_t hot_flags;        // int32[P + 1]  1 for a segment split into several chunks
  size_t hot_offsets;      // int32[P + 1]
  size_t hot_list;         // int32[P]      the split segments, ascending
  size_t partials;         // acc[max_partials * D]
  size_t scratch;          // device-specific: CUB temporaries or CPU sort buffers
  size_t scratch_bytes;
  size_t total;
};

inline size_t align256(size_t x) { return (x + 255) / 256 * 256; }

inline EbWorkspaceLayout eb_workspace_layout(const mk_embedding_bag_bwd_args& a,
                                             size_t scratch_bytes) {
  const size_t P = size_t(a.num_bags) * size_t(a.bag_size);
  const size_t isz = index_size(a.index_dtype);
  EbWorkspaceLayout l{};
  size_t off = 0;
  auto take = [&](size_t bytes) {
    size_t at = off;
    off = align256(off + bytes);
    return at;
  };
  l.counters = take(sizeof(int32_t) * kNumCounters);
  l.pair_ids = take(sizeof(int32_t) * P);
  l.sorted_keys = take(isz * P);
  l.sorted_pairs = take(sizeof(int32_t) * P);
  l.unique_rows = take(isz * P);
  l.seg_counts = take(sizeof(int32_t) * (P + 1));
  l.seg_offsets = take(sizeof(int32_t) * (P + 1));
  l.chunk_counts = take(sizeof(int32_t) * (P + 1));
  l.chunk_offsets = take(sizeof(int32_t) * (P + 1));
  l.partial_counts = take(sizeof(int32_t) * (P + 1));
  l.partial_offsets = take(sizeof(int32_t) * (P + 1));
  l.hot_flags = take(sizeof(int32_t) * (P + 1));
  l.hot_offsets = take(sizeof(int32_t) * (P + 1));
  l.hot_list = take(sizeof(int32_t) * P);
  l.partials = take(acc_size(a.value_dtype) * size_t(eb_max_partials(int64_t(P), a.bag_size)) *
                    size_t(a.dim));
  l.scratch = take(scratch_bytes);
  l.scratch_bytes = scratch_bytes;
  l.total = off;
  return l;
}

// Shared argument checks for the C ABI (the torch layer checks first and gives
// richer messages; these keep direct C callers safe).
mk_status eb_check_fwd_args(const mk_embedding_bag_fwd_args* a);
mk_status eb_check_bwd_args(const mk_embedding_bag_bwd_args* a);

// CPU implementations (embedding_bag_forward_cpu.cpp, embedding_bag_backward_cpu.cpp).
mk_status eb_forward_cpu(const mk_embedding_bag_fwd_args& a);
size_t eb_backward_scratch_cpu(const mk_embedding_bag_bwd_args& a);
mk_status eb_backward_plan_cpu(const mk_embedding_bag_bwd_args& a, char* ws,
                               const EbWorkspaceLayout& l);
mk_status eb_backward_reduce_cpu(const mk_embedding_bag_bwd_args& a, char* ws,
                                 const EbWorkspaceLayout& l);

// CUDA implementations (embedding_bag_forward_cuda.cu,
// embedding_bag_backward_cuda.cu), present when built with CUDA.
mk_status eb_forward_cuda(const mk_embedding_bag_fwd_args& a, void* stream);
mk_status eb_backward_scratch_cuda(const mk_embedding_bag_bwd_args& a, size_t* bytes);
mk_status eb_backward_plan_cuda(const mk_embedding_bag_bwd_args& a, char* ws,
                                const EbWorkspaceLayout& l, void* stream);
mk_status eb_backward_count_cuda(const char* ws, const EbWorkspaceLayout& l, void* stream,
                                 int64_t* num_unique);
mk_status eb_backward_reduce_cuda(const mk_embedding_bag_bwd_args& a, char* ws,
                                  const EbWorkspaceLayout& l, void* stream);

}  // namespace mk
