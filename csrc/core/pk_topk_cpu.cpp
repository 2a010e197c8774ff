// CPU product-key selection. Per (token, head): each half's top-k of 64-bit
// keys (score, then index: topk_keys_internal.h), then the k x k candidates
// walked in descending order of both halves and pruned as soon as a sum falls
// below the current k-th best.
//
// A half's scan skips blocks of 16 scores below the current k-th best with
// one packed comparison. The k best are kept in a sorted array for
// k <= kSortedMaxK (an insertion shifts the worse keys down) and in a bounded
// min-heap above. Keys are a total order, so every path gives one result.
#include <algorithm>
#include <cstring>
#include <functional>
#include <vector>

#include "cpu_internal.h"
#include "pk_topk_internal.h"
#include "topk_keys_internal.h"

namespace mk {
namespace {

constexpr int64_t kSortedMaxK = 64;

// The k largest keys offered, kept sorted best first.
class SortedTopK {
 public:
  explicit SortedTopK(int64_t k) : k_(size_t(k)), keys_(k_) {}
  void clear() { size_ = 0; }
  bool full() const { return size_ == k_; }
  uint64_t worst() const { return keys_[size_ - 1]; }  // when not empty
  void offer(uint64_t key) {
    size_t j;
    if (size_ < k_) {
      j = size_++;
    } else if (key > keys_[k_ - 1]) {
      j = k_ - 1;
    } else {
      return;
    }
    for (; j > 0 && keys_[j - 1] < key; --j) keys_[j] = keys_[j - 1];
    keys_[j] = key;
  }
  const uint64_t* sorted() const { return keys_.data(); }

 private:
  size_t k_, size_ = 0;
  std::vector<uint64_t> keys_;
};

// The k largest keys offered, as a min-heap (the worst on top).
class HeapTopK {
 public:
  explicit HeapTopK(int64_t k) : k_(size_t(k)) { heap_.reserve(k_); }
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
  // Best first; the heap is spent until clear().
  const uint64_t* sorted() {
    std::sort(heap_.begin(), heap_.end(), std::greater<uint64_t>());
    return heap_.data();
  }

 private:
  size_t k_;
  std::vector<uint64_t> heap_;
};

// One half's top-k of s[0, n) (k <= n), best first, into val / idx.
template <class Top>
void select_half(const float* s, int64_t n, int64_t k, Top& top, float* val, uint32_t* idx) {
  top.clear();
  int64_t i = 0;
  for (; i < k; ++i) top.offer(topk_key(s[i], uint32_t(i)));
  // Full from here on. A later element has a larger index, so its key beats
  // the worst one exactly when its score's order bits are larger than `bar`.
  uint32_t bar = uint32_t(top.worst() >> 32);
  auto visit = [&](int64_t j) {
    const uint32_t b = order_bits(s[j]);
    if (b > bar) {
      top.offer(topk_key_bits(b, uint32_t(j)));
      bar = uint32_t(top.worst() >> 32);
    }
  };
  // Blocks of 16 with no element above the worst's score are passed over by
  // one packed test. !(x <= thr) holds for every element the exact test
  // takes (and for NaNs, which it then decides), so nothing is lost. 16-byte
  // vectors are native on SSE2 and NEON: GCC and Clang emit packed compares.
  typedef float v4f __attribute__((vector_size(16)));
  typedef int32_t v4i __attribute__((vector_size(16)));
  float thr = from_order_bits(bar);
  for (; i + 16 <= n; i += 16) {
    v4f x0, x1, x2, x3;
    std::memcpy(&x0, s + i, 16);
    std::memcpy(&x1, s + i + 4, 16);
    std::memcpy(&x2, s + i + 8, 16);
    std::memcpy(&x3, s + i + 12, 16);
    const v4f t = {thr, thr, thr, thr};
    const v4i pass = ~((x0 <= t) & (x1 <= t) & (x2 <= t) & (x3 <= t));
    uint64_t w[2];
    std::memcpy(w, &pass, 16);
    if (!(w[0] | w[1])) continue;
    for (int j = 0; j < 16; ++j) visit(i + j);
    thr = from_order_bits(bar);
  }
  for (; i < n; ++i) visit(i);
  const uint64_t* best = top.sorted();
  for (int64_t j = 0; j < k; ++j) {
    val[j] = key_score(best[j]);
    idx[j] = key_index(best[j]);
  }
}

template <class Top>
void select_rows(const mk_pk_select_args& a) {
  const int64_t T = a.num_tokens, H = a.num_heads, n = a.num_keys, k = a.k;
  const int threads = resolve_threads(a.num_threads);
#pragma omp parallel num_threads(threads)
  {
    Top top(k);
    std::vector<float> v1(static_cast<size_t>(k)), v2(static_cast<size_t>(k));
    std::vector<uint32_t> i1(static_cast<size_t>(k)), i2(static_cast<size_t>(k));
#pragma omp for schedule(static)
    for (int64_t th = 0; th < T * H; ++th) {
      const int64_t t = th / H, h = th % H;
      const int64_t off = t * a.scores_stride_t + h * a.scores_stride_h;
      select_half(a.scores1 + off, n, k, top, v1.data(), i1.data());
      select_half(a.scores2 + off, n, k, top, v2.data(), i2.data());
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
      const uint64_t* best = top.sorted();
      float* out_s = a.out_scores + th * k;
      int64_t* out_i = a.out_indices + th * k;
      for (int64_t j = 0; j < k; ++j) {
        out_s[j] = key_score(best[j]);
        out_i[j] = int64_t(key_index(best[j]));
      }
    }
  }
}

}  // namespace

mk_status pk_select_cpu(const mk_pk_select_args& a) {
  if (a.k <= kSortedMaxK) select_rows<SortedTopK>(a);
  else select_rows<HeapTopK>(a);
  return MK_OK;
}

}  // namespace mk
