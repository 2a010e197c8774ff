// Torch glue for the row-sparse optimizer updates: checks, state plumbing,
// and the embedding-bag backward fused with an update (no table-sized
// gradient ever exists).
#include "row_update.h"

#include <ATen/Parallel.h>
#include <torch/library.h>

#include "embedding_bag.h"

namespace mkt {

namespace {

constexpr const char* kOp = "memkernels.sparse_row_update";

mk_row_update make_update(const at::Tensor& table, const c10::optional<at::Tensor>& state1,
                          const c10::optional<at::Tensor>& state2, const UpdateSpec& spec) {
  mk_row_update u{};
  if (spec.kind == "sgd") {
    u.kind = MK_OPT_SGD;
  } else if (spec.kind == "adam") {
    u.kind = MK_OPT_ADAM;
  } else if (spec.kind == "adagrad_rowwise") {
    u.kind = MK_OPT_ADAGRAD_ROWWISE;
  } else {
    TORCH_CHECK(false, kOp, ": kind must be 'sgd', 'adam' or 'adagrad_rowwise'; got '", spec.kind, "'");
  }
  TORCH_CHECK(spec.hyper.size() == 6, kOp,
              ": hyper must be [lr, beta1, beta2, eps, weight_decay, max_row_norm]; got ",
              spec.hyper.size(), " values");
  u.lr = spec.hyper[0];
  u.beta1 = spec.hyper[1];
  u.beta2 = spec.hyper[2];
  u.eps = spec.hyper[3];
  u.weight_decay = spec.hyper[4];
  u.max_row_norm = spec.hyper[5];
  u.step = spec.step;
  u.stochastic_rounding = spec.stochastic_rounding ? 1 : 0;
  u.seed = uint64_t(spec.seed);
  const at::ScalarType acc = acc_dtype(table.scalar_type());
  const int64_t N = table.size(0), D = table.size(1);
  auto check_state = [&](const c10::optional<at::Tensor>& st, const char* name,
                         at::IntArrayRef shape) -> void* {
    TORCH_CHECK(st.has_value() && st->defined(), kOp, ": ", spec.kind, " needs ", name);
    check_same_device(kOp, table, "table", *st, name);
    TORCH_CHECK(st->scalar_type() == acc, kOp, ": ", name, " must be ", acc, "; got ",
                st->scalar_type());
    TORCH_CHECK(st->sizes() == shape && st->is_contiguous(), kOp, ": ", name,
                " must be a contiguous tensor of shape ", shape, "; got ", st->sizes());
    return st->data_ptr();
  };
  if (u.kind == MK_OPT_ADAM) {
    TORCH_CHECK(u.step >= 1, kOp, ": adam needs step >= 1 (the count including this update); got ",
                u.step);
    u.state1 = check_state(state1, "state1 (exp_avg)", {N, D});
    u.state2 = check_state(state2, "state2 (exp_avg_sq)", {N, D});
  } else if (u.kind == MK_OPT_ADAGRAD_ROWWISE) {
    u.state1 = check_state(state1, "state1 (row accumulator)", {N});
  }
  return u;
}

void check_table(const at::Tensor& table) {
  check_dim(kOp, table, "table", 2, "[num_rows, dim]");
  TORCH_CHECK(is_value_dtype(table.scalar_type()), kOp,
              ": table must be float32, float16, bfloat16 or float64; got ", table.scalar_type());
  TORCH_CHECK(table.stride(1) == 1 || table.size(1) == 1, kOp,
              ": table must have unit stride along its last dimension; got strides ",
              table.strides());
}

void run_update(const at::Tensor& table, const at::Tensor& rows, const at::Tensor& grads,
                const mk_row_update& u, Backend be) {
  mk_sparse_row_update_args a{};
  a.num_rows = table.size(0);
  a.dim = table.size(1);
  a.value_dtype = to_mk_dtype(table.scalar_type());
  a.table = table.data_ptr();
  a.table_row_stride = table.size(0) > 1 ? table.stride(0) : table.size(1);
  a.num_updates = rows.numel();
  a.rows = rows.data_ptr<int64_t>();
  a.grads = grads.data_ptr();
  a.update = u;
  a.num_threads = at::get_num_threads();
  check_status(mk_sparse_row_update(&a, be.device, be.stream), kOp);
}

}  // namespace

void sparse_row_update(const at::Tensor& table, const at::Tensor& rows_in,
                       const at::Tensor& grads_in, const c10::optional<at::Tensor>& state1,
                       const c10::optional<at::Tensor>& state2, const UpdateSpec& spec,
                       Backend be) {
  check_table(table);
  check_dim(kOp, rows_in, "rows", 1, "[U]");
  check_dim(kOp, grads_in, "grads", 2, "[U, dim]");
  check_same_device(kOp, table, "table", rows_in, "rows");
  check_same_device(kOp, table, "table", grads_in, "grads");
  TORCH_CHECK(rows_in.scalar_type() == at::kLong || rows_in.scalar_type() == at::kInt, kOp,
              ": rows must be int64 or int32; got ", rows_in.scalar_type());
  TORCH_CHECK(grads_in.size(0) == rows_in.size(0) && grads_in.size(1) == table.size(1), kOp,
              ": grads must have shape [", rows_in.size(0), ", ", table.size(1), "]; got ",
              grads_in.sizes());
  const mk_row_update u = make_update(table, state1, state2, spec);
  const at::Tensor rows = rows_in.to(at::kLong).contiguous();
  const at::Tensor grads = grads_in.to(acc_dtype(table.scalar_type())).contiguous();
  run_update(table, rows, grads, u, be);
}

at::Tensor embedding_bag_backward_update(const at::Tensor& grad_out, const at::Tensor& values,
                                         const at::Tensor& indices, const at::Tensor& weights,
                                         const c10::optional<at::Tensor>& state1,
                                         const c10::optional<at::Tensor>& state2,
                                         const UpdateSpec& spec, Backend be) {
  check_table(values);
  const mk_row_update u = make_update(values, state1, state2, spec);
  // CPU: each row is updated as the segment reduction finishes it (the row
  // gradient is never written). CUDA (for now): the row gradients go to an
  // fp32 [U, D] buffer, then the update kernel runs on those rows.
  if (be.device == MK_CPU) return embedding_bag_backward_apply(grad_out, values, indices, weights, u, be);
  at::Tensor rows, row_grads, grad_weights;
  std::tie(rows, row_grads, grad_weights) =
      embedding_bag_backward_sparse(grad_out, values, indices, weights, be, /*acc_grads=*/true);
  run_update(values, rows, row_grads, u, be);
  return grad_weights;
}

namespace {

constexpr Backend kCpu{MK_CPU, nullptr};

void update_cpu(const at::Tensor& table, const at::Tensor& rows, const at::Tensor& grads,
                const c10::optional<at::Tensor>& state1, const c10::optional<at::Tensor>& state2,
                c10::string_view kind, c10::ArrayRef<double> hyper, int64_t step, bool sr,
                int64_t seed) {
  sparse_row_update(table, rows, grads, state1, state2,
                    UpdateSpec{std::string(kind), hyper, step, sr, seed}, kCpu);
}

at::Tensor backward_update_cpu(const at::Tensor& grad_out, const at::Tensor& values,
                               const at::Tensor& indices, const at::Tensor& weights,
                               const c10::optional<at::Tensor>& state1,
                               const c10::optional<at::Tensor>& state2, c10::string_view kind,
                               c10::ArrayRef<double> hyper, int64_t step, bool sr, int64_t seed) {
  return embedding_bag_backward_update(grad_out, values, indices, weights, state1, state2,
                                       UpdateSpec{std::string(kind), hyper, step, sr, seed}, kCpu);
}

}  // namespace

TORCH_LIBRARY_IMPL(memkernels, CPU, m) {
  m.impl("sparse_row_update", &update_cpu);
  m.impl("embedding_bag_backward_update", &backward_update_cpu);
}

}  // namespace mkt
