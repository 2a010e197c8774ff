// Device helpers shared by the core's CUDA kernels: the accumulation type of
// each storage type, conversions that do not rely on the half/bfloat16
// operators (torch builds with them disabled), warp sums in a fixed butterfly
// order, the launch check, and the device's multiprocessor count.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "memkernels.h"

#define MK_CUDA_TRY(expr)                          \
  do {                                             \
    if ((expr) != cudaSuccess) return MK_ERR_CUDA; \
  } while (0)
#define MK_LAUNCH_CHECK() MK_CUDA_TRY(cudaGetLastError())

namespace mk {
namespace cuda {

constexpr unsigned kFullMask = 0xffffffffu;

template <class V>
struct Acc {
  using type = float;
};
template <>
struct Acc<double> {
  using type = double;
};

__device__ __forceinline__ float to_acc(float x) { return x; }
__device__ __forceinline__ double to_acc(double x) { return x; }
__device__ __forceinline__ float to_acc(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 x) { return __bfloat162float(x); }

template <class V>
__device__ __forceinline__ V from_acc(typename Acc<V>::type x);
template <>
__device__ __forceinline__ float from_acc<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ double from_acc<double>(double x) {
  return x;
}
template <>
__device__ __forceinline__ __half from_acc<__half>(float x) {
  return __float2half_rn(x);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

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

// Calls f(V{}) with V the CUDA storage type of `t`.
template <class F>
mk_status dispatch_value(mk_dtype t, F&& f) {
  switch (t) {
    case MK_F32: return f(float{});
    case MK_F64: return f(double{});
    case MK_F16: return f(__half{});
    case MK_BF16: return f(__nv_bfloat16{});
  }
  return MK_ERR_UNSUPPORTED;
}

}  // namespace cuda
}  // namespace mk
