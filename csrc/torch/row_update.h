// Device-generic torch entry points of the row-sparse optimizer updates.
#pragma once

#include <c10/util/ArrayRef.h>
#include <c10/util/Optional.h>

#include <string>

#include "common.h"

namespace mkt {

struct UpdateSpec {
  std::string kind;               // "sgd", "adam" or "adagrad_rowwise"
  c10::ArrayRef<double> hyper;    // lr, beta1, beta2, eps, weight_decay, max_row_norm
  int64_t step;
  bool stochastic_rounding;
  int64_t seed;
};

void sparse_row_update(const at::Tensor& table, const at::Tensor& rows, const at::Tensor& grads,
                       const c10::optional<at::Tensor>& state1,
                       const c10::optional<at::Tensor>& state2, const UpdateSpec& spec,
                       Backend be);

at::Tensor embedding_bag_backward_update(const at::Tensor& grad_out, const at::Tensor& values,
                                         const at::Tensor& indices, const at::Tensor& weights,
                                         const c10::optional<at::Tensor>& state1,
                                         const c10::optional<at::Tensor>& state2,
                                         const UpdateSpec& spec, Backend be);

}  // namespace mkt
