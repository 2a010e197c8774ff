// CUDA product-key selection: a block per (token, head). Each top-k is an
// exact radix select over 64-bit keys (score, then index: topk_keys.h), eight
// passes of 8 bits with a shared-memory histogram, then the k winners are
// gathered and bitonic-sorted in shared memory. Keys are distinct, so the
// k-th largest key is unique and the result is deterministic. Stage 1 of
// pk_topk (docs/pk_topk.md): the half-scores come from a library GEMM.
#include <cstdint>

#include "cuda_common.cuh"
#include "pk_topk.h"
#include "topk_keys.h"

namespace mk {
namespace {

constexpr int kThreads = 256;
using cuda::kFullMask;

struct SelectShared {
  uint32_t hist[256];
  uint64_t half1[kPkMaxKCuda];
  uint64_t half2[kPkMaxKCuda];
  uint64_t best[kPkMaxKCuda];
  uint64_t prefix;
  int remaining;
  int count;
};

// The k-th largest of the n keys key_of(0..n-1) (distinct keys).
template <class KeyFn>
__device__ uint64_t kth_largest_key(int64_t n, int k, KeyFn key_of, SelectShared& sh) {
  const int tid = threadIdx.x, lane = tid & 31;
  uint64_t prefix = 0, mask = 0;
  int remaining = k;
  for (int shift = 56; shift >= 0; shift -= 8) {
    for (int i = tid; i < 256; i += kThreads) sh.hist[i] = 0;
    __syncthreads();
    for (int64_t e = tid; e < n; e += kThreads) {
      const uint64_t key = key_of(e);
      // Integer counts: the histogram is exact whatever the order of updates.
      if ((key & mask) == prefix) atomicAdd(&sh.hist[(key >> shift) & 255u], 1u);
    }
    __syncthreads();
    if (tid < 32) {
      // Lane l owns digits 8l..8l+7; find the digit where the count of keys
      // at or above it first reaches `remaining`, scanning from the top.
      uint32_t c[8], total = 0;
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        c[j] = sh.hist[lane * 8 + j];
        total += c[j];
      }
      uint32_t incl = total;  // keys in digits owned by lanes >= lane
#pragma unroll
      for (int o = 1; o < 32; o <<= 1) {
        const uint32_t v = __shfl_down_sync(kFullMask, incl, o);
        if (lane + o < 32) incl += v;
      }
      const uint32_t above = incl - total;
      if (above < uint32_t(remaining) && uint32_t(remaining) <= incl) {
        uint32_t acc = above;
        for (int j = 7; j >= 0; --j) {
          if (acc + c[j] >= uint32_t(remaining)) {
            sh.prefix = prefix | (uint64_t(lane * 8 + j) << shift);
            sh.remaining = remaining - int(acc);
            break;
          }
          acc += c[j];
        }
      }
    }
    __syncthreads();
    prefix = sh.prefix;
    remaining = sh.remaining;
    mask |= uint64_t(255) << shift;
    __syncthreads();
  }
  return prefix;
}

// Writes the k keys >= kth into out[0..k) and sorts them descending.
template <class KeyFn>
__device__ void gather_sorted(int64_t n, int k, uint64_t kth, KeyFn key_of, uint64_t* out,
                              SelectShared& sh) {
  const int tid = threadIdx.x;
  int kpad = 1;
  while (kpad < k) kpad <<= 1;
  if (tid == 0) sh.count = 0;
  for (int i = k + tid; i < kpad; i += kThreads) out[i] = 0;  // sorts last
  __syncthreads();
  for (int64_t e = tid; e < n; e += kThreads) {
    const uint64_t key = key_of(e);
    // Slots are claimed in any order; the sort below fixes the order.
    if (key >= kth) out[atomicAdd(&sh.count, 1)] = key;
  }
  __syncthreads();
  bitonic_sort_desc(out, kpad, tid, kThreads, [] { __syncthreads(); });
}

__global__ void __launch_bounds__(kThreads) pk_select_kernel(mk_pk_select_args a) {
  __shared__ SelectShared sh;
  const int64_t th = blockIdx.x;
  const int64_t t = th / a.num_heads, h = th % a.num_heads;
  const int64_t n = a.num_keys;
  const int k = int(a.k);
  const float* s1 = a.scores1 + t * a.scores_stride_t + h * a.scores_stride_h;
  const float* s2 = a.scores2 + t * a.scores_stride_t + h * a.scores_stride_h;

  auto key1 = [&](int64_t i) { return topk_key(__ldg(s1 + i), uint32_t(i)); };
  auto key2 = [&](int64_t i) { return topk_key(__ldg(s2 + i), uint32_t(i)); };
  gather_sorted(n, k, kth_largest_key(n, k, key1, sh), key1, sh.half1, sh);
  gather_sorted(n, k, kth_largest_key(n, k, key2, sh), key2, sh.half2, sh);

  const uint32_t nk = uint32_t(n);
  auto cand = [&](int64_t e) {
    const uint64_t x = sh.half1[e / k], y = sh.half2[e % k];
    return topk_key(key_score(x) + key_score(y), key_index(x) * nk + key_index(y));
  };
  const int64_t kk = int64_t(k) * k;
  gather_sorted(kk, k, kth_largest_key(kk, k, cand, sh), cand, sh.best, sh);

  for (int j = threadIdx.x; j < k; j += kThreads) {
    a.out_scores[th * k + j] = key_score(sh.best[j]);
    a.out_indices[th * k + j] = int64_t(key_index(sh.best[j]));
  }
}

}  // namespace

mk_status pk_select_cuda(const mk_pk_select_args& a, void* stream) {
  if (a.k > kPkMaxKCuda) return MK_ERR_UNSUPPORTED;
  const int64_t blocks = a.num_tokens * a.num_heads;
  if (blocks == 0) return MK_OK;
  if (blocks > int64_t(INT32_MAX)) return MK_ERR_INVALID_ARGUMENT;
  pk_select_kernel<<<unsigned(blocks), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(a);
  MK_LAUNCH_CHECK();
  return MK_OK;
}

}  // namespace mk
