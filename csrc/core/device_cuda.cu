// mk_cuda_device_check, the C ABI's one CUDA-only function (c_api.cpp has its
// CPU-only build's stand-in): every .cu file is compiled for the same
// architectures, so one probe kernel's image stands for all of them.
#include "cuda_internal.cuh"

namespace {

__global__ void probe_kernel() {}

mk_status device_check(int device, int* major, int* minor) {
  int cc_major = 0, cc_minor = 0, previous = 0;
  MK_CUDA_TRY(cudaDeviceGetAttribute(&cc_major, cudaDevAttrComputeCapabilityMajor, device));
  MK_CUDA_TRY(cudaDeviceGetAttribute(&cc_minor, cudaDevAttrComputeCapabilityMinor, device));
  if (major) *major = cc_major;
  if (minor) *minor = cc_minor;
  MK_CUDA_TRY(cudaGetDevice(&previous));
  MK_CUDA_TRY(cudaSetDevice(device));
  cudaFuncAttributes attr;
  const cudaError_t err = cudaFuncGetAttributes(&attr, probe_kernel);
  MK_CUDA_TRY(cudaSetDevice(previous));
  if (err == cudaErrorNoKernelImageForDevice || err == cudaErrorInvalidDeviceFunction)
    return MK_ERR_UNSUPPORTED;
  return err == cudaSuccess ? MK_OK : MK_ERR_CUDA;
}

}  // namespace

extern "C" mk_status mk_cuda_device_check(int device, int* major, int* minor) {
  const mk_status st = device_check(device, major, minor);
  // The answer is in the status: leave no error behind for the caller's next
  // launch check to find.
  if (st != MK_OK) (void)cudaGetLastError();
  return st;
}
