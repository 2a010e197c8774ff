// CUDA registration of the row-sparse optimizer updates: a device guard and
// the current stream around the device-generic entry points.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "row_update.h"

namespace mkt {
namespace {

Backend current(const at::Tensor& t) {
  return Backend{MK_CUDA, c10::cuda::getCurrentCUDAStream(t.device().index()).stream()};
}

void update_cuda(const at::Tensor& table, const at::Tensor& rows, const at::Tensor& grads,
                 const c10::optional<at::Tensor>& state1, const c10::optional<at::Tensor>& state2,
                 c10::string_view kind, c10::ArrayRef<double> hyper, int64_t step, bool sr,
                 int64_t seed) {
  const c10::cuda::CUDAGuard guard(table.device());
  sparse_row_update(table, rows, grads, state1, state2,
                    UpdateSpec{std::string(kind), hyper, step, sr, seed}, current(table));
}

at::Tensor backward_update_cuda(const at::Tensor& grad_out, const at::Tensor& values,
                                const at::Tensor& indices, const at::Tensor& weights,
                                const c10::optional<at::Tensor>& state1,
                                const c10::optional<at::Tensor>& state2, c10::string_view kind,
                                c10::ArrayRef<double> hyper, int64_t step, bool sr, int64_t seed) {
  const c10::cuda::CUDAGuard guard(values.device());
  return embedding_bag_backward_update(grad_out, values, indices, weights, state1, state2,
                                       UpdateSpec{std::string(kind), hyper, step, sr, seed},
                                       current(values));
}

}  // namespace

TORCH_LIBRARY_IMPL(memkernels, CUDA, m) {
  m.impl("sparse_row_update", &update_cuda);
  m.impl("embedding_bag_backward_update", &backward_update_cuda);
}

}  // namespace mkt
