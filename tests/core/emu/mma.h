// nvcuda::wmma on the CPU (tests/core/emu): 16 x 16 x 16 tiles, fp32
// accumulation. Each lane holds the whole tile (the real fragments spread it
// over the warp in a layout the API leaves unspecified, so code that only
// loads, multiplies, fills and stores cannot tell). The operations are
// warp-collective, as on a GPU: each starts with a warp barrier.
#pragma once

#include "../warp_emu.h"

namespace emu {
// The value of a 16-bit element as a float (defined in cuda_emu_types.h, after
// the core's dtypes).
template <class T>
float to_float_any(T v);
}  // namespace emu

namespace nvcuda {
namespace wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <class Use, int M, int N, int K, class T, class Layout = void>
struct fragment {
  float x[16 * 16];  // element (r, c) at x[r * 16 + c]
  static constexpr int num_elements = 16 * 16;
};

template <class T>
void fill_fragment(fragment<accumulator, 16, 16, 16, float>& f, T v) {
  __syncwarp();
  for (float& e : f.x) e = float(v);
}

// A row-major: element (r, c) at p[r * ldm + c]. B column-major: element
// (r, c) at p[c * ldm + r].
template <class T>
void load_matrix_sync(fragment<matrix_a, 16, 16, 16, T, row_major>& f, const T* p, unsigned ldm) {
  __syncwarp();
  for (int r = 0; r < 16; ++r)
    for (int c = 0; c < 16; ++c) f.x[r * 16 + c] = emu::to_float_any(p[size_t(r) * ldm + c]);
}
template <class T>
void load_matrix_sync(fragment<matrix_b, 16, 16, 16, T, col_major>& f, const T* p, unsigned ldm) {
  __syncwarp();
  for (int r = 0; r < 16; ++r)
    for (int c = 0; c < 16; ++c) f.x[r * 16 + c] = emu::to_float_any(p[size_t(c) * ldm + r]);
}

template <class T>
void mma_sync(fragment<accumulator, 16, 16, 16, float>& d, const fragment<matrix_a, 16, 16, 16, T, row_major>& a,
              const fragment<matrix_b, 16, 16, 16, T, col_major>& b,
              const fragment<accumulator, 16, 16, 16, float>& c) {
  __syncwarp();
  float out[16 * 16];
  for (int i = 0; i < 16; ++i)
    for (int j = 0; j < 16; ++j) {
      float s = c.x[i * 16 + j];
      for (int k = 0; k < 16; ++k) s += a.x[i * 16 + k] * b.x[k * 16 + j];
      out[i * 16 + j] = s;
    }
  for (int e = 0; e < 16 * 16; ++e) d.x[e] = out[e];
}

inline void store_matrix_sync(float* p, const fragment<accumulator, 16, 16, 16, float>& f, unsigned ldm,
                              layout_t layout) {
  __syncwarp();
  for (int r = 0; r < 16; ++r)
    for (int c = 0; c < 16; ++c) {
      float& dst = layout == mem_row_major ? p[size_t(r) * ldm + c] : p[size_t(c) * ldm + r];
      dst = f.x[r * 16 + c];
    }
  __syncwarp();
}

}  // namespace wmma
}  // namespace nvcuda
