// 64-bit selection keys shared by the CPU and CUDA top-k kernels: one total
// order "score descending, then index ascending" as one unsigned comparison,
// so a top-k is the k largest keys and ties break the same way everywhere.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define MK_HD __host__ __device__ __forceinline__
#else
#define MK_HD inline
#endif

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
MK_HD uint64_t topk_key(float score, uint32_t index) {
  return (uint64_t(order_bits(score)) << 32) | uint64_t(0xffffffffu - index);
}
MK_HD float key_score(uint64_t key) { return from_order_bits(uint32_t(key >> 32)); }
MK_HD uint32_t key_index(uint64_t key) { return 0xffffffffu - uint32_t(key & 0xffffffffu); }

}  // namespace mk
