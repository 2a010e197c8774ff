// Kernel bodies of the embedding bag's CUDA backward that use no CUDA header
// (embedding_bag_backward_cuda.cu wraps them in kernels), so that
// tests/core/test_eb_backward_emu.cpp runs them on the CPU under the warp
// emulation of tests/core/warp_emu.h.
#pragma once

#include <cstdint>

#include "cuda_device_internal.cuh"
#include "dtypes_internal.h"

namespace mk {
namespace ebbwd {

using cuda::kFullMask;
using cuda::kWarpsPerBlock;

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

}  // namespace ebbwd
}  // namespace mk
