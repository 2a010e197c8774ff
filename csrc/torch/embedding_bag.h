// Device-generic torch entry points of the weighted embedding bag; the CPU
// and CUDA registrations call these with their Backend.
#pragma once

#include <tuple>

#include "common.h"

namespace mkt {

at::Tensor embedding_bag_forward(const at::Tensor& values, const at::Tensor& indices,
                                 const at::Tensor& weights, bool check_indices, Backend be);

// (grad_values dense [N, D], grad_weights [T, B]; undefined unless wanted)
std::tuple<at::Tensor, at::Tensor> embedding_bag_backward(const at::Tensor& grad_out,
                                                          const at::Tensor& values,
                                                          const at::Tensor& indices,
                                                          const at::Tensor& weights, Backend be,
                                                          bool want_grad_weights = true);

// (rows int64 [U] ascending, row gradients [U, D] in the values' dtype, or in
// the accumulation type with acc_grads, grad_weights [T, B])
std::tuple<at::Tensor, at::Tensor, at::Tensor> embedding_bag_backward_sparse(
    const at::Tensor& grad_out, const at::Tensor& values, const at::Tensor& indices,
    const at::Tensor& weights, Backend be, bool acc_grads = false);

// CPU: the backward with `update` applied to each finished row of `values`
// (in place) instead of writing any gradient; returns grad_weights.
at::Tensor embedding_bag_backward_apply(const at::Tensor& grad_out, const at::Tensor& values,
                                        const at::Tensor& indices, const at::Tensor& weights,
                                        const mk_row_update& update, Backend be);

}  // namespace mkt
