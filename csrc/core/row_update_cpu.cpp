// CPU row-sparse optimizer updates (mk_sparse_row_update): the touched rows
// are split over the threads; each row is updated by one thread, in column
// order, so the result does not depend on the thread count.
#include <cmath>

#include "cpu_internal.h"
#include "row_update_internal.h"

namespace mk {

template <class V>
void update_row_cpu(const RowUpdateConsts& c, const mk_row_update& u, V* w, const acc_t<V>* g,
                    int64_t r, int64_t D) {
  using A = acc_t<V>;
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
  } else if (u.kind == MK_OPT_ADAM_ROWWISE) {
    A sq = A(0);
    for (int64_t d = 0; d < D; ++d) sq += (scale * g[d]) * (scale * g[d]);
    s2[r] += A(1.0 - u.beta2) * (sq / A(D) - s2[r]);
    denom = std::sqrt(s2[r]) + A(u.eps);
  }
  for (int64_t d = 0; d < D; ++d)
    store_updated<V>(w + d, update_element<A>(c, u, to_acc(w[d]), scale * g[d], denom, r, d, D), u, r, d);
}

#define MK_INSTANTIATE(id, host, device, acc)                                                  \
  template void update_row_cpu<host>(const RowUpdateConsts&, const mk_row_update&, host*, \
                                     const acc*, int64_t, int64_t);
MK_VALUE_DTYPES(MK_INSTANTIATE)
#undef MK_INSTANTIATE

namespace {

template <class V>
mk_status update_rows(const mk_sparse_row_update_args& a) {
  using A = acc_t<V>;
  const mk_row_update u = resolve_update(a.update);  // host memory on the CPU
  const RowUpdateConsts c = row_update_consts(u);
  V* table = static_cast<V*>(a.table);
  const A* grads = static_cast<const A*>(a.grads);
  const int threads = resolve_threads(a.num_threads);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t i = 0; i < a.num_updates; ++i) {
    const int64_t r = a.rows[i];
    if (r < 0 || r >= a.num_rows) continue;
    update_row_cpu<V>(c, u, table + r * a.table_row_stride, grads + i * a.dim, r, a.dim);
  }
  return MK_OK;
}

}  // namespace

mk_status row_update_cpu(const mk_sparse_row_update_args& a) {
  return dispatch_value(a.value_dtype, [&](auto v) { return update_rows<decltype(v)>(a); });
}

}  // namespace mk
