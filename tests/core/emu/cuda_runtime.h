// The CUDA runtime as the core's .cu files use it, on the CPU: one emulated
// device (ordinal 0, compute capability 9.0, a few multiprocessors so that
// grid-stride loops wrap), device memory = host memory, every stream
// synchronous, kernels run by the fiber emulation of tests/core/warp_emu.h.
// It shadows the real <cuda_runtime.h> for the sources tests/core/emu/cu2cpp.py
// turns into C++ (tests/core/emu/README.md).
//
// What it checks that a GPU would refuse: launches with an empty or oversized
// grid or block (or a block above the kernel's __launch_bounds__), dynamic shared memory above 48 KiB without
// cudaFuncSetAttribute (or above the 227 KiB of an H100/H200), copies and fills
// outside any allocation, a device ordinal other than 0, and deadlocks at
// barriers. A failed launch sets the sticky error that cudaGetLastError and
// the synchronisations return.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>

#include "../warp_emu.h"

typedef enum cudaError {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorInvalidDeviceFunction = 98,
  cudaErrorNoDevice = 100,
  cudaErrorInvalidDevice = 101,
  cudaErrorNoKernelImageForDevice = 209,
  cudaErrorLaunchFailure = 719
} cudaError_t;

struct CUstream_st;
typedef CUstream_st* cudaStream_t;

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

enum cudaMemcpyKind {
  cudaMemcpyHostToHost = 0,
  cudaMemcpyHostToDevice = 1,
  cudaMemcpyDeviceToHost = 2,
  cudaMemcpyDeviceToDevice = 3,
  cudaMemcpyDefault = 4
};
enum cudaDeviceAttr {
  cudaDevAttrMaxSharedMemoryPerBlockOptin = 97,
  cudaDevAttrMultiProcessorCount = 16,
  cudaDevAttrComputeCapabilityMajor = 75,
  cudaDevAttrComputeCapabilityMinor = 76
};
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
struct cudaFuncAttributes {
  int binaryVersion, ptxVersion, maxThreadsPerBlock, numRegs;
  size_t sharedSizeBytes, localSizeBytes;
};
enum cudaStreamCaptureMode {
  cudaStreamCaptureModeGlobal = 0,
  cudaStreamCaptureModeThreadLocal = 1,
  cudaStreamCaptureModeRelaxed = 2
};
#define cudaStreamNonBlocking 0x01
#define cudaHostAllocPortable 0x01
#define cudaHostAllocMapped 0x02

#define __shared__ static
#define __align__(n) alignas(n)

inline void __threadfence_system() {}
inline void __threadfence() {}
[[noreturn]] inline void __trap() {
  std::fprintf(stderr, "cuda_emu: __trap() in a kernel\n");
  std::abort();
}

namespace emu {

// The emulated device's multiprocessors: few, so that grids capped at a
// resident wave are smaller than the work (MK_EMU_SMS overrides).
inline int sm_count() {
  const char* e = std::getenv("MK_EMU_SMS");
  const int n = e ? std::atoi(e) : 2;
  return n > 0 ? n : 2;
}

struct Runtime {
  std::map<uintptr_t, size_t> allocations;  // device (and mapped host) memory
  std::map<const void*, int> max_dynamic_smem;  // per kernel
  cudaError_t sticky = cudaSuccess;
  long launches = 0, blocks = 0;
  ~Runtime() {
    if (std::getenv("MK_EMU_VERBOSE"))
      std::fprintf(stderr, "cuda_emu: %ld kernel launches, %ld blocks\n", launches, blocks);
  }
};
inline Runtime& rt() {
  static Runtime r;
  return r;
}

// New device and shared memory is filled with 0xcd bytes, so that reading it
// before writing shows; under valgrind, MK_EMU_UNINIT=1 leaves it undefined
// instead, for valgrind to report where it is used.
inline bool fill_garbage() {
  static const bool fill = std::getenv("MK_EMU_UNINIT") == nullptr;
  return fill;
}

inline cudaError_t fail(cudaError_t e, const char* what) {
  std::fprintf(stderr, "cuda_emu: %s\n", what);
  if (rt().sticky == cudaSuccess) rt().sticky = e;
  return e;
}

// Whether [p, p + n) lies inside one allocation.
inline bool inside(const void* p, size_t n) {
  const auto& a = rt().allocations;
  const uintptr_t u = reinterpret_cast<uintptr_t>(p);
  auto it = a.upper_bound(u);
  if (it == a.begin()) return false;
  --it;
  return u >= it->first && u + n <= it->first + it->second;
}

struct LaunchCfg {
  dim3 grid, block;
  size_t smem = 0;
  cudaStream_t stream = nullptr;
};

// kernel<<<grid, block, smem, stream>>>(args), as cu2cpp.py writes it.
// max_threads: the kernel's __launch_bounds__ (1024 without).
template <class F>
void launch_kernel(const void* kernel, const LaunchCfg& c, F&& body, unsigned max_threads = 1024) {
  ++rt().launches;
  if (c.grid.x == 0 || c.grid.y == 0 || c.grid.z == 0 || c.grid.y > 65535 || c.grid.z != 1 ||
      c.block.x == 0 || c.block.y != 1 || c.block.z != 1 || c.block.x > 1024) {
    fail(cudaErrorInvalidConfiguration, "launch with an empty or unsupported grid or block");
    return;
  }
  if (c.block.x > max_threads) {
    fail(cudaErrorInvalidConfiguration, "launch with more threads than the kernel's __launch_bounds__");
    return;
  }
  auto it = rt().max_dynamic_smem.find(kernel);
  const size_t limit = it != rt().max_dynamic_smem.end() ? size_t(it->second) : size_t(48) << 10;
  if (c.smem > limit) {
    fail(cudaErrorInvalidValue, "dynamic shared memory above the kernel's limit");
    return;
  }
  static unsigned char* smem = nullptr;
  static size_t smem_bytes = 0;
  if (c.smem > smem_bytes) {
    std::free(smem);
    smem = static_cast<unsigned char*>(std::aligned_alloc(128, (c.smem + 127) / 128 * 128));
    smem_bytes = c.smem;
  }
  if (smem && fill_garbage()) std::memset(smem, 0xcd, smem_bytes);  // shared memory starts as garbage
  st().dynamic_smem = smem;
  rt().blocks += long(c.grid.x) * c.grid.y;
  const std::function<void()> f = body;
  if (!launch(c.grid.x, int(c.block.x), f, c.grid.y)) fail(cudaErrorLaunchFailure, "kernel deadlocked");
  st().dynamic_smem = nullptr;
}

inline unsigned char* dynamic_smem() { return st().dynamic_smem; }

}  // namespace emu

inline cudaError_t cudaGetLastError() {
  const cudaError_t e = emu::rt().sticky;
  emu::rt().sticky = cudaSuccess;
  return e;
}
inline cudaError_t cudaPeekAtLastError() { return emu::rt().sticky; }
inline const char* cudaGetErrorString(cudaError_t e) { return e == cudaSuccess ? "no error" : "emulated CUDA error"; }
inline cudaError_t cudaGetDeviceCount(int* n) {
  *n = 1;
  return cudaSuccess;
}
inline cudaError_t cudaGetDevice(int* d) {
  *d = 0;
  return cudaSuccess;
}
inline cudaError_t cudaSetDevice(int d) { return d == 0 ? cudaSuccess : cudaErrorInvalidDevice; }
inline cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr attr, int dev) {
  if (dev != 0) return cudaErrorInvalidDevice;
  switch (attr) {
    case cudaDevAttrMultiProcessorCount: *v = emu::sm_count(); return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *v = 227 * 1024; return cudaSuccess;  // H100 / H200
    case cudaDevAttrComputeCapabilityMajor: *v = 9; return cudaSuccess;
    case cudaDevAttrComputeCapabilityMinor: *v = 0; return cudaSuccess;
  }
  return cudaErrorInvalidValue;
}
template <class F>
cudaError_t cudaFuncSetAttribute(F* kernel, cudaFuncAttribute attr, int value) {
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize || value < 0 || value > 227 * 1024)
    return cudaErrorInvalidValue;
  emu::rt().max_dynamic_smem[reinterpret_cast<const void*>(kernel)] = value;
  return cudaSuccess;
}
template <class F>
cudaError_t cudaFuncGetAttributes(cudaFuncAttributes* attr, F*) {
  std::memset(attr, 0, sizeof(*attr));
  attr->binaryVersion = attr->ptxVersion = 90;
  attr->maxThreadsPerBlock = 1024;
  return cudaSuccess;
}

inline cudaError_t cudaMalloc(void** p, size_t n) {
  *p = std::malloc(n ? n : 1);
  if (!*p) return cudaErrorMemoryAllocation;
  if (emu::fill_garbage()) std::memset(*p, 0xcd, n);  // device memory starts as garbage
  emu::rt().allocations[reinterpret_cast<uintptr_t>(*p)] = n;
  return cudaSuccess;
}
template <class T>
cudaError_t cudaMalloc(T** p, size_t n) {
  return cudaMalloc(reinterpret_cast<void**>(p), n);
}
inline cudaError_t cudaFree(void* p) {
  if (!p) return cudaSuccess;
  auto& a = emu::rt().allocations;
  auto it = a.find(reinterpret_cast<uintptr_t>(p));
  if (it == a.end()) return emu::fail(cudaErrorInvalidValue, "cudaFree of a pointer cudaMalloc did not return");
  a.erase(it);
  std::free(p);
  return cudaSuccess;
}
inline cudaError_t cudaHostAlloc(void** p, size_t n, unsigned) { return cudaMalloc(p, n); }
inline cudaError_t cudaFreeHost(void* p) { return cudaFree(p); }
inline cudaError_t cudaHostGetDevicePointer(void** d, void* h, unsigned) {
  *d = h;
  return cudaSuccess;
}
inline cudaError_t cudaMemsetAsync(void* p, int v, size_t n, cudaStream_t = nullptr) {
  if (n == 0) return cudaSuccess;
  if (!emu::inside(p, n)) return emu::fail(cudaErrorInvalidValue, "cudaMemset outside an allocation");
  std::memset(p, v, n);
  return cudaSuccess;
}
inline cudaError_t cudaMemset(void* p, int v, size_t n) { return cudaMemsetAsync(p, v, n); }
inline cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t n, cudaMemcpyKind kind,
                                   cudaStream_t = nullptr) {
  if (n == 0) return cudaSuccess;
  const bool dst_dev = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice;
  const bool src_dev = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice;
  if ((dst_dev && !emu::inside(dst, n)) || (src_dev && !emu::inside(src, n)))
    return emu::fail(cudaErrorInvalidValue, "cudaMemcpy outside an allocation");
  std::memmove(dst, src, n);
  return cudaSuccess;
}
inline cudaError_t cudaMemcpy(void* dst, const void* src, size_t n, cudaMemcpyKind kind) {
  return cudaMemcpyAsync(dst, src, n, kind);
}
inline cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned) {
  static int dummy;
  *s = reinterpret_cast<cudaStream_t>(&dummy);
  return cudaSuccess;
}
inline cudaError_t cudaStreamDestroy(cudaStream_t) { return cudaSuccess; }
inline cudaError_t cudaStreamSynchronize(cudaStream_t) { return emu::rt().sticky; }
inline cudaError_t cudaDeviceSynchronize() { return emu::rt().sticky; }
inline cudaError_t cudaThreadExchangeStreamCaptureMode(cudaStreamCaptureMode*) { return cudaSuccess; }
