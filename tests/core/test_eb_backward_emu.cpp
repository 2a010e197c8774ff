// The CUDA dense backward's zeroing of untouched rows
// (csrc/core/embedding_bag_backward_kernel_internal.cuh), run on the CPU under
// the warp emulation of tests/core/warp_emu.h: every row no pair touched must
// become +0 in every column and every touched row keep its bits (the chunk
// kernels write it afterwards), for row counts around the 32-row blocks, a
// grid smaller than the work, vector and scalar stores, both index dtypes,
// no touched row and every row touched.
#include "warp_emu.h"  // first: the intrinsics the header below expects

#include "embedding_bag_backward_kernel_internal.cuh"
#include "test_util.h"

namespace {

template <class V, class K, int VEC>
void check(int64_t N, int64_t D, double touched_fraction, unsigned blocks, unsigned seed) {
  std::mt19937_64 rng(seed);
  std::vector<K> unique;
  std::bernoulli_distribution pick(touched_fraction);
  for (int64_t r = 0; r < N; ++r)
    if (pick(rng)) unique.push_back(K(r));  // distinct and ascending, as the plan's run-length pass gives them
  const int32_t n_unique = int32_t(unique.size());
  // Past the count the workspace holds stale entries, which may name real
  // rows: an untouched one here must still be zeroed.
  int64_t stale = N - 1;
  while (stale > 0 && std::find(unique.begin(), unique.end(), K(stale)) != unique.end()) --stale;
  unique.push_back(K(stale));
  std::vector<V> grad(size_t(N * D));
  std::memset(static_cast<void*>(grad.data()), 0x5a, grad.size() * sizeof(V));
  const std::vector<V> before = grad;
  const bool ran = emu::launch(blocks, mk::cuda::kBlockThreads, [&] {
    mk::ebbwd::zero_untouched_rows<V, K, VEC>(grad.data(), unique.data(), n_unique, N, D);
  });
  CHECK(ran, "zeroing did not run");
  std::vector<char> is_touched(size_t(N), 0);
  for (int32_t s = 0; s < n_unique; ++s) is_touched[size_t(unique[size_t(s)])] = 1;
  const V zero = mk::from_acc<V>(mk::acc_t<V>(0));
  int64_t wrong = 0;
  for (int64_t r = 0; r < N; ++r) {
    for (int64_t c = 0; c < D; ++c) {
      const size_t e = size_t(r * D + c);
      const V& want = is_touched[size_t(r)] ? before[e] : zero;
      wrong += std::memcmp(&grad[e], &want, sizeof(V)) != 0;
    }
  }
  CHECK(wrong == 0, "%lld elements wrong (N=%lld D=%lld VEC=%d touched %.2f blocks %u)", (long long)wrong,
        (long long)N, (long long)D, VEC, touched_fraction, blocks);
}

}  // namespace

int main() {
  unsigned seed = 1;
  for (int64_t N : {1, 31, 32, 33, 100, 257}) {
    for (double f : {0.0, 0.3, 1.0}) {
      for (unsigned blocks : {1u, 2u}) {
        check<float, int32_t, 1>(N, 5, f, blocks, seed++);
        check<float, int64_t, 4>(N, 12, f, blocks, seed++);
        check<mk::bf16_t, int32_t, 8>(N, 40, f, blocks, seed++);
        check<double, int64_t, 2>(N, 70, f, blocks, seed++);
        check<mk::f16_t, int64_t, 1>(N, 3, f, blocks, seed++);
      }
    }
  }
  if (g_failures) {
    std::fprintf(stderr, "%d check(s) failed\n", g_failures);
    return 1;
  }
  std::printf("test_eb_backward_emu: ok\n");
  return 0;
}
