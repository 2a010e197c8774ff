// The one table of the core's dtypes, and everything derived from it: the
// storage type of each value dtype (host storage in the CPU kernels, CUDA
// storage in the .cu files), its accumulation type, conversions to and from
// the accumulation type, and the value and index dispatch. Torch-free.
//
// Adding a value dtype: a row in MK_VALUE_DTYPES (and its enum in
// memkernels.h), its storage type's to_acc/from_acc below, then the kernels'
// loads and stores where they specialise on the type, and the tests.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "memkernels.h"

#if defined(__CUDACC__)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#define MK_HD __host__ __device__ __forceinline__
#else
#define MK_HD inline
#endif

//  enum     host storage  CUDA storage     accumulation
#define MK_VALUE_DTYPES(X)                             \
  X(MK_F32,  float,        float,           float)     \
  X(MK_F16,  f16_t,        __half,          float)     \
  X(MK_BF16, bf16_t,       __nv_bfloat16,   float)     \
  X(MK_F64,  double,       double,          double)

//  enum    storage
#define MK_INDEX_DTYPES(X) \
  X(MK_I32, int32_t)       \
  X(MK_I64, int64_t)

// The storage column a translation unit uses.
#if defined(__CUDACC__)
#define MK_STORAGE(host, device) device
#else
#define MK_STORAGE(host, device) host
#endif

namespace mk {

#if !defined(__CUDACC__)
// ---- host storage of the 16-bit floats (round to nearest even, like torch) ----

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
#endif  // !__CUDACC__

// ---- the table, by storage type and by enum ------------------------------------

// Storage type -> its enum and accumulation type.
template <class V>
struct ValueTraits;
#define MK_VALUE_TRAITS(id, host, device, acc_type)       \
  template <>                                                   \
  struct ValueTraits<MK_STORAGE(host, device)> {                \
    static constexpr mk_dtype dtype = id;                       \
    using acc = acc_type;                                       \
  };
MK_VALUE_DTYPES(MK_VALUE_TRAITS)
#undef MK_VALUE_TRAITS

template <class V>
using acc_t = typename ValueTraits<V>::acc;

inline bool is_value_dtype(mk_dtype t) {
  switch (t) {
#define MK_CASE(id, ...) case id: return true;
    MK_VALUE_DTYPES(MK_CASE)
#undef MK_CASE
  }
  return false;
}

inline bool is_index_dtype(mk_index_dtype t) {
  switch (t) {
#define MK_CASE(id, storage) case id: return true;
    MK_INDEX_DTYPES(MK_CASE)
#undef MK_CASE
  }
  return false;
}

// Bytes of the accumulation type of value dtype t (0 if t is not one).
inline size_t acc_size(mk_dtype t) {
  switch (t) {
#define MK_CASE(id, host, device, acc_type) case id: return sizeof(acc_type);
    MK_VALUE_DTYPES(MK_CASE)
#undef MK_CASE
  }
  return 0;
}

inline size_t index_size(mk_index_dtype t) {
  switch (t) {
#define MK_CASE(id, storage) case id: return sizeof(storage);
    MK_INDEX_DTYPES(MK_CASE)
#undef MK_CASE
  }
  return 0;
}

// Calls f(V{}) with V the storage type of `t` in this translation unit.
template <class F>
mk_status dispatch_value(mk_dtype t, F&& f) {
  switch (t) {
#define MK_CASE(id, host, device, ...) case id: return f(MK_STORAGE(host, device){});
    MK_VALUE_DTYPES(MK_CASE)
#undef MK_CASE
  }
  return MK_ERR_UNSUPPORTED;
}

// Calls f(I{}) with I the integer type of `t`.
template <class F>
mk_status dispatch_index(mk_index_dtype t, F&& f) {
  switch (t) {
#define MK_CASE(id, storage) case id: return f(storage{});
    MK_INDEX_DTYPES(MK_CASE)
#undef MK_CASE
  }
  return MK_ERR_UNSUPPORTED;
}

// ---- conversions to and from the accumulation type ---------------------------

#if defined(__CUDACC__)
// Device conversions that do not rely on the half/bfloat16 operators (torch
// builds with them disabled).
__device__ __forceinline__ float to_acc(float x) { return x; }
__device__ __forceinline__ double to_acc(double x) { return x; }
__device__ __forceinline__ float to_acc(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 x) { return __bfloat162float(x); }

template <class V>
__device__ __forceinline__ V from_acc(acc_t<V> x);
template <>
__device__ __forceinline__ float from_acc<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ double from_acc<double>(double x) {
  return x;
}
template <>
__device__ __forceinline__ __half from_acc<__half>(float x) {
  return __float2half_rn(x);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}
#else
template <class A>
inline A to_acc(A x) {
  return x;
}
inline float to_acc(f16_t x) { return to_float(x); }
inline float to_acc(bf16_t x) { return to_float(x); }

template <class V>
inline V from_acc(acc_t<V> x);
template <>
inline float from_acc<float>(float x) {
  return x;
}
template <>
inline double from_acc<double>(double x) {
  return x;
}
template <>
inline f16_t from_acc<f16_t>(float x) {
  return from_float_f16(x);
}
template <>
inline bf16_t from_acc<bf16_t>(float x) {
  return from_float_bf16(x);
}
#endif

}  // namespace mk
