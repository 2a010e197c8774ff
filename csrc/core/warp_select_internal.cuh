// One warp per (token, head): the product-key selection of pk_topk without a
// block barrier (docs/pk_topk.md, "The warp selection"). Included by
// pk_topk_cuda.cu, and by tests/core/test_warp_select_emu.cpp, which runs this
// very code on the CPU under a 32-lane emulation of the warp intrinsics: so
// this header uses only threadIdx, blockIdx, __shfl_*_sync, __ballot_sync,
// __syncwarp, __popc, __ffs, __ldg, float4 and a shared-memory atomicAdd, and
// includes no CUDA header of its own.
//
// Selecting the k largest of a row of keys (64-bit, distinct: topk_keys_internal.h):
//  1. each lane keeps its Q largest keys in registers (Q = 2k/32, 1 for k <= 16);
//  2. tau = the k-th largest of those 32 * Q keys: at least k keys are >= tau,
//     so tau is at most the row's k-th largest key and every winner is >= tau;
//  3. the keys >= tau are compacted into this warp's shared buffer by ballot
//     (about k + 10 of them for random rows; the capacity is 4k, at least 128);
//  4. they are sorted in registers by a bitonic network over shuffles, and the
//     first k are the answer, in order.
// If more than the capacity pass step 3 (rows whose large keys crowd into a
// few lanes), tau is replaced by the exact k-th key from a radix select over
// the row (8 bits a pass, the warp's own histogram, early exit), and step 3
// is repeated: then exactly k keys pass. The result does not depend on which
// way it was found.
//
// The candidate top-k uses the same four steps over the pairs (i, j) of the
// two sorted half lists with (i + 1) * (j + 1) <= k (pk_topk_cuda.cu says why
// that is exact), held in registers.
#pragma once

#include <cstdint>

#include "memkernels.h"
#include "topk_keys_internal.h"

namespace mk {
namespace warpsel {

constexpr unsigned kFull = 0xffffffffu;

__device__ __forceinline__ int lane_id() { return int(threadIdx.x) & 31; }

__device__ __forceinline__ uint64_t shfl_xor64(uint64_t x, int o) {
  return uint64_t(__shfl_xor_sync(kFull, (unsigned long long)x, o));
}
__device__ __forceinline__ uint64_t shfl64(uint64_t x, int src) {
  return uint64_t(__shfl_sync(kFull, (unsigned long long)x, src));
}

// Sorts the 32 * R keys held R to a lane (element r * 32 + lane in v[r])
// descending, by a bitonic network: partners 32 or more apart are in the
// same lane, nearer ones one shuffle away.
template <int R>
__device__ __forceinline__ void sort_desc(uint64_t (&v)[R]) {
  const int lane = lane_id();
  constexpr int N = 32 * R;
#pragma unroll
  for (int size = 2; size <= N; size <<= 1) {
#pragma unroll
    for (int stride = size >> 1; stride > 0; stride >>= 1) {
      if (stride >= 32) {
        const int s = stride / 32;
#pragma unroll
        for (int r = 0; r < R; ++r) {
          if ((r & s) == 0 && (r | s) < R) {  // (the second always holds; it bounds the index for compilers)
            // size >= 64 here, so the lane's bits do not reach the direction bit.
            const bool desc = ((r * 32) & size) == 0;
            const uint64_t x = v[r], y = v[r | s];
            const bool swap = desc ? (x < y) : (x > y);
            v[r] = swap ? y : x;
            v[r | s] = swap ? x : y;
          }
        }
      } else {
#pragma unroll
        for (int r = 0; r < R; ++r) {
          const uint64_t x = v[r];
          const uint64_t y = shfl_xor64(x, stride);
          const bool desc = ((r * 32 + lane) & size) == 0;
          const bool lower = (lane & stride) == 0;  // the smaller element number of the pair
          const bool keep_max = desc == lower;
          v[r] = keep_max ? (x > y ? x : y) : (x < y ? x : y);
        }
      }
    }
  }
}

// Keeps t[0..Q) the lane's Q largest keys so far, descending.
template <int Q>
__device__ __forceinline__ void push_top(uint64_t (&t)[Q], uint64_t key) {
  if (key > t[Q - 1]) {
    t[Q - 1] = key;
#pragma unroll
    for (int j = Q - 1; j > 0; --j) {
      if (t[j] > t[j - 1]) {
        const uint64_t x = t[j];
        t[j] = t[j - 1];
        t[j - 1] = x;
      }
    }
  }
}

// The k-th largest (1 <= k <= 32 * Q) of the warp's 32 * Q kept keys, in every lane.
template <int Q>
__device__ __forceinline__ uint64_t kth_kept(const uint64_t (&t)[Q], int k) {
  uint64_t v[Q];
#pragma unroll
  for (int r = 0; r < Q; ++r) v[r] = t[r];
  sort_desc<Q>(v);
  const int want = (k - 1) / 32;
  uint64_t mine = 0;
#pragma unroll
  for (int r = 0; r < Q; ++r) mine = r == want ? v[r] : mine;
  return shfl64(mine, (k - 1) % 32);
}

// Writes the keys >= tau (0 = no key, never taken) into buf[0..cap) in any
// order and returns how many there are, which may exceed cap (then only cap
// were written). The same in every lane.
template <class Src>
__device__ __forceinline__ int compact(const Src& src, uint64_t tau, uint64_t* buf, int cap) {
  const unsigned below = (1u << lane_id()) - 1u;
  int count = 0;
  src.each([&](uint64_t key) {
    const bool take = key != 0 && key >= tau;
    const unsigned m = __ballot_sync(kFull, take);
    const int pos = count + __popc(m & below);
    if (take && pos < cap) buf[pos] = key;
    count += __popc(m);
  });
  return count;
}

// The bucket of a radix pass that holds the want-th largest key (1-based) of
// a 256-bin histogram, in every lane of the warp: its digit, the keys in
// larger digits, and its own count. Lane l reads digits 8l .. 8l+7 (larger
// digits are larger keys); the caller orders the reads against the
// histogram's writes.
struct Bucket {
  uint32_t digit, before, count;
};
__device__ __forceinline__ Bucket find_bucket(const uint32_t* hist, uint32_t want) {
  const int lane = lane_id();
  uint32_t c[8], total = 0;
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    c[j] = hist[lane * 8 + j];
    total += c[j];
  }
  uint32_t incl = total;  // keys in the digits of lanes >= this one
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const uint32_t v = __shfl_down_sync(kFull, incl, o);
    if (lane + o < 32) incl += v;
  }
  const bool owner = incl - total < want && want <= incl;  // exactly one lane
  uint32_t digit = 0, before = 0, count = 0;
  if (owner) {
    uint32_t acc = incl - total;
#pragma unroll
    for (int j = 7; j >= 0; --j) {
      if (acc < want && acc + c[j] >= want) {
        digit = uint32_t(lane * 8 + j);
        before = acc;
        count = c[j];
      }
      acc += c[j];
    }
  }
  const int src_lane = __ffs(__ballot_sync(kFull, owner)) - 1;
  digit = __shfl_sync(kFull, digit, src_lane);
  before = __shfl_sync(kFull, before, src_lane);
  count = __shfl_sync(kFull, count, src_lane);
  return Bucket{digit, before, count};
}

// The exact k-th largest key of the source (at least k keys, all distinct) by
// an MSB-first radix select, 8 bits a pass, in the warp's own 256-bin
// histogram; stops once the bucket holding the k-th key holds exactly the keys
// still wanted. Returns tau with exactly k keys >= tau.
template <class Src>
__device__ uint64_t kth_radix(const Src& src, int k, uint32_t* hist) {
  const int lane = lane_id();
  uint64_t prefix = 0, mask = 0;
  int remaining = k;
  for (int shift = 56; shift >= 0; shift -= 8) {
    for (int i = lane; i < 256; i += 32) hist[i] = 0;
    __syncwarp();
    src.each([&](uint64_t key) {
      // Integer counts: exact whatever the order of the updates.
      if (key != 0 && (key & mask) == prefix) atomicAdd(&hist[uint32_t(key >> shift) & 255u], 1u);
    });
    __syncwarp();
    const Bucket b = find_bucket(hist, uint32_t(remaining));
    __syncwarp();  // every lane has read the histogram before the next pass clears it
    prefix |= uint64_t(b.digit) << shift;
    mask |= uint64_t(255) << shift;
    remaining -= int(b.before);
    // Keys >= prefix: the k - remaining of larger buckets and this bucket's keys.
    if (b.count == uint32_t(remaining)) break;
  }
  return prefix;
}

// Sorts buf[0..S) (k <= S <= 32 * R) and calls out(e, key) for the e-th
// largest, e < k.
template <int R, class Out>
__device__ __forceinline__ void sort_first(const uint64_t* buf, int S, int k, Out&& out) {
  const int lane = lane_id();
  uint64_t v[R];
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int e = r * 32 + lane;
    v[r] = e < S ? buf[e] : 0;
  }
  sort_desc<R>(v);
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int e = r * 32 + lane;
    if (e < k) out(e, v[r]);
  }
}

// The k largest keys of the source in order: out(e, key) for e < k. Q keys
// kept per lane (32 * Q >= k), survivors buffered in buf[0..32 * RMAX).
template <int Q, int RMAX, class Src, class Out>
__device__ __forceinline__ void select(const Src& src, int k, uint64_t* buf, uint32_t* hist, Out&& out) {
  uint64_t t[Q];
#pragma unroll
  for (int r = 0; r < Q; ++r) t[r] = 0;
  src.each([&](uint64_t key) { push_top<Q>(t, key); });
  uint64_t tau = kth_kept<Q>(t, k);
  constexpr int cap = 32 * RMAX;
  int S = compact(src, tau, buf, cap);
  if (S > cap) {
    tau = kth_radix(src, k, hist);
    S = compact(src, tau, buf, cap);  // exactly k
  }
  __syncwarp();
  if (S <= 32) sort_first<1>(buf, S, k, out);
  else if (RMAX >= 2 && S <= 64) sort_first<(RMAX >= 2 ? 2 : 1)>(buf, S, k, out);
  else if (RMAX >= 4 && S <= 128) sort_first<(RMAX >= 4 ? 4 : 1)>(buf, S, k, out);
  else if (RMAX >= 8 && S <= 256) sort_first<(RMAX >= 8 ? 8 : 1)>(buf, S, k, out);
  else sort_first<RMAX>(buf, S, k, out);
  __syncwarp();  // the buffer is read before anyone writes it again
}

// One half's scores of one (token, head), n floats from s: element
// c * 128 + 4 * lane + r is the lane's (4c + r)-th, so each warp load is 512
// coalesced bytes (16-byte loads when s is 16-byte aligned).
struct RowSource {
  const float* s;
  int n;
  bool vec;
  template <class F>
  __device__ __forceinline__ void each(F&& f) const {
    const int lane = lane_id();
    const int chunks = (n + 127) / 128;
#pragma unroll 2
    for (int c = 0; c < chunks; ++c) {
      const int i0 = c * 128 + 4 * lane;
      float x[4];
      if (vec && i0 + 3 < n) {
        const float4 v = __ldg(reinterpret_cast<const float4*>(s + i0));
        x[0] = v.x;
        x[1] = v.y;
        x[2] = v.z;
        x[3] = v.w;
      } else {
#pragma unroll
        for (int r = 0; r < 4; ++r) x[r] = i0 + r < n ? __ldg(s + i0 + r) : 0.0f;
      }
#pragma unroll
      for (int r = 0; r < 4; ++r) f(i0 + r < n ? topk_key(x[r], uint32_t(i0 + r)) : uint64_t(0));
    }
  }
};

// Keys already in registers, CR to a lane (0 = none).
template <int CR>
struct RegSource {
  uint64_t v[CR];
  template <class F>
  __device__ __forceinline__ void each(F&& f) const {
#pragma unroll
    for (int j = 0; j < CR; ++j) f(v[j]);
  }
};

// Pairs (i, j), i, j < k, with (i + 1) * (j + 1) <= k.
__host__ __device__ constexpr int pruned_pairs(int k) {
  int m = 0;
  for (int i = 1; i <= k; ++i) m += k / i;
  return m;
}

// Warps a block runs (each on its own row: they share nothing).
constexpr int kWarps = 4;

// The size class a k falls in (16, 32, 64 or 128); 0 past the warp path.
__host__ __device__ constexpr int kmax_for(int64_t k) {
  return k <= 16 ? 16 : k <= 32 ? 32 : k <= 64 ? 64 : k <= 128 ? 128 : 0;
}

// Sizes for k <= KMAX.
template <int KMAX>
struct Config {
  static constexpr int Q = KMAX <= 16 ? 1 : KMAX / 16;     // 32 * Q >= 2k
  static constexpr int RMAX = KMAX <= 32 ? 4 : KMAX / 8;   // capacity 4 * KMAX, at least 128
  static constexpr int CR = (pruned_pairs(KMAX) + 31) / 32;
  struct Scratch {  // one warp's shared memory
    uint64_t buf[32 * RMAX];
    uint64_t half1[KMAX];
    uint64_t half2[KMAX];
    uint32_t hist[256];
    uint32_t offs[KMAX + 1];  // candidate row i holds pairs offs[i] .. offs[i+1]-1
  };
};

// The k best candidates of two sorted half lists h1, h2 (k keys each,
// descending; they may be ws.half1 and ws.half2): the pruned grid of pairs
// (i, j) with (i + 1) * (j + 1) <= k, their sums keyed by slot i1 * nk + i2,
// through the four steps above; out(e, key) for the e-th best, e < k. Called
// by the whole warp; ws is its scratch.
template <int KMAX, class Out>
__device__ void select_candidates(const uint64_t* h1, const uint64_t* h2, int k, uint32_t nk,
                                  typename Config<KMAX>::Scratch& ws, Out&& out) {
  using C = Config<KMAX>;
  const int lane = lane_id();
  // Candidate row offsets: row i of the pruned grid holds floor(k / (i + 1)) pairs.
  uint32_t carry = 0;
  for (int base = 0; base < k; base += 32) {
    const int i = base + lane;
    uint32_t v = i < k ? uint32_t(k / (i + 1)) : 0u;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const uint32_t u = __shfl_up_sync(kFull, v, o);
      if (lane >= o) v += u;
    }
    if (i < k) ws.offs[i + 1] = carry + v;
    carry += __shfl_sync(kFull, v, 31);
  }
  if (lane == 0) ws.offs[0] = 0;
  __syncwarp();  // the offsets (and the callers' half lists) are written

  const int total = int(ws.offs[k]);
  RegSource<C::CR> cand;
#pragma unroll
  for (int j = 0; j < C::CR; ++j) {
    const int e = j * 32 + lane;
    cand.v[j] = 0;
    if (e < total) {
      int lo = 0, hi = k - 1;  // the row i with offs[i] <= e < offs[i + 1]
      while (lo < hi) {
        const int mid = (lo + hi + 1) >> 1;
        if (ws.offs[mid] <= uint32_t(e)) lo = mid;
        else hi = mid - 1;
      }
      const uint64_t x = h1[lo], y = h2[e - int(ws.offs[lo])];
      cand.v[j] = topk_key(key_score(x) + key_score(y), key_index(x) * nk + key_index(y));
    }
  }
  select<C::Q, C::RMAX>(cand, k, ws.buf, ws.hist, out);
}

// Warp w of block b selects row b * WARPS + w of a (rows = T * H); scratch is
// the block's WARPS warps' shared memory. Requires 1 <= k <= KMAX, k <= n.
template <int KMAX, int WARPS>
__device__ void select_rows(const mk_pk_select_args& a, typename Config<KMAX>::Scratch* scratch) {
  using C = Config<KMAX>;
  const int warp = int(threadIdx.x) / 32;
  const int64_t th = int64_t(blockIdx.x) * WARPS + warp;
  if (th >= a.num_tokens * a.num_heads) return;  // the whole warp
  typename C::Scratch& ws = scratch[warp];
  const int64_t t = th / a.num_heads, h = th % a.num_heads;
  const int n = int(a.num_keys), k = int(a.k);

  const int64_t off = t * a.scores_stride_t + h * a.scores_stride_h;
  const float* s1 = a.scores1 + off;
  const float* s2 = a.scores2 + off;
  const RowSource r1{s1, n, (reinterpret_cast<uintptr_t>(s1) & 15u) == 0};
  select<C::Q, C::RMAX>(r1, k, ws.buf, ws.hist, [&](int e, uint64_t key) { ws.half1[e] = key; });
  const RowSource r2{s2, n, (reinterpret_cast<uintptr_t>(s2) & 15u) == 0};
  select<C::Q, C::RMAX>(r2, k, ws.buf, ws.hist, [&](int e, uint64_t key) { ws.half2[e] = key; });

  float* out_s = a.out_scores + th * k;
  int64_t* out_i = a.out_indices + th * k;
  select_candidates<KMAX>(ws.half1, ws.half2, k, uint32_t(n), ws, [&](int e, uint64_t key) {
    out_s[e] = key_score(key);
    out_i[e] = int64_t(key_index(key));
  });
}

}  // namespace warpsel
}  // namespace mk
