// Host storage types for 16-bit floats and the dispatch over the core's dtypes.
// Torch-free; conversions round to nearest even like torch's.
#pragma once

#include <cstdint>
#include <cstring>

#include "memkernels.h"

namespace mk {

struct bf16_t {
  uint16_t bits;
};

inline float to_float(bf16_t x) {
  uint32_t u = uint32_t(x.bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline bf16_t from_float_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return bf16_t{uint16_t((u >> 16) | 0x40)};  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return bf16_t{uint16_t(u >> 16)};
}

#if defined(__FLT16_MANT_DIG__)
// The compiler's _Float16 converts with F16C instructions where the clone allows.
using f16_t = _Float16;
inline float to_float(f16_t x) { return float(x); }
inline f16_t from_float_f16(float f) { return f16_t(f); }
#else
struct f16_t {
  uint16_t bits;
};
inline float to_float(f16_t h) {
  uint32_t sign = uint32_t(h.bits & 0x8000u) << 16;
  uint32_t exp = (h.bits >> 10) & 0x1fu;
  uint32_t man = h.bits & 0x3ffu;
  uint32_t u;
  if (exp == 0x1f) {
    u = sign | 0x7f800000u | (man << 13);
  } else if (exp != 0) {
    u = sign | ((exp + 112) << 23) | (man << 13);
  } else if (man == 0) {
    u = sign;
  } else {  // subnormal half: normalise
    int e = -1;
    do {
      ++e;
      man <<= 1;
    } while ((man & 0x400u) == 0);
    u = sign | (uint32_t(112 - e) << 23) | ((man & 0x3ffu) << 13);
  }
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline f16_t from_float_f16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  uint32_t sign = (u >> 16) & 0x8000u;
  uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return f16_t{uint16_t(sign | 0x7e00u)};
  if (a >= 0x477ff000u) return f16_t{uint16_t(sign | 0x7c00u)};  // overflow to inf
  if (a < 0x38800000u) {                                       // subnormal or zero
    float af;
    std::memcpy(&af, &a, 4);
    float scaled = af * 16777216.0f;  // 2^24: the half subnormal unit becomes 1
    uint32_t m = uint32_t(scaled);
    float rem = scaled - float(m);
    if (rem > 0.5f || (rem == 0.5f && (m & 1u))) ++m;
    return f16_t{uint16_t(sign | m)};
  }
  uint32_t r = a + 0xfffu + ((a >> 13) & 1u) - 0x38000000u;
  return f16_t{uint16_t(sign | (r >> 13))};
}
#endif

// Converting stores from the accumulation type.
template <class V, class A>
inline V from_acc(A x);
template <>
inline float from_acc<float, float>(float x) {
  return x;
}
template <>
inline double from_acc<double, double>(double x) {
  return x;
}
template <>
inline f16_t from_acc<f16_t, float>(float x) {
  return from_float_f16(x);
}
template <>
inline bf16_t from_acc<bf16_t, float>(float x) {
  return from_float_bf16(x);
}

template <class V>
struct acc_of {
  using type = float;
};
template <>
struct acc_of<double> {
  using type = double;
};

template <class A>
inline A to_acc(A x) {
  return x;
}
inline float to_acc(f16_t x) { return to_float(x); }
inline float to_acc(bf16_t x) { return to_float(x); }

// Calls f.template operator()<V>() with V the storage type of `t`.
template <class F>
mk_status dispatch_value_dtype(mk_dtype t, F&& f) {
  switch (t) {
    case MK_F32: return f(float{});
    case MK_F64: return f(double{});
    case MK_F16: return f(f16_t{});
    case MK_BF16: return f(bf16_t{});
  }
  return MK_ERR_UNSUPPORTED;
}

template <class F>
mk_status dispatch_index_dtype(mk_index_dtype t, F&& f) {
  switch (t) {
    case MK_I32: return f(int32_t{});
    case MK_I64: return f(int64_t{});
  }
  return MK_ERR_UNSUPPORTED;
}

}  // namespace mk
