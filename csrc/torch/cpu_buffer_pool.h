// A small cache of large CPU buffers for op outputs (the dense embedding-bag
// gradient): a freed buffer goes back to the cache and the next output of the
// same size reuses its already-mapped pages, instead of paying the kernel's
// page faults and zeroing on every step. MEMKERNELS_CPU_POOL_MB caps the
// cached bytes (default 2048; 0 turns the cache off).
#pragma once

#include <ATen/ATen.h>

namespace mkt {

// An uninitialised CPU tensor; buffers of at least kPooledMinBytes come from
// the cache. Behaves like at::empty (contiguous, not resizable).
at::Tensor cpu_empty_pooled(at::IntArrayRef sizes, at::ScalarType dtype);

// A kernel's workspace of `bytes` on the device of `like`: pooled on the CPU
// (the embedding-bag and pk_topk backwards' plans are tens of MB, whose
// fresh pages cost more than some of the kernels), at::empty elsewhere (CUDA
// has its caching allocator).
at::Tensor empty_workspace(int64_t bytes, const at::TensorOptions& like);

constexpr int64_t kPooledMinBytes = int64_t(8) << 20;

}  // namespace mkt
