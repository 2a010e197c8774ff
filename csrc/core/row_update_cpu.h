// One row's optimizer update on the CPU, shared by mk_sparse_row_update and
// the embedding-bag backward that applies updates as it finishes each row.
#pragma once

#include <cmath>
#include <type_traits>

#include "cpu_types.h"
#include "row_update.h"

namespace mk {

template <class V, class A>
inline void store_updated(V* dst, A x, const mk_row_update& u, int64_t row, int64_t col) {
  if constexpr (std::is_same<V, bf16_t>::value) {
    if (u.stochastic_rounding) {
      dst->bits = bf16_bits_stochastic(x, sr_bits(u.seed, u.step, row, col));
      return;
    }
  }
  *dst = from_acc<V, A>(x);
}

// Updates row r (w, D values) from its gradient g, in column order.
template <class V, class A>
inline void update_row(const RowUpdateConsts& c, const mk_row_update& u, V* w, const A* g, int64_t r,
                       int64_t D) {
  A* s1 = static_cast<A*>(u.state1);
  A* s2 = static_cast<A*>(u.state2);
  A scale = A(1);
  if (u.max_row_norm > 0) {
    A sq = A(0);
    for (int64_t d = 0; d < D; ++d) sq += g[d] * g[d];
    const A norm = std::sqrt(sq);
    if (norm > A(u.max_row_norm)) scale = A(u.max_row_norm) / norm;
  }
  A denom = A(1);
  if (u.kind == MK_OPT_ADAGRAD_ROWWISE) {
    A sq = A(0);
    for (int64_t d = 0; d < D; ++d) sq += (scale * g[d]) * (scale * g[d]);
    s1[r] += sq / A(D);
    denom = std::sqrt(s1[r]) + A(u.eps);
  }
  A dummy_m = A(0), dummy_v = A(0);
  for (int64_t d = 0; d < D; ++d) {
    A* m = u.kind == MK_OPT_ADAM ? s1 + r * D + d : &dummy_m;
    A* v = u.kind == MK_OPT_ADAM ? s2 + r * D + d : &dummy_v;
    const A nw = row_update_element(c, to_acc(w[d]), scale * g[d], m, v, denom);
    store_updated<V, A>(w + d, nw, u, r, d);
  }
}

// update_row compiled once, in row_update_cpu.cpp, for every storage type:
// callers inside vectorised clones (the embedding-bag backward) and the
// standalone update then round identically.
template <class V>
void update_row_cpu(const RowUpdateConsts& c, const mk_row_update& u, V* w,
                    const typename acc_of<V>::type* g, int64_t r, int64_t D);

}  // namespace mk
