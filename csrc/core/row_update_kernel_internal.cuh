// The CUDA side of the row-sparse optimizer updates, as device functions
// that include no CUDA header: the standalone update kernel
// (row_update_cuda.cu) and the embedding-bag backward that applies the update
// inside its segment reduction (embedding_bag_backward_kernel_internal.cuh)
// both use them, so the two round identically, and
// tests/core/test_eb_backward_emu.cpp runs them on the CPU under the warp
// emulation of tests/core/warp_emu.h.
//
// A warp owns a row. Lane l owns the row's vectors of VEC consecutive
// columns j = l, l + 32, l + 64, ... (columns VEC*j .. VEC*j + VEC - 1); the
// column tiles of the backward (32 * NV * VEC columns, NV vectors a lane)
// visit a lane's vectors in the same order whatever NV is. A row statistic
// (the clipping norm, row-wise Adagrad's and row-wise Adam's mean square) is
// each lane's sum in that order, then a butterfly over the warp: the same
// bits in both kernels whenever they use the same VEC (16 / sizeof(value)
// when every row start is 16-byte aligned, else 1).
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "cuda_device_internal.cuh"
#include "dtypes_internal.h"
#include "row_update_internal.h"

namespace mk {
namespace rowupd {

// A row's factors: its gradient's clipping scale and sqrt(G) + eps of the
// row-wise rules (1 where the rule has none).
template <class A>
struct RowFactors {
  A scale = A(1), denom = A(1);
};

// Passes over a row's gradient the rule needs before the update itself: one
// for the clipping norm, one for a row-wise mean square.
MK_HD int stat_passes(const mk_row_update& u) {
  const bool rowwise = u.kind == MK_OPT_ADAGRAD_ROWWISE || u.kind == MK_OPT_ADAM_ROWWISE;
  return (u.max_row_norm > 0 ? 1 : 0) + (rowwise ? 1 : 0);
}

// The update with its run-time step and learning-rate scale read (device
// memory on a GPU; every thread reads the same numbers).
struct Resolved {
  mk_row_update u;
  RowUpdateConsts c;
};

__device__ __forceinline__ Resolved resolve(const mk_row_update& u, const RowUpdateConsts& c) {
  Resolved r{u, c};
  if (u.step_ptr || u.lr_scale) {
    r.u = resolve_update(u);
    r.c = row_update_consts(r.u);
  }
  return r;
}

// A lane's contribution to a stat pass over VEC gradient elements.
template <class A, int VEC>
__device__ __forceinline__ void add_squares(A& sq, const A (&g)[VEC], const RowFactors<A>& f) {
#pragma unroll
  for (int e = 0; e < VEC; ++e) sq += (f.scale * g[e]) * (f.scale * g[e]);
}

// Ends stat pass `pass` with the lane's sum of squares: the clipping scale
// (pass 0 when clipping) or the row-wise state and denominator (whose [N]
// state lane 0 writes after every lane has read it). Called by the whole warp.
template <class A>
__device__ __forceinline__ void finish_stat_pass(const mk_row_update& u, int pass, A lane_sq, int64_t r,
                                                 int64_t D, RowFactors<A>& f) {
  const A sq = cuda::warp_sum(lane_sq);
  if (pass == 0 && u.max_row_norm > 0) {
    const A norm = ru_sqrt(sq);
    if (norm > A(u.max_row_norm)) f.scale = A(u.max_row_norm) / norm;
    return;
  }
  const bool lane0 = (threadIdx.x & 31) == 0;
  if (u.kind == MK_OPT_ADAGRAD_ROWWISE) {
    A* s1 = static_cast<A*>(u.state1);
    const A acc = s1[r] + sq / A(D);
    __syncwarp();
    if (lane0) s1[r] = acc;
    f.denom = ru_sqrt(acc) + A(u.eps);
  } else {
    A* s2 = static_cast<A*>(u.state2);
    const A old = s2[r];
    const A vr = old + A(1.0 - u.beta2) * (sq / A(D) - old);
    __syncwarp();
    if (lane0) s2[r] = vr;
    f.denom = ru_sqrt(vr) + A(u.eps);
  }
}

// VEC consecutive elements of an [N, D] optimizer state from element i, in
// the accumulation type or as bf16 (load_state's rule); 16-byte accesses
// where the elements fill them.
template <class A, int VEC>
__device__ __forceinline__ void load_state_vec(const void* base, int64_t i, bool bf16, A (&out)[VEC]) {
  if constexpr (std::is_same<A, float>::value) {
    if (bf16) {
      uint16_t b[VEC];
      cuda::load_raw<uint16_t, VEC>(static_cast<const uint16_t*>(base) + i, b);
#pragma unroll
      for (int e = 0; e < VEC; ++e) {
        const uint32_t u = uint32_t(b[e]) << 16;
        memcpy(&out[e], &u, 4);
      }
      return;
    }
  }
  cuda::load_raw<A, VEC>(static_cast<const A*>(base) + i, out);
}

// Stores them back (store_state's rule: bf16 rounds stochastically with the
// state's salt, at the element's column in the whole table).
template <class A, int VEC>
__device__ __forceinline__ void store_state_vec(void* base, int64_t i, const A (&x)[VEC], bool bf16,
                                                const mk_row_update& u, uint64_t salt, int64_t row,
                                                int64_t col) {
  if constexpr (std::is_same<A, float>::value) {
    if (bf16) {
      uint16_t b[VEC];
#pragma unroll
      for (int e = 0; e < VEC; ++e)
        b[e] = bf16_bits_stochastic(x[e], sr_bits(u.seed ^ salt, u.step, row, u.column_offset + col + e));
      cuda::store_raw<uint16_t, VEC>(static_cast<uint16_t*>(base) + i, b);
      return;
    }
  }
  cuda::store_raw<A, VEC>(static_cast<A*>(base) + i, x);
}

// Updates VEC consecutive elements of row r from column col: w points at
// them, old holds their values (accumulation type), g their unscaled
// gradient. The same arithmetic as update_element + store_updated.
template <class V, int VEC>
__device__ __forceinline__ void update_vec(const Resolved& rs, V* w, const acc_t<V> (&old)[VEC],
                                           const acc_t<V> (&g)[VEC], const RowFactors<acc_t<V>>& f,
                                           int64_t r, int64_t col, int64_t D) {
  using A = acc_t<V>;
  const mk_row_update& u = rs.u;
  const bool full_adam = u.kind == MK_OPT_ADAM;
  const bool has_m = full_adam || u.kind == MK_OPT_ADAM_ROWWISE;
  const bool sb = u.state_bf16 != 0;
  const int64_t i = r * D + col;
  A m[VEC], v[VEC], nw[VEC];
#pragma unroll
  for (int e = 0; e < VEC; ++e) m[e] = v[e] = A(0);
  if (has_m) load_state_vec<A, VEC>(u.state1, i, sb, m);
  if (full_adam) load_state_vec<A, VEC>(u.state2, i, sb, v);
#pragma unroll
  for (int e = 0; e < VEC; ++e) nw[e] = row_update_element(rs.c, old[e], f.scale * g[e], &m[e], &v[e], f.denom);
  if (has_m) store_state_vec<A, VEC>(u.state1, i, m, sb, u, kStateSalt1, r, col);
  if (full_adam) store_state_vec<A, VEC>(u.state2, i, v, sb, u, kStateSalt2, r, col);
  V out[VEC];
#pragma unroll
  for (int e = 0; e < VEC; ++e) store_updated<V>(&out[e], nw[e], u, r, col + e);
  cuda::store_raw<V, VEC>(w, out);
}

// The standalone update (mk_sparse_row_update): a warp per listed row,
// grid-stride over the warps, rows < 0 or >= N skipped. Each stat pass reads
// the row's gradient, then the last pass reads it again with the values and
// writes the new values and states.
template <class V, int VEC>
__device__ __forceinline__ void update_rows(const mk_sparse_row_update_args& a, const RowUpdateConsts& c0) {
  using A = acc_t<V>;
  const Resolved rs = resolve(a.update, c0);
  const int lane = int(threadIdx.x & 31);
  const int64_t warps = int64_t(gridDim.x) * cuda::kWarpsPerBlock;
  const int64_t D = a.dim;
  const int npass = stat_passes(rs.u);
  V* table = static_cast<V*>(a.table);
  const A* grads = static_cast<const A*>(a.grads);
  for (int64_t i = int64_t(blockIdx.x) * cuda::kWarpsPerBlock + int64_t(threadIdx.x / 32); i < a.num_updates;
       i += warps) {
    const int64_t r = a.rows[i];
    if (r < 0 || r >= a.num_rows) continue;
    const A* g = grads + i * D;
    RowFactors<A> f;
    for (int pass = 0; pass < npass; ++pass) {
      A sq = A(0);
      for (int64_t col = int64_t(lane) * VEC; col < D; col += 32 * VEC) {
        A x[VEC];
        cuda::load_vec<A, VEC>(g + col, x);
        add_squares<A, VEC>(sq, x, f);
      }
      finish_stat_pass<A>(rs.u, pass, sq, r, D, f);
    }
    V* w = table + r * a.table_row_stride;
    for (int64_t col = int64_t(lane) * VEC; col < D; col += 32 * VEC) {
      A x[VEC], old[VEC];
      cuda::load_vec<A, VEC>(g + col, x);
      cuda::load_vec<V, VEC>(w + col, old);
      update_vec<V, VEC>(rs, w + col, old, x, f, r, col, D);
    }
  }
}

}  // namespace rowupd
}  // namespace mk
