// Shared by the CPU stand-ins of the CUB device algorithms (tests/core/emu).
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

namespace emu_cub {

constexpr size_t kAlign = 256;
inline size_t round_up(size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

// The temporary storage of the algorithms that need none of their own: CUB's
// still ask for some, and so does this, so a caller that passes too little
// or the wrong buffer fails here as it would there.
inline cudaError_t small_temp(void* d_temp, size_t& temp_bytes, const char* what) {
  if (!d_temp) {
    temp_bytes = kAlign;
    return cudaSuccess;
  }
  if (temp_bytes < kAlign || !emu::inside(d_temp, kAlign)) return emu::fail(cudaErrorInvalidValue, what);
  std::memset(d_temp, 0xab, kAlign);
  return cudaSuccess;
}

}  // namespace emu_cub
