// CPU product-key selection: per (token, head), a bounded min-heap of 64-bit
// keys (score, then index: topk_keys.h) selects each half's top-k; the k x k
// candidates are walked in descending order of both halves and pruned as soon
// as a sum falls below the current k-th best.
#include <algorithm>
#include <functional>
#include <vector>

#include "cpu_internal.h"
#include "pk_topk_internal.h"
#include "topk_keys_internal.h"

namespace mk {
namespace {

// Bounded selection of the k largest keys.
class TopK {
 public:
  explicit TopK(int64_t k) : k_(size_t(k)) { heap_.reserve(k_); }
  void clear() { heap_.clear(); }
  bool full() const { return heap_.size() == k_; }
  uint64_t worst() const { return heap_.front(); }
  void offer(uint64_t key) {
    if (heap_.size() < k_) {
      heap_.push_back(key);
      std::push_heap(heap_.begin(), heap_.end(), std::greater<uint64_t>());
    } else if (key > heap_.front()) {
      std::pop_heap(heap_.begin(), heap_.end(), std::greater<uint64_t>());
      heap_.back() = key;
      std::push_heap(heap_.begin(), heap_.end(), std::greater<uint64_t>());
    }
  }
  // The selected keys, best first.
  const std::vector<uint64_t>& sorted() {
    std::sort(heap_.begin(), heap_.end(), std::greater<uint64_t>());
    return heap_;
  }

 private:
  size_t k_;
  std::vector<uint64_t> heap_;
};

void select_half(const float* s, int64_t n, TopK& top, std::vector<float>& val,
                 std::vector<uint32_t>& idx) {
  top.clear();
  for (int64_t i = 0; i < n; ++i) {
    const uint64_t key = topk_key(s[i], uint32_t(i));
    if (!top.full() || key > top.worst()) top.offer(key);
  }
  const std::vector<uint64_t>& best = top.sorted();
  for (size_t j = 0; j < best.size(); ++j) {
    val[j] = key_score(best[j]);
    idx[j] = key_index(best[j]);
  }
}

}  // namespace

mk_status pk_select_cpu(const mk_pk_select_args& a) {
  const int64_t T = a.num_tokens, H = a.num_heads, n = a.num_keys, k = a.k;
  const int threads = resolve_threads(a.num_threads);
#pragma omp parallel num_threads(threads)
  {
    TopK top(k);
    std::vector<float> v1(static_cast<size_t>(k)), v2(static_cast<size_t>(k));
    std::vector<uint32_t> i1(static_cast<size_t>(k)), i2(static_cast<size_t>(k));
#pragma omp for schedule(static)
    for (int64_t th = 0; th < T * H; ++th) {
      const int64_t t = th / H, h = th % H;
      const int64_t off = t * a.scores_stride_t + h * a.scores_stride_h;
      select_half(a.scores1 + off, n, top, v1, i1);
      select_half(a.scores2 + off, n, top, v2, i2);
      // Both halves are sorted descending and float addition is monotonic,
      // so once a sum is below the k-th best key's score, so is every later
      // sum in the same row (and, at b = 0, in every later row).
      top.clear();
      for (int64_t x = 0; x < k; ++x) {
        if (top.full() && v1[size_t(x)] + v2[0] < key_score(top.worst())) break;
        for (int64_t y = 0; y < k; ++y) {
          const float s = v1[size_t(x)] + v2[size_t(y)];
          if (top.full() && s < key_score(top.worst())) break;
          top.offer(topk_key(s, i1[size_t(x)] * uint32_t(n) + i2[size_t(y)]));
        }
      }
      const std::vector<uint64_t>& best = top.sorted();
      float* out_s = a.out_scores + th * k;
      int64_t* out_i = a.out_indices + th * k;
      for (int64_t j = 0; j < k; ++j) {
        out_s[j] = key_score(best[size_t(j)]);
        out_i[j] = int64_t(key_index(best[size_t(j)]));
      }
    }
  }
  return MK_OK;
}

}  // namespace mk
