// Helpers shared by the torch glue: dtype mapping, argument checks that name
// the argument and what was found, and status-to-exception conversion.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include "../core/memkernels.h"

namespace mkt {

// Where a core call runs: CPU, or CUDA on a given stream.
struct Backend {
  mk_device device;
  void* stream;
};

inline bool is_value_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kHalf || t == at::kBFloat16 || t == at::kDouble;
}

inline mk_dtype to_mk_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return MK_F32;
    case at::kHalf: return MK_F16;
    case at::kBFloat16: return MK_BF16;
    case at::kDouble: return MK_F64;
    default: TORCH_CHECK(false, "memkernels: unsupported dtype ", t);
  }
}

inline mk_index_dtype to_mk_index(at::ScalarType t) {
  return t == at::kLong ? MK_I64 : MK_I32;
}

// Accumulation dtype: double for double values, float otherwise.
inline at::ScalarType acc_dtype(at::ScalarType values) {
  return values == at::kDouble ? at::kDouble : at::kFloat;
}

inline void check_same_device(const char* op, const at::Tensor& a, const char* a_name,
                              const at::Tensor& b, const char* b_name) {
  TORCH_CHECK(a.device() == b.device(), op, ": ", a_name, " and ", b_name,
              " must be on the same device; ", a_name, " is on ", a.device(), ", ", b_name,
              " on ", b.device());
}

inline void check_dim(const char* op, const at::Tensor& t, const char* name, int64_t dim,
                      const char* shape) {
  TORCH_CHECK(t.dim() == dim, op, ": ", name, " must be ", dim, "-D ", shape, "; got shape ",
              t.sizes());
}

inline void check_status(mk_status st, const char* op) {
  TORCH_CHECK(st == MK_OK, op, ": kernel failed: ", mk_status_string(st));
}

}  // namespace mkt
