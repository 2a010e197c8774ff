// Torch glue for the weighted embedding bag: checks, tensor plumbing and the
// calls into the core for the forward, the backward (dense and row-sparse
// value gradients) and the backward fused with a row-sparse optimizer update.
#include <ATen/Parallel.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>

#include <array>
#include <atomic>
#include <mutex>
#include <sstream>

#include "checks.h"
#include "cpu_buffer_pool.h"
#include "ops.h"

namespace mkt {

namespace {

constexpr const char* kFwd = "memkernels.embedding_bag";
constexpr const char* kBwd = "memkernels.embedding_bag_backward";

// Checks shared by forward and backward. Returns the weights converted to the
// accumulation dtype, contiguous.
at::Tensor check_inputs(const char* op, const at::Tensor& values, const at::Tensor& indices,
                        const at::Tensor& weights) {
  check_dim(op, values, "values", 2, "[num_rows, dim]");
  check_dim(op, indices, "indices", 2, "[num_bags, bag_size]");
  check_dim(op, weights, "weights", 2, "[num_bags, bag_size]");
  check_value_dtype(op, values, "values");
  check_index_dtype(op, indices, "indices");
  TORCH_CHECK(weights.scalar_type() == at::kFloat ||
                  weights.scalar_type() == values.scalar_type(),
              op, ": weights must be float32 or the values' dtype (", values.scalar_type(),
              "); got ", weights.scalar_type());
  check_same_device(op, values, "values", indices, "indices");
  check_same_device(op, values, "values", weights, "weights");
  TORCH_CHECK(values.device().is_cpu() || values.device().is_cuda(), op,
              ": tensors must be on a CPU or CUDA device; got ", values.device());
  TORCH_CHECK(weights.sizes() == indices.sizes(), op,
              ": weights must have the shape of indices ", indices.sizes(), "; got ",
              weights.sizes());
  TORCH_CHECK(values.size(1) >= 1, op, ": values must have at least one column; got shape ",
              values.sizes());
  TORCH_CHECK(indices.size(1) >= 1 || indices.size(0) == 0, op,
              ": bags must hold at least one index; got indices of shape ", indices.sizes());
  TORCH_CHECK(values.stride(1) == 1 || values.size(1) == 1, op,
              ": values must have unit stride along its last dimension; got strides ",
              values.strides(), " (call .contiguous())");
  return weights.to(acc_dtype(values.scalar_type())).contiguous();
}

// Names the first index outside [0, N) in an error, or raises `otherwise`
// when there is none. Only reached on failure.
[[noreturn]] void report_bad_index(const at::Tensor& indices, int64_t num_rows,
                                   const std::string& otherwise = "") {
  const at::Tensor flat = indices.reshape({-1}).to(at::kCPU, at::kLong);
  const int64_t* p = flat.data_ptr<int64_t>();
  const int64_t B = indices.size(1);
  for (int64_t i = 0; i < flat.numel(); ++i) {
    if (p[i] < 0 || p[i] >= num_rows) {
      TORCH_CHECK_INDEX(false, kFwd, ": indices[", i / B, ", ", i % B, "] = ", p[i],
                        " is outside [0, ", num_rows, ") (values has ", num_rows, " rows)");
    }
  }
  TORCH_CHECK_INDEX(otherwise.empty(), otherwise);
  TORCH_CHECK_INDEX(false, kFwd, ": an index is outside [0, ", num_rows, ")");
}

// One reporter per CUDA device, made at its first checked call and kept for
// the life of the process (a forward queued at exit may still use it).
constexpr int kMaxDevices = 64;
std::array<std::atomic<mk_index_reporter*>, kMaxDevices> reporters{};
std::mutex reporters_mutex;

mk_index_reporter* reporter_for(int device) {
  TORCH_CHECK(device >= 0 && device < kMaxDevices, kFwd, ": CUDA device ", device,
              " is past the ", kMaxDevices, " this build tracks");
  mk_index_reporter* r = reporters[device].load(std::memory_order_acquire);
  if (r) return r;
  std::lock_guard<std::mutex> lock(reporters_mutex);
  r = reporters[device].load(std::memory_order_relaxed);
  if (!r) {
    check_status(mk_index_reporter_create(device, &r), "memkernels: making the bad-index reporter");
    reporters[device].store(r, std::memory_order_release);
  }
  return r;
}

void raise_reported(int device) {
  const std::string message = take_index_error(device);
  TORCH_CHECK_INDEX(message.empty(), message);
}

mk_embedding_bag_bwd_args backward_args(const at::Tensor& grad_out, const at::Tensor& values,
                                        const at::Tensor& indices, const at::Tensor& weights_acc) {
  mk_embedding_bag_bwd_args a{};
  a.num_rows = values.size(0);
  a.dim = values.size(1);
  a.num_bags = indices.size(0);
  a.bag_size = indices.size(1);
  a.value_dtype = to_mk_dtype(values.scalar_type());
  a.index_dtype = to_mk_index(indices.scalar_type());
  a.values = values.data_ptr();
  a.values_row_stride = row_stride(values);
  a.indices = indices.data_ptr();
  a.weights = weights_acc.data_ptr();
  a.grad_out = grad_out.data_ptr();
  a.num_threads = at::get_num_threads();
  return a;
}

at::Tensor check_grad_out(const at::Tensor& grad_out, const at::Tensor& values,
                          const at::Tensor& indices) {
  TORCH_CHECK(indices.numel() < int64_t(INT32_MAX), kBwd,
              ": the backward handles fewer than 2^31 (bag, slot) pairs; got indices of shape ",
              indices.sizes());
  check_dim(kBwd, grad_out, "grad_out", 2, "[num_bags, dim]");
  check_same_device(kBwd, values, "values", grad_out, "grad_out");
  TORCH_CHECK(grad_out.size(0) == indices.size(0) && grad_out.size(1) == values.size(1), kBwd,
              ": grad_out must have shape [", indices.size(0), ", ", values.size(1), "]; got ",
              grad_out.sizes());
  return grad_out.to(values.scalar_type()).contiguous();
}

// Runs the plan; returns the workspace.
at::Tensor plan_backward(const mk_embedding_bag_bwd_args& a, const at::Tensor& values,
                         Backend be) {
  size_t bytes = 0;
  check_status(mk_embedding_bag_backward_workspace_size(&a, be.device, &bytes), kBwd);
  at::Tensor ws = empty_workspace(int64_t(bytes), values.options());
  mk_status st = mk_embedding_bag_backward_plan(&a, ws.data_ptr(), bytes, be.device, be.stream);
  TORCH_CHECK_INDEX(st != MK_ERR_INDEX_OUT_OF_RANGE, kBwd, ": an index is outside [0, ",
                    a.num_rows, ")");
  check_status(st, kBwd);
  return ws;
}

}  // namespace

IndexCheck parse_index_check(c10::string_view mode) {
  if (mode == "deferred") return IndexCheck::Deferred;
  if (mode == "sync") return IndexCheck::Sync;
  if (mode == "off") return IndexCheck::Off;
  TORCH_CHECK(false, kFwd, ": check_indices must be \"deferred\", \"sync\" or \"off\"; got \"",
              std::string(mode), "\"");
  return IndexCheck::Off;  // not reached
}

std::string take_index_error(int device) {
  if (device < 0 || device >= kMaxDevices) return "";
  mk_index_reporter* r = reporters[device].load(std::memory_order_acquire);
  if (!r) return "";
  mk_index_report rep{};
  int found = 0;
  check_status(mk_index_reporter_poll(r, &rep, &found), "memkernels: reading the bad-index report");
  if (!found) return "";
  const int64_t B = rep.bag_size > 0 ? rep.bag_size : 1;
  std::ostringstream m;
  m << kFwd << ": indices[" << rep.position / B << ", " << rep.position % B << "] = " << rep.value
    << " is outside [0, " << rep.num_rows << ") (values has " << rep.num_rows
    << " rows); reported by the device for a call on cuda:" << device
    << " made earlier without synchronising (check_indices=\"deferred\"), which skipped that "
       "index: its term was left out";
  return m.str();
}

at::Tensor embedding_bag_forward(const at::Tensor& values, const at::Tensor& indices_in,
                                 const at::Tensor& weights, IndexCheck check, Backend be) {
  const bool check_indices = check != IndexCheck::Off;
  const int device = be.device == MK_CUDA ? int(values.get_device()) : -1;
  // A bad index an earlier call on this device reported: raised before any
  // more work is queued.
  if (device >= 0) raise_reported(device);
  at::Tensor weights_acc = check_inputs(kFwd, values, indices_in, weights);
  at::Tensor indices = indices_in.contiguous();
  const int64_t T = indices.size(0), D = values.size(1), N = values.size(0);
  at::Tensor out = at::empty({T, D}, values.options().memory_format(at::MemoryFormat::Contiguous));
  if (T == 0) return out;

  mk_embedding_bag_fwd_args a{};
  a.num_rows = N;
  a.dim = D;
  a.num_bags = T;
  a.bag_size = indices.size(1);
  a.value_dtype = to_mk_dtype(values.scalar_type());
  a.index_dtype = to_mk_index(indices.scalar_type());
  a.values = values.data_ptr();
  a.values_row_stride = row_stride(values);
  a.indices = indices.data_ptr();
  a.weights = weights_acc.data_ptr();
  a.out = out.data_ptr();
  a.check_indices = check_indices ? 1 : 0;
  a.num_threads = at::get_num_threads();
  int64_t bad = -1;
  a.bad_position = &bad;
  if (check_indices && device >= 0) a.reporter = reporter_for(device);
  mk_status st = mk_embedding_bag_forward(&a, be.device, be.stream);
  if (st == MK_ERR_INDEX_OUT_OF_RANGE) report_bad_index(indices, N);  // the CPU's check
  check_status(st, kFwd);
  if (check == IndexCheck::Sync && device >= 0) {
    // The one mode that waits for the device: the report is then this call's.
    c10::impl::getDeviceGuardImpl(values.device().type())->getStream(values.device()).synchronize();
    const std::string message = take_index_error(device);
    // Names this call's first bad position (the report may be another
    // stream's call, then it is the one raised).
    if (!message.empty()) report_bad_index(indices, N, message);
  }
  return out;
}

std::tuple<at::Tensor, at::Tensor> embedding_bag_backward(const at::Tensor& grad_out_in,
                                                          const at::Tensor& values,
                                                          const at::Tensor& indices_in,
                                                          const at::Tensor& weights, Backend be) {
  at::Tensor weights_acc = check_inputs(kBwd, values, indices_in, weights);
  at::Tensor indices = indices_in.contiguous();
  at::Tensor grad_out = check_grad_out(grad_out_in, values, indices);
  // On CPU the dense gradient comes from a cache of freed buffers: a training
  // loop then reuses mapped pages instead of faulting in N * D fresh ones.
  at::Tensor grad_values =
      be.device == MK_CPU ? cpu_empty_pooled({values.size(0), values.size(1)}, values.scalar_type())
                          : at::empty({values.size(0), values.size(1)}, values.options());
  at::Tensor grad_w = at::empty(indices.sizes(), weights_acc.options());
  mk_embedding_bag_bwd_args a = backward_args(grad_out, values, indices, weights_acc);
  a.grad_weights = grad_w.data_ptr();
  a.grad_values = grad_values.data_ptr();
  at::Tensor ws = plan_backward(a, values, be);
  check_status(mk_embedding_bag_backward_reduce(&a, ws.data_ptr(), size_t(ws.numel()), be.device,
                                                be.stream),
               kBwd);
  return {grad_values, grad_w.to(weights.scalar_type())};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> embedding_bag_backward_sparse(
    const at::Tensor& grad_out_in, const at::Tensor& values, const at::Tensor& indices_in,
    const at::Tensor& weights, Backend be, bool acc_grads, int64_t capacity) {
  at::Tensor weights_acc = check_inputs(kBwd, values, indices_in, weights);
  TORCH_CHECK(capacity >= 0, kBwd, ": capacity must be >= 0; got ", capacity);
  at::Tensor indices = indices_in.contiguous();
  at::Tensor grad_out = check_grad_out(grad_out_in, values, indices);
  at::Tensor grad_w = at::empty(indices.sizes(), weights_acc.options());
  mk_embedding_bag_bwd_args a = backward_args(grad_out, values, indices, weights_acc);
  at::Tensor ws = plan_backward(a, values, be);
  int64_t num_unique = capacity;
  if (capacity == 0) {
    // The exact form: the number of distinct rows sizes the outputs (on CUDA
    // a device-to-host copy, a synchronisation).
    check_status(mk_embedding_bag_backward_count(&a, ws.data_ptr(), be.device, be.stream,
                                                 &num_unique),
                 kBwd);
  }
  a.sparse_capacity = capacity;
  at::Tensor rows = at::empty({num_unique}, indices.options().dtype(at::kLong));
  const at::ScalarType grads_dtype = acc_grads ? weights_acc.scalar_type() : values.scalar_type();
  at::Tensor row_grads = be.device == MK_CPU
                             ? cpu_empty_pooled({num_unique, values.size(1)}, grads_dtype)
                             : at::empty({num_unique, values.size(1)}, values.options().dtype(grads_dtype));
  a.grad_weights = grad_w.data_ptr();
  a.sparse_rows = rows.data_ptr<int64_t>();
  a.sparse_grads = row_grads.data_ptr();
  a.sparse_grads_acc = acc_grads ? 1 : 0;
  check_status(mk_embedding_bag_backward_reduce(&a, ws.data_ptr(), size_t(ws.numel()), be.device,
                                                be.stream),
               kBwd);
  return {rows, row_grads, grad_w.to(weights.scalar_type())};
}

at::Tensor embedding_bag_backward_update(const at::Tensor& grad_out_in, const at::Tensor& values,
                                         const at::Tensor& indices_in, const at::Tensor& weights,
                                         const c10::optional<at::Tensor>& state1,
                                         const c10::optional<at::Tensor>& state2,
                                         const UpdateSpec& spec, Backend be) {
  const mk_row_update update = make_update(values, state1, state2, spec);
  // The core applies the update to each row as the segment reduction
  // finishes it, on both devices: the row gradient is never written and
  // nothing is read back to the host.
  at::Tensor weights_acc = check_inputs(kBwd, values, indices_in, weights);
  at::Tensor indices = indices_in.contiguous();
  at::Tensor grad_out = check_grad_out(grad_out_in, values, indices);
  at::Tensor grad_w = at::empty(indices.sizes(), weights_acc.options());
  mk_embedding_bag_bwd_args a = backward_args(grad_out, values, indices, weights_acc);
  a.grad_weights = grad_w.data_ptr();
  a.update = &update;
  at::Tensor ws = plan_backward(a, values, be);
  check_status(mk_embedding_bag_backward_reduce(&a, ws.data_ptr(), size_t(ws.numel()), be.device,
                                                be.stream),
               kBwd);
  return grad_w;
}

}  // namespace mkt
