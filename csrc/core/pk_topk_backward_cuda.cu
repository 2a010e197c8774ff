// pk_topk's backward on CUDA: the key-table rows and weights of the
// embedding bag the backward runs on (pk_topk_internal.h), a thread per
// selected pair.
#include <algorithm>

#include "cuda_internal.cuh"
#include "dtypes_internal.h"
#include "pk_topk_internal.h"

namespace mk {
namespace {

template <class A>
__global__ void pk_backward_pairs_kernel(const int64_t* indices, const A* g, int64_t TH, int64_t H, int64_t n,
                                         int64_t k, int64_t* rows, A* w) {
  const int64_t total = TH * k, step = int64_t(gridDim.x) * blockDim.x;
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < total; e += step) {
    const int64_t th = e / k, i = e % k, base = (th % H) * 2 * n, slot = indices[e];
    const int64_t r0 = (th * 2) * k + i, r1 = (th * 2 + 1) * k + i;
    rows[r0] = slot / n + base;
    rows[r1] = slot % n + base + n;
    w[r0] = g[e];
    w[r1] = g[e];
  }
}

}  // namespace

mk_status pk_backward_pairs_cuda(const mk_pk_topk_bwd_args& a, int64_t* rows, void* weights, void* stream) {
  const int64_t TH = a.num_tokens * a.num_heads, total = TH * a.k;
  const unsigned blocks = unsigned(std::min<int64_t>((total + cuda::kBlockThreads - 1) / cuda::kBlockThreads, 4096));
  auto s = static_cast<cudaStream_t>(stream);
  if (a.dtype == MK_F64)
    pk_backward_pairs_kernel<double><<<blocks, cuda::kBlockThreads, 0, s>>>(
        a.indices, static_cast<const double*>(a.grad_scores), TH, a.num_heads, a.num_keys, a.k,
        rows, static_cast<double*>(weights));
  else
    pk_backward_pairs_kernel<float><<<blocks, cuda::kBlockThreads, 0, s>>>(
        a.indices, static_cast<const float*>(a.grad_scores), TH, a.num_heads, a.num_keys, a.k,
        rows, static_cast<float*>(weights));
  MK_LAUNCH_CHECK();
  return MK_OK;
}

}  // namespace mk
