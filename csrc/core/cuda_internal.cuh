// Helpers shared by the core's CUDA kernels: the launch check, warp sums in a
// fixed butterfly order, the device's multiprocessor count, grids for
// grid-stride warp loops, and 16-byte vector loads and stores.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <initializer_list>
#include <utility>

#include "dtypes_internal.h"

#define MK_CUDA_TRY(expr)                          \
  do {                                             \
    if ((expr) != cudaSuccess) return MK_ERR_CUDA; \
  } while (0)
#define MK_LAUNCH_CHECK() MK_CUDA_TRY(cudaGetLastError())

namespace mk {
namespace cuda {

constexpr unsigned kFullMask = 0xffffffffu;

// Sum over the warp; every lane gets the same bits.
template <class A>
__device__ __forceinline__ A warp_sum(A x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(kFullMask, x, o);
  return x;
}

inline int sm_count() {
  int dev = 0, sms = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return 132;
  if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess) return 132;
  return sms;
}

// Kernels that give each warp an item in a grid-stride loop run blocks of
// kWarpsPerBlock warps.
constexpr int kWarpsPerBlock = 4;
constexpr int kBlockThreads = 32 * kWarpsPerBlock;

// Blocks for a grid-stride warp loop over `work` warp items: at most one
// resident wave (16 blocks of kBlockThreads per SM).
inline unsigned warp_grid(int64_t work) {
  const int64_t wanted = (work + kWarpsPerBlock - 1) / kWarpsPerBlock;
  const int64_t cap = int64_t(sm_count()) * 16;
  return unsigned(wanted < 1 ? 1 : (wanted < cap ? wanted : cap));
}

// VEC consecutive elements: one 16-byte access when VEC * sizeof(V) == 16
// (the caller guarantees alignment), else VEC scalar accesses.
template <class V, int VEC, class A>
__device__ __forceinline__ void load_vec(const V* __restrict__ p, A (&out)[VEC]) {
  if constexpr (VEC * sizeof(V) == 16) {
    const uint4 raw = __ldg(reinterpret_cast<const uint4*>(p));
    V tmp[VEC];
    memcpy(tmp, &raw, 16);
#pragma unroll
    for (int e = 0; e < VEC; ++e) out[e] = to_acc(tmp[e]);
  } else {
#pragma unroll
    for (int e = 0; e < VEC; ++e) out[e] = to_acc(p[e]);
  }
}

template <class V, int VEC, class A>
__device__ __forceinline__ void store_vec(V* __restrict__ p, const A (&in)[VEC]) {
  if constexpr (VEC * sizeof(V) == 16) {
    V tmp[VEC];
#pragma unroll
    for (int e = 0; e < VEC; ++e) tmp[e] = from_acc<V>(in[e]);
    uint4 raw;
    memcpy(&raw, tmp, 16);
    *reinterpret_cast<uint4*>(p) = raw;
  } else {
#pragma unroll
    for (int e = 0; e < VEC; ++e) p[e] = from_acc<V>(in[e]);
  }
}

// 16-byte vectors when every row start is 16-byte aligned; else scalars.
template <class V>
bool can_vectorize(int64_t D, std::initializer_list<std::pair<const void*, int64_t>> rows) {
  constexpr int64_t vec = 16 / sizeof(V);
  if (D % vec != 0) return false;
  for (auto& pr : rows) {
    if (reinterpret_cast<uintptr_t>(pr.first) % 16 != 0) return false;
    if (pr.second % vec != 0) return false;
  }
  return true;
}

}  // namespace cuda
}  // namespace mk
