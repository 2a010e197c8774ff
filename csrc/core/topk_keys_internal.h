// 64-bit selection keys shared by the CPU and CUDA top-k kernels: one total
// order "score descending, then index ascending" as one unsigned comparison,
// so a top-k is the k largest keys and ties break the same way everywhere.
#pragma once

#include <cstdint>
#include <cstring>

#include "dtypes_internal.h"

namespace mk {

// Float bits mapped so unsigned order matches float order (-0 folded into +0).
MK_HD uint32_t order_bits(float v) {
  v = v + 0.0f;  // -0.0 + 0.0 == +0.0
  uint32_t u;
#if defined(__CUDA_ARCH__)
  u = __float_as_uint(v);
#else
  std::memcpy(&u, &v, 4);
#endif
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

MK_HD float from_order_bits(uint32_t u) {
  u = (u & 0x80000000u) ? (u & 0x7fffffffu) : ~u;
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float v;
  std::memcpy(&v, &u, 4);
  return v;
#endif
}

// Larger key = better: higher score, then smaller index.
MK_HD uint64_t topk_key_bits(uint32_t score_bits, uint32_t index) {
  return (uint64_t(score_bits) << 32) | uint64_t(0xffffffffu - index);
}
MK_HD uint64_t topk_key(float score, uint32_t index) { return topk_key_bits(order_bits(score), index); }
MK_HD float key_score(uint64_t key) { return from_order_bits(uint32_t(key >> 32)); }
MK_HD uint32_t key_index(uint64_t key) { return 0xffffffffu - uint32_t(key & 0xffffffffu); }

#if defined(__CUDACC__) || defined(MK_WARP_EMU)  // the GPU, or its CPU emulation (tests/core/warp_emu.h)
// Sorts buf[0..n) descending in shared memory (n a power of two), the work
// spread over `threads` cooperating threads with index `tid`; sync() is the
// barrier among them (__syncthreads for a block, __syncwarp for a warp).
template <class Sync>
__device__ void bitonic_sort_desc(uint64_t* buf, int n, int tid, int threads, Sync sync) {
  for (int size = 2; size <= n; size <<= 1) {
    for (int stride = size >> 1; stride > 0; stride >>= 1) {
      for (int i = tid; i < n; i += threads) {
        const int j = i ^ stride;
        if (j > i) {
          const bool desc = (i & size) == 0;
          const uint64_t x = buf[i], y = buf[j];
          if ((x < y) == desc) {
            buf[i] = y;
            buf[j] = x;
          }
        }
      }
      sync();
    }
  }
}
#endif

}  // namespace mk
