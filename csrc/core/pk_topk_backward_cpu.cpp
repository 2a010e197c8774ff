// pk_topk's backward on the CPU: the key-table rows and weights of the
// embedding bag the backward runs on (pk_topk_internal.h; the bag itself is
// the embedding-bag kernels, called by c_api.cpp).
#include "cpu_internal.h"
#include "dtypes_internal.h"
#include "pk_topk_internal.h"

namespace mk {
namespace {

template <class A>
void pairs(const mk_pk_topk_bwd_args& a, int64_t* rows, A* w) {
  const int64_t n = a.num_keys, k = a.k, H = a.num_heads, TH = a.num_tokens * a.num_heads;
  const A* g = static_cast<const A*>(a.grad_scores);
  const int threads = resolve_threads(a.num_threads);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t th = 0; th < TH; ++th) {
    const int64_t base = (th % H) * 2 * n;
    for (int64_t i = 0; i < k; ++i) {
      const int64_t slot = a.indices[th * k + i];
      const int64_t r0 = (th * 2) * k + i, r1 = (th * 2 + 1) * k + i;
      rows[r0] = slot / n + base;
      rows[r1] = slot % n + base + n;
      w[r0] = w[r1] = g[th * k + i];
    }
  }
}

}  // namespace

mk_status pk_backward_pairs_cpu(const mk_pk_topk_bwd_args& a, int64_t* rows, void* weights) {
  if (a.dtype == MK_F64) pairs<double>(a, rows, static_cast<double*>(weights));
  else pairs<float>(a, rows, static_cast<float*>(weights));
  return MK_OK;
}

}  // namespace mk
