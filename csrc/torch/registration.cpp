// Every memkernels schema, in one TORCH_LIBRARY, and the Python module init
// of memkernels._C (plain CPython API: the torch ops need no pybind11).
#include <Python.h>
#include <torch/library.h>

#include <string>

#include "../core/memkernels.h"

#ifndef MK_TORCH_VERSION
#define MK_TORCH_VERSION "unknown"
#endif
#ifndef MK_CUDA_VERSION
#define MK_CUDA_VERSION ""
#endif

TORCH_LIBRARY(memkernels, m) {
  m.def(
      "embedding_bag(Tensor values, Tensor indices, Tensor weights, bool sparse=False, "
      "bool check_indices=True) -> Tensor");
  m.def(
      "embedding_bag_backward(Tensor grad_out, Tensor values, Tensor indices, Tensor weights) "
      "-> (Tensor grad_values, Tensor grad_weights)");
  m.def(
      "embedding_bag_backward_sparse(Tensor grad_out, Tensor values, Tensor indices, "
      "Tensor weights) -> (Tensor rows, Tensor row_grads, Tensor grad_weights)");
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
      "int seed) -> ()");
  m.def(
      "embedding_bag_backward_update(Tensor grad_out, Tensor(a!) values, Tensor indices, "
      "Tensor weights, Tensor(b!)? state1, Tensor(c!)? state2, str kind, float[] hyper, "
      "int step, bool stochastic_rounding, int seed) -> Tensor grad_weights");
}

namespace {

// JSON: the core's build facts plus the torch and CUDA versions compiled against.
PyObject* build_info(PyObject*, PyObject*) {
  std::string core = mk_build_info();
  core.pop_back();  // drop the closing brace
  core += ", \"torch\": \"" MK_TORCH_VERSION "\", \"cuda\": \"" MK_CUDA_VERSION "\"}";
  return PyUnicode_FromString(core.c_str());
}

PyMethodDef methods[] = {
    {"build_info", build_info, METH_NOARGS, "JSON text describing this build."},
    {nullptr, nullptr, 0, nullptr},
};

PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, methods};

}  // namespace

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&module); }
