// cub::DeviceRadixSort::SortPairs on the CPU (tests/core/emu): a stable sort
// by bits [begin_bit, end_bit) of the keys. Like CUB it needs temporary
// storage (asked for with d_temp == nullptr); here it is the double buffer of
// keys and values, so a workspace that overlaps it corrupts the sort.
#pragma once

#include "common.h"

namespace cub {

struct DeviceRadixSort {
  template <class K, class V>
  static cudaError_t SortPairs(void* d_temp, size_t& temp_bytes, const K* keys_in, K* keys_out,
                               const V* values_in, V* values_out, int num_items, int begin_bit = 0,
                               int end_bit = int(sizeof(K) * 8), cudaStream_t = nullptr) {
    const size_t n = num_items > 0 ? size_t(num_items) : 0;
    const size_t need = emu_cub::kAlign + emu_cub::round_up(n * sizeof(K)) + emu_cub::round_up(n * sizeof(V));
    if (!d_temp) {
      temp_bytes = need;
      return cudaSuccess;
    }
    if (temp_bytes < need) return emu::fail(cudaErrorInvalidValue, "cub SortPairs: temporary storage too small");
    if (begin_bit < 0 || end_bit > int(sizeof(K) * 8) || begin_bit > end_bit)
      return emu::fail(cudaErrorInvalidValue, "cub SortPairs: bad bit range");
    if (n == 0) return cudaSuccess;
    if (!emu::inside(d_temp, temp_bytes) || !emu::inside(keys_in, n * sizeof(K)) ||
        !emu::inside(keys_out, n * sizeof(K)) || !emu::inside(values_in, n * sizeof(V)) ||
        !emu::inside(values_out, n * sizeof(V)))
      return emu::fail(cudaErrorInvalidValue, "cub SortPairs: a buffer outside device memory");
    K* tk = reinterpret_cast<K*>(static_cast<char*>(d_temp) + emu_cub::kAlign);
    V* tv = reinterpret_cast<V*>(reinterpret_cast<char*>(tk) + emu_cub::round_up(n * sizeof(K)));
    std::vector<size_t> order(n);
    for (size_t i = 0; i < n; ++i) order[i] = i;
    const int bits = end_bit - begin_bit;
    auto digit = [&](K key) -> uint64_t {
      const uint64_t u = uint64_t(key) >> begin_bit;
      return bits >= 64 ? u : (u & ((uint64_t(1) << bits) - 1));
    };
    std::stable_sort(order.begin(), order.end(),
                     [&](size_t a, size_t b) { return digit(keys_in[a]) < digit(keys_in[b]); });
    for (size_t i = 0; i < n; ++i) {
      tk[i] = keys_in[order[i]];
      tv[i] = values_in[order[i]];
    }
    std::memcpy(keys_out, tk, n * sizeof(K));
    std::memcpy(values_out, tv, n * sizeof(V));
    std::memset(d_temp, 0xab, temp_bytes);  // nothing may rely on what is left there
    return cudaSuccess;
  }
};

}  // namespace cub
