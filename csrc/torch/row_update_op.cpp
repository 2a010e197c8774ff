// Torch glue for the row-sparse optimizer updates: the update's description
// and state checked and handed to the core. The embedding-bag backward fused
// with an update uses make_update (embedding_bag_op.cpp).
#include <ATen/Parallel.h>

#include "checks.h"
#include "ops.h"

namespace mkt {

namespace {

constexpr const char* kOp = "memkernels.sparse_row_update";

void check_table(const at::Tensor& table) {
  check_dim(kOp, table, "table", 2, "[num_rows, dim]");
  check_value_dtype(kOp, table, "table");
  TORCH_CHECK(table.stride(1) == 1 || table.size(1) == 1, kOp,
              ": table must have unit stride along its last dimension; got strides ",
              table.strides());
}

}  // namespace

mk_row_update make_update(const at::Tensor& table, const c10::optional<at::Tensor>& state1,
                          const c10::optional<at::Tensor>& state2, const UpdateSpec& spec) {
  check_table(table);
  mk_row_update u{};
  if (spec.kind == "sgd") {
    u.kind = MK_OPT_SGD;
  } else if (spec.kind == "adam") {
    u.kind = MK_OPT_ADAM;
  } else if (spec.kind == "adagrad_rowwise") {
    u.kind = MK_OPT_ADAGRAD_ROWWISE;
  } else if (spec.kind == "adam_rowwise") {
    u.kind = MK_OPT_ADAM_ROWWISE;
  } else {
    TORCH_CHECK(false, kOp, ": kind must be 'sgd', 'adam', 'adagrad_rowwise' or 'adam_rowwise'; got '",
                spec.kind, "'");
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
  auto run_time = [&](const c10::optional<at::Tensor>& t, const char* name, at::ScalarType dtype) -> const void* {
    if (!t.has_value() || !t->defined()) return nullptr;
    check_same_device(kOp, table, "table", *t, name);
    TORCH_CHECK(t->scalar_type() == dtype && t->numel() == 1, kOp, ": ", name, " must be one ", dtype,
                " element; got ", t->scalar_type(), " of shape ", t->sizes());
    return t->data_ptr();
  };
  u.step_ptr = static_cast<const int64_t*>(run_time(spec.step_tensor, "step_tensor", at::kLong));
  u.lr_scale = static_cast<const float*>(run_time(spec.lr_scale, "lr_scale", at::kFloat));
  u.stochastic_rounding = spec.stochastic_rounding ? 1 : 0;
  u.seed = uint64_t(spec.seed);
  TORCH_CHECK(spec.column_offset >= 0, kOp, ": column_offset must be >= 0; got ", spec.column_offset);
  u.column_offset = spec.column_offset;
  const at::ScalarType acc = acc_dtype(table.scalar_type());
  const int64_t N = table.size(0), D = table.size(1);
  // [N, D] states may be bf16 (stored with stochastic rounding) when the
  // accumulation type is float; the first one decides, the second must match.
  c10::optional<at::ScalarType> wide_dtype;
  auto check_state = [&](const c10::optional<at::Tensor>& st, const char* name,
                         at::IntArrayRef shape) -> void* {
    TORCH_CHECK(st.has_value() && st->defined(), kOp, ": ", spec.kind, " needs ", name);
    check_same_device(kOp, table, "table", *st, name);
    if (shape.size() == 2) {
      const at::ScalarType want = wide_dtype.value_or(st->scalar_type());
      TORCH_CHECK(st->scalar_type() == want &&
                      (want == acc || (want == at::kBFloat16 && acc == at::kFloat)),
                  kOp, ": ", name, " must be ", acc,
                  acc == at::kFloat ? " or bfloat16 (both [N, D] states alike)" : "", "; got ",
                  st->scalar_type());
      wide_dtype = want;
    } else {
      TORCH_CHECK(st->scalar_type() == acc, kOp, ": ", name, " must be ", acc, "; got ",
                  st->scalar_type());
    }
    TORCH_CHECK(st->sizes() == shape && st->is_contiguous(), kOp, ": ", name,
                " must be a contiguous tensor of shape ", shape, "; got ", st->sizes());
    return st->data_ptr();
  };
  if (u.kind == MK_OPT_ADAM || u.kind == MK_OPT_ADAM_ROWWISE) {
    TORCH_CHECK(u.step_ptr || u.step >= 1, kOp, ": ", spec.kind,
                " needs step >= 1 (the count including this update); got ", u.step);
    u.state1 = check_state(state1, "state1 (exp_avg)", {N, D});
    if (u.kind == MK_OPT_ADAM) {
      u.state2 = check_state(state2, "state2 (exp_avg_sq)", {N, D});
    } else {
      u.state2 = check_state(state2, "state2 (exp_avg_sq, one per row)", {N});
    }
  } else if (u.kind == MK_OPT_ADAGRAD_ROWWISE) {
    u.state1 = check_state(state1, "state1 (row accumulator)", {N});
  }
  u.state_bf16 = wide_dtype == at::kBFloat16 ? 1 : 0;
  return u;
}

namespace {

// Applies `u` to the given rows of `table` (rows int64 [U] contiguous, grads
// [U, D] contiguous in the accumulation type).
void apply_row_update(const at::Tensor& table, const at::Tensor& rows, const at::Tensor& grads,
                      const mk_row_update& u, Backend be) {
  mk_sparse_row_update_args a{};
  a.num_rows = table.size(0);
  a.dim = table.size(1);
  a.value_dtype = to_mk_dtype(table.scalar_type());
  a.table = table.data_ptr();
  a.table_row_stride = row_stride(table);
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
  const mk_row_update u = make_update(table, state1, state2, spec);
  check_dim(kOp, rows_in, "rows", 1, "[U]");
  check_dim(kOp, grads_in, "grads", 2, "[U, dim]");
  check_same_device(kOp, table, "table", rows_in, "rows");
  check_same_device(kOp, table, "table", grads_in, "grads");
  check_index_dtype(kOp, rows_in, "rows");
  TORCH_CHECK(grads_in.size(0) == rows_in.size(0) && grads_in.size(1) == table.size(1), kOp,
              ": grads must have shape [", rows_in.size(0), ", ", table.size(1), "]; got ",
              grads_in.sizes());
  const at::Tensor rows = rows_in.to(at::kLong).contiguous();
  const at::Tensor grads = grads_in.to(acc_dtype(table.scalar_type())).contiguous();
  apply_row_update(table, rows, grads, u, be);
}

}  // namespace mkt
