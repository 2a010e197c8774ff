// The row-update rules of mk_sparse_row_update (memkernels.h), written once
// for host and device: per element for SGD and Adam, with the per-row factors
// (gradient scale from max_row_norm, Adagrad's row accumulator) computed by
// the caller. Stochastic rounding hashes (seed, step, row, column).
#pragma once

#include <cmath>
#include <math.h>
#include <cstdint>
#include <cstring>

#include "memkernels.h"

#if defined(__CUDACC__)
#define MK_RU_HD __host__ __device__ __forceinline__
#else
#define MK_RU_HD inline
#endif

namespace mk {

// Per-update constants, computed once on the host.
struct RowUpdateConsts {
  double lr, beta1, beta2, eps, decay, step_size;
  int kind;
};

inline RowUpdateConsts row_update_consts(const mk_row_update& u) {
  RowUpdateConsts c{};
  c.kind = int(u.kind);
  c.lr = u.lr;
  c.beta1 = u.beta1;
  c.beta2 = u.beta2;
  c.eps = u.eps;
  c.decay = 1.0 - u.lr * u.weight_decay;
  c.step_size = u.lr;
  if (u.kind == MK_OPT_ADAM) {
    const double bc1 = 1.0 - std::pow(u.beta1, double(u.step));
    const double bc2 = 1.0 - std::pow(u.beta2, double(u.step));
    c.step_size = u.lr * std::sqrt(bc2) / bc1;
  }
  return c;
}

MK_RU_HD float ru_sqrt(float x) { return sqrtf(x); }
MK_RU_HD double ru_sqrt(double x) { return sqrt(x); }

// splitmix64 finaliser: a well-mixed 64-bit hash.
MK_RU_HD uint64_t mix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

MK_RU_HD uint32_t sr_bits(uint64_t seed, int64_t step, int64_t row, int64_t col) {
  return uint32_t(mix64(seed ^ mix64(uint64_t(step) ^ mix64(uint64_t(row) * 0x100000001b3ull + uint64_t(col)))));
}

// New value of one element. w is the old value (in the accumulation type),
// g the (scaled) gradient, m and v the Adam moments (updated in place);
// row_denom is Adagrad's sqrt(G) + eps for the row.
template <class A>
MK_RU_HD A row_update_element(const RowUpdateConsts& c, A w, A g, A* m, A* v, A row_denom) {
  w = A(c.decay) * w;
  if (c.kind == MK_OPT_SGD) return w - A(c.lr) * g;
  if (c.kind == MK_OPT_ADAM) {
    const A mm = *m + A(1.0 - c.beta1) * (g - *m);
    const A vv = *v + A(1.0 - c.beta2) * (g * g - *v);
    *m = mm;
    *v = vv;
    return w - A(c.step_size) * mm / (ru_sqrt(vv) + A(c.eps));
  }
  return w - A(c.lr) * g / row_denom;
}

}  // namespace mk

namespace mk {

// bf16 bits of x rounded stochastically: add 16 random bits below bf16's
// last place, then truncate (NaN and infinity pass through unchanged).
MK_RU_HD uint16_t bf16_bits_stochastic(float x, uint32_t rnd) {
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

}  // namespace mk
