// Helpers shared by the torch glue: the map between torch dtypes and the
// core's, argument checks that name the argument and what was found, and
// status-to-exception conversion.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <string>

#include "../core/memkernels.h"

namespace mkt {

// The value dtypes the core takes (csrc/core/dtypes_internal.h), as torch
// dtypes; their order is the order messages list them in.
struct ValueDtype {
  at::ScalarType torch;
  mk_dtype core;
  const char* name;
};
constexpr ValueDtype kValueDtypes[] = {
    {at::kFloat, MK_F32, "float32"},
    {at::kHalf, MK_F16, "float16"},
    {at::kBFloat16, MK_BF16, "bfloat16"},
    {at::kDouble, MK_F64, "float64"},
};

inline bool is_value_dtype(at::ScalarType t) {
  for (const ValueDtype& d : kValueDtypes)
    if (d.torch == t) return true;
  return false;
}

inline mk_dtype to_mk_dtype(at::ScalarType t) {
  for (const ValueDtype& d : kValueDtypes)
    if (d.torch == t) return d.core;
  TORCH_CHECK(false, "memkernels: unsupported dtype ", t);
}

// "float32, float16, bfloat16 or float64"
inline std::string value_dtype_names() {
  std::string s;
  constexpr size_t n = sizeof(kValueDtypes) / sizeof(kValueDtypes[0]);
  for (size_t i = 0; i < n; ++i) {
    if (i > 0) s += i + 1 == n ? " or " : ", ";
    s += kValueDtypes[i].name;
  }
  return s;
}

inline void check_value_dtype(const char* op, const at::Tensor& t, const char* name) {
  TORCH_CHECK(is_value_dtype(t.scalar_type()), op, ": ", name, " must be ", value_dtype_names(),
              "; got ", t.scalar_type());
}

inline void check_index_dtype(const char* op, const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.scalar_type() == at::kInt || t.scalar_type() == at::kLong, op, ": ", name,
              " must be int32 or int64; got ", t.scalar_type());
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

// Row stride of a [rows, dim] table with unit column stride.
inline int64_t row_stride(const at::Tensor& table) {
  return table.size(0) > 1 ? table.stride(0) : table.size(1);
}

inline void check_status(mk_status st, const char* op) {
  TORCH_CHECK(st == MK_OK, op, ": kernel failed: ", mk_status_string(st));
}

}  // namespace mkt
