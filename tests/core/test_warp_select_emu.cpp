// The CUDA warp selection of pk_topk (csrc/core/warp_select_internal.cuh),
// run on the CPU under the 32-lane emulation of tests/core/warp_emu.h: the
// same source the GPU runs, against the CPU selection (which test_core holds
// to brute force), bit for bit. Covers every size class of k, rows that are
// and are not 16-byte aligned, ties everywhere, blocks with idle warps, both
// score layouts the glue uses, and rows that overflow the survivor buffer
// (the radix fallback).
#include "warp_emu.h"  // first: the intrinsics the header below expects

#include "test_util.h"
#include "warp_select_internal.cuh"

namespace {

enum class Fill { integer, normal, crowded };

bool run_warp_select(const mk_pk_select_args& a) {
  using namespace mk::warpsel;
  const int64_t rows = a.num_tokens * a.num_heads;
  const unsigned blocks = unsigned((rows + kWarps - 1) / kWarps);
  bool ok = false;
  auto go = [&](auto cfg) {
    constexpr int KMAX = decltype(cfg)::value;
    std::vector<typename Config<KMAX>::Scratch> shared(kWarps);
    std::memset(static_cast<void*>(shared.data()), 0xab, shared.size() * sizeof(shared[0]));  // no zeros to rely on
    ok = emu::launch(blocks, 32 * kWarps, [&] { select_rows<KMAX, kWarps>(a, shared.data()); });
  };
  switch (kmax_for(a.k)) {
    case 16: go(std::integral_constant<int, 16>{}); break;
    case 32: go(std::integral_constant<int, 32>{}); break;
    case 64: go(std::integral_constant<int, 64>{}); break;
    case 128: go(std::integral_constant<int, 128>{}); break;
    default: return false;
  }
  return ok;
}

// layout_ht: scores stored [H, T, n] (as the torch glue's GEMM writes them), else [T, H, n].
void check(int64_t T, int64_t H, int64_t n, int64_t k, Fill fill, bool layout_ht, unsigned seed) {
  std::mt19937 rng(seed);
  std::vector<float> s1(size_t(T * H * n)), s2(size_t(T * H * n));
  std::uniform_int_distribution<int> ud(-3, 3);
  std::normal_distribution<float> nd(0.f, 3.f);
  for (size_t e = 0; e < s1.size(); ++e) {
    const int64_t i = int64_t(e) % n;
    for (auto* s : {&s1, &s2}) {
      float& x = (*s)[e];
      switch (fill) {
        case Fill::integer: x = float(ud(rng)); break;
        case Fill::normal: x = nd(rng); break;
        // Lanes 0..16 of every 128-element chunk hold only very low scores, so the
        // kept keys of 15 lanes cannot fill the top k: too many pass the first
        // threshold and the radix select must decide.
        case Fill::crowded: x = (i % 128) < 68 ? -1000.f - float(i % 7) : nd(rng); break;
      }
    }
  }
  mk_pk_select_args a{};
  a.num_tokens = T;
  a.num_heads = H;
  a.num_keys = n;
  a.k = k;
  a.scores1 = s1.data();
  a.scores2 = s2.data();
  a.scores_stride_t = layout_ht ? n : H * n;
  a.scores_stride_h = layout_ht ? T * n : n;
  const size_t outs = size_t(T * H * k);
  std::vector<float> cpu_s(outs), emu_s(outs, -7.f);
  std::vector<int64_t> cpu_i(outs), emu_i(outs, -7);
  a.out_scores = cpu_s.data();
  a.out_indices = cpu_i.data();
  CHECK(mk_pk_select(&a, MK_CPU, nullptr) == MK_OK, "cpu pk select failed");
  a.out_scores = emu_s.data();
  a.out_indices = emu_i.data();
  const bool ran = run_warp_select(a);
  CHECK(ran, "warp select did not run (n=%lld k=%lld)", (long long)n, (long long)k);
  CHECK(emu_s == cpu_s && emu_i == cpu_i, "warp select differs from the CPU (T=%lld H=%lld n=%lld k=%lld fill=%d ht=%d)",
        (long long)T, (long long)H, (long long)n, (long long)k, int(fill), int(layout_ht));
}

}  // namespace

int main() {
  using mk::warpsel::pruned_pairs;
  CHECK(pruned_pairs(32) == 119 && pruned_pairs(128) == 645, "pruned pair counts");
  unsigned seed = 1;
  // Every size class of k, at its edges; n unaligned (37, 300), aligned (1024) and past one chunk's tail.
  for (int64_t k : {1, 5, 16, 17, 32, 33, 64, 65, 100, 128}) {
    for (int64_t n : {37, 300, 1024}) {
      if (k > n) continue;
      for (Fill f : {Fill::integer, Fill::normal}) {
        check(3, 3, n, k, f, (seed & 1) != 0, seed);
        ++seed;
      }
    }
  }
  // k = n: every element is selected.
  check(2, 1, 37, 37, Fill::integer, false, seed++);
  check(2, 1, 128, 128, Fill::normal, true, seed++);
  // Larger rows (streamed; several chunks), a few rows each.
  for (int64_t n : {2000, 4096}) {
    check(1, 2, n, 32, Fill::normal, true, seed++);
    check(1, 2, n, 128, Fill::integer, false, seed++);
  }
  // The radix fallback, in every size class (at k = 128 a row of 1024 still fits the buffer).
  for (int64_t k : {16, 32, 64, 128}) check(1, 3, k == 128 ? 2048 : 1024, k, Fill::crowded, true, seed++);
  check(1, 2, 4096, 32, Fill::crowded, false, seed++);
  if (g_failures) {
    std::fprintf(stderr, "%d check(s) failed\n", g_failures);
    return 1;
  }
  std::printf("test_warp_select_emu: ok\n");
  return 0;
}
