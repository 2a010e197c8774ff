// A 32-lane emulation of the CUDA thread model on the CPU, so that kernel
// code written for the GPU (csrc/core/warp_select_internal.cuh,
// embedding_bag_forward_kernel_internal.cuh,
// embedding_bag_backward_kernel_internal.cuh, row_update_kernel_internal.cuh,
// and under tests/core/emu/ every .cu file of the core) runs here, unchanged,
// in the core's tests. Grids may have two dimensions (blockIdx.y); blockDim.x
// is the launch's thread count.
//
// Each thread of a block is a fiber (its own stack); all run on one OS thread
// and switch only inside the intrinsics, so shared memory is plain memory and a
// shared atomicAdd is a plain add. __syncwarp, __ballot_sync and the shuffles
// are barriers among the lanes of a warp (32, or the block's last threads): a
// lane that arrives waits until all have. __syncthreads is a barrier among the
// block's threads that have not returned. Lanes that leave the kernel early,
// or reach different intrinsics, are what full-mask code must never do on a
// GPU; here they deadlock, and the scheduler reports the deadlock instead of
// hanging. Only full masks and width 32 are supported (asserted). Device
// atomics are plain read-modify-writes: fibers switch only inside the
// intrinsics.
#pragma once

#define MK_WARP_EMU 1  // core headers compile their device-only helpers for it

#include <ucontext.h>

#include <cassert>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <vector>

#define __device__
#define __host__
#define __forceinline__ inline
#define __global__
#define __launch_bounds__(...)

struct alignas(16) float4 {
  float x, y, z, w;
};
struct alignas(16) uint4 {
  unsigned x, y, z, w;
};
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return uint4{x, y, z, w}; }

namespace emu {

struct Dim3 {
  unsigned x = 0, y = 0, z = 0;
};

struct Fiber {
  ucontext_t ctx;  // the fiber's start (entered once)
  void* jb[5];     // where it yielded (__builtin_setjmp)
  char* stack = nullptr;  // kStackBytes, kept from launch to launch
  bool done = false, started = false;
};

constexpr size_t kStackBytes = size_t(1) << 18;

struct State {
  std::vector<Fiber> fibers;
  void* sched_jb[5];
  int cur = 0;
  unsigned block = 0, grid = 1;      // x
  unsigned block_y = 0, grid_y = 1;  // y
  unsigned threads = 32;
  std::vector<int> arrived;
  std::vector<long> generation;
  std::vector<uint64_t> slot;  // one exchange word per thread
  int block_arrived = 0, exited = 0;  // __syncthreads; threads of the block that returned
  long block_generation = 0;
  unsigned char* dynamic_smem = nullptr;  // extern __shared__ (tests/core/emu)
  long progress = 0;
  const std::function<void()>* body = nullptr;
  // MK_EMU_SHUFFLE=SEED: threads resume in a new random order on every pass
  // of the scheduler, so code between two barriers runs in different thread
  // orders (a read of another thread's store that lacks a barrier between
  // them then sees the old value in some orders).
  uint64_t shuffle = 0;
  std::vector<int> order;
  State() {
    const char* e = std::getenv("MK_EMU_SHUFFLE");
    shuffle = e ? std::strtoull(e, nullptr, 10) * 2 + 1 : 0;
  }
};

inline State& st() {
  static State s;
  return s;
}

inline Dim3 thread_idx() {
  Dim3 d;
  d.x = unsigned(st().cur);
  return d;
}
inline Dim3 block_idx() {
  Dim3 d;
  d.x = st().block;
  d.y = st().block_y;
  return d;
}
inline Dim3 grid_dim() {
  Dim3 d;
  d.x = st().grid;
  d.y = st().grid_y;
  return d;
}
inline Dim3 block_dim() {
  Dim3 d;
  d.x = st().threads;
  return d;
}

// Switches between fibers by __builtin_setjmp / __builtin_longjmp (no
// system call, unlike swapcontext); a fiber's first entry is a setcontext.
// The functions that set a jump buffer keep no state of their own in
// registers across it.
__attribute__((noinline)) inline void yield() {
  if (__builtin_setjmp(st().fibers[size_t(st().cur)].jb) == 0) __builtin_longjmp(st().sched_jb, 1);
}

// Lanes of warp w: 32, or fewer in a block whose size is not a multiple of 32.
inline int warp_lanes(int w) {
  const int left = int(st().threads) - 32 * w;
  return left < 32 ? left : 32;
}

inline void warp_barrier() {
  State& s = st();
  const int w = s.cur / 32;
  const long g = s.generation[size_t(w)];
  if (++s.arrived[size_t(w)] == warp_lanes(w)) {
    s.arrived[size_t(w)] = 0;
    ++s.generation[size_t(w)];
    ++s.progress;
  } else {
    while (s.generation[size_t(w)] == g) yield();
  }
}

// Every lane publishes v, then reads the value of lane pick(lane).
template <class T, class Pick>
T exchange(T v, Pick pick) {
  static_assert(sizeof(T) <= 8, "at most 64-bit values");
  State& s = st();
  const int lane = s.cur % 32, base = s.cur - lane;
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  s.slot[size_t(s.cur)] = bits;
  warp_barrier();
  const int src = pick(lane);
  assert(src >= 0 && src < warp_lanes(s.cur / 32));
  bits = s.slot[size_t(base + src)];
  warp_barrier();
  T r;
  std::memcpy(&r, &bits, sizeof(T));
  return r;
}

// A random permutation of 0..threads-1 into st().order (xorshift: no state
// beyond the seed, the same sequence on every platform).
inline void shuffle_order(int threads) {
  State& s = st();
  s.order.resize(size_t(threads));
  for (int i = 0; i < threads; ++i) s.order[size_t(i)] = i;
  for (int i = threads - 1; i > 0; --i) {
    s.shuffle ^= s.shuffle << 13;
    s.shuffle ^= s.shuffle >> 7;
    s.shuffle ^= s.shuffle << 17;
    const int j = int(s.shuffle % uint64_t(i + 1));
    const int tmp = s.order[size_t(i)];
    s.order[size_t(i)] = s.order[size_t(j)];
    s.order[size_t(j)] = tmp;
  }
}

// Releases a __syncthreads once every thread still running has arrived.
inline bool block_release() {
  State& s = st();
  if (s.block_arrived == 0 || s.block_arrived < int(s.threads) - s.exited) return false;
  s.block_arrived = 0;
  ++s.block_generation;
  ++s.progress;
  return true;
}

inline void block_barrier() {
  State& s = st();
  const long g = s.block_generation;
  ++s.block_arrived;
  if (!block_release())
    while (s.block_generation == g) yield();
}

inline void trampoline() {
  (*st().body)();
  st().fibers[size_t(st().cur)].done = true;
  ++st().exited;
  block_release();  // the threads waiting at a barrier no longer wait for this one
  ++st().progress;
  __builtin_longjmp(st().sched_jb, 1);  // never returns here
}

// Runs fiber st().cur until it yields or ends.
__attribute__((noinline)) inline void resume() {
  if (__builtin_setjmp(st().sched_jb) == 0) {
    Fiber& f = st().fibers[size_t(st().cur)];
    if (!f.started) {
      f.started = true;
      setcontext(&f.ctx);
    }
    __builtin_longjmp(f.jb, 1);
  }
}

// Runs body() as each of the `threads` threads (1 to 1024) of each of the
// blocks x blocks_y blocks of a grid, one block after another. Returns false
// on a deadlock.
inline bool launch(unsigned blocks, int threads, const std::function<void()>& body, unsigned blocks_y = 1) {
  assert(threads >= 1 && threads <= 1024);
  State& s = st();
  s.body = &body;
  s.grid = blocks;
  s.grid_y = blocks_y;
  s.threads = unsigned(threads);
  if (s.fibers.size() < size_t(threads)) s.fibers.resize(size_t(threads));
  s.slot.assign(size_t(threads), 0);
  for (int t = 0; t < threads; ++t)
    if (!s.fibers[size_t(t)].stack) s.fibers[size_t(t)].stack = new char[kStackBytes];
  const size_t warps = size_t(threads + 31) / 32;
  for (unsigned b = 0; b < blocks * blocks_y; ++b) {
    s.block = b % blocks;
    s.block_y = b / blocks;
    s.arrived.assign(warps, 0);
    s.generation.assign(warps, 0);
    s.block_arrived = 0;
    s.exited = 0;
    s.block_generation = 0;
    for (int t = 0; t < threads; ++t) {
      Fiber& f = s.fibers[size_t(t)];
      f.done = false;
      f.started = false;
      getcontext(&f.ctx);
      f.ctx.uc_stack.ss_sp = f.stack;
      f.ctx.uc_stack.ss_size = kStackBytes;
      f.ctx.uc_link = nullptr;
      makecontext(&f.ctx, trampoline, 0);
    }
    for (;;) {
      const long before = s.progress;
      bool all_done = true;
      if (s.shuffle) shuffle_order(threads);
      for (int i = 0; i < threads; ++i) {
        const int t = s.shuffle ? s.order[size_t(i)] : i;
        if (s.fibers[size_t(t)].done) continue;
        all_done = false;
        s.cur = t;
        resume();
      }
      if (all_done) break;
      if (s.progress == before) {
        std::fprintf(stderr, "warp_emu: deadlock in block %u (threads wait at a barrier others never reach)\n", b);
        return false;
      }
    }
  }
  return true;
}

}  // namespace emu

#define threadIdx (::emu::thread_idx())
#define blockIdx (::emu::block_idx())
#define gridDim (::emu::grid_dim())
#define blockDim (::emu::block_dim())

inline void __syncthreads() { emu::block_barrier(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) {
  assert(mask == 0xffffffffu);
  (void)mask;
  emu::warp_barrier();
}
template <class T>
T __shfl_sync(unsigned mask, T v, int src) {
  assert(mask == 0xffffffffu);
  (void)mask;
  return emu::exchange(v, [src](int) { return src & 31; });
}
template <class T>
T __shfl_xor_sync(unsigned mask, T v, int o) {
  assert(mask == 0xffffffffu && o > 0 && o < 32);
  (void)mask;
  return emu::exchange(v, [o](int lane) { return lane ^ o; });
}
template <class T>
T __shfl_up_sync(unsigned mask, T v, unsigned o) {
  assert(mask == 0xffffffffu);
  (void)mask;
  return emu::exchange(v, [o](int lane) { return lane >= int(o) ? lane - int(o) : lane; });
}
template <class T>
T __shfl_down_sync(unsigned mask, T v, unsigned o) {
  assert(mask == 0xffffffffu);
  (void)mask;
  return emu::exchange(v, [o](int lane) { return lane + int(o) < 32 ? lane + int(o) : lane; });
}
inline unsigned __ballot_sync(unsigned mask, int pred) {
  assert(mask == 0xffffffffu);
  (void)mask;
  emu::State& s = emu::st();
  const int lane = s.cur % 32, base = s.cur - lane;
  s.slot[size_t(s.cur)] = pred ? 1 : 0;
  emu::warp_barrier();
  unsigned m = 0;
  for (int l = 0; l < emu::warp_lanes(s.cur / 32); ++l) m |= unsigned(s.slot[size_t(base + l)] & 1u) << l;
  emu::warp_barrier();
  return m;
}
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __ffs(unsigned x) { return __builtin_ffs(int(x)); }
template <class T>
T __ldg(const T* p) {
  return *p;
}
template <class T>
void __stcs(T* p, T v) {
  *p = v;
}
inline unsigned atomicAdd(unsigned* p, unsigned v) {
  const unsigned old = *p;
  *p = old + v;
  return old;
}
inline int atomicAdd(int* p, int v) {
  const int old = *p;
  *p = old + v;
  return old;
}
inline unsigned long long atomicMin(unsigned long long* p, unsigned long long v) {
  const unsigned long long old = *p;
  if (v < old) *p = v;
  return old;
}
