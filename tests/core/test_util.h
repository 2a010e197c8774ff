// Helpers for the core's C++ tests: a naive fp64 reference of the embedding
// bag and its gradients, random inputs, and a tiny check macro.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <algorithm>
#include <random>
#include <utility>
#include <vector>

#include "memkernels.h"

static int g_failures = 0;

#define CHECK(cond, ...)                                          \
  do {                                                            \
    if (!(cond)) {                                                \
      std::fprintf(stderr, "%s:%d: CHECK(%s) failed: ", __FILE__, \
                   __LINE__, #cond);                              \
      std::fprintf(stderr, __VA_ARGS__);                          \
      std::fprintf(stderr, "\n");                                 \
      ++g_failures;                                               \
    }                                                             \
  } while (0)

struct Case {
  int64_t N, D, T, B;
  bool hot;  // every index the same row
};

template <class F>
struct Problem {
  Case c;
  std::vector<F> values, weights, grad_out;
  std::vector<int64_t> indices;

  explicit Problem(Case cs, unsigned seed) : c(cs) {
    std::mt19937_64 rng(seed);
    std::normal_distribution<double> nd;
    values.resize(size_t(c.N * c.D));
    for (auto& x : values) x = F(nd(rng));
    weights.resize(size_t(c.T * c.B));
    for (auto& x : weights) x = F(nd(rng));
    grad_out.resize(size_t(c.T * c.D));
    for (auto& x : grad_out) x = F(nd(rng));
    indices.resize(size_t(c.T * c.B));
    std::uniform_int_distribution<int64_t> ud(0, c.N - 1);
    for (auto& i : indices) i = c.hot ? c.N / 2 : ud(rng);
  }

  // Naive fp64 reference: out [T, D], grad_values [N, D], grad_weights [T, B].
  void reference(std::vector<double>& out, std::vector<double>& gv, std::vector<double>& gw) const {
    out.assign(size_t(c.T * c.D), 0.0);
    gv.assign(size_t(c.N * c.D), 0.0);
    gw.assign(size_t(c.T * c.B), 0.0);
    for (int64_t t = 0; t < c.T; ++t)
      for (int64_t j = 0; j < c.B; ++j) {
        const int64_t p = t * c.B + j, r = indices[size_t(p)];
        for (int64_t d = 0; d < c.D; ++d) {
          out[size_t(t * c.D + d)] += double(weights[size_t(p)]) * double(values[size_t(r * c.D + d)]);
          gv[size_t(r * c.D + d)] += double(weights[size_t(p)]) * double(grad_out[size_t(t * c.D + d)]);
          gw[size_t(p)] += double(grad_out[size_t(t * c.D + d)]) * double(values[size_t(r * c.D + d)]);
        }
      }
  }
};

template <class F>
double max_rel_err(const std::vector<F>& got, const std::vector<double>& want) {
  double err = 0, scale = 1;
  for (size_t i = 0; i < want.size(); ++i) scale = std::fmax(scale, std::fabs(want[i]));
  for (size_t i = 0; i < want.size(); ++i) err = std::fmax(err, std::fabs(double(got[i]) - want[i]));
  return err / scale;
}

template <class F>
bool bitwise_equal(const std::vector<F>& a, const std::vector<F>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(F)) == 0);
}

inline int finish(const char* name) {
  if (g_failures) {
    std::fprintf(stderr, "%s: %d check(s) failed\n", name, g_failures);
    return 1;
  }
  std::printf("%s: all checks passed\n", name);
  return 0;
}

// Product-key selection problem: half-scores [T, H, n] with integer values
// (many ties) and a brute-force top-k over all n * n sums, ties by slot.
struct PkProblem {
  int64_t T, H, n, k;
  std::vector<float> s1, s2;
  PkProblem(int64_t T_, int64_t H_, int64_t n_, int64_t k_, unsigned seed)
      : T(T_), H(H_), n(n_), k(k_) {
    std::mt19937_64 rng(seed);
    std::uniform_int_distribution<int> ud(-4, 4);
    s1.resize(size_t(T * H * n));
    s2.resize(size_t(T * H * n));
    for (auto& x : s1) x = float(ud(rng));
    for (auto& x : s2) x = float(ud(rng));
  }
  // Real-valued scores instead of small integers (few ties; the thresholds
  // move with every insertion).
  void randomize(unsigned seed) {
    std::mt19937_64 rng(seed);
    std::normal_distribution<float> nd;
    for (auto& x : s1) x = nd(rng);
    for (auto& x : s2) x = nd(rng);
  }
  // Every 7th score becomes `special` (one infinity for both halves, so no
  // sum is NaN) and every 11th -0.0, which must rank as +0.0.
  void sprinkle(float special) {
    for (std::vector<float>* s : {&s1, &s2})
      for (size_t i = 0; i < s->size(); ++i) {
        if (i % 7 == 3) (*s)[i] = special;
        if (i % 11 == 5) (*s)[i] = -0.0f;
      }
  }
  mk_pk_select_args args(const float* d1, const float* d2, float* out_s, int64_t* out_i) const {
    mk_pk_select_args a{};
    a.num_tokens = T;
    a.num_heads = H;
    a.num_keys = n;
    a.k = k;
    a.scores1 = d1;
    a.scores2 = d2;
    a.scores_stride_t = H * n;
    a.scores_stride_h = n;
    a.out_scores = out_s;
    a.out_indices = out_i;
    return a;
  }
  void brute_force(std::vector<float>& scores, std::vector<int64_t>& slots) const {
    scores.assign(size_t(T * H * k), 0.f);
    slots.assign(size_t(T * H * k), -1);
    std::vector<std::pair<float, int64_t>> all(size_t(n * n));
    for (int64_t th = 0; th < T * H; ++th) {
      for (int64_t i = 0; i < n; ++i)
        for (int64_t j = 0; j < n; ++j)
          all[size_t(i * n + j)] = {s1[size_t(th * n + i)] + s2[size_t(th * n + j)], i * n + j};
      std::stable_sort(all.begin(), all.end(),
                       [](const std::pair<float, int64_t>& a, const std::pair<float, int64_t>& b) {
                         return a.first > b.first;
                       });
      for (int64_t j = 0; j < k; ++j) {
        scores[size_t(th * k + j)] = all[size_t(j)].first;
        slots[size_t(th * k + j)] = all[size_t(j)].second;
      }
    }
  }
};
