// Fused product-key top-k (mk_pk_topk_fused). Two kernels; neither writes a
// [T, H, n_keys] score matrix.
//
// k <= 32 (v2, 2026-12-02; not yet run on a GPU): one block of 8 warps per
// (64 tokens, head). Per half, tiles of 64 sub-keys stream through shared
// memory in chunks of 64 dimensions (each chunk loaded into registers while
// the one before is multiplied) and the warps compute the 64 x 64 score
// tile with tensor-core MMA (each warp two 16 x 16 fragments). Each token keeps
// a buffer of up to 128 keys and a threshold, the k-th best key so far: a
// tile's keys above it are appended by ballot compaction, and only when the
// next tile might not fit is the buffer sorted (in registers, over shuffles)
// down to its best k and the threshold raised. The candidate top-k of each
// token is the warp selection's (warp_select_internal.cuh) over the two half
// lists. Rationale and prediction: docs/perf/pk_topk.md.
//
// Otherwise (v1): one block per (32 tokens, head).
//
// For each half, key tiles of 64 sub-keys stream through shared memory in
// chunks of 64 dimensions; 8 warps compute the 32 x 64 score tile with
// bf16/fp16 tensor-core MMA (fp32 accumulation), and each warp merges the tile
// into the running top-k of its 4 tokens (64-bit keys, score then index:
// topk_keys.h): when any new key beats the current k-th, the k kept keys and
// the 64 new ones are bitonic-sorted in a per-warp buffer and the best k kept.
// Then the k x k candidates of each token are walked in chunks of 64, pruned
// once a chunk's best possible sum falls below the current k-th, and merged
// the same way. No [T, H, n_keys] score matrix is written.
#include <mma.h>

#include <cstdint>

#include "cuda_internal.cuh"
#include "pk_topk_internal.h"
#include "topk_keys_internal.h"
#include "warp_select_internal.cuh"

namespace mk {
namespace {

constexpr int kTok = 32;      // tokens per block
constexpr int kKeyTile = 64;  // sub-keys per tile
constexpr int kDimChunk = 64; // half-dimensions per MMA chunk
constexpr int kWarps = 8;
constexpr int kThreads = 32 * kWarps;
constexpr int kSld = kKeyTile + 4;  // padded row of the score tile

using cuda::kFullMask;

struct FusedLayout {
  int k, mbuf;  // kept keys per token; per-warp merge buffer (power of two >= k + 64)
  size_t q, kt, s, top, best, merge, total;
};

// Carves a block's dynamic shared memory into 128-byte aligned regions.
struct SmemCarver {
  size_t off = 0;
  __host__ __device__ size_t take(size_t bytes) {
    const size_t at = off;
    off = (off + bytes + 127) / 128 * 128;
    return at;
  }
};

__host__ __device__ inline FusedLayout fused_layout(int k, int elt) {
  FusedLayout l{};
  l.k = k;
  l.mbuf = 1;
  while (l.mbuf < k + kKeyTile) l.mbuf <<= 1;
  SmemCarver c;
  auto take = [&](size_t bytes) { return c.take(bytes); };
  l.q = take(size_t(kTok) * kDimChunk * elt);
  l.kt = take(size_t(kKeyTile) * kDimChunk * elt);
  l.s = take(size_t(kTok) * kSld * sizeof(float));
  l.top = take(size_t(2) * kTok * k * sizeof(uint64_t));
  l.best = take(size_t(kTok) * k * sizeof(uint64_t));
  l.merge = take(size_t(kWarps) * l.mbuf * sizeof(uint64_t));
  l.total = c.off;
  return l;
}

// Keeps the best k of list[0..k) (sorted descending) and the 64 keys the lanes
// hold (two each), in list, sorted descending. buf holds mbuf keys.
__device__ void warp_merge(uint64_t* list, int k, uint64_t a, uint64_t b, uint64_t* buf, int mbuf) {
  const int lane = threadIdx.x & 31;
  for (int i = lane; i < mbuf; i += 32) buf[i] = i < k ? list[i] : 0;
  __syncwarp();
  buf[k + lane] = a;
  buf[k + 32 + lane] = b;
  __syncwarp();
  bitonic_sort_desc(buf, mbuf, lane, 32, [] { __syncwarp(); });
  for (int i = lane; i < k; i += 32) list[i] = buf[i];
  __syncwarp();
}

template <class T>
__device__ __forceinline__ T zero_value();
template <>
__device__ __forceinline__ __half zero_value<__half>() {
  return __float2half_rn(0.f);
}
template <>
__device__ __forceinline__ __nv_bfloat16 zero_value<__nv_bfloat16>() {
  return __float2bfloat16_rn(0.f);
}

template <class T>
__global__ void __launch_bounds__(kThreads) pk_topk_fused_kernel(mk_pk_topk_args a) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  __trap();  // bf16/fp16 MMA with these shapes needs sm_80 or newer; the host checks first
#else
  using namespace nvcuda;
  extern __shared__ __align__(128) unsigned char smem[];
  const FusedLayout L = fused_layout(int(a.k), int(sizeof(T)));
  T* qs = reinterpret_cast<T*>(smem + L.q);
  T* ks = reinterpret_cast<T*>(smem + L.kt);
  float* S = reinterpret_cast<float*>(smem + L.s);
  uint64_t* top = reinterpret_cast<uint64_t*>(smem + L.top);
  uint64_t* best = reinterpret_cast<uint64_t*>(smem + L.best);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  uint64_t* mbuf = reinterpret_cast<uint64_t*>(smem + L.merge) + size_t(warp) * L.mbuf;

  const int k = int(a.k);
  const int64_t T_ = a.num_tokens, H = a.num_heads, n = a.num_keys, half = a.half_dim;
  const int64_t t0 = int64_t(blockIdx.x) * kTok;
  const int64_t h = blockIdx.y;
  const T* query = static_cast<const T*>(a.query);
  const T* keys = static_cast<const T*>(a.keys);

  for (int i = threadIdx.x; i < 2 * kTok * k; i += kThreads) top[i] = 0;
  __syncthreads();

  // Warp w computes the 16 x 16 fragment (rows 16 * (w / 4), cols 16 * (w % 4)).
  const int rb = warp / 4, cb = warp % 4;
  for (int hf = 0; hf < 2; ++hf) {
    const T* kbase = keys + (h * 2 + hf) * n * half;
    for (int64_t kt0 = 0; kt0 < n; kt0 += kKeyTile) {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
      wmma::fill_fragment(acc, 0.0f);
      for (int64_t d0 = 0; d0 < half; d0 += kDimChunk) {
        __syncthreads();  // the previous chunk's tiles are no longer read
        for (int i = threadIdx.x; i < kTok * kDimChunk; i += kThreads) {
          const int r = i / kDimChunk, c = i % kDimChunk;
          const int64_t t = t0 + r, d = d0 + c;
          qs[i] = (t < T_ && d < half) ? query[(t * H + h) * 2 * half + hf * half + d] : zero_value<T>();
        }
        for (int i = threadIdx.x; i < kKeyTile * kDimChunk; i += kThreads) {
          const int r = i / kDimChunk, c = i % kDimChunk;
          const int64_t key = kt0 + r, d = d0 + c;
          ks[i] = (key < n && d < half) ? kbase[key * half + d] : zero_value<T>();
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < kDimChunk; kk += 16) {
          wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> fa;
          wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> fb;
          wmma::load_matrix_sync(fa, qs + rb * 16 * kDimChunk + kk, kDimChunk);
          wmma::load_matrix_sync(fb, ks + cb * 16 * kDimChunk + kk, kDimChunk);
          wmma::mma_sync(acc, fa, fb, acc);
        }
      }
      wmma::store_matrix_sync(S + rb * 16 * kSld + cb * 16, acc, kSld, wmma::mem_row_major);
      __syncthreads();
      // Each warp merges the tile into the running top-k of its 4 tokens.
      for (int r = warp * (kTok / kWarps); r < (warp + 1) * (kTok / kWarps); ++r) {
        uint64_t* list = top + (size_t(hf) * kTok + r) * k;
        const int64_t i0 = kt0 + lane, i1 = kt0 + 32 + lane;
        const uint64_t x = i0 < n ? topk_key(S[r * kSld + lane], uint32_t(i0)) : 0;
        const uint64_t y = i1 < n ? topk_key(S[r * kSld + 32 + lane], uint32_t(i1)) : 0;
        const uint64_t kth = list[k - 1];
        if (__ballot_sync(kFullMask, x > kth || y > kth)) warp_merge(list, k, x, y, mbuf, L.mbuf);
      }
      // The next tile's stores into S wait at the chunk loop's first barrier.
    }
  }
  __syncthreads();

  // Candidates: for each of its tokens, a warp walks the k x k sums in chunks
  // of 64 (row-major in the two sorted halves).
  const uint32_t nk = uint32_t(n);
  const int64_t kk_total = int64_t(k) * k;
  for (int r = warp * (kTok / kWarps); r < (warp + 1) * (kTok / kWarps); ++r) {
    const uint64_t* l1 = top + size_t(r) * k;
    const uint64_t* l2 = top + (size_t(kTok) + r) * k;
    uint64_t* list = best + size_t(r) * k;
    for (int i = lane; i < k; i += 32) list[i] = 0;
    __syncwarp();
    const float top2 = key_score(l2[0]);
    for (int64_t e0 = 0; e0 < kk_total; e0 += kKeyTile) {
      // Rows only get smaller: once this chunk's best possible sum is below
      // the current k-th, no later chunk can contribute.
      const uint64_t kth = list[k - 1];
      if (kth != 0 && key_score(l1[e0 / k]) + top2 < key_score(kth)) break;
      uint64_t v[2];
#pragma unroll
      for (int q = 0; q < 2; ++q) {
        const int64_t e = e0 + q * 32 + lane;
        v[q] = 0;
        if (e < kk_total) {
          const uint64_t x = l1[e / k], y = l2[e % k];
          v[q] = topk_key(key_score(x) + key_score(y), key_index(x) * nk + key_index(y));
        }
      }
      if (__ballot_sync(kFullMask, v[0] > kth || v[1] > kth)) warp_merge(list, k, v[0], v[1], mbuf, L.mbuf);
    }
    const int64_t t = t0 + r;
    if (t < T_) {
      for (int j = lane; j < k; j += 32) {
        a.out_scores[(t * H + h) * k + j] = key_score(list[j]);
        a.out_indices[(t * H + h) * k + j] = int64_t(key_index(list[j]));
      }
    }
  }
#endif
}

// ---- v2: k <= 32 ------------------------------------------------------------

namespace v2 {

constexpr int kKMax = 32;
constexpr int kTok2 = 64;     // tokens per block: 4 row blocks of 16
constexpr int kCap = 128;     // a token's key buffer (4 keys a lane when sorted)
using Scratch = warpsel::Config<kKMax>::Scratch;

struct Layout {
  size_t q, kt, s, buf, lists, count, thr, scratch, total;
};

__host__ __device__ inline Layout layout(int elt) {
  Layout l{};
  SmemCarver c;
  auto take = [&](size_t bytes) { return c.take(bytes); };
  l.q = take(size_t(kTok2) * kDimChunk * elt);
  l.kt = take(size_t(kKeyTile) * kDimChunk * elt);
  l.s = take(size_t(kTok2) * kSld * sizeof(float));
  l.buf = take(size_t(kTok2) * kCap * sizeof(uint64_t));
  l.lists = take(size_t(2) * kTok2 * kKMax * sizeof(uint64_t));
  l.count = take(size_t(kTok2) * sizeof(int));
  l.thr = take(size_t(kTok2) * sizeof(uint64_t));
  l.scratch = take(size_t(kWarps) * sizeof(Scratch));
  l.total = c.off;
  return l;
}

// Sorts buf[0..count) down to its best k (descending, in buf[0..k)) and
// returns the new threshold: the k-th key, or 0 (take everything) while fewer
// than k keys were seen. Called by the whole warp.
__device__ __forceinline__ uint64_t shrink(uint64_t* buf, int count, int k) {
  warpsel::sort_first<kCap / 32>(buf, count, k, [&](int e, uint64_t key) {
    buf[e] = key;  // every lane has read the buffer before any writes (the sort's shuffles)
  });
  __syncwarp();  // buf[0..k) is written
  return count >= k ? buf[k - 1] : 0;
}

template <class T>
__global__ void __launch_bounds__(kThreads) fused_kernel(mk_pk_topk_args a) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  __trap();  // bf16/fp16 MMA with these shapes needs sm_80 or newer; the host checks first
#else
  using namespace nvcuda;
  extern __shared__ __align__(128) unsigned char smem[];
  const Layout L = layout(int(sizeof(T)));
  T* qs = reinterpret_cast<T*>(smem + L.q);
  T* ks = reinterpret_cast<T*>(smem + L.kt);
  float* S = reinterpret_cast<float*>(smem + L.s);
  uint64_t* buf = reinterpret_cast<uint64_t*>(smem + L.buf);
  uint64_t* lists = reinterpret_cast<uint64_t*>(smem + L.lists);
  int* count = reinterpret_cast<int*>(smem + L.count);
  uint64_t* thr = reinterpret_cast<uint64_t*>(smem + L.thr);
  Scratch* scratch = reinterpret_cast<Scratch*>(smem + L.scratch);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const unsigned below = (1u << lane) - 1u;

  const int k = int(a.k);
  const int64_t T_ = a.num_tokens, H = a.num_heads, n = a.num_keys, half = a.half_dim;
  const int64_t t0 = int64_t(blockIdx.x) * kTok2;
  const int64_t h = blockIdx.y;
  const T* query = static_cast<const T*>(a.query);
  const T* keys = static_cast<const T*>(a.keys);
  // Every row of query and keys starts 16-byte aligned: runs of 8 load as one.
  const bool vec = half % 8 == 0 && (reinterpret_cast<uintptr_t>(query) & 15u) == 0 &&
                   (reinterpret_cast<uintptr_t>(keys) & 15u) == 0;
  constexpr int kRows = kTok2 / kWarps;  // tokens whose keys a warp keeps: 8
  // Warp w computes the fragments (row block w / 2, column blocks 2 (w % 2) and
  // 2 (w % 2) + 1) of the 64 x 64 tile.
  const int rb = warp / 2, cb = 2 * (warp % 2);

  // A chunk is 64 query rows and 64 key rows of 64 dimensions, in runs of 8
  // elements: 1024 runs, kRuns a thread. The next chunk's runs are loaded
  // into registers while the current chunk is multiplied (16 bytes a load
  // where the run is whole and aligned, else element by element, zeros past
  // the edges), then stored to shared memory after the next barrier.
  constexpr int kRunsPerRow = kDimChunk / 8;
  constexpr int kRuns = (kTok2 + kKeyTile) * kRunsPerRow / kThreads;
  static_assert(kRuns * kThreads == (kTok2 + kKeyTile) * kRunsPerRow, "a chunk's runs divide over the threads");
  uint4 pre[kRuns];
  auto run_slot = [&](int j, bool& is_q, int& r, int& c) {
    const int i = int(threadIdx.x) + j * kThreads;
    is_q = i < kTok2 * kRunsPerRow;
    const int q = is_q ? i : i - kTok2 * kRunsPerRow;
    r = q / kRunsPerRow;
    c = (q % kRunsPerRow) * 8;
  };
  auto fetch = [&](int hf, int64_t kt, int64_t d0) {
    const T* kbase = keys + (h * 2 + hf) * n * half;
#pragma unroll
    for (int j = 0; j < kRuns; ++j) {
      bool is_q;
      int r, c;
      run_slot(j, is_q, r, c);
      const int64_t row = is_q ? t0 + r : kt + r, d = d0 + c;
      const bool in = row < (is_q ? T_ : n);
      const T* src = is_q ? query + (row * H + h) * 2 * half + hf * half + d : kbase + row * half + d;
      if (in && vec && d + 8 <= half) {
        pre[j] = *reinterpret_cast<const uint4*>(src);
      } else {
        T tmp[8];
#pragma unroll
        for (int e = 0; e < 8; ++e) tmp[e] = (in && d + e < half) ? src[e] : zero_value<T>();
        memcpy(&pre[j], tmp, 16);
      }
    }
  };
  auto put = [&]() {
#pragma unroll
    for (int j = 0; j < kRuns; ++j) {
      bool is_q;
      int r, c;
      run_slot(j, is_q, r, c);
      *reinterpret_cast<uint4*>((is_q ? qs : ks) + r * kDimChunk + c) = pre[j];
    }
  };

  for (int hf = 0; hf < 2; ++hf) {
    for (int i = threadIdx.x; i < kTok2; i += kThreads) {
      count[i] = 0;
      thr[i] = 0;
    }
    fetch(hf, 0, 0);
    for (int64_t kt0 = 0; kt0 < n; kt0 += kKeyTile) {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc0, acc1;
      wmma::fill_fragment(acc0, 0.0f);
      wmma::fill_fragment(acc1, 0.0f);
      for (int64_t d0 = 0; d0 < half; d0 += kDimChunk) {
        __syncthreads();  // the previous chunk's tiles (and the previous epilogue) are done
        put();
        __syncthreads();
        int64_t next_d = d0 + kDimChunk, next_kt = kt0;  // the chunk after this one, if any
        if (next_d >= half) {
          next_d = 0;
          next_kt += kKeyTile;
        }
        if (next_kt < n) fetch(hf, next_kt, next_d);
#pragma unroll
        for (int kk = 0; kk < kDimChunk; kk += 16) {
          wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> fa;
          wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> fb0, fb1;
          wmma::load_matrix_sync(fa, qs + rb * 16 * kDimChunk + kk, kDimChunk);
          wmma::load_matrix_sync(fb0, ks + cb * 16 * kDimChunk + kk, kDimChunk);
          wmma::load_matrix_sync(fb1, ks + (cb + 1) * 16 * kDimChunk + kk, kDimChunk);
          wmma::mma_sync(acc0, fa, fb0, acc0);
          wmma::mma_sync(acc1, fa, fb1, acc1);
        }
      }
      wmma::store_matrix_sync(S + rb * 16 * kSld + cb * 16, acc0, kSld, wmma::mem_row_major);
      wmma::store_matrix_sync(S + rb * 16 * kSld + (cb + 1) * 16, acc1, kSld, wmma::mem_row_major);
      __syncthreads();
      // Each warp appends the tile's keys above each of its tokens' thresholds.
      for (int r = warp * kRows; r < (warp + 1) * kRows; ++r) {
        const int64_t i0 = kt0 + lane, i1 = kt0 + 32 + lane;
        const uint64_t x = i0 < n ? topk_key(S[r * kSld + lane], uint32_t(i0)) : 0;
        const uint64_t y = i1 < n ? topk_key(S[r * kSld + 32 + lane], uint32_t(i1)) : 0;
        const uint64_t bar = thr[r];
        const bool px = x > bar, py = y > bar;  // a key of 0 (past n) never passes
        const unsigned bx = __ballot_sync(kFullMask, px), by = __ballot_sync(kFullMask, py);
        if (!(bx | by)) continue;
        uint64_t* b = buf + size_t(r) * kCap;
        int c = count[r];
        if (px) b[c + __popc(bx & below)] = x;
        c += __popc(bx);
        if (py) b[c + __popc(by & below)] = y;
        c += __popc(by);
        __syncwarp();
        uint64_t nbar = bar;
        if (c + 2 * 32 > kCap) {  // the next tile might not fit: keep the best k
          nbar = shrink(b, c, k);
          c = c < k ? c : k;
        }
        __syncwarp();  // every lane has read count[r] and thr[r]
        if (lane == 0) {
          count[r] = c;
          thr[r] = nbar;
        }
        __syncwarp();
      }
      // The next tile's stores into S wait at the chunk loop's first barrier.
    }
    __syncthreads();
    // Each token's best k of this half, sorted, into its list.
    for (int r = warp * kRows; r < (warp + 1) * kRows; ++r) {
      uint64_t* list = lists + (size_t(hf) * kTok2 + r) * kKMax;
      warpsel::sort_first<kCap / 32>(buf + size_t(r) * kCap, count[r], k,
                                     [&](int e, uint64_t key) { list[e] = key; });
    }
    __syncthreads();  // the buffers are free for the next half
  }

  // The candidate top-k of each token from its two lists.
  const uint32_t nk = uint32_t(n);
  for (int r = warp * kRows; r < (warp + 1) * kRows; ++r) {
    const int64_t t = t0 + r;
    if (t >= T_) break;  // the whole warp: its later rows are past T too
    const uint64_t* l1 = lists + size_t(r) * kKMax;
    const uint64_t* l2 = lists + (size_t(kTok2) + r) * kKMax;
    float* out_s = a.out_scores + (t * H + h) * k;
    int64_t* out_i = a.out_indices + (t * H + h) * k;
    warpsel::select_candidates<kKMax>(l1, l2, k, nk, scratch[warp], [&](int e, uint64_t key) {
      out_s[e] = key_score(key);
      out_i[e] = int64_t(key_index(key));
    });
  }
#endif
}

}  // namespace v2

// v2 where k fits it and the device gives a block its shared memory; else v1.
// optin: the device's largest dynamic shared memory a block may ask for.
template <class T>
mk_status launch(const mk_pk_topk_args& a, int optin, cudaStream_t stream) {
  if (a.k <= v2::kKMax) {
    const v2::Layout L2 = v2::layout(int(sizeof(T)));
    if (L2.total <= size_t(optin)) {
      MK_CUDA_TRY(cudaFuncSetAttribute(v2::fused_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       int(L2.total)));
      const dim3 grid(unsigned((a.num_tokens + v2::kTok2 - 1) / v2::kTok2), unsigned(a.num_heads));
      v2::fused_kernel<T><<<grid, kThreads, L2.total, stream>>>(a);
      MK_LAUNCH_CHECK();
      return MK_OK;
    }
  }
  const FusedLayout L = fused_layout(int(a.k), int(sizeof(T)));
  MK_CUDA_TRY(cudaFuncSetAttribute(pk_topk_fused_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                   int(L.total)));
  const dim3 grid(unsigned((a.num_tokens + kTok - 1) / kTok), unsigned(a.num_heads));
  pk_topk_fused_kernel<T><<<grid, kThreads, L.total, stream>>>(a);
  MK_LAUNCH_CHECK();
  return MK_OK;
}

}  // namespace

mk_status pk_topk_fused_cuda(const mk_pk_topk_args& a, void* stream) {
  if ((a.num_tokens + kTok - 1) / kTok > int64_t(INT32_MAX) || a.num_heads > 65535)
    return MK_ERR_INVALID_ARGUMENT;
  int dev = 0, major = 0, optin = 0;
  MK_CUDA_TRY(cudaGetDevice(&dev));
  MK_CUDA_TRY(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
  if (major < 8) return MK_ERR_UNSUPPORTED;
  MK_CUDA_TRY(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  auto s = static_cast<cudaStream_t>(stream);
  if (a.dtype == MK_BF16) return launch<__nv_bfloat16>(a, optin, s);
  if (a.dtype == MK_F16) return launch<__half>(a, optin, s);
  return MK_ERR_UNSUPPORTED;
}

}  // namespace mk
