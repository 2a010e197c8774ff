// cub::DeviceRunLengthEncode::Encode on the CPU (tests/core/emu): runs of
// equal consecutive keys, their lengths and their number.
#pragma once

#include "common.h"

namespace cub {

struct DeviceRunLengthEncode {
  template <class In, class UniqueOut, class CountsOut, class NumRunsOut>
  static cudaError_t Encode(void* d_temp, size_t& temp_bytes, In in, UniqueOut unique_out, CountsOut counts_out,
                            NumRunsOut num_runs_out, int num_items, cudaStream_t = nullptr) {
    const cudaError_t e = emu_cub::small_temp(d_temp, temp_bytes, "cub Encode: temporary storage too small");
    if (e != cudaSuccess || !d_temp) return e;
    int runs = 0;
    for (int i = 0; i < num_items;) {
      int j = i + 1;
      while (j < num_items && in[j] == in[i]) ++j;
      unique_out[runs] = in[i];
      counts_out[runs] = j - i;
      ++runs;
      i = j;
    }
    *num_runs_out = runs;
    return cudaSuccess;
  }
};

}  // namespace cub
