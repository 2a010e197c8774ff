// CUDA row-sparse optimizer updates (mk_sparse_row_update): a warp per
// touched row (grid-stride). Row norms and Adagrad's row mean are warp
// reductions in a fixed butterfly order; each element has one writer.
#include "cuda_internal.cuh"
#include "row_update_internal.h"

namespace mk {
namespace {

using cuda::warp_sum;

template <class V>
__global__ void row_update_kernel(mk_sparse_row_update_args a, RowUpdateConsts c) {
  using A = acc_t<V>;
  // Run-time step and learning-rate scale, read on the device (every thread
  // the same numbers).
  const bool runtime = a.update.step_ptr || a.update.lr_scale;
  const mk_row_update u = runtime ? resolve_update(a.update) : a.update;
  if (runtime) c = row_update_consts(u);
  const int lane = threadIdx.x & 31;
  const int64_t warps = int64_t(gridDim.x) * (blockDim.x / 32);
  const int64_t D = a.dim;
  V* table = static_cast<V*>(a.table);
  const A* grads = static_cast<const A*>(a.grads);
  A* s1 = static_cast<A*>(u.state1);
  A* s2 = static_cast<A*>(u.state2);
  for (int64_t i = int64_t(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32; i < a.num_updates;
       i += warps) {
    const int64_t r = a.rows[i];
    if (r < 0 || r >= a.num_rows) continue;
    const A* g = grads + i * D;
    A scale = A(1);
    if (u.max_row_norm > 0) {
      A sq = A(0);
      for (int64_t d = lane; d < D; d += 32) sq += g[d] * g[d];
      const A norm = ru_sqrt(warp_sum(sq));
      if (norm > A(u.max_row_norm)) scale = A(u.max_row_norm) / norm;
    }
    A denom = A(1);
    if (u.kind == MK_OPT_ADAGRAD_ROWWISE) {
      A sq = A(0);
      for (int64_t d = lane; d < D; d += 32) sq += (scale * g[d]) * (scale * g[d]);
      const A acc = s1[r] + warp_sum(sq) / A(D);
      __syncwarp();
      if (lane == 0) s1[r] = acc;
      denom = ru_sqrt(acc) + A(u.eps);
    } else if (u.kind == MK_OPT_ADAM_ROWWISE) {
      A sq = A(0);
      for (int64_t d = lane; d < D; d += 32) sq += (scale * g[d]) * (scale * g[d]);
      const A old = s2[r];
      const A vr = old + A(1.0 - u.beta2) * (warp_sum(sq) / A(D) - old);
      __syncwarp();
      if (lane == 0) s2[r] = vr;
      denom = ru_sqrt(vr) + A(u.eps);
    }
    V* w = table + r * a.table_row_stride;
    for (int64_t d = lane; d < D; d += 32) {
      const A nw = update_element<A>(c, u, to_acc(w[d]), scale * g[d], denom, r, d, D);
      store_updated<V>(w + d, nw, u, r, d);
    }
  }
}

}  // namespace

mk_status row_update_cuda(const mk_sparse_row_update_args& a, void* stream) {
  if (a.num_updates == 0) return MK_OK;
  const RowUpdateConsts c = row_update_consts(a.update);
  const unsigned blocks = cuda::warp_grid(a.num_updates);
  auto s = static_cast<cudaStream_t>(stream);
  return dispatch_value(a.value_dtype, [&](auto v) {
    row_update_kernel<decltype(v)><<<blocks, cuda::kBlockThreads, 0, s>>>(a, c);
    MK_LAUNCH_CHECK();
    return MK_OK;
  });
}

}  // namespace mk
