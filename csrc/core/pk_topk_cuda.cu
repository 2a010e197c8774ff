// CUDA product-key selection, stage 1 of pk_topk (docs/pk_topk.md): the
// half-scores come from a library GEMM; this file selects.
//
// Fast path (k <= 128, n_keys <= 16384): a block per (token, head) holds a
// half's scores in registers as 64-bit keys (score, then index: topk_keys.h)
// and finds the k-th largest key by an MSB-first radix select, 8 bits a pass,
// with warp-aggregated shared-memory histograms; it stops as soon as the
// bucket holding the k-th key holds exactly the keys still wanted (typically
// after 3 of the 8 passes). The k winners are gathered and bitonic-sorted in
// shared memory. The candidate top-k only looks at pairs (i, j) of the sorted
// half lists with (i + 1) * (j + 1) <= k: every other pair has at least k
// pairs at least as good under the same tie rule (sum, then slot id), so the
// result is exact; that is 119 pairs instead of 1024 at k = 32.
//
// General path (any k up to MK_PK_MAX_K_CUDA, any n_keys): the same select with
// the keys re-read from memory on each pass, all k * k candidates.
// Keys are distinct, so the k-th largest key is unique and the result is
// deterministic on either path.
#include <cstdint>

#include "cuda_internal.cuh"
#include "pk_topk_internal.h"
#include "topk_keys_internal.h"

namespace mk {
namespace {

constexpr int kThreads = 256;
using cuda::kFullMask;

struct SelectShared {
  uint32_t hist[256];
  uint64_t half1[MK_PK_MAX_K_CUDA];
  uint64_t half2[MK_PK_MAX_K_CUDA];
  uint64_t best[MK_PK_MAX_K_CUDA];
  uint64_t prefix;
  int remaining;
  int count;
};

// Warp 0 of a radix-select pass: given the pass's 256-bin histogram of the
// keys still matching `prefix`, finds the digit whose bucket holds the
// remaining-th largest of them. Lane l owns digits 8l..8l+7; exactly one lane
// writes the extended prefix, the rank left within the bucket, and whether
// the bucket holds exactly the keys still wanted (*done; may be null).
__device__ void find_bucket(const uint32_t* hist, uint64_t prefix, int shift, int remaining,
                            uint64_t* out_prefix, int* out_remaining, int* done) {
  const int lane = threadIdx.x & 31;
  uint32_t c[8], total = 0;
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    c[j] = hist[lane * 8 + j];
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
#pragma unroll
    for (int j = 7; j >= 0; --j) {
      if (acc < uint32_t(remaining) && acc + c[j] >= uint32_t(remaining)) {
        *out_prefix = prefix | (uint64_t(lane * 8 + j) << shift);
        *out_remaining = remaining - int(acc);
        if (done) *done = (acc + c[j] == uint32_t(remaining));
      }
      acc += c[j];
    }
  }
}

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
    if (tid < 32) find_bucket(sh.hist, prefix, shift, remaining, &sh.prefix, &sh.remaining, nullptr);
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


// ---- fast path -------------------------------------------------------------------

constexpr int kFastMaxK = 128;
constexpr int kFastMaxCand = 1024;  // >= sum_{a=1..128} floor(128 / a) = 645

struct FastShared {
  uint32_t hist[256];
  uint64_t half1[kFastMaxK];
  uint64_t half2[kFastMaxK];
  uint64_t best[kFastMaxK];
  uint32_t offs[kFastMaxK + 1];  // candidate row i holds pairs offs[i] .. offs[i+1]-1
  uint64_t prefix;
  int remaining;
  int done;
  int count;
};

// Selects the k largest of the keys held in registers across the block (0 =
// no key; real keys are never 0) into out[0..kpad) of shared memory, sorted
// descending and padded with zeros. kpad: k rounded up to a power of two.
template <int THREADS, int ITEMS>
__device__ void block_select(const uint64_t (&keys)[ITEMS], int k, int kpad, uint64_t* out,
                             FastShared& sh) {
  const int tid = threadIdx.x, lane = tid & 31;
  uint64_t prefix = 0, mask = 0;
  int remaining = k;
  for (int shift = 56; shift >= 0; shift -= 8) {
    for (int i = tid; i < 256; i += THREADS) sh.hist[i] = 0;
    __syncthreads();
#pragma unroll
    for (int j = 0; j < ITEMS; ++j) {
      const uint64_t key = keys[j];
      const uint32_t digit =
          (key != 0 && (key & mask) == prefix) ? uint32_t(key >> shift) & 255u : 256u;
      // Lanes with the same digit add once: heavy buckets (the scores'
      // exponent bits) would otherwise serialise on one shared address.
      const uint32_t peers = __match_any_sync(kFullMask, digit);
      if (digit != 256u && lane == __ffs(peers) - 1) atomicAdd(&sh.hist[digit], uint32_t(__popc(peers)));
    }
    __syncthreads();
    if (tid < 32) find_bucket(sh.hist, prefix, shift, remaining, &sh.prefix, &sh.remaining, &sh.done);
    __syncthreads();
    prefix = sh.prefix;
    remaining = sh.remaining;
    mask |= uint64_t(255) << shift;
    const int done = sh.done;
    __syncthreads();
    if (done) break;
  }
  // Selected: keys whose masked bits are >= prefix; exactly k of them.
  if (tid == 0) sh.count = 0;
  for (int i = k + tid; i < kpad; i += THREADS) out[i] = 0;
  __syncthreads();
#pragma unroll
  for (int j = 0; j < ITEMS; ++j) {
    const uint64_t key = keys[j];
    if (key != 0 && (key & mask) >= prefix) out[atomicAdd(&sh.count, 1)] = key;
  }
  __syncthreads();
  bitonic_sort_desc(out, kpad, tid, THREADS, [] { __syncthreads(); });
}

// One half's scores as keys in registers; element (j / 4) * 4 * THREADS +
// 4 * tid + j % 4 goes to keys[j], so each warp load is a coalesced 512 bytes.
template <int THREADS, int ITEMS>
__device__ void load_keys(const float* s, int n, uint64_t (&keys)[ITEMS]) {
  static_assert(ITEMS % 4 == 0, "ITEMS must be a multiple of 4");
  const bool vec = (reinterpret_cast<uintptr_t>(s) & 15u) == 0;
#pragma unroll
  for (int j = 0; j < ITEMS; j += 4) {
    const int i0 = (j / 4) * 4 * THREADS + 4 * int(threadIdx.x);
    if (vec && i0 + 3 < n) {
      const float4 v = __ldg(reinterpret_cast<const float4*>(s + i0));
      keys[j] = topk_key(v.x, uint32_t(i0));
      keys[j + 1] = topk_key(v.y, uint32_t(i0 + 1));
      keys[j + 2] = topk_key(v.z, uint32_t(i0 + 2));
      keys[j + 3] = topk_key(v.w, uint32_t(i0 + 3));
    } else {
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        const int i = i0 + r;
        keys[j + r] = i < n ? topk_key(__ldg(s + i), uint32_t(i)) : 0;
      }
    }
  }
}

template <int THREADS, int ITEMS>
__global__ void __launch_bounds__(THREADS) pk_select_fast_kernel(mk_pk_select_args a) {
  constexpr int CITEMS = (kFastMaxCand + THREADS - 1) / THREADS;
  __shared__ FastShared sh;
  const int tid = threadIdx.x, lane = tid & 31;
  const int64_t th = blockIdx.x;
  const int64_t t = th / a.num_heads, h = th % a.num_heads;
  const int n = int(a.num_keys);
  const int k = int(a.k);
  int kpad = 1;
  while (kpad < k) kpad <<= 1;

  // Candidate row offsets: row i of the pruned k x k grid holds floor(k / (i + 1)) pairs.
  if (tid < 32) {
    uint32_t carry = 0;
    for (int base = 0; base < k; base += 32) {
      const int i = base + lane;
      uint32_t v = i < k ? uint32_t(k / (i + 1)) : 0u;
#pragma unroll
      for (int o = 1; o < 32; o <<= 1) {
        const uint32_t u = __shfl_up_sync(kFullMask, v, o);
        if (lane >= o) v += u;
      }
      if (i < k) sh.offs[i + 1] = carry + v;
      carry += __shfl_sync(kFullMask, v, 31);
    }
    if (lane == 0) sh.offs[0] = 0;
  }

  uint64_t keys[ITEMS];
  load_keys<THREADS, ITEMS>(a.scores1 + t * a.scores_stride_t + h * a.scores_stride_h, n, keys);
  block_select<THREADS, ITEMS>(keys, k, kpad, sh.half1, sh);
  load_keys<THREADS, ITEMS>(a.scores2 + t * a.scores_stride_t + h * a.scores_stride_h, n, keys);
  block_select<THREADS, ITEMS>(keys, k, kpad, sh.half2, sh);

  const int total = int(sh.offs[k]);
  const uint32_t nk = uint32_t(n);
  uint64_t cand[CITEMS];
#pragma unroll
  for (int j = 0; j < CITEMS; ++j) {
    const int e = j * THREADS + tid;
    cand[j] = 0;
    if (e < total) {
      int lo = 0, hi = k - 1;  // the row i with offs[i] <= e < offs[i + 1]
      while (lo < hi) {
        const int mid = (lo + hi + 1) >> 1;
        if (sh.offs[mid] <= uint32_t(e)) lo = mid; else hi = mid - 1;
      }
      const uint64_t x = sh.half1[lo], y = sh.half2[e - int(sh.offs[lo])];
      cand[j] = topk_key(key_score(x) + key_score(y), key_index(x) * nk + key_index(y));
    }
  }
  block_select<THREADS, CITEMS>(cand, k, kpad, sh.best, sh);

  for (int j = tid; j < k; j += THREADS) {
    a.out_scores[th * k + j] = key_score(sh.best[j]);
    a.out_indices[th * k + j] = int64_t(key_index(sh.best[j]));
  }
}

template <int THREADS, int ITEMS>
void launch_fast(const mk_pk_select_args& a, int64_t blocks, cudaStream_t stream) {
  pk_select_fast_kernel<THREADS, ITEMS><<<unsigned(blocks), THREADS, 0, stream>>>(a);
}

// Runs the fast path when the sizes fit it; false otherwise.
bool select_fast(const mk_pk_select_args& a, int64_t blocks, cudaStream_t stream) {
  if (a.k > kFastMaxK) return false;
  const int64_t n = a.num_keys;
  if (n <= 512) launch_fast<128, 4>(a, blocks, stream);
  else if (n <= 1024) launch_fast<128, 8>(a, blocks, stream);
  else if (n <= 2048) launch_fast<256, 8>(a, blocks, stream);
  else if (n <= 4096) launch_fast<256, 16>(a, blocks, stream);
  else if (n <= 8192) launch_fast<512, 16>(a, blocks, stream);
  else if (n <= 16384) launch_fast<512, 32>(a, blocks, stream);
  else return false;
  return true;
}

}  // namespace

mk_status pk_select_cuda(const mk_pk_select_args& a, void* stream) {
  if (a.k > MK_PK_MAX_K_CUDA) return MK_ERR_UNSUPPORTED;
  const int64_t blocks = a.num_tokens * a.num_heads;
  if (blocks == 0) return MK_OK;
  if (blocks > int64_t(INT32_MAX)) return MK_ERR_INVALID_ARGUMENT;
  const auto st = static_cast<cudaStream_t>(stream);
  if (!select_fast(a, blocks, st)) {
    pk_select_kernel<<<unsigned(blocks), kThreads, 0, st>>>(a);
  }
  MK_LAUNCH_CHECK();
  return MK_OK;
}

}  // namespace mk
