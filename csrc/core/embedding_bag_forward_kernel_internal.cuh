// The CUDA forward kernel of the weighted embedding bag, as a device function
// (embedding_bag_forward_cuda.cu wraps it in the kernel and launches it).
// Like warp_select_internal.cuh it includes no CUDA header, so that
// tests/core/test_eb_forward_emu.cpp runs this very code on the CPU under the
// warp emulation of tests/core/warp_emu.h.
#pragma once

#include <cstdint>
#include <cstring>

#include "cuda_device_internal.cuh"
#include "dtypes_internal.h"

namespace mk {
namespace ebfwd {

using cuda::kFullMask;
using cuda::kWarpsPerBlock;
using cuda::store_vec;

template <class V, class I>
struct FwdParams {
  const V* values;
  const I* indices;
  const acc_t<V>* weights;
  V* out;
  int32_t* error_flag;
  unsigned long long* first_bad;  // a reporter's slot: the first bad flat position (atomicMin)
  int64_t N, D, T, B, stride;
};

// One lane's VEC consecutive elements of a row as loaded: a uint4 when they
// are 16 bytes (kept packed until the multiply-add), else VEC scalars.
template <class V, int VEC, bool kWide = (VEC * sizeof(V) == 16)>
struct Chunk {
  V v[VEC];
  __device__ __forceinline__ void load(const V* p) {
#pragma unroll
    for (int e = 0; e < VEC; ++e) v[e] = p[e];
  }
  __device__ __forceinline__ void zero() {
#pragma unroll
    for (int e = 0; e < VEC; ++e) v[e] = from_acc<V>(acc_t<V>(0));
  }
  __device__ __forceinline__ acc_t<V> at(int e) const { return to_acc(v[e]); }
};

template <class V, int VEC>
struct Chunk<V, VEC, true> {
  uint4 raw;
  __device__ __forceinline__ void load(const V* p) { raw = __ldg(reinterpret_cast<const uint4*>(p)); }
  __device__ __forceinline__ void zero() { raw = make_uint4(0u, 0u, 0u, 0u); }
  __device__ __forceinline__ acc_t<V> at(int e) const {
    V tmp[VEC];
    memcpy(tmp, &raw, 16);
    return to_acc(tmp[e]);
  }
};

// A warp per (bag, column tile of 32 * NV * VEC columns); each lane keeps
// NV * VEC fp32 sums. The bag's indices and weights are read 32 at a time and
// broadcast with shuffles. The rows are taken kRows at a time: all their
// loads (kRows * NV 16-byte vectors per lane: 4 KiB per warp for bf16 and
// 8 KiB for fp32 at NV = 4) are issued before the first multiply-add, so the
// warp has that much in flight rather than one row's. A bad index, or a slot past the bag's
// end, loads nothing and adds 0 * 0: the sums are those of skipping it, bit
// for bit (a sum that starts at +0 never becomes -0, so adding +0 changes
// nothing). FULL: D is a multiple of the tile, so no column guard.
template <class V, class I, int VEC, int NV, bool FULL>
__device__ __forceinline__ void forward_warps(const FwdParams<V, I>& p) {
  using A = acc_t<V>;
  constexpr int64_t kTile = 32 * NV * VEC;
  // Rows per group; divides 32, so a group never straddles the 32 ids read.
  // Two for the 16-bit tiles of 1024 columns (32 fp32 sums a lane): four
  // would need about 140 registers and ptxas caps these kernels at 128.
  constexpr int kRows = VEC * NV > 16 ? 2 : 4;
  const int lane = threadIdx.x & 31;
  const int64_t tiles = (p.D + kTile - 1) / kTile;
  const int64_t items = p.T * tiles;
  const int64_t stride_w = int64_t(gridDim.x) * kWarpsPerBlock;
  for (int64_t w = int64_t(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5); w < items;
       w += stride_w) {
    const int64_t t = w / tiles;
    const int64_t col0 = (w - t * tiles) * kTile;
    A acc[NV][VEC];
#pragma unroll
    for (int k = 0; k < NV; ++k)
#pragma unroll
      for (int e = 0; e < VEC; ++e) acc[k][e] = A(0);

    const I* bag = p.indices + t * p.B;
    const A* bw = p.weights + t * p.B;
    for (int64_t j0 = 0; j0 < p.B; j0 += 32) {
      int64_t my_row = -1;
      A my_w = A(0);
      if (j0 + lane < p.B) {
        const int64_t r = int64_t(bag[j0 + lane]);
        my_w = bw[j0 + lane];
        if (r >= 0 && r < p.N) {
          my_row = r;
        } else if (p.first_bad) {
          atomicMin(p.first_bad, (unsigned long long)(t * p.B + j0 + lane));
        } else if (p.error_flag) {
          *p.error_flag = 1;  // every writer stores the same value
        }
      }
      const int n = int(p.B - j0 < 32 ? p.B - j0 : 32);
      for (int jj = 0; jj < n; jj += kRows) {
        Chunk<V, VEC> x[kRows][NV];
        A wr[kRows];
#pragma unroll
        for (int u = 0; u < kRows; ++u) {
          const int64_t r = __shfl_sync(kFullMask, my_row, jj + u);
          const A wj = __shfl_sync(kFullMask, my_w, jj + u);
          const bool valid = jj + u < n && r >= 0;  // the same on every lane
          wr[u] = valid ? wj : A(0);
          const V* row = p.values + (valid ? r : 0) * p.stride + col0;
#pragma unroll
          for (int k = 0; k < NV; ++k) {
            const int64_t c = (int64_t(k) * 32 + lane) * VEC;
            if (valid && (FULL || col0 + c < p.D)) x[u][k].load(row + c); else x[u][k].zero();
          }
        }
#pragma unroll
        for (int u = 0; u < kRows; ++u)
#pragma unroll
          for (int k = 0; k < NV; ++k)
#pragma unroll
            for (int e = 0; e < VEC; ++e) acc[k][e] += wr[u] * x[u][k].at(e);
      }
    }
    V* out = p.out + t * p.D + col0;
#pragma unroll
    for (int k = 0; k < NV; ++k) {
      const int64_t c = (int64_t(k) * 32 + lane) * VEC;
      if (FULL || col0 + c < p.D) store_vec<V, VEC>(out + c, acc[k]);
    }
  }
}

}  // namespace ebfwd
}  // namespace mk
