// The device-generic torch entry points of every memkernels op: checks,
// tensor plumbing and calls into the core (csrc/core/memkernels.h). One
// registration (registration.cpp) binds them to the schemas for the CPU and
// CUDA dispatch keys, with the Backend of the inputs' device.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/ArrayRef.h>
#include <c10/util/Optional.h>
#include <c10/util/string_view.h>

#include <string>
#include <tuple>

#include "../core/memkernels.h"

namespace mkt {

// Where a core call runs: CPU, or CUDA on a given stream.
struct Backend {
  mk_device device;
  void* stream;
};

// ---- embedding bag (embedding_bag_op.cpp) ------------------------------------------

// How the forward checks its indices (the schema's check_indices string):
// Off ("off") never reports a bad index; Deferred ("deferred", the default)
// reports it without synchronising, raising at a later call on the device or
// at take_index_error; Sync ("sync") raises at the call itself. The CPU raises
// at the call in both checked modes. A bad index is never dereferenced.
enum class IndexCheck { Off, Deferred, Sync };
IndexCheck parse_index_check(c10::string_view mode);

at::Tensor embedding_bag_forward(const at::Tensor& values, const at::Tensor& indices,
                                 const at::Tensor& weights, IndexCheck check, Backend be);

// The message of the bad index CUDA device `device` has reported and no one
// has read yet (reading it clears it), or "" (never blocks, never
// synchronises: synchronise first to cover every queued call).
std::string take_index_error(int device);

// (grad_values dense [N, D], grad_weights [T, B])
std::tuple<at::Tensor, at::Tensor> embedding_bag_backward(const at::Tensor& grad_out,
                                                          const at::Tensor& values,
                                                          const at::Tensor& indices,
                                                          const at::Tensor& weights, Backend be);

// (rows int64 [U] ascending, row gradients [U, D] in the values' dtype, or in
// the accumulation type with acc_grads, grad_weights [T, B]). capacity > 0:
// the capacity form, [capacity] rows padded with -1 (zero gradients), no
// host round trip for the count.
std::tuple<at::Tensor, at::Tensor, at::Tensor> embedding_bag_backward_sparse(
    const at::Tensor& grad_out, const at::Tensor& values, const at::Tensor& indices,
    const at::Tensor& weights, Backend be, bool acc_grads = false, int64_t capacity = 0);

// ---- row-sparse optimizer updates (row_update_op.cpp) ------------------------------

struct UpdateSpec {
  std::string kind;             // "sgd", "adam" or "adagrad_rowwise"
  c10::ArrayRef<double> hyper;  // lr, beta1, beta2, eps, weight_decay, max_row_norm
  int64_t step;
  bool stochastic_rounding;
  int64_t seed;
  int64_t column_offset;  // the table's first column in the whole table it is a shard of
  // Read at run time when given (one int64 / one float32 on the table's
  // device): the step count replacing `step`, and a factor on lr. So a
  // captured CUDA graph or a compiled call serves every step.
  c10::optional<at::Tensor> step_tensor;
  c10::optional<at::Tensor> lr_scale;
};

// The core's update of `table` described by spec, with its state checked.
mk_row_update make_update(const at::Tensor& table, const c10::optional<at::Tensor>& state1,
                          const c10::optional<at::Tensor>& state2, const UpdateSpec& spec);

void sparse_row_update(const at::Tensor& table, const at::Tensor& rows, const at::Tensor& grads,
                       const c10::optional<at::Tensor>& state1,
                       const c10::optional<at::Tensor>& state2, const UpdateSpec& spec,
                       Backend be);

// The embedding-bag backward fused with an update of `values` (in place): no
// gradient of `values` is returned or kept. Returns grad_weights in the
// accumulation type. Lives in embedding_bag_op.cpp, beside the backward.
at::Tensor embedding_bag_backward_update(const at::Tensor& grad_out, const at::Tensor& values,
                                         const at::Tensor& indices, const at::Tensor& weights,
                                         const c10::optional<at::Tensor>& state1,
                                         const c10::optional<at::Tensor>& state2,
                                         const UpdateSpec& spec, Backend be);

// ---- product-key top-k (pk_topk_op.cpp) --------------------------------------------

// (scores [T, H, k] float32 (float64 for float64 inputs), slot ids [T, H, k] int64)
// impl: "auto" (the staged path), "staged" (library GEMM + the selection
// kernel) or "fused" (CUDA, 16-bit inputs, k <= MK_PK_FUSED_MAX_K).
std::tuple<at::Tensor, at::Tensor> pk_topk_forward(const at::Tensor& query, const at::Tensor& keys,
                                                   int64_t k, c10::string_view impl, Backend be);

// (grad_query [T, H, Dk], grad_keys [H, 2, n_keys, Dk / 2])
std::tuple<at::Tensor, at::Tensor> pk_topk_backward(const at::Tensor& grad_scores,
                                                    const at::Tensor& query,
                                                    const at::Tensor& keys,
                                                    const at::Tensor& indices, Backend be);

}  // namespace mkt
