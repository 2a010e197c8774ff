// The CUDA backward's kernel bodies (csrc/core/embedding_bag_backward_kernel_internal.cuh
// and row_update_kernel_internal.cuh), run on the CPU under the warp emulation
// of tests/core/warp_emu.h, on a plan built here as the CUDA plan builds it
// (pairs stably sorted by the low ceil(log2 N) bits of their row, runs of
// equal rows, chunks of C pairs, partial rows of split segments; the segment
// of each chunk by the plan's own kernel body, checked):
//  - the zeroing of untouched rows: every row no pair touched becomes +0 and
//    every touched row keeps its bits, for row counts around the 32-row
//    blocks, a grid smaller than the work, vector and scalar stores, no row
//    and every row touched;
//  - the segment reduction and the combination of split rows: the dense
//    gradient, the exact sparse rows and the fp32 capacity form, and the
//    weights' gradient, each bit for bit against plain loops that sum in the
//    kernels' order (pairs in sorted order, partial rows in chunk order, the
//    dot of each column tile per lane and then by the warp's butterfly);
//    short and split rows, bad indices, every tile shape the launch picks;
//  - the optimizer update inside the reduction: for every rule (SGD, Adam,
//    row-wise Adagrad, row-wise Adam; clipping, weight decay, bf16 states,
//    stochastic rounding, a column offset, run-time step and learning-rate
//    scale), the table and states bit for bit those of the capacity form fed
//    to the standalone update kernel's body, and within rounding of the CPU
//    library's fused backward.
#include "warp_emu.h"  // first: the intrinsics the header below expects

#include <numeric>
#include <type_traits>

#include "embedding_bag_backward_kernel_internal.cuh"
#include "row_update_kernel_internal.cuh"
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


// ---- the segment reduction ---------------------------------------------------

using mk::acc_t;
using mk::from_acc;
using mk::to_acc;

template <class V>
V from_double(double x) {
  return from_acc<V>(acc_t<V>(x));
}

// What the CUDA plan leaves in the workspace.
template <class K>
struct HostPlan {
  int32_t counters[mk::kNumCounters] = {0, 0, 0};
  std::vector<int32_t> sorted_pairs, seg_offsets, chunk_offsets, partial_offsets, hot_list, chunk_segments;
  std::vector<K> unique;
};

template <class I>
HostPlan<typename std::make_unsigned<I>::type> make_plan(const std::vector<I>& idx, int64_t N, int64_t B) {
  using K = typename std::make_unsigned<I>::type;
  HostPlan<K> pl;
  const int64_t P = int64_t(idx.size());
  const int bits = mk::eb_sort_bits(N);
  const uint64_t mask = bits >= 64 ? ~uint64_t(0) : (uint64_t(1) << bits) - 1;
  std::vector<int32_t> order(static_cast<size_t>(P));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
    return (uint64_t(K(idx[size_t(a)])) & mask) < (uint64_t(K(idx[size_t(b)])) & mask);
  });
  pl.sorted_pairs = order;
  std::vector<int32_t> counts(size_t(P + 1), 0);
  for (int64_t i = 0; i < P; ++i) {
    const K key = K(idx[size_t(order[size_t(i)])]);
    if (i == 0 || pl.unique.back() != key) pl.unique.push_back(key);
    ++counts[pl.unique.size() - 1];
  }
  const int32_t C = int32_t(mk::eb_chunk_size(B));
  std::vector<int32_t> nchunks(size_t(P + 1)), npart(size_t(P + 1)), hot(size_t(P + 1));
  for (int64_t s = 0; s <= P; ++s) {
    nchunks[size_t(s)] = (counts[size_t(s)] + C - 1) / C;
    npart[size_t(s)] = nchunks[size_t(s)] > 1 ? nchunks[size_t(s)] : 0;
    hot[size_t(s)] = nchunks[size_t(s)] > 1;
  }
  auto exclusive = [&](const std::vector<int32_t>& in) {
    std::vector<int32_t> out(in.size(), 0);
    for (size_t i = 1; i < in.size(); ++i) out[i] = out[i - 1] + in[i - 1];
    return out;
  };
  pl.seg_offsets = exclusive(counts);
  pl.chunk_offsets = exclusive(nchunks);
  pl.partial_offsets = exclusive(npart);
  for (int64_t s = 0; s < P; ++s)
    if (hot[size_t(s)]) pl.hot_list.push_back(int32_t(s));
  pl.hot_list.resize(size_t(P + 1), -7);  // stale entries past the count
  pl.counters[mk::kNumUnique] = int32_t(pl.unique.size());
  pl.counters[mk::kNumChunks] = pl.chunk_offsets[size_t(P)];
  pl.counters[mk::kNumHot] = int32_t(std::count(hot.begin(), hot.end(), 1));
  pl.unique.resize(size_t(P + 1), K(0));
  // The segment of each chunk, by the plan's kernel body under the emulation
  // (entries past the chunk count stale), checked against a plain loop.
  pl.chunk_segments.assign(size_t(std::max<int64_t>(P, 1)), -5);
  CHECK(emu::launch(2, 64, [&] { mk::ebbwd::map_chunks(pl.counters, pl.chunk_offsets.data(), pl.chunk_segments.data()); }),
        "map_chunks deadlocked");
  for (int32_t s = 0; s < pl.counters[mk::kNumUnique]; ++s)
    for (int32_t c = pl.chunk_offsets[size_t(s)]; c < pl.chunk_offsets[size_t(s + 1)]; ++c)
      CHECK(pl.chunk_segments[size_t(c)] == s, "chunk %d: segment %d, want %d", c, pl.chunk_segments[size_t(c)], s);
  CHECK(pl.counters[mk::kNumChunks] <= std::max<int64_t>(P, 1), "more chunks than pairs");
  for (size_t c = size_t(pl.counters[mk::kNumChunks]); c < pl.chunk_segments.size(); ++c)
    CHECK(pl.chunk_segments[c] == -5, "map_chunks wrote past the chunk count (%zu)", c);
  return pl;
}

template <class V, class I>
struct BwdCase {
  using A = acc_t<V>;
  using K = typename std::make_unsigned<I>::type;
  int64_t N, D, T, B, stride;
  std::vector<V> values;
  std::vector<A> weights;
  std::vector<V> grad_out;
  std::vector<I> idx;
  HostPlan<K> pl;
  std::vector<A> partials;

  // Rows drawn uniformly, a share of the pairs on hot rows (segments longer
  // than a chunk), and `bad` indices out of range (negative and >= N).
  BwdCase(int64_t N_, int64_t D_, int64_t T_, int64_t B_, int64_t pad, double hot_share, int bad, unsigned seed)
      : N(N_), D(D_), T(T_), B(B_), stride(D_ + pad) {
    std::mt19937_64 rng(seed);
    std::normal_distribution<double> nd;
    values.resize(size_t(N * stride));
    for (auto& x : values) x = from_double<V>(nd(rng));
    weights.resize(size_t(T * B));
    for (auto& x : weights) x = A(nd(rng));
    grad_out.resize(size_t(T * D));
    for (auto& x : grad_out) x = from_double<V>(nd(rng));
    idx.resize(size_t(T * B));
    std::uniform_int_distribution<int64_t> ud(0, N - 1);
    std::uniform_real_distribution<double> u01;
    for (auto& i : idx) i = I(u01(rng) < hot_share ? (u01(rng) < 0.5 ? 0 : N / 2) : ud(rng));
    for (int b = 0; b < bad; ++b) idx[size_t(ud(rng) % (T * B))] = b % 2 ? I(-1 - b) : I(N + b);
    pl = make_plan(idx, N, B);
    partials.assign(size_t((pl.partial_offsets[size_t(T * B)] + 1) * D), A(0));
  }

  bool valid(K r) const { return uint64_t(r) < uint64_t(N); }

  mk::ebbwd::BwdParams<V, K> params() {
    mk::ebbwd::BwdParams<V, K> p{};
    p.values = values.data();
    p.weights = weights.data();
    p.grad_out = grad_out.data();
    p.partials = partials.data();
    p.counters = pl.counters;
    p.unique = pl.unique.data();
    p.sorted_pairs = pl.sorted_pairs.data();
    p.seg_offsets = pl.seg_offsets.data();
    p.chunk_offsets = pl.chunk_offsets.data();
    p.chunk_segments = pl.chunk_segments.data();
    p.partial_offsets = pl.partial_offsets.data();
    p.hot_list = pl.hot_list.data();
    p.N = N;
    p.D = D;
    p.B = B;
    p.stride = stride;
    p.C = mk::eb_chunk_size(B);
    p.table = values.data();
    return p;
  }

  // Segment s's row gradient, summed in the kernels' order.
  std::vector<A> row_grad(int32_t s) const {
    const int32_t C = int32_t(mk::eb_chunk_size(B));
    const int32_t b0 = pl.seg_offsets[size_t(s)], b1 = pl.seg_offsets[size_t(s + 1)];
    const int32_t nc = (b1 - b0 + C - 1) / C;
    std::vector<A> row(static_cast<size_t>(D), A(0)), acc(static_cast<size_t>(D));
    for (int32_t k = 0; k < nc; ++k) {
      std::fill(acc.begin(), acc.end(), A(0));
      for (int32_t i = b0 + k * C; i < std::min(b0 + (k + 1) * C, b1); ++i) {
        const int32_t pair = pl.sorted_pairs[size_t(i)];
        for (int64_t d = 0; d < D; ++d)
          acc[size_t(d)] += weights[size_t(pair)] * to_acc(grad_out[size_t((pair / B) * D + d)]);
      }
      if (nc == 1) return acc;
      for (int64_t d = 0; d < D; ++d) row[size_t(d)] += acc[size_t(d)];
    }
    return row;
  }

  // The weights' gradient as the kernel sums it: per column tile, each lane
  // its columns in order, then the butterfly; tiles in order.
  std::vector<A> weight_grad(int VEC, int NV) const {
    std::vector<A> gw(size_t(T * B), A(0));
    const int64_t tile = 32 * int64_t(NV) * VEC;
    for (int64_t pair = 0; pair < T * B; ++pair) {
      const K r = K(idx[size_t(pair)]);
      A total = A(0);
      for (int64_t col0 = 0; col0 < D; col0 += tile) {
        A lanes[32];
        for (int l = 0; l < 32; ++l) {
          lanes[l] = A(0);
          for (int q = 0; q < NV; ++q) {
            const int64_t cc = col0 + (int64_t(q) * 32 + l) * VEC;
            if (cc >= D) continue;
            for (int e = 0; e < VEC; ++e) {
              const A x = to_acc(grad_out[size_t((pair / B) * D + cc + e)]);
              const A v = valid(r) ? to_acc(values[size_t(int64_t(r) * stride + cc + e)]) : A(0);
              lanes[l] += x * v;
            }
          }
        }
        for (int o = 16; o > 0; o >>= 1) {
          A next[32];
          for (int l = 0; l < 32; ++l) next[l] = lanes[l] + lanes[l ^ o];
          std::memcpy(lanes, next, sizeof(lanes));
        }
        total = (col0 == 0 ? A(0) : total) + (valid(r) ? lanes[0] : A(0));
      }
      gw[size_t(pair)] = total;
    }
    return gw;
  }
};

template <class X>
bool same_bits(const X* a, const X* b, size_t n) {
  return std::memcmp(a, b, n * sizeof(X)) == 0;
}

// Runs the reduction kernels' bodies as the launch does: the chunk kernel
// on `blocks` blocks, then the combination of split rows (with an update, a
// warp per split row; else 2-D blocks of 64 columns).
template <class V, class K, int VEC, int NV>
void run_reduce(const mk::ebbwd::BwdParams<V, K>& p, unsigned blocks) {
  const bool ran = p.has_update ? emu::launch(blocks, mk::cuda::kBlockThreads, [&] {
    mk::ebbwd::reduce_chunks<V, K, VEC, NV, true>(p);
  }) : emu::launch(blocks, mk::cuda::kBlockThreads, [&] { mk::ebbwd::reduce_chunks<V, K, VEC, NV, false>(p); });
  CHECK(ran, "chunk kernel deadlocked");
  if (p.has_update) {
    CHECK(emu::launch(blocks, mk::cuda::kBlockThreads, [&] { mk::ebbwd::combine_update_rows<V, K, VEC>(p); }),
          "combine-update kernel deadlocked");
  } else if (p.grad_dense || p.grad_sparse || p.grad_sparse_acc) {
    const unsigned gx = unsigned((p.D + 63) / 64);
    CHECK(emu::launch(gx, 64, [&] { mk::ebbwd::combine_partials<V, K>(p, blockIdx.x, blockIdx.y, gridDim.y, blockDim.x); }, 3),
          "combine kernel deadlocked");
  }
}

// The dense, exact sparse and capacity outputs and the weights' gradient.
template <class V, class I, int VEC, int NV>
void check_reduce(BwdCase<V, I>& bc, unsigned blocks, const char* what) {
  using A = acc_t<V>;
  using K = typename std::make_unsigned<I>::type;
  const int64_t N = bc.N, D = bc.D, P = bc.T * bc.B;
  const int32_t U = bc.pl.counters[mk::kNumUnique];
  const std::vector<A> want_gw = bc.weight_grad(VEC, NV);
  std::vector<std::vector<A>> rows(static_cast<size_t>(U));
  for (int32_t s = 0; s < U; ++s) rows[size_t(s)] = bc.row_grad(s);

  // Dense: zero the untouched rows, then the reduction writes the touched ones.
  {
    std::vector<V> grad(size_t(N * D));
    std::memset(static_cast<void*>(grad.data()), 0xff, grad.size() * sizeof(V));  // NaN
    std::vector<A> gw(size_t(P), A(-3));
    auto p = bc.params();
    p.grad_dense = grad.data();
    p.grad_weights = gw.data();
    CHECK(emu::launch(blocks, mk::cuda::kBlockThreads, [&] {
      mk::ebbwd::zero_untouched_rows<V, K, VEC>(grad.data(), bc.pl.unique.data(), U, N, D);
    }), "zeroing deadlocked");
    run_reduce<V, K, VEC, NV>(p, blocks);
    std::vector<V> want(size_t(N * D), from_double<V>(0.0));
    for (int32_t s = 0; s < U; ++s) {
      const K r = bc.pl.unique[size_t(s)];
      if (!bc.valid(r)) continue;
      for (int64_t d = 0; d < D; ++d) want[size_t(int64_t(r) * D + d)] = from_acc<V>(rows[size_t(s)][size_t(d)]);
    }
    CHECK(same_bits(grad.data(), want.data(), want.size()), "%s: dense gradient differs", what);
    CHECK(same_bits(gw.data(), want_gw.data(), gw.size()), "%s: weights' gradient differs", what);
  }
  // Exact sparse rows in the values' dtype (no weights' gradient).
  {
    std::vector<V> sg(size_t(U * D));
    std::memset(static_cast<void*>(sg.data()), 0xff, sg.size() * sizeof(V));
    std::vector<int64_t> srows(size_t(U), -9);
    int64_t count = -1;
    auto p = bc.params();
    p.grad_sparse = sg.data();
    p.sparse_rows = srows.data();
    p.sparse_count = &count;
    run_reduce<V, K, VEC, NV>(p, blocks);
    CHECK(count == U, "%s: sparse count %lld, want %d", what, (long long)count, U);
    int64_t wrong = 0;
    for (int32_t s = 0; s < U; ++s) {
      wrong += srows[size_t(s)] != int64_t(bc.pl.unique[size_t(s)]);
      if (!bc.valid(bc.pl.unique[size_t(s)])) continue;  // dropped
      for (int64_t d = 0; d < D; ++d) {
        const V w = from_acc<V>(rows[size_t(s)][size_t(d)]);
        wrong += std::memcmp(&sg[size_t(s * D + d)], &w, sizeof(V)) != 0;
      }
    }
    CHECK(wrong == 0, "%s: %lld sparse rows/elements differ", what, (long long)wrong);
  }
  // Capacity form in fp32: rows past the count are -1 with zero gradients.
  {
    const int64_t cap = std::min<int64_t>(N, P) + 3;
    std::vector<A> sg(size_t(cap * D), A(-5));
    std::vector<int64_t> srows(size_t(cap), -9);
    auto p = bc.params();
    p.grad_sparse_acc = sg.data();
    p.sparse_rows = srows.data();
    p.cap = cap;
    run_reduce<V, K, VEC, NV>(p, blocks);
    int64_t wrong = 0;
    for (int64_t s = 0; s < cap; ++s) {
      if (s < U) {
        wrong += srows[size_t(s)] != int64_t(bc.pl.unique[size_t(s)]);
        if (!bc.valid(bc.pl.unique[size_t(s)])) continue;
        wrong += !same_bits(&sg[size_t(s * D)], rows[size_t(s)].data(), size_t(D));
      } else {
        wrong += srows[size_t(s)] != -1;
        for (int64_t d = 0; d < D; ++d) wrong += sg[size_t(s * D + d)] != A(0);
      }
    }
    CHECK(wrong == 0, "%s: %lld capacity rows differ", what, (long long)wrong);
  }
}

// ---- the update inside the reduction -------------------------------------------

struct UpdateCfg {
  mk_row_optimizer kind;
  double max_row_norm, weight_decay;
  int sr, state_bf16, runtime;  // runtime: step and lr scale read through pointers
  const char* name;
};

template <class A>
struct States {
  std::vector<A> s1, s2;           // [N, D] or [N]
  std::vector<uint16_t> b1, b2;    // bf16 [N, D]
};

template <class V>
mk_row_update make_update(const UpdateCfg& cfg, int64_t N, int64_t D, States<acc_t<V>>& st, unsigned seed,
                          const int64_t* step_ptr, const float* lr_scale) {
  using A = acc_t<V>;
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> nd;
  std::uniform_real_distribution<double> pos(0.01, 0.5);
  mk_row_update u{};
  u.kind = cfg.kind;
  u.lr = 0.05;
  u.beta1 = 0.9;
  u.beta2 = 0.98;
  u.eps = 1e-6;
  u.weight_decay = cfg.weight_decay;
  u.max_row_norm = cfg.max_row_norm;
  u.step = 3;
  u.stochastic_rounding = cfg.sr;
  u.seed = 0x1234567ull + seed;
  u.column_offset = 96;
  u.state_bf16 = cfg.state_bf16;
  if (cfg.runtime) {
    u.step = 99;  // replaced by *step_ptr
    u.step_ptr = step_ptr;
    u.lr_scale = lr_scale;
  }
  const bool full = cfg.kind == MK_OPT_ADAM;
  const bool has_m = full || cfg.kind == MK_OPT_ADAM_ROWWISE;
  const int64_t nd1 = has_m ? N * D : N, nd2 = full ? N * D : N;
  auto fill = [&](std::vector<A>& v, int64_t n, bool positive) {
    v.resize(size_t(n));
    for (auto& x : v) x = A(positive ? pos(rng) : 0.1 * nd(rng));
  };
  fill(st.s1, nd1, cfg.kind == MK_OPT_ADAGRAD_ROWWISE);
  fill(st.s2, nd2, true);
  if (cfg.state_bf16) {
    auto to_bf16 = [](const std::vector<A>& v) {
      std::vector<uint16_t> b(v.size());
      for (size_t i = 0; i < v.size(); ++i) b[i] = mk::from_float_bf16(float(v[i])).bits;
      return b;
    };
    st.b1 = to_bf16(st.s1);
    st.b2 = to_bf16(st.s2);
  }
  const bool bf_s1 = cfg.state_bf16 && has_m, bf_s2 = cfg.state_bf16 && full;
  u.state1 = bf_s1 ? static_cast<void*>(st.b1.data()) : static_cast<void*>(st.s1.data());
  u.state2 = bf_s2 ? static_cast<void*>(st.b2.data()) : static_cast<void*>(st.s2.data());
  if (cfg.kind == MK_OPT_SGD) u.state1 = u.state2 = nullptr;
  return u;
}

template <class A>
double max_abs(const std::vector<A>& v) {
  double m = 1e-30;
  for (auto x : v) m = std::max(m, std::fabs(double(x)));
  return m;
}

template <class V, class I, int VEC, int NV>
void check_update(BwdCase<V, I>& bc, const UpdateCfg& cfg, unsigned blocks, unsigned seed, bool vs_cpu,
                  bool with_wgrad) {
  using A = acc_t<V>;
  using K = typename std::make_unsigned<I>::type;
  const int64_t N = bc.N, D = bc.D, P = bc.T * bc.B;
  const int64_t step = 5;
  const float lr_scale = 0.7f;
  const std::vector<V> values0 = bc.values;
  char what[160];
  std::snprintf(what, sizeof what, "%s (N=%lld D=%lld VEC=%d NV=%d dtype=%d)", cfg.name, (long long)N,
                (long long)D, VEC, NV, int(mk::ValueTraits<V>::dtype));

  const std::vector<A> want_gw = bc.weight_grad(VEC, NV);  // of the old values

  // Fused: the reduction applies the update.
  States<A> st_f;
  mk_row_update u = make_update<V>(cfg, N, D, st_f, seed, &step, &lr_scale);
  std::vector<A> gw_f(size_t(P), A(-3));
  {
    auto p = bc.params();
    p.grad_weights = with_wgrad ? gw_f.data() : nullptr;
    p.has_update = true;
    p.update = u;
    p.update_consts = mk::row_update_consts(u);
    run_reduce<V, K, VEC, NV>(p, blocks);
  }
  const std::vector<V> table_f = bc.values;
  bc.values = values0;

  // Unfused: the capacity form, then the standalone update's body.
  States<A> st_u;
  mk_row_update u2 = make_update<V>(cfg, N, D, st_u, seed, &step, &lr_scale);
  const int64_t cap = std::max<int64_t>(1, std::min<int64_t>(N, P));
  std::vector<A> sg(size_t(cap * D));
  std::vector<int64_t> srows(static_cast<size_t>(cap));
  {
    auto p = bc.params();
    p.grad_sparse_acc = sg.data();
    p.sparse_rows = srows.data();
    p.cap = cap;
    run_reduce<V, K, VEC, NV>(p, blocks);
  }
  mk_sparse_row_update_args ua{};
  ua.num_rows = N;
  ua.dim = D;
  ua.value_dtype = mk::ValueTraits<V>::dtype;
  ua.table = bc.values.data();
  ua.table_row_stride = bc.stride;
  ua.num_updates = cap;
  ua.rows = srows.data();
  ua.grads = sg.data();
  ua.update = u2;
  const mk::RowUpdateConsts c2 = mk::row_update_consts(u2);
  CHECK(emu::launch(blocks, mk::cuda::kBlockThreads, [&] { mk::rowupd::update_rows<V, VEC>(ua, c2); }),
        "update kernel deadlocked");
  CHECK(same_bits(table_f.data(), bc.values.data(), table_f.size()), "%s: fused table differs from unfused", what);
  CHECK(same_bits(st_f.s1.data(), st_u.s1.data(), st_f.s1.size()) && same_bits(st_f.s2.data(), st_u.s2.data(), st_f.s2.size()) &&
            st_f.b1 == st_u.b1 && st_f.b2 == st_u.b2,
        "%s: fused states differ from unfused", what);
  CHECK(!with_wgrad || same_bits(gw_f.data(), want_gw.data(), gw_f.size()), "%s: fused weights' gradient differs", what);
  bc.values = values0;

  // Something moved: the touched rows, and only they.
  int64_t moved = 0, stray = 0;
  std::vector<char> touched(size_t(N), 0);
  for (int32_t s = 0; s < bc.pl.counters[mk::kNumUnique]; ++s)
    if (bc.valid(bc.pl.unique[size_t(s)])) touched[size_t(bc.pl.unique[size_t(s)])] = 1;
  for (int64_t r = 0; r < N; ++r)
    for (int64_t d = 0; d < bc.stride; ++d) {
      const bool diff = std::memcmp(&table_f[size_t(r * bc.stride + d)], &values0[size_t(r * bc.stride + d)], sizeof(V)) != 0;
      if (diff && touched[size_t(r)] && d < D) ++moved;
      if (diff && (!touched[size_t(r)] || d >= D)) ++stray;
    }
  CHECK(moved > 0 && stray == 0, "%s: %lld elements moved, %lld outside the touched rows", what, (long long)moved,
        (long long)stray);

  if (!vs_cpu) return;
  // The CPU library's fused backward: the same rules, its own summation order.
  States<A> st_c;
  mk_row_update u3 = make_update<V>(cfg, N, D, st_c, seed, &step, &lr_scale);
  mk_embedding_bag_bwd_args b{};
  b.num_rows = N;
  b.dim = D;
  b.num_bags = bc.T;
  b.bag_size = bc.B;
  b.value_dtype = mk::ValueTraits<V>::dtype;
  b.index_dtype = sizeof(I) == 4 ? MK_I32 : MK_I64;
  b.values = bc.values.data();
  b.values_row_stride = bc.stride;
  b.indices = bc.idx.data();
  b.weights = bc.weights.data();
  b.grad_out = bc.grad_out.data();
  b.update = &u3;
  b.num_threads = 1;
  size_t bytes = 0;
  CHECK(mk_embedding_bag_backward_workspace_size(&b, MK_CPU, &bytes) == MK_OK, "size");
  std::vector<unsigned char> ws(bytes);
  CHECK(mk_embedding_bag_backward_plan(&b, ws.data(), bytes, MK_CPU, nullptr) == MK_OK, "plan");
  CHECK(mk_embedding_bag_backward_reduce(&b, ws.data(), bytes, MK_CPU, nullptr) == MK_OK, "reduce");
  // The CPU sums a row's gradient in its own order, so fp32 and fp64 tables
  // may differ in the last bits; 16-bit tables round those bits away almost
  // always (each element keeps its stochastic-rounding draw), so at most 1 %
  // of their elements may differ, by a unit in the last place.
  const bool narrow = sizeof(V) == 2;
  const double tol = narrow ? 8e-3 : (sizeof(V) == 4 ? 1e-6 : 1e-14);
  double worst = 0;
  int64_t differ = 0;
  for (int64_t i = 0; i < int64_t(table_f.size()); ++i) {
    const double a = double(to_acc(table_f[size_t(i)])), c = double(to_acc(bc.values[size_t(i)]));
    worst = std::max(worst, std::fabs(a - c) / (1.0 + std::fabs(c)));
    differ += std::memcmp(&table_f[size_t(i)], &bc.values[size_t(i)], sizeof(V)) != 0;
  }
  CHECK(worst <= tol, "%s: fused table %g from the CPU library's", what, worst);
  CHECK(!narrow || differ * 100 <= int64_t(table_f.size()), "%s: %lld of %lld elements differ from the CPU library's",
        what, (long long)differ, (long long)table_f.size());
  if (cfg.state_bf16) {
    int64_t sdiff = 0;
    for (size_t i = 0; i < st_f.b1.size(); ++i) sdiff += st_f.b1[i] != st_c.b1[i];
    for (size_t i = 0; i < st_f.b2.size(); ++i) sdiff += st_f.b2[i] != st_c.b2[i];
    CHECK(sdiff * 100 <= int64_t(st_f.b1.size() + st_f.b2.size()), "%s: %lld bf16 state elements differ from the CPU library's",
          what, (long long)sdiff);
  }
  double worst_s = 0;
  if (!cfg.state_bf16) {
    const double m1 = max_abs(st_c.s1), m2 = max_abs(st_c.s2);
    for (size_t i = 0; i < st_f.s1.size(); ++i)
      worst_s = std::max(worst_s, std::fabs(double(st_f.s1[i]) - double(st_c.s1[i])) / m1);
    for (size_t i = 0; i < st_f.s2.size(); ++i)
      worst_s = std::max(worst_s, std::fabs(double(st_f.s2[i]) - double(st_c.s2[i])) / m2);
  }
  CHECK(worst_s <= (sizeof(V) == 8 ? 1e-14 : 1e-6), "%s: state %g from the CPU library's", what, worst_s);
  bc.values = values0;
}

const UpdateCfg kUpdates[] = {
    {MK_OPT_SGD, 0, 0, 0, 0, 0, "sgd"},
    {MK_OPT_SGD, 0.05, 0.1, 0, 0, 1, "sgd clip decay runtime"},
    {MK_OPT_ADAM, 0, 0.01, 0, 0, 0, "adamw"},
    {MK_OPT_ADAM, 0.05, 0, 1, 0, 1, "adam clip sr runtime"},
    {MK_OPT_ADAM, 0, 0.01, 1, 1, 0, "adamw bf16-state sr"},
    {MK_OPT_ADAGRAD_ROWWISE, 0, 0, 0, 0, 0, "adagrad_rowwise"},
    {MK_OPT_ADAGRAD_ROWWISE, 0.05, 0, 1, 0, 1, "adagrad_rowwise clip sr runtime"},
    {MK_OPT_ADAM_ROWWISE, 0, 0.01, 0, 0, 0, "adam_rowwise"},
    {MK_OPT_ADAM_ROWWISE, 0.05, 0, 1, 1, 0, "adam_rowwise clip bf16-state sr"},
};

// A case at the tile shape the launch picks for (V, D, aligned), every
// update rule on it.
template <class V, class I, bool kVec>
void check_backward(int64_t N, int64_t D, int64_t T, int64_t B, int64_t pad, double hot, int bad, unsigned blocks,
                    unsigned seed) {
  constexpr int VEC = kVec ? int(16 / sizeof(V)) : 1;
  BwdCase<V, I> bc(N, D, T, B, pad, hot, bad, seed);
  char what[96];
  std::snprintf(what, sizeof what, "reduce N=%lld D=%lld T=%lld B=%lld VEC=%d bad=%d", (long long)N, (long long)D,
                (long long)T, (long long)B, VEC, bad);
  if (hot > 0.3) CHECK(bc.pl.counters[mk::kNumHot] > 0, "%s: no split row", what);
  const bool small = D <= 64 * VEC;
  if (small) check_reduce<V, I, VEC, 1>(bc, blocks, what);
  else check_reduce<V, I, VEC, 4>(bc, blocks, what);
  // The weights' gradient is asked for with every other rule (without it,
  // the values are loaded for the update alone).
  bool with_wgrad = true;
  for (const UpdateCfg& cfg : kUpdates) {
    if (cfg.state_bf16 && !std::is_same<acc_t<V>, float>::value) continue;
    if (small) check_update<V, I, VEC, 1>(bc, cfg, blocks, seed + 17, bad == 0, with_wgrad);
    else check_update<V, I, VEC, 4>(bc, cfg, blocks, seed + 17, bad == 0, with_wgrad);
    with_wgrad = !with_wgrad;
  }
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
  // The reduction: tile shapes as launched (bf16 16-byte vectors with 1 and 4
  // a lane, a second partial tile; fp32 vectors; scalars for unaligned
  // rows; fp64 and f16), short rows and split ones, bad indices.
  // Hot rows: shares of 0.4-0.9 of 300-600 pairs on two rows give segments
  // of 2-5 chunks (C = 64 at these bag sizes).
  check_backward<mk::bf16_t, int64_t, true>(60, 40, 64, 8, 0, 0.5, 0, 2, 101);
  check_backward<mk::bf16_t, int32_t, true>(50, 1032, 20, 16, 8, 0.6, 0, 3, 102);
  check_backward<float, int64_t, true>(70, 260, 80, 5, 4, 0.5, 0, 2, 103);
  check_backward<float, int32_t, true>(300, 12, 64, 6, 0, 0.1, 3, 1, 104);
  check_backward<float, int64_t, false>(40, 37, 60, 7, 3, 0.6, 0, 2, 105);
  check_backward<float, int32_t, false>(45, 70, 50, 9, 1, 0.5, 2, 2, 106);
  check_backward<double, int64_t, true>(33, 18, 60, 6, 2, 0.9, 0, 1, 107);
  check_backward<mk::f16_t, int64_t, false>(29, 9, 60, 8, 0, 0.5, 0, 2, 108);
  return finish("test_eb_backward_emu");
}
