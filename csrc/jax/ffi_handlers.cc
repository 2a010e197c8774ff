// XLA FFI handlers of the memkernels core (memkernels.jax): the embedding
// bag's forward, dense backward and sparse backward (capacity form), the
// row-sparse optimizer update (in place through aliasing) and pk_topk's
// selection, for the CPU and
// (when built with CUDA) the CUDA platform. Each handler decodes XLA's
// buffers, fills the core's argument struct (csrc/core/memkernels.h) and
// calls it on the stream XLA gives; workspace comes from XLA's scratch
// allocator on CUDA and from the heap on the CPU. Nothing synchronises the
// host, so the CUDA handlers can be captured into command buffers.
//
// Leading dimensions before the last two (vmap with "expand_dims") are batch
// dimensions: a table without them is shared by every batch element (one
// call over all bags); a table with them gets one call per element.
#include <cstdint>
#include <string>
#include <vector>

#include "memkernels.h"
#include "xla/ffi/api/ffi.h"

#if defined(MK_WITH_CUDA)
#include <cuda_runtime_api.h>
#endif

namespace ffi = xla::ffi;

namespace {

ffi::Error fail(const char* op, const std::string& what) {
  return ffi::Error(ffi::ErrorCode::kInvalidArgument, std::string("memkernels.jax.") + op + ": " + what);
}

ffi::Error check(mk_status s, const char* op) {
  if (s == MK_OK) return ffi::Error::Success();
  const ffi::ErrorCode code =
      s == MK_ERR_INVALID_ARGUMENT ? ffi::ErrorCode::kInvalidArgument : ffi::ErrorCode::kInternal;
  return ffi::Error(code, std::string("memkernels.jax.") + op + ": " + mk_status_string(s));
}

bool value_dtype(ffi::DataType t, mk_dtype* out) {
  switch (t) {
    case ffi::DataType::F32: *out = MK_F32; return true;
    case ffi::DataType::F16: *out = MK_F16; return true;
    case ffi::DataType::BF16: *out = MK_BF16; return true;
    case ffi::DataType::F64: *out = MK_F64; return true;
    default: return false;
  }
}

bool index_dtype(ffi::DataType t, mk_index_dtype* out) {
  switch (t) {
    case ffi::DataType::S32: *out = MK_I32; return true;
    case ffi::DataType::S64: *out = MK_I64; return true;
    default: return false;
  }
}

ffi::DataType acc_of(mk_dtype v) { return v == MK_F64 ? ffi::DataType::F64 : ffi::DataType::F32; }

size_t value_bytes(mk_dtype v) { return v == MK_F64 ? 8 : v == MK_F32 ? 4 : 2; }

// A buffer seen as [lead, rows, cols]: lead is the product of the batch
// dimensions before the last two (1 without any).
struct Mat {
  int64_t lead = 1, rows = 0, cols = 0;
  bool ok = false;
};

Mat mat(const ffi::AnyBuffer& b) {
  Mat m;
  auto d = b.dimensions();
  if (d.size() < 2) return m;
  for (size_t i = 0; i + 2 < d.size(); ++i) m.lead *= d[i];
  m.rows = d[d.size() - 2];
  m.cols = d[d.size() - 1];
  m.ok = true;
  return m;
}

// The batch size of several leads: each is 1 (shared) or the batch size.
bool batch_of(std::initializer_list<int64_t> leads, int64_t* batch) {
  int64_t L = 1;
  for (int64_t l : leads) L = l > L ? l : L;
  for (int64_t l : leads)
    if (l != 1 && l != L) return false;
  *batch = L;
  return true;
}

char* at(const ffi::AnyBuffer& b, int64_t lead, int64_t l, size_t per) {
  return static_cast<char*>(b.untyped_data()) + (lead > 1 ? size_t(l) * per : 0);
}

// Heap workspace on the CPU, XLA's scratch allocator on CUDA.
template <class Scratch>
void* workspace(mk_device dev, Scratch* scratch, std::vector<unsigned char>* host, size_t bytes) {
  if (bytes == 0) bytes = 1;
  if (dev == MK_CPU) {
    host->resize(bytes);
    return host->data();
  }
  auto p = scratch->Allocate(bytes, 256);
  return p.has_value() ? *p : nullptr;
}

struct BagArgs {
  Mat v, i, w;
  mk_dtype vd;
  mk_index_dtype id;
  int64_t batch;
};

ffi::Error decode_bag(const char* op, const ffi::AnyBuffer& values, const ffi::AnyBuffer& indices,
                      const ffi::AnyBuffer& weights, BagArgs* a) {
  a->v = mat(values);
  a->i = mat(indices);
  a->w = mat(weights);
  if (!a->v.ok || !a->i.ok || !a->w.ok) return fail(op, "values, indices and weights need at least 2 dimensions");
  if (!value_dtype(values.element_type(), &a->vd)) return fail(op, "values must be float32, float16, bfloat16 or float64");
  if (!index_dtype(indices.element_type(), &a->id)) return fail(op, "indices must be int32 or int64");
  if (weights.element_type() != acc_of(a->vd))
    return fail(op, "weights must be in the accumulation dtype (float64 for float64 values, else float32)");
  if (a->w.rows != a->i.rows || a->w.cols != a->i.cols || a->w.lead != a->i.lead)
    return fail(op, "weights must have the shape of indices");
  if (!batch_of({a->v.lead, a->i.lead}, &a->batch)) return fail(op, "batch dimensions do not match");
  return ffi::Error::Success();
}

// The backward's arguments common to every form (the first batch element's
// pointers: the workspace size query checks them).
mk_embedding_bag_bwd_args bwd_args(const BagArgs& b, const ffi::AnyBuffer& values, const ffi::AnyBuffer& indices,
                                   const ffi::AnyBuffer& weights, const ffi::AnyBuffer& grad_out) {
  mk_embedding_bag_bwd_args a{};
  a.num_rows = b.v.rows;
  a.dim = b.v.cols;
  a.num_bags = b.i.rows;
  a.bag_size = b.i.cols;
  a.value_dtype = b.vd;
  a.index_dtype = b.id;
  a.values_row_stride = b.v.cols;
  a.values = values.untyped_data();
  a.indices = indices.untyped_data();
  a.weights = weights.untyped_data();
  a.grad_out = grad_out.untyped_data();
  return a;
}

// A workspace for the backward of `a`: its size, and the memory (heap on the
// CPU, XLA's scratch on CUDA).
template <class Scratch>
ffi::Error bwd_workspace(const char* op, mk_device dev, Scratch* scratch, const mk_embedding_bag_bwd_args& a,
                         std::vector<unsigned char>* host, void** ws, size_t* bytes) {
  if (ffi::Error e = check(mk_embedding_bag_backward_workspace_size(&a, dev, bytes), op); e.failure()) return e;
  *ws = workspace(dev, scratch, host, *bytes);
  if (*ws == nullptr) return ffi::Error(ffi::ErrorCode::kResourceExhausted, "memkernels.jax: no workspace");
  return ffi::Error::Success();
}

// ---- embedding bag forward --------------------------------------------------------

template <class Scratch>
ffi::Error bag_forward(mk_device dev, void* stream, ffi::AnyBuffer values, ffi::AnyBuffer indices,
                       ffi::AnyBuffer weights, ffi::Result<ffi::AnyBuffer> out) {
  const char* op = "embedding_bag";
  BagArgs b;
  if (ffi::Error e = decode_bag(op, values, indices, weights, &b); e.failure()) return e;
  Mat o = mat(*out);
  mk_embedding_bag_fwd_args a{};
  a.num_rows = b.v.rows;
  a.dim = b.v.cols;
  a.bag_size = b.i.cols;
  a.value_dtype = b.vd;
  a.index_dtype = b.id;
  a.values_row_stride = b.v.cols;
  a.check_indices = 0;  // a bad index is skipped, never read: no host round trip
  const size_t vb = value_bytes(b.vd), ib = b.id == MK_I64 ? 8 : 4, wb = weights.element_type() == ffi::DataType::F64 ? 8 : 4;
  if (o.cols != b.v.cols || o.rows != b.i.rows) return fail(op, "the output must be [..., T, D]");
  if (b.v.lead == 1) {
    // One table for every batch element: one call over all bags.
    a.num_bags = b.batch * b.i.rows;
    if (b.i.lead == 1 && b.batch > 1) return fail(op, "batched output with unbatched indices");
    a.values = values.untyped_data();
    a.indices = indices.untyped_data();
    a.weights = weights.untyped_data();
    a.out = out->untyped_data();
    return check(mk_embedding_bag_forward(&a, dev, stream), op);
  }
  a.num_bags = b.i.rows;
  for (int64_t l = 0; l < b.batch; ++l) {
    a.values = at(values, b.v.lead, l, size_t(b.v.rows * b.v.cols) * vb);
    a.indices = at(indices, b.i.lead, l, size_t(b.i.rows * b.i.cols) * ib);
    a.weights = at(weights, b.w.lead, l, size_t(b.w.rows * b.w.cols) * wb);
    a.out = static_cast<char*>(out->untyped_data()) + size_t(l) * size_t(o.rows * o.cols) * vb;
    if (ffi::Error e = check(mk_embedding_bag_forward(&a, dev, stream), op); e.failure()) return e;
  }
  return ffi::Error::Success();
}

// ---- embedding bag backward (dense value gradient) --------------------------------------

template <class Scratch>
ffi::Error bag_backward(mk_device dev, void* stream, Scratch* scratch, ffi::AnyBuffer grad_out,
                        ffi::AnyBuffer values, ffi::AnyBuffer indices, ffi::AnyBuffer weights,
                        ffi::Result<ffi::AnyBuffer> grad_values, ffi::Result<ffi::AnyBuffer> grad_weights) {
  const char* op = "embedding_bag (backward)";
  BagArgs b;
  if (ffi::Error e = decode_bag(op, values, indices, weights, &b); e.failure()) return e;
  Mat g = mat(grad_out), gv = mat(*grad_values), gw = mat(*grad_weights);
  if (grad_out.element_type() != values.element_type()) return fail(op, "grad_out must have the values' dtype");
  if (g.rows != b.i.rows || g.cols != b.v.cols) return fail(op, "grad_out must be [..., T, D]");
  int64_t L = 0;
  if (!batch_of({b.v.lead, b.i.lead, g.lead, gv.lead, gw.lead}, &L)) return fail(op, "batch dimensions do not match");
  if (gv.lead != L || gw.lead != L) return fail(op, "the gradients must carry the batch dimensions");
  const size_t vb = value_bytes(b.vd), ib = b.id == MK_I64 ? 8 : 4, wb = weights.element_type() == ffi::DataType::F64 ? 8 : 4;
  mk_embedding_bag_bwd_args a = bwd_args(b, values, indices, weights, grad_out);
  std::vector<unsigned char> host;
  void* ws = nullptr;
  size_t bytes = 0;
  if (ffi::Error e = bwd_workspace(op, dev, scratch, a, &host, &ws, &bytes); e.failure()) return e;
  const size_t table = size_t(b.v.rows * b.v.cols) * vb, bags = size_t(b.i.rows * b.i.cols);
  for (int64_t l = 0; l < L; ++l) {
    a.values = at(values, b.v.lead, l, table);
    a.indices = at(indices, b.i.lead, l, bags * ib);
    a.weights = at(weights, b.w.lead, l, bags * wb);
    a.grad_out = at(grad_out, g.lead, l, size_t(g.rows * g.cols) * vb);
    a.grad_values = static_cast<char*>(grad_values->untyped_data()) + size_t(l) * table;
    a.grad_weights = static_cast<char*>(grad_weights->untyped_data()) + size_t(l) * bags * wb;
    if (ffi::Error e = check(mk_embedding_bag_backward_plan(&a, ws, bytes, dev, stream), op); e.failure()) return e;
    if (ffi::Error e = check(mk_embedding_bag_backward_reduce(&a, ws, bytes, dev, stream), op); e.failure())
      return e;
  }
  return ffi::Error::Success();
}

// ---- embedding bag backward, sparse capacity form ---------------------------------------

// int64 outputs in int64 buffers, or as int32 pairs (JAX without 64-bit
// types: the low word is the value, as long as it is below 2^31).
bool int64_out(const ffi::AnyBuffer& b, int64_t n) {
  if (b.element_type() == ffi::DataType::S64) return int64_t(b.element_count()) == n;
  return b.element_type() == ffi::DataType::S32 && int64_t(b.element_count()) == 2 * n;
}

template <class Scratch>
ffi::Error bag_backward_sparse(mk_device dev, void* stream, Scratch* scratch, ffi::AnyBuffer grad_out,
                               ffi::AnyBuffer values, ffi::AnyBuffer indices, ffi::AnyBuffer weights,
                               int64_t capacity, ffi::Result<ffi::AnyBuffer> rows,
                               ffi::Result<ffi::AnyBuffer> row_grads, ffi::Result<ffi::AnyBuffer> grad_weights,
                               ffi::Result<ffi::AnyBuffer> count) {
  const char* op = "embedding_bag_backward_sparse";
  BagArgs b;
  if (ffi::Error e = decode_bag(op, values, indices, weights, &b); e.failure()) return e;
  if (b.batch != 1 || mat(grad_out).lead != 1) return fail(op, "no batch dimensions (vmap runs it per element)");
  if (capacity < 1) return fail(op, "capacity must be at least 1");
  if (!int64_out(*rows, capacity) || !int64_out(*count, 1)) return fail(op, "rows and count must be int64");
  if (row_grads->element_type() != acc_of(b.vd) || int64_t(row_grads->element_count()) != capacity * b.v.cols)
    return fail(op, "row gradients must be [capacity, D] in the accumulation dtype");
  mk_embedding_bag_bwd_args a = bwd_args(b, values, indices, weights, grad_out);
  a.grad_weights = grad_weights->untyped_data();
  a.sparse_rows = static_cast<int64_t*>(rows->untyped_data());
  a.sparse_grads = row_grads->untyped_data();
  a.sparse_grads_acc = 1;
  a.sparse_capacity = capacity;
  a.sparse_count = static_cast<int64_t*>(count->untyped_data());
  std::vector<unsigned char> host;
  void* ws = nullptr;
  size_t bytes = 0;
  if (ffi::Error e = bwd_workspace(op, dev, scratch, a, &host, &ws, &bytes); e.failure()) return e;
  if (ffi::Error e = check(mk_embedding_bag_backward_plan(&a, ws, bytes, dev, stream), op); e.failure()) return e;
  return check(mk_embedding_bag_backward_reduce(&a, ws, bytes, dev, stream), op);
}

// ---- row-sparse optimizer update, in place (outputs alias the inputs) -------------------------

struct UpdateAttrs {
  int64_t kind, step, stochastic_rounding, column_offset;
  double lr, beta1, beta2, eps, weight_decay, max_row_norm;
  uint64_t seed;
};

// The update from its attributes, its state buffers (empty when absent; the
// outputs alias them, so the update writes them in place) and its run-time
// step count and learning-rate scale (read by the kernel when given, so one
// compiled call serves every step).
ffi::Error decode_update(const char* op, const UpdateAttrs& h, const ffi::AnyBuffer& state1,
                         const ffi::AnyBuffer& state2, const ffi::AnyBuffer& step, const ffi::AnyBuffer& lr_scale,
                         mk_row_update* u) {
  u->kind = mk_row_optimizer(h.kind);
  u->lr = h.lr;
  u->beta1 = h.beta1;
  u->beta2 = h.beta2;
  u->eps = h.eps;
  u->weight_decay = h.weight_decay;
  u->max_row_norm = h.max_row_norm;
  u->step = h.step;
  u->stochastic_rounding = int(h.stochastic_rounding);
  u->seed = h.seed;
  u->column_offset = h.column_offset;
  u->state1 = state1.element_count() ? state1.untyped_data() : nullptr;
  u->state2 = state2.element_count() ? state2.untyped_data() : nullptr;
  // A bf16 state1 is an [N, D] moment (memkernels.jax checked the states):
  // the [N, D] states are kept in bf16.
  u->state_bf16 = state1.element_type() == ffi::DataType::BF16 ? 1 : 0;
  if (step.element_count()) {
    if (!int64_out(step, 1)) return fail(op, "step must be one int64");
    u->step_ptr = static_cast<const int64_t*>(step.untyped_data());
  }
  if (lr_scale.element_count()) {
    if (lr_scale.element_type() != ffi::DataType::F32 || lr_scale.element_count() != 1)
      return fail(op, "lr_scale must be one float32");
    u->lr_scale = static_cast<const float*>(lr_scale.untyped_data());
  }
  return ffi::Error::Success();
}

ffi::Error row_update(mk_device dev, void* stream, ffi::AnyBuffer table, ffi::AnyBuffer rows, ffi::AnyBuffer grads,
                      ffi::AnyBuffer state1, ffi::AnyBuffer state2, ffi::AnyBuffer step, ffi::AnyBuffer lr_scale,
                      const UpdateAttrs& h,
                      ffi::Result<ffi::AnyBuffer> table_out, ffi::Result<ffi::AnyBuffer> state1_out,
                      ffi::Result<ffi::AnyBuffer> state2_out) {
  const char* op = "sparse_row_update";
  // XLA gives aliased outputs the inputs' buffers (copying first when an
  // input cannot be donated): the update works in place on them.
  if (table_out->untyped_data() != table.untyped_data() || state1_out->untyped_data() != state1.untyped_data() ||
      state2_out->untyped_data() != state2.untyped_data())
    return fail(op, "the outputs must alias the table and the states");
  Mat t = mat(table), g = mat(grads);
  mk_dtype vd;
  if (!t.ok || t.lead != 1 || !value_dtype(table.element_type(), &vd)) return fail(op, "table must be [N, D] float");
  const int64_t U = int64_t(rows.element_count()) / (rows.element_type() == ffi::DataType::S64 ? 1 : 2);
  if (!int64_out(rows, U)) return fail(op, "rows must be int64");
  if (grads.element_type() != acc_of(vd) || !g.ok || g.rows != U || g.cols != t.cols)
    return fail(op, "grads must be [U, D] in the accumulation dtype");
  mk_sparse_row_update_args a{};
  a.num_rows = t.rows;
  a.dim = t.cols;
  a.value_dtype = vd;
  a.table = table_out->untyped_data();
  a.table_row_stride = t.cols;
  a.num_updates = U;
  a.rows = static_cast<const int64_t*>(rows.untyped_data());
  a.grads = grads.untyped_data();
  if (ffi::Error e = decode_update(op, h, state1, state2, step, lr_scale, &a.update);
      e.failure())
    return e;
  return check(mk_sparse_row_update(&a, dev, stream), op);
}

// The backward fused with the update: values and states updated in place
// (aliased outputs), the weights' gradient returned; no row gradient leaves
// the core (each row is updated as the segment reduction finishes it).
template <class Scratch>
ffi::Error bag_backward_update(mk_device dev, void* stream, Scratch* scratch, ffi::AnyBuffer grad_out,
                               ffi::AnyBuffer values, ffi::AnyBuffer indices, ffi::AnyBuffer weights,
                               ffi::AnyBuffer state1, ffi::AnyBuffer state2, ffi::AnyBuffer step,
                               ffi::AnyBuffer lr_scale, const UpdateAttrs& h, ffi::Result<ffi::AnyBuffer> values_out,
                               ffi::Result<ffi::AnyBuffer> state1_out, ffi::Result<ffi::AnyBuffer> state2_out,
                               ffi::Result<ffi::AnyBuffer> grad_weights) {
  const char* op = "embedding_bag_backward_update";
  if (values_out->untyped_data() != values.untyped_data() || state1_out->untyped_data() != state1.untyped_data() ||
      state2_out->untyped_data() != state2.untyped_data())
    return fail(op, "the outputs must alias the values and the states");
  BagArgs b;
  if (ffi::Error e = decode_bag(op, values, indices, weights, &b); e.failure()) return e;
  if (b.batch != 1 || mat(grad_out).lead != 1) return fail(op, "no batch dimensions (vmap runs it per element)");
  if (grad_out.element_type() != values.element_type()) return fail(op, "grad_out must have the values' dtype");
  mk_row_update u{};
  if (ffi::Error e = decode_update(op, h, state1, state2, step, lr_scale, &u);
      e.failure())
    return e;
  mk_embedding_bag_bwd_args a = bwd_args(b, values, indices, weights, grad_out);
  a.grad_weights = grad_weights->untyped_data();
  a.update = &u;
  std::vector<unsigned char> host;
  void* ws = nullptr;
  size_t bytes = 0;
  if (ffi::Error e = bwd_workspace(op, dev, scratch, a, &host, &ws, &bytes); e.failure()) return e;
  if (ffi::Error e = check(mk_embedding_bag_backward_plan(&a, ws, bytes, dev, stream), op); e.failure()) return e;
  return check(mk_embedding_bag_backward_reduce(&a, ws, bytes, dev, stream), op);
}

// ---- pk_topk selection ---------------------------------------------------------------

// scores1, scores2 [..., T, H, n] float32 -> scores [..., T, H, k] float32 and
// slot ids [..., T, H, k] int64, or the same bytes as int32 [..., T, H, 2k]
// (for JAX without 64-bit types: ids below 2^31 are the even words).
ffi::Error pk_select(mk_device dev, void* stream, ffi::AnyBuffer s1, ffi::AnyBuffer s2, int64_t k,
                     ffi::Result<ffi::AnyBuffer> scores, ffi::Result<ffi::AnyBuffer> ids) {
  const char* op = "pk_topk";
  if (s1.element_type() != ffi::DataType::F32 || s2.element_type() != ffi::DataType::F32)
    return fail(op, "half-scores must be float32");
  auto d = s1.dimensions();
  if (d.size() < 3) return fail(op, "half-scores must be [..., T, H, n_keys]");
  if (s2.element_count() != s1.element_count()) return fail(op, "the two half-scores must have one shape");
  const int64_t n = d[d.size() - 1], H = d[d.size() - 2];
  const int64_t T = int64_t(s1.element_count()) / (n * H);
  const bool wide = ids->element_type() == ffi::DataType::S64;
  if (!wide && ids->element_type() != ffi::DataType::S32) return fail(op, "slot ids must be int64 or int32 pairs");
  if (int64_t(ids->element_count()) != T * H * k * (wide ? 1 : 2) || int64_t(scores->element_count()) != T * H * k)
    return fail(op, "outputs must be [..., T, H, k]");
  mk_pk_select_args a{};
  a.num_tokens = T;
  a.num_heads = H;
  a.num_keys = n;
  a.k = k;
  a.scores1 = static_cast<const float*>(s1.untyped_data());
  a.scores2 = static_cast<const float*>(s2.untyped_data());
  a.scores_stride_t = H * n;
  a.scores_stride_h = n;
  a.out_scores = static_cast<float*>(scores->untyped_data());
  a.out_indices = static_cast<int64_t*>(ids->untyped_data());
  return check(mk_pk_select(&a, dev, stream), op);
}

// ---- pk_topk backward ------------------------------------------------------------------

template <class Scratch>
ffi::Error pk_backward(mk_device dev, void* stream, Scratch* scratch, ffi::AnyBuffer grad_scores,
                       ffi::AnyBuffer query, ffi::AnyBuffer keys, ffi::AnyBuffer slots,
                       ffi::Result<ffi::AnyBuffer> grad_query, ffi::Result<ffi::AnyBuffer> grad_keys) {
  const char* op = "pk_topk (backward)";
  auto q = query.dimensions(), kd = keys.dimensions(), g = grad_scores.dimensions();
  if (q.size() != 3 || kd.size() != 4 || g.size() != 3) return fail(op, "query [T, H, Dk], keys [H, 2, n, Dk/2]");
  mk_pk_topk_bwd_args a{};
  if (!value_dtype(query.element_type(), &a.dtype) || keys.element_type() != query.element_type())
    return fail(op, "query and keys must be one float dtype");
  if (grad_scores.element_type() != acc_of(a.dtype)) return fail(op, "grad_scores must be the accumulation dtype");
  a.num_tokens = q[0];
  a.num_heads = q[1];
  a.half_dim = kd[3];
  a.num_keys = kd[2];
  a.k = g[2];
  if (!int64_out(slots, a.num_tokens * a.num_heads * a.k)) return fail(op, "slots must be int64");
  a.grad_scores = grad_scores.untyped_data();
  a.query = query.untyped_data();
  a.keys = keys.untyped_data();
  a.indices = static_cast<const int64_t*>(slots.untyped_data());
  a.grad_query = grad_query->untyped_data();
  a.grad_keys = grad_keys->untyped_data();
  size_t bytes = 0;
  if (ffi::Error e = check(mk_pk_topk_backward_workspace_size(&a, dev, &bytes), op); e.failure()) return e;
  std::vector<unsigned char> host;
  void* ws = workspace(dev, scratch, &host, bytes);
  if (ws == nullptr) return ffi::Error(ffi::ErrorCode::kResourceExhausted, "memkernels.jax: no workspace");
  return check(mk_pk_topk_backward(&a, ws, bytes, dev, stream), op);
}

// ---- platform bindings ---------------------------------------------------------------

struct NoScratch {
  std::optional<void*> Allocate(size_t, size_t) { return std::nullopt; }
};

ffi::Error bag_forward_cpu(ffi::AnyBuffer v, ffi::AnyBuffer i, ffi::AnyBuffer w, ffi::Result<ffi::AnyBuffer> o) {
  return bag_forward<NoScratch>(MK_CPU, nullptr, v, i, w, o);
}

ffi::Error bag_backward_cpu(ffi::AnyBuffer g, ffi::AnyBuffer v, ffi::AnyBuffer i, ffi::AnyBuffer w,
                            ffi::Result<ffi::AnyBuffer> gv, ffi::Result<ffi::AnyBuffer> gw) {
  NoScratch none;
  return bag_backward(MK_CPU, nullptr, &none, g, v, i, w, gv, gw);
}

ffi::Error pk_select_cpu(ffi::AnyBuffer s1, ffi::AnyBuffer s2, int64_t k, ffi::Result<ffi::AnyBuffer> scores,
                         ffi::Result<ffi::AnyBuffer> ids) {
  return pk_select(MK_CPU, nullptr, s1, s2, k, scores, ids);
}

ffi::Error pk_backward_cpu(ffi::AnyBuffer g, ffi::AnyBuffer q, ffi::AnyBuffer k, ffi::AnyBuffer s,
                           ffi::Result<ffi::AnyBuffer> gq, ffi::Result<ffi::AnyBuffer> gk) {
  NoScratch none;
  return pk_backward(MK_CPU, nullptr, &none, g, q, k, s, gq, gk);
}

ffi::Error bag_backward_sparse_cpu(ffi::AnyBuffer g, ffi::AnyBuffer v, ffi::AnyBuffer i, ffi::AnyBuffer w,
                                   int64_t capacity, ffi::Result<ffi::AnyBuffer> rows,
                                   ffi::Result<ffi::AnyBuffer> grads, ffi::Result<ffi::AnyBuffer> gw,
                                   ffi::Result<ffi::AnyBuffer> count) {
  NoScratch none;
  return bag_backward_sparse(MK_CPU, nullptr, &none, g, v, i, w, capacity, rows, grads, gw, count);
}

ffi::Error row_update_cpu(ffi::AnyBuffer table, ffi::AnyBuffer rows, ffi::AnyBuffer grads, ffi::AnyBuffer s1,
                          ffi::AnyBuffer s2, ffi::AnyBuffer step_buf, ffi::AnyBuffer lr_scale_buf, int64_t kind, double lr, double beta1, double beta2, double eps,
                          double weight_decay, double max_row_norm, int64_t step, int64_t stochastic_rounding,
                          uint64_t seed, int64_t column_offset, ffi::Result<ffi::AnyBuffer> table_out,
                          ffi::Result<ffi::AnyBuffer> s1_out, ffi::Result<ffi::AnyBuffer> s2_out) {
  const UpdateAttrs h{kind, step, stochastic_rounding, column_offset, lr, beta1, beta2, eps, weight_decay,
                      max_row_norm, seed};
  return row_update(MK_CPU, nullptr, table, rows, grads, s1, s2, step_buf, lr_scale_buf, h, table_out, s1_out,
                    s2_out);
}

ffi::Error bag_backward_update_cpu(ffi::AnyBuffer g, ffi::AnyBuffer v, ffi::AnyBuffer i, ffi::AnyBuffer w,
                                   ffi::AnyBuffer s1, ffi::AnyBuffer s2, ffi::AnyBuffer step_buf,
                                   ffi::AnyBuffer lr_scale_buf, int64_t kind, double lr, double beta1, double beta2,
                                   double eps, double weight_decay, double max_row_norm, int64_t step,
                                   int64_t stochastic_rounding, uint64_t seed, int64_t column_offset,
                                   ffi::Result<ffi::AnyBuffer> v_out, ffi::Result<ffi::AnyBuffer> s1_out,
                                   ffi::Result<ffi::AnyBuffer> s2_out, ffi::Result<ffi::AnyBuffer> gw) {
  const UpdateAttrs h{kind, step, stochastic_rounding, column_offset, lr, beta1, beta2, eps, weight_decay,
                      max_row_norm, seed};
  NoScratch none;
  return bag_backward_update(MK_CPU, nullptr, &none, g, v, i, w, s1, s2, step_buf, lr_scale_buf, h, v_out, s1_out,
                             s2_out, gw);
}

}  // namespace

#define MK_ROW_UPDATE_ATTRS                                                                            \
  .Attr<int64_t>("kind").Attr<double>("lr").Attr<double>("beta1").Attr<double>("beta2")              \
      .Attr<double>("eps").Attr<double>("weight_decay").Attr<double>("max_row_norm")                \
      .Attr<int64_t>("step").Attr<int64_t>("stochastic_rounding").Attr<uint64_t>("seed")            \
      .Attr<int64_t>("column_offset")

XLA_FFI_DEFINE_HANDLER_SYMBOL(mk_jax_embedding_bag_fwd_cpu, bag_forward_cpu,
                              ffi::Ffi::Bind().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(mk_jax_embedding_bag_bwd_cpu, bag_backward_cpu,
                              ffi::Ffi::Bind().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(mk_jax_pk_select_cpu, pk_select_cpu,
                              ffi::Ffi::Bind().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>().Attr<int64_t>("k")
                                  .Ret<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(mk_jax_pk_topk_bwd_cpu, pk_backward_cpu,
                              ffi::Ffi::Bind().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(mk_jax_embedding_bag_bwd_sparse_cpu, bag_backward_sparse_cpu,
                              ffi::Ffi::Bind().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>().Attr<int64_t>("capacity").Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(mk_jax_embedding_bag_bwd_update_cpu, bag_backward_update_cpu,
                              ffi::Ffi::Bind().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>() MK_ROW_UPDATE_ATTRS
                                  .Ret<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(mk_jax_row_update_cpu, row_update_cpu,
                              ffi::Ffi::Bind().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>() MK_ROW_UPDATE_ATTRS
                                  .Ret<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>());

#if defined(MK_WITH_CUDA)
namespace {

ffi::Error bag_forward_cuda(cudaStream_t stream, ffi::AnyBuffer v, ffi::AnyBuffer i, ffi::AnyBuffer w,
                            ffi::Result<ffi::AnyBuffer> o) {
  return bag_forward<NoScratch>(MK_CUDA, stream, v, i, w, o);
}

ffi::Error bag_backward_cuda(cudaStream_t stream, ffi::ScratchAllocator scratch, ffi::AnyBuffer g,
                             ffi::AnyBuffer v, ffi::AnyBuffer i, ffi::AnyBuffer w, ffi::Result<ffi::AnyBuffer> gv,
                             ffi::Result<ffi::AnyBuffer> gw) {
  return bag_backward(MK_CUDA, stream, &scratch, g, v, i, w, gv, gw);
}

ffi::Error pk_select_cuda(cudaStream_t stream, ffi::AnyBuffer s1, ffi::AnyBuffer s2, int64_t k,
                          ffi::Result<ffi::AnyBuffer> scores, ffi::Result<ffi::AnyBuffer> ids) {
  return pk_select(MK_CUDA, stream, s1, s2, k, scores, ids);
}

ffi::Error pk_backward_cuda(cudaStream_t stream, ffi::ScratchAllocator scratch, ffi::AnyBuffer g, ffi::AnyBuffer q,
                            ffi::AnyBuffer k, ffi::AnyBuffer s, ffi::Result<ffi::AnyBuffer> gq,
                            ffi::Result<ffi::AnyBuffer> gk) {
  return pk_backward(MK_CUDA, stream, &scratch, g, q, k, s, gq, gk);
}

ffi::Error bag_backward_sparse_cuda(cudaStream_t stream, ffi::ScratchAllocator scratch, ffi::AnyBuffer g,
                                    ffi::AnyBuffer v, ffi::AnyBuffer i, ffi::AnyBuffer w, int64_t capacity,
                                    ffi::Result<ffi::AnyBuffer> rows, ffi::Result<ffi::AnyBuffer> grads,
                                    ffi::Result<ffi::AnyBuffer> gw, ffi::Result<ffi::AnyBuffer> count) {
  return bag_backward_sparse(MK_CUDA, stream, &scratch, g, v, i, w, capacity, rows, grads, gw, count);
}

ffi::Error row_update_cuda(cudaStream_t stream, ffi::AnyBuffer table, ffi::AnyBuffer rows, ffi::AnyBuffer grads,
                           ffi::AnyBuffer s1, ffi::AnyBuffer s2, ffi::AnyBuffer step_buf, ffi::AnyBuffer lr_scale_buf,
                           int64_t kind, double lr, double beta1,
                           double beta2, double eps, double weight_decay, double max_row_norm, int64_t step,
                           int64_t stochastic_rounding, uint64_t seed, int64_t column_offset,
                           ffi::Result<ffi::AnyBuffer> table_out, ffi::Result<ffi::AnyBuffer> s1_out,
                           ffi::Result<ffi::AnyBuffer> s2_out) {
  const UpdateAttrs h{kind, step, stochastic_rounding, column_offset, lr, beta1, beta2, eps, weight_decay,
                      max_row_norm, seed};
  return row_update(MK_CUDA, stream, table, rows, grads, s1, s2, step_buf, lr_scale_buf, h, table_out, s1_out,
                    s2_out);
}

ffi::Error bag_backward_update_cuda(cudaStream_t stream, ffi::ScratchAllocator scratch, ffi::AnyBuffer g,
                                    ffi::AnyBuffer v, ffi::AnyBuffer i, ffi::AnyBuffer w, ffi::AnyBuffer s1,
                                    ffi::AnyBuffer s2, ffi::AnyBuffer step_buf, ffi::AnyBuffer lr_scale_buf,
                                    int64_t kind, double lr, double beta1, double beta2, double eps,
                                    double weight_decay, double max_row_norm, int64_t step,
                                    int64_t stochastic_rounding, uint64_t seed, int64_t column_offset,
                                    ffi::Result<ffi::AnyBuffer> v_out, ffi::Result<ffi::AnyBuffer> s1_out,
                                    ffi::Result<ffi::AnyBuffer> s2_out, ffi::Result<ffi::AnyBuffer> gw) {
  const UpdateAttrs h{kind, step, stochastic_rounding, column_offset, lr, beta1, beta2, eps, weight_decay,
                      max_row_norm, seed};
  return bag_backward_update(MK_CUDA, stream, &scratch, g, v, i, w, s1, s2, step_buf, lr_scale_buf, h, v_out,
                             s1_out, s2_out, gw);
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(mk_jax_embedding_bag_fwd_cuda, bag_forward_cuda,
                              ffi::Ffi::Bind().Ctx<ffi::PlatformStream<cudaStream_t>>().Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(mk_jax_embedding_bag_bwd_cuda, bag_backward_cuda,
                              ffi::Ffi::Bind().Ctx<ffi::PlatformStream<cudaStream_t>>()
                                  .Ctx<ffi::ScratchAllocator>().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(mk_jax_pk_select_cuda, pk_select_cuda,
                              ffi::Ffi::Bind().Ctx<ffi::PlatformStream<cudaStream_t>>().Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>().Attr<int64_t>("k").Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(mk_jax_pk_topk_bwd_cuda, pk_backward_cuda,
                              ffi::Ffi::Bind().Ctx<ffi::PlatformStream<cudaStream_t>>()
                                  .Ctx<ffi::ScratchAllocator>().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(mk_jax_embedding_bag_bwd_sparse_cuda, bag_backward_sparse_cuda,
                              ffi::Ffi::Bind().Ctx<ffi::PlatformStream<cudaStream_t>>()
                                  .Ctx<ffi::ScratchAllocator>().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>().Attr<int64_t>("capacity")
                                  .Ret<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(mk_jax_embedding_bag_bwd_update_cuda, bag_backward_update_cuda,
                              ffi::Ffi::Bind().Ctx<ffi::PlatformStream<cudaStream_t>>()
                                  .Ctx<ffi::ScratchAllocator>().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>()
                                  MK_ROW_UPDATE_ATTRS.Ret<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(mk_jax_row_update_cuda, row_update_cuda,
                              ffi::Ffi::Bind().Ctx<ffi::PlatformStream<cudaStream_t>>().Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>()
                                  MK_ROW_UPDATE_ATTRS.Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>());
#endif

// Which platforms this library has handlers for: 1 = CPU, 2 = CUDA (a bit set).
extern "C" __attribute__((visibility("default"))) int mk_jax_platforms(void) {
#if defined(MK_WITH_CUDA)
  return 3;
#else
  return 1;
#endif
}
