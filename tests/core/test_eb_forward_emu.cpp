// The CUDA forward kernel of the embedding bag
// (csrc/core/embedding_bag_forward_kernel_internal.cuh), run on the CPU under
// the 32-lane emulation of tests/core/warp_emu.h: every tile shape the
// launcher picks (16-byte or scalar loads, 1 or 4 vectors a lane, with and
// without the column guard), each value and index dtype, bags longer than a
// warp's 32 ids and not a multiple of the rows loaded together, a row stride
// wider than D, a grid smaller than the work (the grid-stride loop), and bad
// indices. Each output must be bit for bit the sum a plain loop makes in the
// same order in the accumulation type, with bad indices left out; the first
// bad position must reach the reporter's slot, or the flag be set.
#include "warp_emu.h"  // first: the intrinsics the header below expects

#include "embedding_bag_forward_kernel_internal.cuh"
#include "test_util.h"

namespace {

using mk::acc_t;
using mk::ebfwd::FwdParams;

template <class V, class I>
struct Bag {
  int64_t N, D, T, B, stride;
  std::vector<V> values;
  std::vector<I> indices;
  std::vector<acc_t<V>> weights;
  std::vector<int64_t> bad;  // flat positions of bad indices

  // with_bad: a bad index every 11 positions from 3 on; last_bad: only the
  // last bag's last index is bad (its flat position must be reported exactly).
  Bag(int64_t N_, int64_t D_, int64_t T_, int64_t B_, int64_t pad, bool with_bad, unsigned seed,
      bool last_bad = false)
      : N(N_), D(D_), T(T_), B(B_), stride(D_ + pad) {
    std::mt19937_64 rng(seed);
    std::normal_distribution<double> nd;
    values.resize(size_t(N * stride));
    for (auto& x : values) x = mk::from_acc<V>(acc_t<V>(nd(rng)));
    weights.resize(size_t(T * B));
    for (auto& w : weights) w = acc_t<V>(nd(rng));
    indices.resize(size_t(T * B));
    std::uniform_int_distribution<int64_t> ud(0, N - 1);
    for (auto& i : indices) i = I(ud(rng));
    if (with_bad) {
      const int64_t bad_values[] = {-1, N, N + 5};
      for (int64_t e = 3; e < T * B; e += 11) {
        indices[size_t(e)] = I(bad_values[e % 3]);
        bad.push_back(e);
      }
    }
    if (last_bad) {
      indices[size_t(T * B - 1)] = I(-3);
      bad.push_back(T * B - 1);
    }
  }

  std::vector<V> reference() const {
    std::vector<V> out(size_t(T * D));
    for (int64_t t = 0; t < T; ++t) {
      for (int64_t c = 0; c < D; ++c) {
        acc_t<V> acc = acc_t<V>(0);
        for (int64_t j = 0; j < B; ++j) {
          const int64_t r = int64_t(indices[size_t(t * B + j)]);
          if (r < 0 || r >= N) continue;
          acc += weights[size_t(t * B + j)] * mk::to_acc(values[size_t(r * stride + c)]);
        }
        out[size_t(t * D + c)] = mk::from_acc<V>(acc);
      }
    }
    return out;
  }
};

template <class V>
bool same_bits(const std::vector<V>& a, const std::vector<V>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(V)) == 0;
}

template <class V, class I, int VEC, int NV, bool FULL>
void run_case(const Bag<V, I>& bag, unsigned blocks, bool use_reporter, const char* what) {
  std::vector<V> out(size_t(bag.T * bag.D), mk::from_acc<V>(acc_t<V>(-7)));
  unsigned long long first_bad = ~0ull;
  int32_t flag = 0;
  FwdParams<V, I> p;
  p.values = bag.values.data();
  p.indices = bag.indices.data();
  p.weights = bag.weights.data();
  p.out = out.data();
  p.error_flag = use_reporter ? nullptr : &flag;
  p.first_bad = use_reporter ? &first_bad : nullptr;
  p.N = bag.N;
  p.D = bag.D;
  p.T = bag.T;
  p.B = bag.B;
  p.stride = bag.stride;
  const bool ran = emu::launch(blocks, mk::cuda::kBlockThreads,
                               [&] { mk::ebfwd::forward_warps<V, I, VEC, NV, FULL>(p); });
  CHECK(ran, "forward did not run (%s)", what);
  CHECK(same_bits(out, bag.reference()), "forward differs from the ordered sum (%s VEC=%d NV=%d FULL=%d D=%lld B=%lld)",
        what, VEC, NV, int(FULL), (long long)bag.D, (long long)bag.B);
  if (use_reporter) {
    const unsigned long long want = bag.bad.empty() ? ~0ull : (unsigned long long)bag.bad.front();
    CHECK(first_bad == want, "first bad position %llu, expected %llu (%s)", first_bad, want, what);
  } else {
    CHECK(flag == (bag.bad.empty() ? 0 : 1), "error flag %d (%s)", int(flag), what);
  }
}

// Every tile shape valid for D, as the launcher would pick among them.
template <class V, class I>
void check(int64_t D, int64_t B, int64_t pad, bool with_bad, const char* what) {
  constexpr int VEC = int(16 / sizeof(V));
  static unsigned seed = 11;
  const Bag<V, I> bag(50, D, 6, B, pad, with_bad, ++seed);
  for (unsigned blocks : {1u, 3u}) {
    const bool rep = (blocks == 1) == with_bad;
    run_case<V, I, 1, 1, false>(bag, blocks, rep, what);
    run_case<V, I, 1, 4, false>(bag, blocks, rep, what);
    if (D % 32 == 0) run_case<V, I, 1, 1, true>(bag, blocks, rep, what);
    if (D % 128 == 0) run_case<V, I, 1, 4, true>(bag, blocks, rep, what);
    if (D % VEC == 0 && bag.stride % VEC == 0) {
      run_case<V, I, VEC, 1, false>(bag, blocks, rep, what);
      run_case<V, I, VEC, 4, false>(bag, blocks, rep, what);
      if (D % (32 * VEC) == 0) run_case<V, I, VEC, 1, true>(bag, blocks, rep, what);
      if (D % (128 * VEC) == 0) run_case<V, I, VEC, 4, true>(bag, blocks, rep, what);
    }
  }
}

template <class V, class I>
void check_last_bad(int64_t D, int64_t B, const char* what) {
  constexpr int VEC = int(16 / sizeof(V));
  const Bag<V, I> bag(50, D, 6, B, 0, false, 99, true);
  run_case<V, I, 1, 4, false>(bag, 2, true, what);
  if (D % VEC == 0) run_case<V, I, VEC, 1, false>(bag, 2, true, what);
}

template <class V, class I>
void check_dtype(const char* what) {
  check_last_bad<V, I>(40, 70, what);
  constexpr int VEC = int(16 / sizeof(V));
  for (int64_t D : {int64_t(1), int64_t(7), int64_t(VEC * 8), int64_t(32 * VEC), int64_t(32 * VEC + VEC),
                    int64_t(128 * VEC), int64_t(128 * VEC * 2 + 3)}) {
    for (int64_t B : {1, 3, 37, 70}) check<V, I>(D, B, B == 3 ? VEC : 0, B == 37, what);
  }
}

}  // namespace

int main() {
  check_dtype<float, int64_t>("f32/i64");
  check_dtype<float, int32_t>("f32/i32");
  check_dtype<mk::bf16_t, int64_t>("bf16/i64");
  check_dtype<mk::f16_t, int32_t>("f16/i32");
  check_dtype<double, int64_t>("f64/i64");
  if (g_failures) {
    std::fprintf(stderr, "%d check(s) failed\n", g_failures);
    return 1;
  }
  std::printf("test_eb_forward_emu: ok\n");
  return 0;
}
