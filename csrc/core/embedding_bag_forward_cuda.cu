// CUDA forward of the weighted embedding bag: a warp per (bag, column tile),
// fp32 sums in registers, 16-byte loads where the rows are aligned. The
// kernel's body: embedding_bag_forward_kernel_internal.cuh.
#include <cstdint>

#include "cuda_internal.cuh"
#include "embedding_bag_forward_kernel_internal.cuh"
#include "embedding_bag_internal.h"
#include "index_report_internal.h"

namespace mk {
namespace {

using cuda::can_vectorize;
using cuda::kBlockThreads;
using cuda::warp_grid;
using ebfwd::FwdParams;

template <class V, class I, int VEC, int NV, bool FULL>
__global__ void __launch_bounds__(kBlockThreads) eb_forward_kernel(FwdParams<V, I> p) {
  ebfwd::forward_warps<V, I, VEC, NV, FULL>(p);
}

template <class V, class I, int VEC, int NV>
mk_status launch_forward(const FwdParams<V, I>& p, cudaStream_t stream) {
  constexpr int64_t kTile = 32 * NV * VEC;
  const int64_t items = p.T * ((p.D + kTile - 1) / kTile);
  if (p.D % kTile == 0)
    eb_forward_kernel<V, I, VEC, NV, true><<<warp_grid(items), kBlockThreads, 0, stream>>>(p);
  else
    eb_forward_kernel<V, I, VEC, NV, false><<<warp_grid(items), kBlockThreads, 0, stream>>>(p);
  MK_LAUNCH_CHECK();
  return MK_OK;
}

template <class V, class I>
mk_status forward(const mk_embedding_bag_fwd_args& a, cudaStream_t stream) {
  FwdParams<V, I> p;
  p.values = static_cast<const V*>(a.values);
  p.indices = static_cast<const I*>(a.indices);
  p.weights = static_cast<const acc_t<V>*>(a.weights);
  p.out = static_cast<V*>(a.out);
  p.error_flag = a.check_indices ? a.error_flag : nullptr;
  p.first_bad = nullptr;
  if (a.check_indices && a.reporter) {
    const mk_status st = reporter_check_device(a.reporter);
    if (st != MK_OK) return st;
    p.first_bad = reporter_slot(a.reporter);
  }
  p.N = a.num_rows;
  p.D = a.dim;
  p.T = a.num_bags;
  p.B = a.bag_size;
  p.stride = a.values_row_stride;
  constexpr int VEC = int(16 / sizeof(V));
  const bool vec = can_vectorize<V>(p.D, {{p.values, p.stride}, {p.out, p.D}});
  mk_status st;
  if (vec)
    st = p.D <= 64 * VEC ? launch_forward<V, I, VEC, 1>(p, stream) : launch_forward<V, I, VEC, 4>(p, stream);
  else
    st = p.D <= 64 ? launch_forward<V, I, 1, 1>(p, stream) : launch_forward<V, I, 1, 4>(p, stream);
  if (st != MK_OK || !p.first_bad) return st;
  return publish_bad_index(a.reporter, p.first_bad, a.indices, a.index_dtype, p.T * p.B, p.N, p.B,
                           stream);
}

}  // namespace

mk_status eb_forward_cuda(const mk_embedding_bag_fwd_args& a, void* stream) {
  auto s = static_cast<cudaStream_t>(stream);
  return dispatch_value(a.value_dtype, [&](auto v) {
    using V = decltype(v);
    return dispatch_index(a.index_dtype, [&](auto i) { return forward<V, decltype(i)>(a, s); });
  });
}

}  // namespace mk
