// Host-side helpers shared by the core's CUDA kernels: the launch check, the
// device's multiprocessor count, grids for grid-stride warp loops, and the
// alignment test for 16-byte vectors. The device-side helpers are in
// cuda_device_internal.cuh, included here.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <initializer_list>
#include <utility>

#include "cuda_device_internal.cuh"
#include "dtypes_internal.h"

#define MK_CUDA_TRY(expr)                          \
  do {                                             \
    if ((expr) != cudaSuccess) return MK_ERR_CUDA; \
  } while (0)
#define MK_LAUNCH_CHECK() MK_CUDA_TRY(cudaGetLastError())

namespace mk {
namespace cuda {

inline int sm_count() {
  int dev = 0, sms = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return 132;
  if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess) return 132;
  return sms;
}

// Blocks for a grid-stride warp loop over `work` warp items: at most one
// resident wave (16 blocks of kBlockThreads per SM).
inline unsigned warp_grid(int64_t work) {
  const int64_t wanted = (work + kWarpsPerBlock - 1) / kWarpsPerBlock;
  const int64_t cap = int64_t(sm_count()) * 16;
  return unsigned(wanted < 1 ? 1 : (wanted < cap ? wanted : cap));
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
