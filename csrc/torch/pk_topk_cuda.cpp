// CUDA registration of product-key top-k: a device guard and the current
// stream around the device-generic entry points.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "pk_topk.h"

namespace mkt {
namespace {

Backend current(const at::Tensor& t) {
  return Backend{MK_CUDA, c10::cuda::getCurrentCUDAStream(t.device().index()).stream()};
}

std::tuple<at::Tensor, at::Tensor> forward_cuda(const at::Tensor& query, const at::Tensor& keys,
                                                int64_t k, c10::string_view impl) {
  const c10::cuda::CUDAGuard guard(query.device());
  return pk_topk_forward(query, keys, k, impl, current(query));
}

std::tuple<at::Tensor, at::Tensor> backward_cuda(const at::Tensor& grad_scores,
                                                 const at::Tensor& query, const at::Tensor& keys,
                                                 const at::Tensor& indices) {
  const c10::cuda::CUDAGuard guard(query.device());
  return pk_topk_backward(grad_scores, query, keys, indices, current(query));
}

}  // namespace

TORCH_LIBRARY_IMPL(memkernels, CUDA, m) {
  m.impl("pk_topk", &forward_cuda);
  m.impl("pk_topk_backward", &backward_cuda);
}

}  // namespace mkt
