// The C ABI: argument checks and dispatch to the CPU or CUDA implementation.
#include <cstdio>
#include <new>
#include <string>

#include "dtypes_internal.h"
#include "embedding_bag_internal.h"
#include "memkernels.h"
#include "pk_topk_internal.h"
#include "row_update_internal.h"

#ifndef MK_VERSION
#define MK_VERSION "0.0.0"
#endif
#ifndef MK_CUDA_ARCHS
#define MK_CUDA_ARCHS ""
#endif

namespace mk {

mk_status eb_check_fwd_args(const mk_embedding_bag_fwd_args* a) {
  if (!a) return MK_ERR_INVALID_ARGUMENT;
  if (a->num_rows < 0 || a->dim < 1 || a->num_bags < 0 || a->bag_size < 1)
    return MK_ERR_INVALID_ARGUMENT;
  if (a->values_row_stride < a->dim) return MK_ERR_INVALID_ARGUMENT;
  if (!is_value_dtype(a->value_dtype) || !is_index_dtype(a->index_dtype))
    return MK_ERR_UNSUPPORTED;
  if (a->num_bags > 0 && (!a->indices || !a->weights || !a->out)) return MK_ERR_INVALID_ARGUMENT;
  if (a->num_bags > 0 && a->num_rows > 0 && !a->values) return MK_ERR_INVALID_ARGUMENT;
  return MK_OK;
}

mk_status eb_check_bwd_args(const mk_embedding_bag_bwd_args* a) {
  if (!a) return MK_ERR_INVALID_ARGUMENT;
  if (a->num_rows < 0 || a->dim < 1 || a->num_bags < 0 || a->bag_size < 1)
    return MK_ERR_INVALID_ARGUMENT;
  if (a->values_row_stride < a->dim) return MK_ERR_INVALID_ARGUMENT;
  if (!is_value_dtype(a->value_dtype) || !is_index_dtype(a->index_dtype))
    return MK_ERR_UNSUPPORTED;
  // Pair ids and segment offsets are int32.
  if (a->num_bags > 0 && a->bag_size > (int64_t(INT32_MAX) - 1) / a->num_bags)
    return MK_ERR_INVALID_ARGUMENT;
  if (a->grad_values && (a->sparse_rows || a->sparse_grads)) return MK_ERR_INVALID_ARGUMENT;
  if (a->update && (a->grad_values || a->sparse_rows || a->sparse_grads)) return MK_ERR_INVALID_ARGUMENT;
  if (a->update) {
    // The update's own checks (its kind, its state), as mk_sparse_row_update makes them.
    mk_sparse_row_update_args u{};
    u.num_rows = a->num_rows;
    u.dim = a->dim;
    u.value_dtype = a->value_dtype;
    u.table = const_cast<void*>(a->values);
    u.table_row_stride = a->values_row_stride;
    u.update = *a->update;
    const mk_status st = row_update_check_args(&u);
    if (st != MK_OK) return st;
  }
  if (bool(a->sparse_rows) != bool(a->sparse_grads)) return MK_ERR_INVALID_ARGUMENT;
  if (a->sparse_capacity < 0 || (a->sparse_capacity > 0 && !a->sparse_rows)) return MK_ERR_INVALID_ARGUMENT;
  if (a->num_bags > 0 && (!a->indices || !a->weights || !a->grad_out))
    return MK_ERR_INVALID_ARGUMENT;
  if (a->num_bags > 0 && a->grad_weights && !a->values) return MK_ERR_INVALID_ARGUMENT;
  return MK_OK;
}

mk_status pk_check_select_args(const mk_pk_select_args* a) {
  if (!a) return MK_ERR_INVALID_ARGUMENT;
  if (a->num_tokens < 0 || a->num_heads < 0) return MK_ERR_INVALID_ARGUMENT;
  if (a->num_keys < 1 || a->num_keys > MK_PK_MAX_KEYS) return MK_ERR_INVALID_ARGUMENT;
  if (a->k < 1 || a->k > a->num_keys) return MK_ERR_INVALID_ARGUMENT;
  if (a->num_tokens * a->num_heads > 0 &&
      (!a->scores1 || !a->scores2 || !a->out_scores || !a->out_indices))
    return MK_ERR_INVALID_ARGUMENT;
  return MK_OK;
}

mk_status row_update_check_args(const mk_sparse_row_update_args* a) {
  if (!a) return MK_ERR_INVALID_ARGUMENT;
  if (a->num_rows < 0 || a->dim < 1 || a->num_updates < 0 || a->table_row_stride < a->dim)
    return MK_ERR_INVALID_ARGUMENT;
  if (!is_value_dtype(a->value_dtype)) return MK_ERR_UNSUPPORTED;
  const mk_row_update& u = a->update;
  if (u.kind != MK_OPT_SGD && u.kind != MK_OPT_ADAM && u.kind != MK_OPT_ADAGRAD_ROWWISE &&
      u.kind != MK_OPT_ADAM_ROWWISE)
    return MK_ERR_INVALID_ARGUMENT;
  if (a->num_updates > 0 && (!a->table || !a->rows || !a->grads)) return MK_ERR_INVALID_ARGUMENT;
  if (u.state_bf16 && a->value_dtype == MK_F64) return MK_ERR_UNSUPPORTED;
  if ((u.kind == MK_OPT_ADAM || u.kind == MK_OPT_ADAM_ROWWISE) &&
      (!u.state1 || !u.state2 || (!u.step_ptr && u.step < 1)))
    return MK_ERR_INVALID_ARGUMENT;
  if (u.kind == MK_OPT_ADAGRAD_ROWWISE && !u.state1) return MK_ERR_INVALID_ARGUMENT;
  return MK_OK;
}

namespace {

// No C++ exception crosses the C ABI: host allocations that fail become
// MK_ERR_OUT_OF_MEMORY, anything else MK_ERR_INTERNAL.
template <class F>
mk_status guarded(F&& f) noexcept {
  try {
    return f();
  } catch (const std::bad_alloc&) {
    return MK_ERR_OUT_OF_MEMORY;
  } catch (...) {
    return MK_ERR_INTERNAL;
  }
}

mk_status scratch_bytes(const mk_embedding_bag_bwd_args& a, mk_device device, size_t* bytes) {
  if (device == MK_CPU) {
    *bytes = eb_backward_scratch_cpu(a);
    return MK_OK;
  }
#ifdef MK_WITH_CUDA
  if (device == MK_CUDA) return eb_backward_scratch_cuda(a, bytes);
#endif
  return MK_ERR_UNSUPPORTED;
}

mk_status layout_for(const mk_embedding_bag_bwd_args& a, mk_device device, size_t workspace_bytes,
                     EbWorkspaceLayout* l) {
  size_t scratch = 0;
  mk_status st = scratch_bytes(a, device, &scratch);
  if (st != MK_OK) return st;
  *l = eb_workspace_layout(a, scratch);
  if (workspace_bytes < l->total) return MK_ERR_WORKSPACE_TOO_SMALL;
  return MK_OK;
}

// The checks the backward's plan and reduce share: the arguments, the
// workspace, and its layout for this device.
mk_status backward_layout(const mk_embedding_bag_bwd_args* a, const void* workspace,
                          size_t workspace_bytes, mk_device device, EbWorkspaceLayout* l) {
  mk_status st = eb_check_bwd_args(a);
  if (st != MK_OK) return st;
  if (!workspace) return MK_ERR_INVALID_ARGUMENT;
  return layout_for(*a, device, workspace_bytes, l);
}

// pk_topk's backward: the embedding bag over the key table [H * 2 * n, half]
// it runs on, and where its pieces sit in the workspace (the bag's indices,
// its weights, the bag backward's own workspace).
struct PkBackward {
  mk_embedding_bag_fwd_args fwd;
  mk_embedding_bag_bwd_args bwd;
  size_t weights_at, bag_at, bag_bytes, total;
};

mk_status pk_check_bwd_args(const mk_pk_topk_bwd_args* a) {
  if (!a) return MK_ERR_INVALID_ARGUMENT;
  if (a->num_tokens < 0 || a->num_heads < 0 || a->half_dim < 1) return MK_ERR_INVALID_ARGUMENT;
  if (a->num_keys < 1 || a->num_keys > MK_PK_MAX_KEYS || a->k < 1 || a->k > a->num_keys)
    return MK_ERR_INVALID_ARGUMENT;
  if (!is_value_dtype(a->dtype)) return MK_ERR_UNSUPPORTED;
  if (!a->keys) return MK_ERR_INVALID_ARGUMENT;
  if (a->num_tokens * a->num_heads > 0 && (!a->grad_scores || !a->query || !a->indices))
    return MK_ERR_INVALID_ARGUMENT;
  return MK_OK;
}

mk_status pk_backward_plan(const mk_pk_topk_bwd_args& a, mk_device device, char* ws, PkBackward* p) {
  const int64_t bags = a.num_tokens * a.num_heads * 2, pairs = bags * a.k;
  p->weights_at = align256(size_t(pairs) * sizeof(int64_t));
  p->bag_at = p->weights_at + align256(size_t(pairs) * acc_size(a.dtype));
  // Before the workspace exists the bag's pointers are stand-ins the size
  // query only tests for null.
  const void* rows = ws ? static_cast<const void*>(ws) : static_cast<const void*>(a.keys);
  const void* weights = ws ? static_cast<const void*>(ws + p->weights_at) : static_cast<const void*>(a.keys);
  mk_embedding_bag_fwd_args f{};
  f.num_rows = a.num_heads * 2 * a.num_keys;
  f.dim = a.half_dim;
  f.num_bags = bags;
  f.bag_size = a.k;
  f.value_dtype = a.dtype;
  f.index_dtype = MK_I64;
  f.values = a.keys;
  f.values_row_stride = a.half_dim;
  f.indices = rows;
  f.weights = weights;
  f.out = a.grad_query;
  f.num_threads = a.num_threads;
  mk_embedding_bag_bwd_args b{};
  b.num_rows = f.num_rows;
  b.dim = f.dim;
  b.num_bags = bags;
  b.bag_size = a.k;
  b.value_dtype = a.dtype;
  b.index_dtype = MK_I64;
  b.values = a.keys;
  b.values_row_stride = a.half_dim;
  b.indices = rows;
  b.weights = weights;
  b.grad_out = a.query ? a.query : a.keys;  // the query's halves are the bag's output gradients
  b.grad_values = a.grad_keys;
  b.num_threads = a.num_threads;
  p->fwd = f;
  p->bwd = b;
  p->bag_bytes = 0;
  if (a.grad_keys) {
    const mk_status st = mk_embedding_bag_backward_workspace_size(&b, device, &p->bag_bytes);
    if (st != MK_OK) return st;
  }
  p->total = p->bag_at + p->bag_bytes;
  return MK_OK;
}

}  // namespace
}  // namespace mk

extern "C" {

int mk_abi_version(void) { return MK_ABI_VERSION; }

const char* mk_status_string(mk_status status) {
  switch (status) {
    case MK_OK: return "ok";
    case MK_ERR_INVALID_ARGUMENT: return "invalid argument";
    case MK_ERR_INDEX_OUT_OF_RANGE: return "index out of range";
    case MK_ERR_UNSUPPORTED: return "unsupported dtype or device in this build";
    case MK_ERR_CUDA: return "CUDA error";
    case MK_ERR_WORKSPACE_TOO_SMALL: return "workspace too small";
    case MK_ERR_OUT_OF_MEMORY: return "out of host memory";
    case MK_ERR_INTERNAL: return "internal error";
  }
  return "unknown status";
}

const char* mk_build_info(void) {
  static const std::string info = [] {
    std::string s = "{\"version\": \"" MK_VERSION "\", \"backends\": [\"cpu\"";
#ifdef MK_WITH_CUDA
    s += ", \"cuda\"";
#endif
    s += "], \"cuda_archs\": \"" MK_CUDA_ARCHS "\", \"openmp\": ";
#ifdef _OPENMP
    s += "true";
#else
    s += "false";
#endif
    s += "}";
    return s;
  }();
  return info.c_str();
}

size_t mk_struct_size(const char* name) {
  if (!name) return 0;
  const std::string n(name);
  if (n == "mk_embedding_bag_fwd_args") return sizeof(mk_embedding_bag_fwd_args);
  if (n == "mk_embedding_bag_bwd_args") return sizeof(mk_embedding_bag_bwd_args);
  if (n == "mk_pk_select_args") return sizeof(mk_pk_select_args);
  if (n == "mk_pk_topk_bwd_args") return sizeof(mk_pk_topk_bwd_args);
  if (n == "mk_pk_topk_args") return sizeof(mk_pk_topk_args);
  if (n == "mk_row_update") return sizeof(mk_row_update);
  if (n == "mk_sparse_row_update_args") return sizeof(mk_sparse_row_update_args);
  if (n == "mk_index_report") return sizeof(mk_index_report);
  return 0;
}

mk_status mk_embedding_bag_forward(const mk_embedding_bag_fwd_args* args, mk_device device,
                                   void* stream) {
  return mk::guarded([&]() -> mk_status {
    mk_status st = mk::eb_check_fwd_args(args);
    if (st != MK_OK) return st;
    if (args->num_bags == 0) return MK_OK;
    if (device == MK_CPU) return mk::eb_forward_cpu(*args);
#ifdef MK_WITH_CUDA
    if (device == MK_CUDA) return mk::eb_forward_cuda(*args, stream);
#endif
    (void)stream;
    return MK_ERR_UNSUPPORTED;
  });
}

mk_status mk_embedding_bag_backward_workspace_size(const mk_embedding_bag_bwd_args* args,
                                                   mk_device device, size_t* bytes) {
  return mk::guarded([&]() -> mk_status {
    mk_status st = mk::eb_check_bwd_args(args);
    if (st != MK_OK) return st;
    if (!bytes) return MK_ERR_INVALID_ARGUMENT;
    size_t scratch = 0;
    st = mk::scratch_bytes(*args, device, &scratch);
    if (st != MK_OK) return st;
    *bytes = mk::eb_workspace_layout(*args, scratch).total;
    return MK_OK;
  });
}

mk_status mk_embedding_bag_backward_plan(const mk_embedding_bag_bwd_args* args, void* workspace,
                                         size_t workspace_bytes, mk_device device, void* stream) {
  return mk::guarded([&]() -> mk_status {
    mk::EbWorkspaceLayout l;
    const mk_status st = mk::backward_layout(args, workspace, workspace_bytes, device, &l);
    if (st != MK_OK) return st;
    char* ws = static_cast<char*>(workspace);
    if (device == MK_CPU) return mk::eb_backward_plan_cpu(*args, ws, l);
#ifdef MK_WITH_CUDA
    if (device == MK_CUDA) return mk::eb_backward_plan_cuda(*args, ws, l, stream);
#endif
    (void)stream;
    return MK_ERR_UNSUPPORTED;
  });
}

mk_status mk_embedding_bag_backward_count(const mk_embedding_bag_bwd_args* args,
                                          const void* workspace, mk_device device, void* stream,
                                          int64_t* num_unique) {
  return mk::guarded([&]() -> mk_status {
    mk_status st = mk::eb_check_bwd_args(args);
    if (st != MK_OK) return st;
    if (!workspace || !num_unique) return MK_ERR_INVALID_ARGUMENT;
    const mk::EbWorkspaceLayout l = mk::eb_workspace_layout(*args, 0);
    const char* ws = static_cast<const char*>(workspace);
    if (device == MK_CPU) {
      *num_unique = reinterpret_cast<const int32_t*>(ws + l.counters)[mk::kNumUnique];
      return MK_OK;
    }
#ifdef MK_WITH_CUDA
    if (device == MK_CUDA) return mk::eb_backward_count_cuda(ws, l, stream, num_unique);
#endif
    (void)stream;
    return MK_ERR_UNSUPPORTED;
  });
}

mk_status mk_embedding_bag_backward_reduce(const mk_embedding_bag_bwd_args* args, void* workspace,
                                           size_t workspace_bytes, mk_device device,
                                           void* stream) {
  return mk::guarded([&]() -> mk_status {
    mk::EbWorkspaceLayout l;
    const mk_status st = mk::backward_layout(args, workspace, workspace_bytes, device, &l);
    if (st != MK_OK) return st;
    char* ws = static_cast<char*>(workspace);
    if (device == MK_CPU) return mk::eb_backward_reduce_cpu(*args, ws, l);
#ifdef MK_WITH_CUDA
    if (device == MK_CUDA) return mk::eb_backward_reduce_cuda(*args, ws, l, stream);
#endif
    (void)stream;
    return MK_ERR_UNSUPPORTED;
  });
}

mk_status mk_sparse_row_update(const mk_sparse_row_update_args* args, mk_device device,
                               void* stream) {
  return mk::guarded([&]() -> mk_status {
    mk_status st = mk::row_update_check_args(args);
    if (st != MK_OK) return st;
    if (args->num_updates == 0) return MK_OK;
    if (device == MK_CPU) return mk::row_update_cpu(*args);
#ifdef MK_WITH_CUDA
    if (device == MK_CUDA) return mk::row_update_cuda(*args, stream);
#endif
    (void)stream;
    return MK_ERR_UNSUPPORTED;
  });
}

mk_status mk_pk_topk_fused(const mk_pk_topk_args* a, mk_device device, void* stream) {
  return mk::guarded([&]() -> mk_status {
    if (!a || a->num_tokens < 0 || a->num_heads < 0 || a->half_dim < 1) return MK_ERR_INVALID_ARGUMENT;
    if (a->num_keys < 1 || a->num_keys > MK_PK_MAX_KEYS || a->k < 1 || a->k > a->num_keys)
      return MK_ERR_INVALID_ARGUMENT;
    if (a->dtype != MK_F16 && a->dtype != MK_BF16) return MK_ERR_UNSUPPORTED;
    if (a->k > MK_PK_FUSED_MAX_K) return MK_ERR_UNSUPPORTED;
    if (a->num_tokens * a->num_heads == 0) return MK_OK;
    if (!a->query || !a->keys || !a->out_scores || !a->out_indices) return MK_ERR_INVALID_ARGUMENT;
#ifdef MK_WITH_CUDA
    if (device == MK_CUDA) return mk::pk_topk_fused_cuda(*a, stream);
#endif
    (void)device;
    (void)stream;
    return MK_ERR_UNSUPPORTED;
  });
}

mk_status mk_pk_topk_backward_workspace_size(const mk_pk_topk_bwd_args* a, mk_device device, size_t* bytes) {
  return mk::guarded([&]() -> mk_status {
    mk_status st = mk::pk_check_bwd_args(a);
    if (st != MK_OK) return st;
    if (!bytes) return MK_ERR_INVALID_ARGUMENT;
    mk::PkBackward p;
    st = mk::pk_backward_plan(*a, device, nullptr, &p);
    if (st != MK_OK) return st;
    *bytes = p.total;
    return MK_OK;
  });
}

mk_status mk_pk_topk_backward(const mk_pk_topk_bwd_args* a, void* workspace, size_t workspace_bytes,
                              mk_device device, void* stream) {
  return mk::guarded([&]() -> mk_status {
    mk_status st = mk::pk_check_bwd_args(a);
    if (st != MK_OK) return st;
    if (!workspace) return MK_ERR_INVALID_ARGUMENT;
    char* ws = static_cast<char*>(workspace);
    mk::PkBackward p;
    st = mk::pk_backward_plan(*a, device, ws, &p);
    if (st != MK_OK) return st;
    if (workspace_bytes < p.total) return MK_ERR_WORKSPACE_TOO_SMALL;
    if (a->num_tokens * a->num_heads > 0) {
      int64_t* rows = reinterpret_cast<int64_t*>(ws);
      if (device == MK_CPU) {
        st = mk::pk_backward_pairs_cpu(*a, rows, ws + p.weights_at);
#ifdef MK_WITH_CUDA
      } else if (device == MK_CUDA) {
        st = mk::pk_backward_pairs_cuda(*a, rows, ws + p.weights_at, stream);
#endif
      } else {
        return MK_ERR_UNSUPPORTED;
      }
      if (st != MK_OK) return st;
      if (a->grad_query) {
        st = mk_embedding_bag_forward(&p.fwd, device, stream);
        if (st != MK_OK) return st;
      }
    }
    if (a->grad_keys) {
      // With no pairs, the reduce still zeroes the keys' gradient.
      st = mk_embedding_bag_backward_plan(&p.bwd, ws + p.bag_at, p.bag_bytes, device, stream);
      if (st != MK_OK) return st;
      st = mk_embedding_bag_backward_reduce(&p.bwd, ws + p.bag_at, p.bag_bytes, device, stream);
    }
    return st;
  });
}

#ifndef MK_WITH_CUDA
// With CUDA, device_cuda.cu and index_report_cuda.cu define these.
mk_status mk_cuda_device_check(int device, int* major, int* minor) {
  (void)device;
  (void)major;
  (void)minor;
  return MK_ERR_UNSUPPORTED;
}

mk_status mk_index_reporter_create(int device, mk_index_reporter** out) {
  (void)device;
  if (out) *out = nullptr;
  return MK_ERR_UNSUPPORTED;
}

// No reporter can exist in this build.
mk_status mk_index_reporter_poll(mk_index_reporter* reporter, mk_index_report* report, int* found) {
  (void)reporter;
  (void)report;
  if (found) *found = 0;
  return MK_ERR_INVALID_ARGUMENT;
}

void mk_index_reporter_destroy(mk_index_reporter* reporter) { (void)reporter; }
#endif

mk_status mk_pk_select(const mk_pk_select_args* args, mk_device device, void* stream) {
  return mk::guarded([&]() -> mk_status {
    mk_status st = mk::pk_check_select_args(args);
    if (st != MK_OK) return st;
    if (args->num_tokens * args->num_heads == 0) return MK_OK;
    if (device == MK_CPU) return mk::pk_select_cpu(*args);
#ifdef MK_WITH_CUDA
    if (device == MK_CUDA) return mk::pk_select_cuda(*args, stream);
#endif
    (void)stream;
    return MK_ERR_UNSUPPORTED;
  });
}

}  // extern "C"
