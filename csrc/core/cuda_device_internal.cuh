// Device-side helpers shared by the core's CUDA kernels: warp sums in a fixed
// butterfly order, the block shape of grid-stride warp loops, and 16-byte
// vector loads and stores. Includes no CUDA header, so that kernel bodies
// built on it also compile on the CPU under tests/core/warp_emu.h (which
// supplies the intrinsics and vector types).
#pragma once

#include <cstdint>
#include <cstring>

#include "dtypes_internal.h"

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

// Kernels that give each warp an item in a grid-stride loop run blocks of
// kWarpsPerBlock warps.
constexpr int kWarpsPerBlock = 4;
constexpr int kBlockThreads = 32 * kWarpsPerBlock;

// VEC consecutive elements: 16-byte accesses when VEC * sizeof(V) is a
// multiple of 16 (the caller guarantees 16-byte alignment), else VEC scalar
// accesses. load_vec reads through the read-only path (__ldg); a kernel may
// still write the same elements afterwards, as long as no other thread of
// the kernel writes them before it reads.
template <class V, int VEC, class A>
__device__ __forceinline__ void load_vec(const V* __restrict__ p, A (&out)[VEC]) {
  if constexpr (VEC * sizeof(V) % 16 == 0) {
    constexpr int kWords = int(VEC * sizeof(V) / 16);
    V tmp[VEC];
#pragma unroll
    for (int k = 0; k < kWords; ++k) {
      const uint4 raw = __ldg(reinterpret_cast<const uint4*>(p) + k);
      memcpy(reinterpret_cast<char*>(tmp) + 16 * k, &raw, 16);
    }
#pragma unroll
    for (int e = 0; e < VEC; ++e) out[e] = to_acc(tmp[e]);
  } else {
#pragma unroll
    for (int e = 0; e < VEC; ++e) out[e] = to_acc(p[e]);
  }
}

// Loads VEC elements in the storage type with plain (coherent) loads, for
// data the kernel also writes (16-byte words where they fill them).
template <class S, int VEC>
__device__ __forceinline__ void load_raw(const S* __restrict__ p, S (&out)[VEC]) {
  if constexpr (VEC * sizeof(S) % 16 == 0) {
#pragma unroll
    for (int k = 0; k < int(VEC * sizeof(S) / 16); ++k) {
      const uint4 raw = reinterpret_cast<const uint4*>(p)[k];
      memcpy(reinterpret_cast<char*>(out) + 16 * k, &raw, 16);
    }
  } else {
#pragma unroll
    for (int e = 0; e < VEC; ++e) out[e] = p[e];
  }
}

// Stores VEC elements already in the storage type (16-byte words where they
// fill them).
template <class S, int VEC>
__device__ __forceinline__ void store_raw(S* __restrict__ p, const S (&in)[VEC]) {
  if constexpr (VEC * sizeof(S) % 16 == 0) {
#pragma unroll
    for (int k = 0; k < int(VEC * sizeof(S) / 16); ++k) {
      uint4 raw;
      memcpy(&raw, reinterpret_cast<const char*>(in) + 16 * k, 16);
      reinterpret_cast<uint4*>(p)[k] = raw;
    }
  } else {
#pragma unroll
    for (int e = 0; e < VEC; ++e) p[e] = in[e];
  }
}

template <class V, int VEC, class A>
__device__ __forceinline__ void store_vec(V* __restrict__ p, const A (&in)[VEC]) {
  V tmp[VEC];
#pragma unroll
  for (int e = 0; e < VEC; ++e) tmp[e] = from_acc<V>(in[e]);
  store_raw<V, VEC>(p, tmp);
}

}  // namespace cuda
}  // namespace mk
