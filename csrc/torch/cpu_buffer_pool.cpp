#include "cpu_buffer_pool.h"

#include <cstdlib>
#include <map>
#include <mutex>

namespace mkt {

namespace {

// Freed buffers by size. At most kPerSize buffers of one size and kMaxBytes in
// all are kept; anything more is returned to the system at once.
class Pool {
 public:
  static constexpr size_t kPerSize = 2;

  // MEMKERNELS_CPU_POOL_MB caps the cached bytes (default 2048; 0 disables).
  Pool() {
    const char* env = std::getenv("MEMKERNELS_CPU_POOL_MB");
    max_bytes_ = (env ? size_t(std::strtoull(env, nullptr, 10)) : size_t(2048)) << 20;
  }

  // The smallest cached buffer of at least `bytes` and at most 1.25x that
  // (sizes that vary a little, like a batch's distinct-row count, still hit),
  // or a new one. Sets *got to the buffer's size.
  void* take(size_t bytes, size_t* got) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = free_.lower_bound(bytes);
      if (it != free_.end() && it->first <= bytes + bytes / 4) {
        void* p = it->second;
        *got = it->first;
        cached_ -= it->first;
        free_.erase(it);
        return p;
      }
    }
    void* p = nullptr;
    if (posix_memalign(&p, 4096, bytes) != 0) return nullptr;
    *got = bytes;
    return p;
  }

  void give(void* p, size_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (free_.count(bytes) < kPerSize && cached_ + bytes <= max_bytes_) {
        free_.emplace(bytes, p);
        cached_ += bytes;
        return;
      }
    }
    std::free(p);
  }

  ~Pool() {
    for (auto& kv : free_) std::free(kv.second);
  }

 private:
  std::mutex mu_;
  std::multimap<size_t, void*> free_;
  size_t cached_ = 0;
  size_t max_bytes_;
};

Pool& pool() {
  static Pool* p = new Pool();  // never destroyed: tensors may outlive static destructors
  return *p;
}

struct Block {
  void* ptr;
  size_t bytes;
};

void release(void* ctx) {
  Block* b = static_cast<Block*>(ctx);
  pool().give(b->ptr, b->bytes);
  delete b;
}

}  // namespace

at::Tensor cpu_empty_pooled(at::IntArrayRef sizes, at::ScalarType dtype) {
  int64_t numel = 1;
  for (int64_t s : sizes) numel *= s;
  const size_t bytes = size_t(numel) * at::elementSize(dtype);
  const auto opts = at::TensorOptions().dtype(dtype).device(at::kCPU);
  if (int64_t(bytes) < kPooledMinBytes) return at::empty(sizes, opts);
  size_t got = 0;
  void* p = pool().take(bytes, &got);
  TORCH_CHECK(p != nullptr, "memkernels: out of memory allocating ", bytes, " bytes");
  Block* b = new Block{p, got};
  at::DataPtr data(p, b, &release, at::Device(at::kCPU));
  at::Storage storage(at::Storage::use_byte_size_t(), got, std::move(data), /*allocator=*/nullptr,
                      /*resizable=*/false);
  return at::empty({0}, opts).set_(storage, 0, sizes);
}

at::Tensor empty_workspace(int64_t bytes, const at::TensorOptions& like) {
  if (like.device().is_cpu()) return cpu_empty_pooled({bytes}, at::kByte);
  return at::empty({bytes}, like.dtype(at::kByte));
}

}  // namespace mkt
