// CUDA product-key selection, stage 1 of pk_topk (docs/pk_topk.md): the
// half-scores come from a library GEMM; this file selects.
//
// Warp path (k <= 128, any n_keys): one warp per (token, head), no block
// barrier (warp_select_internal.cuh): each half's top-k from a threshold set
// by the lanes' own best keys, the keys above it compacted by ballot and
// sorted in registers; a radix select decides the rows where too many pass.
// The candidate top-k only looks at pairs (i, j) of the sorted half lists
// with (i + 1) * (j + 1) <= k: every other pair has at least k pairs at least
// as good under the same tie rule (sum, then slot id), so the result is
// exact; that is 119 pairs instead of 1024 at k = 32.
//
// General path (any k up to MK_PK_MAX_K_CUDA, any n_keys): a block per
// (token, head), an MSB-first radix select 8 bits a pass with the keys re-read
// from memory on each pass, all k * k candidates.
// Keys are distinct, so the k-th largest key is unique and the result is
// deterministic on either path.
#include <cstdint>

#include "cuda_internal.cuh"
#include "pk_topk_internal.h"
#include "topk_keys_internal.h"
#include "warp_select_internal.cuh"

namespace mk {
namespace {

constexpr int kThreads = 256;

struct SelectShared {
  uint32_t hist[256];
  uint64_t half1[MK_PK_MAX_K_CUDA];
  uint64_t half2[MK_PK_MAX_K_CUDA];
  uint64_t best[MK_PK_MAX_K_CUDA];
  uint64_t prefix;
  int remaining;
  int count;
};

// The k-th largest of the n keys key_of(0..n-1) (distinct keys).
template <class KeyFn>
__device__ uint64_t kth_largest_key(int64_t n, int k, KeyFn key_of, SelectShared& sh) {
  const int tid = threadIdx.x;
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
    if (tid < 32) {  // warp 0 finds the bucket holding the remaining-th largest key
      const warpsel::Bucket b = warpsel::find_bucket(sh.hist, uint32_t(remaining));
      if (tid == 0) {
        sh.prefix = prefix | (uint64_t(b.digit) << shift);
        sh.remaining = remaining - int(b.before);
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


// ---- warp path (k <= 128): warp_select_internal.cuh -------------------------------

template <int KMAX>
__global__ void __launch_bounds__(warpsel::kWarps * 32) pk_select_warp_kernel(mk_pk_select_args a) {
  __shared__ typename warpsel::Config<KMAX>::Scratch sh[warpsel::kWarps];
  warpsel::select_rows<KMAX, warpsel::kWarps>(a, sh);
}

// Runs the warp path when k fits it; false otherwise.
bool select_warp(const mk_pk_select_args& a, int64_t rows, cudaStream_t stream) {
  const int64_t blocks = (rows + warpsel::kWarps - 1) / warpsel::kWarps;
  const unsigned threads = warpsel::kWarps * 32;
  switch (warpsel::kmax_for(a.k)) {
    case 16: pk_select_warp_kernel<16><<<unsigned(blocks), threads, 0, stream>>>(a); return true;
    case 32: pk_select_warp_kernel<32><<<unsigned(blocks), threads, 0, stream>>>(a); return true;
    case 64: pk_select_warp_kernel<64><<<unsigned(blocks), threads, 0, stream>>>(a); return true;
    case 128: pk_select_warp_kernel<128><<<unsigned(blocks), threads, 0, stream>>>(a); return true;
    default: return false;
  }
}

}  // namespace

mk_status pk_select_cuda(const mk_pk_select_args& a, void* stream) {
  if (a.k > MK_PK_MAX_K_CUDA) return MK_ERR_UNSUPPORTED;
  const int64_t blocks = a.num_tokens * a.num_heads;
  if (blocks == 0) return MK_OK;
  if (blocks > int64_t(INT32_MAX)) return MK_ERR_INVALID_ARGUMENT;
  const auto st = static_cast<cudaStream_t>(stream);
  if (!select_warp(a, blocks, st)) {
    pk_select_kernel<<<unsigned(blocks), kThreads, 0, st>>>(a);
  }
  MK_LAUNCH_CHECK();
  return MK_OK;
}

}  // namespace mk
