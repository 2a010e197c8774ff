// Device-generic torch entry points of product-key top-k scoring; the CPU and
// CUDA registrations call these with their Backend.
#pragma once

#include <tuple>

#include "common.h"

namespace mkt {

// (scores [T, H, k] float32 (float64 for float64 inputs), slot ids [T, H, k] int64)
// impl: "auto" (currently the staged path), "staged" (library GEMM + the
// selection kernel) or "fused" (CUDA, 16-bit inputs, k <= 128).
std::tuple<at::Tensor, at::Tensor> pk_topk_forward(const at::Tensor& query, const at::Tensor& keys,
                                                   int64_t k, c10::string_view impl, Backend be);

// (grad_query [T, H, Dk], grad_keys [H, 2, n_keys, Dk / 2])
std::tuple<at::Tensor, at::Tensor> pk_topk_backward(const at::Tensor& grad_scores,
                                                    const at::Tensor& query,
                                                    const at::Tensor& keys,
                                                    const at::Tensor& indices, Backend be);

}  // namespace mkt
