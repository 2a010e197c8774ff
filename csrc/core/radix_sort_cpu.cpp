// The CPU stable radix sort of the embedding-bag backward's plan
// (declared in cpu_internal.h).
#include <algorithm>
#include <vector>

#include "cpu_internal.h"

namespace mk {

// Each pass splits the input into one contiguous block per thread: per-block
// histograms, then every block scatters from its own offsets (bucket-major,
// block-minor), which keeps the sort stable for any thread count.
template <class K>
void radix_sort_pairs(const K* keys_in, int64_t P, int bits, K* keys_out, int32_t* pairs_out,
                      K* keys_tmp, int32_t* pairs_tmp, int threads) {
  const int passes = (bits + 10) / 11;
  const int width = (bits + passes - 1) / passes;
  const size_t buckets = size_t(1) << width;
  const K mask = K(buckets - 1);
  const int blocks = int(std::max<int64_t>(1, std::min<int64_t>(threads, P / 65536)));
  std::vector<int64_t> hist(buckets * size_t(blocks));

  // Choose the first destination so the last pass writes keys_out.
  K* dst_k = (passes % 2 == 1) ? keys_out : keys_tmp;
  int32_t* dst_p = (passes % 2 == 1) ? pairs_out : pairs_tmp;
  K* oth_k = (passes % 2 == 1) ? keys_tmp : keys_out;
  int32_t* oth_p = (passes % 2 == 1) ? pairs_tmp : pairs_out;
  const K* src_k = keys_in;
  const int32_t* src_p = nullptr;

  for (int pass = 0; pass < passes; ++pass) {
    const int shift = pass * width;
#pragma omp parallel num_threads(blocks)
    {
#ifdef _OPENMP
      const int b = omp_get_thread_num();
#else
      const int b = 0;
#endif
      const int64_t lo = P * b / blocks, hi = P * (b + 1) / blocks;
      int64_t* h = hist.data() + size_t(b) * buckets;
      std::fill(h, h + buckets, 0);
      for (int64_t i = lo; i < hi; ++i) ++h[size_t((src_k[i] >> shift) & mask)];
#pragma omp barrier
#pragma omp single
      {
        int64_t sum = 0;
        for (size_t d = 0; d < buckets; ++d)
          for (int t = 0; t < blocks; ++t) {
            int64_t& c = hist[size_t(t) * buckets + d];
            const int64_t n = c;
            c = sum;
            sum += n;
          }
      }
      for (int64_t i = lo; i < hi; ++i) {
        const K k = src_k[i];
        const int64_t at = h[size_t((k >> shift) & mask)]++;
        dst_k[at] = k;
        dst_p[at] = src_p ? src_p[i] : int32_t(i);
      }
    }
    src_k = dst_k;
    src_p = dst_p;
    std::swap(dst_k, oth_k);
    std::swap(dst_p, oth_p);
  }
}

template void radix_sort_pairs<uint32_t>(const uint32_t*, int64_t, int, uint32_t*, int32_t*, uint32_t*,
                                         int32_t*, int);
template void radix_sort_pairs<uint64_t>(const uint64_t*, int64_t, int, uint64_t*, int32_t*, uint64_t*,
                                         int32_t*, int);

}  // namespace mk
