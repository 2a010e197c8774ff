// CUDA registration of the weighted embedding bag: a device guard and the
// current stream around the device-generic entry points.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "embedding_bag.h"

namespace mkt {
namespace {

Backend current(const at::Tensor& t) {
  return Backend{MK_CUDA, c10::cuda::getCurrentCUDAStream(t.device().index()).stream()};
}

at::Tensor forward_cuda(const at::Tensor& values, const at::Tensor& indices,
                        const at::Tensor& weights, bool /*sparse*/, bool check_indices) {
  const c10::cuda::CUDAGuard guard(values.device());
  return embedding_bag_forward(values, indices, weights, check_indices, current(values));
}

std::tuple<at::Tensor, at::Tensor> backward_cuda(const at::Tensor& grad_out,
                                                 const at::Tensor& values,
                                                 const at::Tensor& indices,
                                                 const at::Tensor& weights) {
  const c10::cuda::CUDAGuard guard(values.device());
  return embedding_bag_backward(grad_out, values, indices, weights, current(values));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_sparse_cuda(const at::Tensor& grad_out,
                                                                    const at::Tensor& values,
                                                                    const at::Tensor& indices,
                                                                    const at::Tensor& weights) {
  const c10::cuda::CUDAGuard guard(values.device());
  return embedding_bag_backward_sparse(grad_out, values, indices, weights, current(values));
}

}  // namespace

TORCH_LIBRARY_IMPL(memkernels, CUDA, m) {
  m.impl("embedding_bag", &forward_cuda);
  m.impl("embedding_bag_backward", &backward_cuda);
  m.impl("embedding_bag_backward_sparse", &backward_sparse_cuda);
}

}  // namespace mkt
