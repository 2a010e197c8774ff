// Internal side of the row-sparse optimizer updates (mk_sparse_row_update,
// memkernels.h): the update rules, written once for host and device, and the
// entry points. The rules work per element for SGD and Adam, with the per-row
// factors (gradient scale from max_row_norm, Adagrad's row accumulator,
// row-wise Adam's second moment) computed by the caller. Stochastic rounding hashes (seed, step, row, column).
#pragma once

#include <math.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "dtypes_internal.h"
#include "memkernels.h"

namespace mk {

mk_status row_update_check_args(const mk_sparse_row_update_args* a);
mk_status row_update_cpu(const mk_sparse_row_update_args& a);
mk_status row_update_cuda(const mk_sparse_row_update_args& a, void* stream);
// Whether the [N, D] states of u (those its rule has) start 16-byte aligned:
// with aligned rows, the CUDA kernels then use 16-byte vectors.
bool row_states_aligned(const mk_row_update& u);

// Per-update constants, computed once on the host.
struct RowUpdateConsts {
  double lr, beta1, beta2, eps, decay, step_size;
  int kind;
};

// The update with its run-time inputs read (step_ptr, lr_scale): on the host
// for the CPU, in the kernel for CUDA (device pointers).
MK_HD mk_row_update resolve_update(mk_row_update u) {
  if (u.step_ptr) u.step = *u.step_ptr;
  if (u.lr_scale) u.lr *= double(*u.lr_scale);
  u.step_ptr = nullptr;
  u.lr_scale = nullptr;
  return u;
}

MK_HD RowUpdateConsts row_update_consts(const mk_row_update& u) {
  RowUpdateConsts c{};
  c.kind = int(u.kind);
  c.lr = u.lr;
  c.beta1 = u.beta1;
  c.beta2 = u.beta2;
  c.eps = u.eps;
  c.decay = 1.0 - u.lr * u.weight_decay;
  c.step_size = u.lr;
  if (u.kind == MK_OPT_ADAM || u.kind == MK_OPT_ADAM_ROWWISE) {
    const double bc1 = 1.0 - pow(u.beta1, double(u.step));
    const double bc2 = 1.0 - pow(u.beta2, double(u.step));
    c.step_size = u.lr * sqrt(bc2) / bc1;
  }
  return c;
}

MK_HD float ru_sqrt(float x) { return sqrtf(x); }
MK_HD double ru_sqrt(double x) { return sqrt(x); }

// splitmix64 finaliser: a well-mixed 64-bit hash.
MK_HD uint64_t mix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

MK_HD uint32_t sr_bits(uint64_t seed, int64_t step, int64_t row, int64_t col) {
  return uint32_t(mix64(seed ^ mix64(uint64_t(step) ^ mix64(uint64_t(row) * 0x100000001b3ull + uint64_t(col)))));
}

// New value of one element. w is the old value (in the accumulation type),
// g the (scaled) gradient, m and v the Adam moments (updated in place);
// row_denom is sqrt(G) + eps for the row (Adagrad's accumulator, or row-wise
// Adam's second moment, already updated).
template <class A>
MK_HD A row_update_element(const RowUpdateConsts& c, A w, A g, A* m, A* v, A row_denom) {
  w = A(c.decay) * w;
  if (c.kind == MK_OPT_SGD) return w - A(c.lr) * g;
  if (c.kind == MK_OPT_ADAM) {
    const A mm = *m + A(1.0 - c.beta1) * (g - *m);
    const A vv = *v + A(1.0 - c.beta2) * (g * g - *v);
    *m = mm;
    *v = vv;
    return w - A(c.step_size) * mm / (ru_sqrt(vv) + A(c.eps));
  }
  if (c.kind == MK_OPT_ADAM_ROWWISE) {
    const A mm = *m + A(1.0 - c.beta1) * (g - *m);
    *m = mm;
    return w - A(c.step_size) * mm / row_denom;
  }
  return w - A(c.lr) * g / row_denom;
}

// bf16 bits of x rounded stochastically: add 16 random bits below bf16's
// last place, then truncate (NaN and infinity pass through unchanged).
MK_HD uint16_t bf16_bits_stochastic(float x, uint32_t rnd) {
  uint32_t u;
#if defined(__CUDA_ARCH__)
  u = __float_as_uint(x);
#else
  std::memcpy(&u, &x, 4);
#endif
  if ((u & 0x7f800000u) == 0x7f800000u) return uint16_t(u >> 16);
  const uint32_t r = u + (rnd & 0xffffu);
  // Rounding up into infinity keeps the largest finite value's exponent
  // only if it stays finite; otherwise fall back to truncation.
  if ((r & 0x7f800000u) == 0x7f800000u) return uint16_t(u >> 16);
  return uint16_t(r >> 16);
}

// Optimizer-state elements of [N, D] states: the accumulation type, or bf16
// when the update keeps them so (mk_row_update.state_bf16, f32 accumulation
// only), written with stochastic rounding from bits hashed with the state's
// own salt, so they do not repeat the value's bits.
constexpr uint64_t kStateSalt1 = 0x5a17e1a5ull, kStateSalt2 = 0x5a17e2a5ull;

template <class A>
MK_HD A load_state(const void* base, int64_t i, bool bf16) {
  if constexpr (std::is_same<A, float>::value) {
    if (bf16) {
      const uint32_t u = uint32_t(static_cast<const uint16_t*>(base)[i]) << 16;
#if defined(__CUDA_ARCH__)
      return __uint_as_float(u);
#else
      float f;
      std::memcpy(&f, &u, 4);
      return f;
#endif
    }
  }
  return static_cast<const A*>(base)[i];
}

template <class A>
MK_HD void store_state(void* base, int64_t i, A x, bool bf16, const mk_row_update& u, uint64_t salt, int64_t row,
                       int64_t col) {
  if constexpr (std::is_same<A, float>::value) {
    if (bf16) {
      static_cast<uint16_t*>(base)[i] = bf16_bits_stochastic(x, sr_bits(u.seed ^ salt, u.step, row,
                                                                         u.column_offset + col));
      return;
    }
  }
  static_cast<A*>(base)[i] = x;
}

// One element's new value with its [N, D] optimizer state loaded and stored
// (Adam's two moments, row-wise Adam's first), on either device; denom is
// the row's sqrt(G) + eps where the rule has one.
template <class A>
MK_HD A update_element(const RowUpdateConsts& c, const mk_row_update& u, A w, A g, A denom, int64_t r,
                       int64_t d, int64_t D) {
  const bool full_adam = u.kind == MK_OPT_ADAM;
  const bool has_m = full_adam || u.kind == MK_OPT_ADAM_ROWWISE;
  const bool sb = u.state_bf16 != 0;
  const int64_t i = r * D + d;
  A m = A(0), v = A(0);
  if (has_m) m = load_state<A>(u.state1, i, sb);
  if (full_adam) v = load_state<A>(u.state2, i, sb);
  const A nw = row_update_element(c, w, g, &m, &v, denom);
  if (has_m) store_state<A>(u.state1, i, m, sb, u, kStateSalt1, r, d);
  if (full_adam) store_state<A>(u.state2, i, v, sb, u, kStateSalt2, r, d);
  return nw;
}

// Stores an updated element: bf16 tables round stochastically when asked,
// every other case rounds to nearest.
template <class V>
MK_HD void store_updated(V* dst, acc_t<V> x, const mk_row_update& u, int64_t row, int64_t col) {
  if constexpr (ValueTraits<V>::dtype == MK_BF16) {
    if (u.stochastic_rounding) {
      const uint16_t bits = bf16_bits_stochastic(x, sr_bits(u.seed, u.step, row, u.column_offset + col));
#if defined(__CUDA_ARCH__)
      *reinterpret_cast<uint16_t*>(dst) = bits;
#else
      std::memcpy(dst, &bits, 2);
#endif
      return;
    }
  }
  *dst = from_acc<V>(x);
}

#if !defined(__CUDACC__)
// One row's update on the CPU (row r: w, D values, from its gradient g, in
// column order), compiled once in row_update_cpu.cpp for every storage type:
// mk_sparse_row_update and the embedding-bag backward that applies updates as
// it finishes rows then round identically.
template <class V>
void update_row_cpu(const RowUpdateConsts& c, const mk_row_update& u, V* w, const acc_t<V>* g,
                    int64_t r, int64_t D);
#endif

}  // namespace mk
