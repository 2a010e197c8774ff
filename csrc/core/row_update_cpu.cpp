// CPU row-sparse optimizer updates (mk_sparse_row_update): the touched rows
// are split over the threads; each row is updated by one thread, in column
// order, so the result does not depend on the thread count.
#include <cmath>
#include <type_traits>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "cpu_types.h"
#include "row_update.h"
#include "row_update_internal.h"

namespace mk {

namespace {

template <class V, class A>
inline void store_value(V* dst, A x, const mk_row_update& u, int64_t row, int64_t col) {
  if constexpr (std::is_same<V, bf16_t>::value) {
    if (u.stochastic_rounding) {
      dst->bits = bf16_bits_stochastic(x, sr_bits(u.seed, u.step, row, col));
      return;
    }
  }
  *dst = from_acc<V, A>(x);
}

template <class V>
mk_status update_rows(const mk_sparse_row_update_args& a) {
  using A = typename acc_of<V>::type;
  const RowUpdateConsts c = row_update_consts(a.update);
  const mk_row_update& u = a.update;
  const int64_t D = a.dim;
  V* table = static_cast<V*>(a.table);
  const A* grads = static_cast<const A*>(a.grads);
  A* s1 = static_cast<A*>(u.state1);
  A* s2 = static_cast<A*>(u.state2);
#ifdef _OPENMP
  const int threads = a.num_threads > 0 ? a.num_threads : omp_get_max_threads();
#endif
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t i = 0; i < a.num_updates; ++i) {
    const int64_t r = a.rows[i];
    if (r < 0 || r >= a.num_rows) continue;
    const A* g = grads + i * D;
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
    V* w = table + r * a.table_row_stride;
    A dummy_m = A(0), dummy_v = A(0);
    for (int64_t d = 0; d < D; ++d) {
      A* m = u.kind == MK_OPT_ADAM ? s1 + r * D + d : &dummy_m;
      A* v = u.kind == MK_OPT_ADAM ? s2 + r * D + d : &dummy_v;
      const A nw = row_update_element(c, to_acc(w[d]), scale * g[d], m, v, denom);
      store_value<V, A>(w + d, nw, u, r, d);
    }
  }
  return MK_OK;
}

}  // namespace

mk_status row_update_cpu(const mk_sparse_row_update_args& a) {
  return dispatch_value_dtype(a.value_dtype, [&](auto v) { return update_rows<decltype(v)>(a); });
}

}  // namespace mk
