// CUDA's 16-bit float types and their conversions as the core's .cu files
// name them, mapped onto the core's host storage types (dtypes_internal.h).
// cu2cpp.py includes it after a source's own includes.
#pragma once

#include "dtypes_internal.h"

using __half = mk::f16_t;
using __nv_bfloat16 = mk::bf16_t;
inline __half __float2half_rn(float f) { return mk::from_float_f16(f); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return mk::from_float_bf16(f); }
inline float __half2float(__half h) { return mk::to_float(h); }
inline float __bfloat162float(__nv_bfloat16 h) { return mk::to_float(h); }

namespace emu {
template <class T>
float to_float_any(T v);  // first declared in mma.h
template <>
inline float to_float_any<mk::f16_t>(mk::f16_t v) {
  return mk::to_float(v);
}
template <>
inline float to_float_any<mk::bf16_t>(mk::bf16_t v) {
  return mk::to_float(v);
}
}  // namespace emu
