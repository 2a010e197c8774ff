// cub::DeviceScan::ExclusiveSum on the CPU (tests/core/emu).
#pragma once

#include "common.h"

namespace cub {

struct DeviceScan {
  template <class In, class Out>
  static cudaError_t ExclusiveSum(void* d_temp, size_t& temp_bytes, In in, Out out, int num_items,
                                  cudaStream_t = nullptr) {
    const cudaError_t e = emu_cub::small_temp(d_temp, temp_bytes, "cub ExclusiveSum: temporary storage too small");
    if (e != cudaSuccess || !d_temp) return e;
    using T = typename std::remove_reference<decltype(in[0])>::type;
    typename std::remove_cv<T>::type sum = 0;
    for (int i = 0; i < num_items; ++i) {
      const auto v = in[i];  // in and out may be the same buffer
      out[i] = sum;
      sum += v;
    }
    return cudaSuccess;
  }
};

}  // namespace cub
