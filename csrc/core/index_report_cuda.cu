// The bad-index reporter (mk_index_reporter_*, memkernels.h): a report in
// mapped, page-locked host memory that the device publishes to, and a ring of
// device slots in which a call's kernels find its first bad position. The host
// reads the report with plain loads, so a checked call never synchronises.
// c_api.cpp has the CPU-only build's stand-ins.
#include <atomic>
#include <cstring>
#include <new>

#include "cuda_internal.cuh"
#include "index_report_internal.h"

namespace {

constexpr unsigned long long kNone = ~0ull;  // a free slot: no bad position seen
constexpr uint32_t kSlots = 256;

// The mapped report. The device writes the fields, fences, then sets pending;
// the host reads pending, then the fields, then clears pending.
struct HostReport {
  volatile int32_t pending;
  int32_t unused;
  volatile int64_t position, value, num_rows, bag_size;
};

template <class I>
__global__ void publish_kernel(unsigned long long* slot, const I* indices, int64_t num_pairs,
                               int64_t num_rows, int64_t bag_size, HostReport* report) {
  const unsigned long long pos = *slot;
  if (pos == kNone) return;
  *slot = kNone;  // free again for the call that takes it next
  if (report->pending) return;  // the unread report is kept; this one is dropped
  report->position = int64_t(pos);
  report->value = pos < (unsigned long long)num_pairs ? int64_t(indices[pos]) : -1;
  report->num_rows = num_rows;
  report->bag_size = bag_size;
  __threadfence_system();  // the fields reach the host before the flag
  report->pending = 1;
}

}  // namespace

struct mk_index_reporter {
  int device = 0;
  HostReport* host = nullptr;        // host address of the report
  HostReport* host_device = nullptr;  // the same memory, as the device addresses it
  unsigned long long* slots = nullptr;
  std::atomic<uint32_t> next{0};
};

namespace {

void release(mk_index_reporter* r) {
  if (r->slots) (void)cudaFree(r->slots);
  if (r->host) (void)cudaFreeHost(r->host);
  delete r;
}

mk_status create(int device, mk_index_reporter* r) {
  r->device = device;
  MK_CUDA_TRY(cudaSetDevice(device));
  MK_CUDA_TRY(cudaHostAlloc(reinterpret_cast<void**>(&r->host), sizeof(HostReport),
                            cudaHostAllocMapped | cudaHostAllocPortable));
  std::memset(static_cast<void*>(r->host), 0, sizeof(HostReport));
  MK_CUDA_TRY(cudaHostGetDevicePointer(reinterpret_cast<void**>(&r->host_device), r->host, 0));
  MK_CUDA_TRY(cudaMalloc(reinterpret_cast<void**>(&r->slots), kSlots * sizeof(unsigned long long)));
  // Filled on a stream of its own, so a capture under way on another stream
  // of this device is left alone.
  cudaStream_t s = nullptr;
  MK_CUDA_TRY(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  cudaError_t err = cudaMemsetAsync(r->slots, 0xff, kSlots * sizeof(unsigned long long), s);
  if (err == cudaSuccess) err = cudaStreamSynchronize(s);
  (void)cudaStreamDestroy(s);
  return err == cudaSuccess ? MK_OK : MK_ERR_CUDA;
}

}  // namespace

namespace mk {

unsigned long long* reporter_slot(mk_index_reporter* r) {
  return r->slots + r->next.fetch_add(1, std::memory_order_relaxed) % kSlots;
}

mk_status reporter_check_device(const mk_index_reporter* r) {
  int dev = -1;
  MK_CUDA_TRY(cudaGetDevice(&dev));
  return dev == r->device ? MK_OK : MK_ERR_INVALID_ARGUMENT;
}

mk_status publish_bad_index(mk_index_reporter* r, unsigned long long* slot, const void* indices,
                            mk_index_dtype index_dtype, int64_t num_pairs, int64_t num_rows,
                            int64_t bag_size, void* stream) {
  auto s = static_cast<cudaStream_t>(stream);
  if (index_dtype == MK_I32)
    publish_kernel<<<1, 1, 0, s>>>(slot, static_cast<const int32_t*>(indices), num_pairs, num_rows,
                                   bag_size, r->host_device);
  else
    publish_kernel<<<1, 1, 0, s>>>(slot, static_cast<const int64_t*>(indices), num_pairs, num_rows,
                                   bag_size, r->host_device);
  MK_LAUNCH_CHECK();
  return MK_OK;
}

}  // namespace mk

extern "C" {

mk_status mk_index_reporter_create(int device, mk_index_reporter** out) {
  if (!out) return MK_ERR_INVALID_ARGUMENT;
  *out = nullptr;
  int previous = 0;
  MK_CUDA_TRY(cudaGetDevice(&previous));
  // Allocating is not allowed while this thread's capture mode is global and
  // some stream is capturing; relaxed lets a reporter be made mid-capture.
  cudaStreamCaptureMode mode = cudaStreamCaptureModeRelaxed;
  MK_CUDA_TRY(cudaThreadExchangeStreamCaptureMode(&mode));
  auto* r = new (std::nothrow) mk_index_reporter();
  mk_status st = r ? create(device, r) : MK_ERR_OUT_OF_MEMORY;
  (void)cudaThreadExchangeStreamCaptureMode(&mode);
  (void)cudaSetDevice(previous);
  if (st != MK_OK) {
    if (r) release(r);
    (void)cudaGetLastError();  // leave no error for the caller's next launch check
    return st;
  }
  *out = r;
  return MK_OK;
}

mk_status mk_index_reporter_poll(mk_index_reporter* r, mk_index_report* report, int* found) {
  if (!r || !found) return MK_ERR_INVALID_ARGUMENT;
  *found = 0;
  if (r->host->pending == 0) return MK_OK;
  std::atomic_thread_fence(std::memory_order_acquire);
  if (report) {
    report->position = r->host->position;
    report->value = r->host->value;
    report->num_rows = r->host->num_rows;
    report->bag_size = r->host->bag_size;
  }
  std::atomic_thread_fence(std::memory_order_release);
  r->host->pending = 0;
  *found = 1;
  return MK_OK;
}

void mk_index_reporter_destroy(mk_index_reporter* r) {
  if (!r) return;
  int previous = 0;
  const bool restore = cudaGetDevice(&previous) == cudaSuccess;
  (void)cudaSetDevice(r->device);
  release(r);
  if (restore) (void)cudaSetDevice(previous);
}

}  // extern "C"
