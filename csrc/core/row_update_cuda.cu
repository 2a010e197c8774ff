// CUDA row-sparse optimizer updates (mk_sparse_row_update): a warp per
// touched row (grid-stride), the body in row_update_kernel_internal.cuh,
// shared with the embedding-bag backward that applies the update inside its
// reduction. Row norms and row means are warp reductions in a fixed order;
// each element has one writer.
#include "cuda_internal.cuh"
#include "row_update_internal.h"
#include "row_update_kernel_internal.cuh"

namespace mk {
namespace {

template <class V, int VEC>
__global__ void __launch_bounds__(cuda::kBlockThreads)
    row_update_kernel(mk_sparse_row_update_args a, RowUpdateConsts c) {
  rowupd::update_rows<V, VEC>(a, c);
}

}  // namespace

// Whether the [N, D] optimizer states of update u allow VEC-wide accesses
// (their base addresses; their rows follow from D).
bool row_states_aligned(const mk_row_update& u) {
  const bool s1 = u.kind == MK_OPT_ADAM || u.kind == MK_OPT_ADAM_ROWWISE;
  const bool s2 = u.kind == MK_OPT_ADAM;
  if (s1 && reinterpret_cast<uintptr_t>(u.state1) % 16 != 0) return false;
  if (s2 && reinterpret_cast<uintptr_t>(u.state2) % 16 != 0) return false;
  return true;
}

mk_status row_update_cuda(const mk_sparse_row_update_args& a, void* stream) {
  if (a.num_updates == 0) return MK_OK;
  const RowUpdateConsts c = row_update_consts(a.update);
  const unsigned blocks = cuda::warp_grid(a.num_updates);
  auto s = static_cast<cudaStream_t>(stream);
  return dispatch_value(a.value_dtype, [&](auto v) {
    using V = decltype(v);
    constexpr int VEC = int(16 / sizeof(V));
    const bool vec = row_states_aligned(a.update) &&
                     cuda::can_vectorize<V>(a.dim, {{a.table, a.table_row_stride}, {a.grads, a.dim}});
    if (vec)
      row_update_kernel<V, VEC><<<blocks, cuda::kBlockThreads, 0, s>>>(a, c);
    else
      row_update_kernel<V, 1><<<blocks, cuda::kBlockThreads, 0, s>>>(a, c);
    MK_LAUNCH_CHECK();
    return MK_OK;
  });
}

}  // namespace mk
