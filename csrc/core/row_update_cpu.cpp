// CPU row-sparse optimizer updates (mk_sparse_row_update): the touched rows
// are split over the threads; each row is updated by one thread, in column
// order, so the result does not depend on the thread count.
#ifdef _OPENMP
#include <omp.h>
#endif

#include "row_update_cpu.h"
#include "row_update_internal.h"

namespace mk {

namespace {

template <class V>
mk_status update_rows(const mk_sparse_row_update_args& a) {
  using A = typename acc_of<V>::type;
  const RowUpdateConsts c = row_update_consts(a.update);
  V* table = static_cast<V*>(a.table);
  const A* grads = static_cast<const A*>(a.grads);
#ifdef _OPENMP
  const int threads = a.num_threads > 0 ? a.num_threads : omp_get_max_threads();
#endif
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t i = 0; i < a.num_updates; ++i) {
    const int64_t r = a.rows[i];
    if (r < 0 || r >= a.num_rows) continue;
    update_row_cpu<V>(c, a.update, table + r * a.table_row_stride, grads + i * a.dim, r, a.dim);
  }
  return MK_OK;
}

}  // namespace

template <class V>
void update_row_cpu(const RowUpdateConsts& c, const mk_row_update& u, V* w,
                    const typename acc_of<V>::type* g, int64_t r, int64_t D) {
  update_row<V, typename acc_of<V>::type>(c, u, w, g, r, D);
}
template void update_row_cpu<float>(const RowUpdateConsts&, const mk_row_update&, float*, const float*,
                                    int64_t, int64_t);
template void update_row_cpu<double>(const RowUpdateConsts&, const mk_row_update&, double*,
                                     const double*, int64_t, int64_t);
template void update_row_cpu<f16_t>(const RowUpdateConsts&, const mk_row_update&, f16_t*, const float*,
                                    int64_t, int64_t);
template void update_row_cpu<bf16_t>(const RowUpdateConsts&, const mk_row_update&, bf16_t*,
                                     const float*, int64_t, int64_t);

mk_status row_update_cpu(const mk_sparse_row_update_args& a) {
  return dispatch_value_dtype(a.value_dtype, [&](auto v) { return update_rows<decltype(v)>(a); });
}

}  // namespace mk
