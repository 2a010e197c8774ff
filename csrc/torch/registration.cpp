// Every memkernels schema, in one TORCH_LIBRARY; their kernels, bound once
// for the CPU and (when built) CUDA dispatch keys to the device-generic entry
// points of ops.h; and the Python module init of memkernels._C (plain CPython
// API: the torch ops need no pybind11).
#include <Python.h>
#include <c10/core/DeviceGuard.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <torch/library.h>

#include <atomic>
#include <cstdint>
#include <string>

#include "../core/memkernels.h"
#include "checks.h"
#include "ops.h"

#ifndef MK_TORCH_VERSION
#define MK_TORCH_VERSION "unknown"
#endif
#ifndef MK_CUDA_VERSION
#define MK_CUDA_VERSION ""
#endif
#ifndef MK_CUDA_ARCHS
#define MK_CUDA_ARCHS ""
#endif

TORCH_LIBRARY(memkernels, m) {
  m.def(
      "embedding_bag(Tensor values, Tensor indices, Tensor weights, bool sparse=False, "
      "str check_indices=\"deferred\") -> Tensor");
  m.def(
      "embedding_bag_backward(Tensor grad_out, Tensor values, Tensor indices, Tensor weights) "
      "-> (Tensor grad_values, Tensor grad_weights)");
  m.def(
      "embedding_bag_backward_sparse(Tensor grad_out, Tensor values, Tensor indices, "
      "Tensor weights, bool acc_grads=False, int capacity=0) -> (Tensor rows, Tensor row_grads, "
      "Tensor grad_weights)");
  m.def(
      "pk_topk(Tensor query, Tensor keys, int k, str impl=\"auto\") -> (Tensor scores, Tensor indices)");
  m.def(
      "pk_topk_backward(Tensor grad_scores, Tensor query, Tensor keys, Tensor indices) "
      "-> (Tensor grad_query, Tensor grad_keys)");
  // Row-sparse optimizer updates (in place) and the embedding-bag backward
  // fused with them. `hyper` = (lr, beta1, beta2, eps, weight_decay, max_row_norm).
  m.def(
      "sparse_row_update(Tensor(a!) table, Tensor rows, Tensor grads, Tensor(b!)? state1, "
      "Tensor(c!)? state2, str kind, float[] hyper, int step, bool stochastic_rounding, "
      "int seed, int column_offset=0, Tensor? step_tensor=None, Tensor? lr_scale=None) -> ()");
  m.def(
      "embedding_bag_backward_update(Tensor grad_out, Tensor(a!) values, Tensor indices, "
      "Tensor weights, Tensor(b!)? state1, Tensor(c!)? state2, str kind, float[] hyper, "
      "int step, bool stochastic_rounding, int seed, int column_offset=0, Tensor? step_tensor=None, "
      "Tensor? lr_scale=None) -> Tensor grad_weights");
}

namespace mkt {
namespace {

// Raises, on the first call for a CUDA device, if this build has no kernel
// image the device can run: a clear message instead of CUDA's "no kernel
// image is available" from the first launch.
void check_cuda_device(c10::DeviceIndex index) {
  static std::atomic<uint64_t> checked{0};  // bit i: device i can run the kernels
  const bool cached = index >= 0 && index < 64;
  if (cached && ((checked.load(std::memory_order_relaxed) >> index) & 1u)) return;
  int major = 0, minor = 0;
  const mk_status st = mk_cuda_device_check(int(index), &major, &minor);
  TORCH_CHECK(st != MK_ERR_UNSUPPORTED, "memkernels: this build has no CUDA kernel image for cuda:",
              int(index), " (compute capability ", major, ".", minor,
              "); it was compiled for TORCH_CUDA_ARCH_LIST=\"", MK_CUDA_ARCHS,
              "\". Reinstall it for this card, e.g. TORCH_CUDA_ARCH_LIST=\"", major, ".", minor,
              "\" pip install --no-build-isolation memkernels (README: Build switches)");
  check_status(st, "memkernels: querying the CUDA device");
  if (cached) checked.fetch_or(uint64_t(1) << index, std::memory_order_relaxed);
}

// The Backend of a tensor's device: the CPU, or its CUDA device's current
// stream (through c10's device-generic stream API, so this file needs no
// CUDA headers).
Backend backend_of(const at::Tensor& t) {
  if (!t.is_cuda()) return Backend{MK_CPU, nullptr};
  check_cuda_device(t.device().index());
  const c10::Stream stream = c10::impl::getDeviceGuardImpl(t.device().type())->getStream(t.device());
  return Backend{MK_CUDA, stream.native_handle()};
}

// Each kernel runs under a guard for the device of its first tensor argument.
at::Tensor embedding_bag(const at::Tensor& values, const at::Tensor& indices,
                         const at::Tensor& weights, bool /*sparse: autograd's concern*/,
                         c10::string_view check_indices) {
  const IndexCheck check = parse_index_check(check_indices);
  const c10::DeviceGuard guard(values.device());
  return embedding_bag_forward(values, indices, weights, check, backend_of(values));
}

std::tuple<at::Tensor, at::Tensor> embedding_bag_backward_dense(const at::Tensor& grad_out,
                                                                const at::Tensor& values,
                                                                const at::Tensor& indices,
                                                                const at::Tensor& weights) {
  const c10::DeviceGuard guard(values.device());
  return embedding_bag_backward(grad_out, values, indices, weights, backend_of(values));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> embedding_bag_backward_rows(
    const at::Tensor& grad_out, const at::Tensor& values, const at::Tensor& indices,
    const at::Tensor& weights, bool acc_grads, int64_t capacity) {
  const c10::DeviceGuard guard(values.device());
  return embedding_bag_backward_sparse(grad_out, values, indices, weights, backend_of(values), acc_grads,
                                       capacity);
}

at::Tensor embedding_bag_backward_with_update(
    const at::Tensor& grad_out, const at::Tensor& values, const at::Tensor& indices,
    const at::Tensor& weights, const c10::optional<at::Tensor>& state1,
    const c10::optional<at::Tensor>& state2, c10::string_view kind, c10::ArrayRef<double> hyper,
    int64_t step, bool stochastic_rounding, int64_t seed, int64_t column_offset,
    const c10::optional<at::Tensor>& step_tensor, const c10::optional<at::Tensor>& lr_scale) {
  const c10::DeviceGuard guard(values.device());
  return embedding_bag_backward_update(
      grad_out, values, indices, weights, state1, state2,
      UpdateSpec{std::string(kind), hyper, step, stochastic_rounding, seed, column_offset, step_tensor, lr_scale},
      backend_of(values));
}

void row_update(const at::Tensor& table, const at::Tensor& rows, const at::Tensor& grads,
                const c10::optional<at::Tensor>& state1, const c10::optional<at::Tensor>& state2,
                c10::string_view kind, c10::ArrayRef<double> hyper, int64_t step,
                bool stochastic_rounding, int64_t seed, int64_t column_offset,
                const c10::optional<at::Tensor>& step_tensor, const c10::optional<at::Tensor>& lr_scale) {
  const c10::DeviceGuard guard(table.device());
  sparse_row_update(table, rows, grads, state1, state2,
                    UpdateSpec{std::string(kind), hyper, step, stochastic_rounding, seed, column_offset, step_tensor,
                               lr_scale},
                    backend_of(table));
}

std::tuple<at::Tensor, at::Tensor> pk_topk(const at::Tensor& query, const at::Tensor& keys,
                                           int64_t k, c10::string_view impl) {
  const c10::DeviceGuard guard(query.device());
  return pk_topk_forward(query, keys, k, impl, backend_of(query));
}

std::tuple<at::Tensor, at::Tensor> pk_topk_grad(const at::Tensor& grad_scores,
                                                const at::Tensor& query, const at::Tensor& keys,
                                                const at::Tensor& indices) {
  const c10::DeviceGuard guard(query.device());
  return pk_topk_backward(grad_scores, query, keys, indices, backend_of(query));
}

void register_kernels(torch::Library& m) {
  m.impl("embedding_bag", &embedding_bag);
  m.impl("embedding_bag_backward", &embedding_bag_backward_dense);
  m.impl("embedding_bag_backward_sparse", &embedding_bag_backward_rows);
  m.impl("embedding_bag_backward_update", &embedding_bag_backward_with_update);
  m.impl("sparse_row_update", &row_update);
  m.impl("pk_topk", &pk_topk);
  m.impl("pk_topk_backward", &pk_topk_grad);
}

}  // namespace
}  // namespace mkt

TORCH_LIBRARY_IMPL(memkernels, CPU, m) { mkt::register_kernels(m); }
#ifdef MK_WITH_CUDA
TORCH_LIBRARY_IMPL(memkernels, CUDA, m) { mkt::register_kernels(m); }
#endif

namespace {

// ["float32", ...]: the value dtypes the ops take (memkernels.ops reads them).
PyObject* value_dtypes(PyObject*, PyObject*) {
  PyObject* list = PyList_New(0);
  for (const mkt::ValueDtype& d : mkt::kValueDtypes) {
    PyObject* name = PyUnicode_FromString(d.name);
    PyList_Append(list, name);
    Py_DECREF(name);
  }
  return list;
}

// JSON: the core's build facts plus the torch and CUDA versions compiled against.
PyObject* build_info(PyObject*, PyObject*) {
  std::string core = mk_build_info();
  core.pop_back();  // drop the closing brace
  core += ", \"torch\": \"" MK_TORCH_VERSION "\", \"cuda\": \"" MK_CUDA_VERSION "\"}";
  return PyUnicode_FromString(core.c_str());
}

// take_index_error(device: int) -> str | None: the bad index CUDA device
// `device` reported and no one has read yet (reading it clears it).
PyObject* take_index_error(PyObject*, PyObject* arg) {
  const long device = PyLong_AsLong(arg);
  if (device == -1 && PyErr_Occurred()) return nullptr;
  std::string message;
  try {
    message = mkt::take_index_error(int(device));
  } catch (const std::exception& e) {
    PyErr_SetString(PyExc_RuntimeError, e.what());
    return nullptr;
  }
  if (message.empty()) Py_RETURN_NONE;
  return PyUnicode_FromString(message.c_str());
}

PyMethodDef methods[] = {
    {"take_index_error", take_index_error, METH_O,
     "The unread bad-index report of a CUDA device (clears it), or None."},
    {"build_info", build_info, METH_NOARGS, "JSON text describing this build."},
    {"value_dtypes", value_dtypes, METH_NOARGS, "Names of the value dtypes the ops take."},
    {nullptr, nullptr, 0, nullptr},
};

PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, methods};

}  // namespace

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&module); }
