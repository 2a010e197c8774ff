"""ctypes bindings of the torch-free core library (libmemkernels_core.so, the
C ABI of ``memkernels.h``) for callers that are not torch: numpy on the CPU,
CuPy (or any array with ``__cuda_array_interface__``) on CUDA.

This file needs only the standard library (and numpy or CuPy for the array
helpers). ``from memkernels import capi`` imports the package, and with it
torch; a process that must not import torch loads this file by path::

    import importlib.util
    spec = importlib.util.spec_from_file_location("memkernels_capi", "<site-packages>/memkernels/capi.py")
    capi = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(capi)

``library_path()`` and ``include_dir()`` say where the installed library and
header are, for C and C++ callers (docs/c_abi.md).
"""

from __future__ import annotations

import ctypes as C
import os
from typing import Optional, Tuple

ABI_VERSION = 4  # MK_ABI_VERSION of the header these bindings were written for

# mk_status
(OK, ERR_INVALID_ARGUMENT, ERR_INDEX_OUT_OF_RANGE, ERR_UNSUPPORTED, ERR_CUDA, ERR_WORKSPACE_TOO_SMALL,
 ERR_OUT_OF_MEMORY, ERR_INTERNAL) = range(8)
# mk_dtype, mk_index_dtype, mk_device
F32, F16, BF16, F64 = 0, 1, 2, 3
I32, I64 = 0, 1
CPU, CUDA = 0, 1
# mk_row_optimizer
OPT_SGD, OPT_ADAM, OPT_ADAGRAD_ROWWISE = 0, 1, 2

_HERE = os.path.dirname(os.path.abspath(__file__))
LIBRARY = "libmemkernels_core.so"


def library_path() -> str:
    """The core library: $MEMKERNELS_CORE_LIB if set, else the one installed
    beside this file."""
    path = os.environ.get("MEMKERNELS_CORE_LIB") or os.path.join(_HERE, LIBRARY)
    if not os.path.exists(path):
        raise FileNotFoundError(f"memkernels: no core library at {path} (build the package, or set "
                                "MEMKERNELS_CORE_LIB to a libmemkernels_core.so built with CMake)")
    return path


def include_dir() -> str:
    """The folder holding memkernels.h: the installed copy, or the source
    tree's csrc/core when running from a checkout."""
    for d in (os.path.join(_HERE, "include"), os.path.join(os.path.dirname(_HERE), "csrc", "core")):
        if os.path.exists(os.path.join(d, "memkernels.h")):
            return d
    raise FileNotFoundError("memkernels: memkernels.h is neither installed nor in a source tree")


# ---- the argument structs, field for field as in memkernels.h ------------------------------------


class EmbeddingBagFwdArgs(C.Structure):
    _fields_ = [
        ("num_rows", C.c_int64), ("dim", C.c_int64), ("num_bags", C.c_int64), ("bag_size", C.c_int64),
        ("value_dtype", C.c_int), ("index_dtype", C.c_int),
        ("values", C.c_void_p), ("values_row_stride", C.c_int64),
        ("indices", C.c_void_p), ("weights", C.c_void_p), ("out", C.c_void_p),
        ("check_indices", C.c_int), ("bad_position", C.POINTER(C.c_int64)),
        ("error_flag", C.c_void_p), ("num_threads", C.c_int), ("reporter", C.c_void_p),
    ]


class EmbeddingBagBwdArgs(C.Structure):
    _fields_ = [
        ("num_rows", C.c_int64), ("dim", C.c_int64), ("num_bags", C.c_int64), ("bag_size", C.c_int64),
        ("value_dtype", C.c_int), ("index_dtype", C.c_int),
        ("values", C.c_void_p), ("values_row_stride", C.c_int64),
        ("indices", C.c_void_p), ("weights", C.c_void_p), ("grad_out", C.c_void_p),
        ("grad_weights", C.c_void_p), ("grad_values", C.c_void_p),
        ("sparse_rows", C.c_void_p), ("sparse_grads", C.c_void_p), ("sparse_grads_acc", C.c_int),
        ("update", C.c_void_p), ("num_threads", C.c_int),
        ("sparse_capacity", C.c_int64), ("sparse_count", C.c_void_p),
    ]


class RowUpdate(C.Structure):
    _fields_ = [
        ("kind", C.c_int), ("lr", C.c_double), ("beta1", C.c_double), ("beta2", C.c_double), ("eps", C.c_double),
        ("weight_decay", C.c_double), ("max_row_norm", C.c_double), ("step", C.c_int64),
        ("stochastic_rounding", C.c_int), ("seed", C.c_uint64), ("state1", C.c_void_p), ("state2", C.c_void_p),
        ("column_offset", C.c_int64), ("step_ptr", C.c_void_p), ("lr_scale", C.c_void_p), ("state_bf16", C.c_int),
    ]


class SparseRowUpdateArgs(C.Structure):
    _fields_ = [
        ("num_rows", C.c_int64), ("dim", C.c_int64), ("value_dtype", C.c_int),
        ("table", C.c_void_p), ("table_row_stride", C.c_int64), ("num_updates", C.c_int64),
        ("rows", C.c_void_p), ("grads", C.c_void_p), ("update", RowUpdate), ("num_threads", C.c_int),
    ]


class PkSelectArgs(C.Structure):
    _fields_ = [
        ("num_tokens", C.c_int64), ("num_heads", C.c_int64), ("num_keys", C.c_int64), ("k", C.c_int64),
        ("scores1", C.c_void_p), ("scores2", C.c_void_p), ("scores_stride_t", C.c_int64),
        ("scores_stride_h", C.c_int64), ("out_scores", C.c_void_p), ("out_indices", C.c_void_p),
        ("num_threads", C.c_int),
    ]


class PkTopkArgs(C.Structure):
    _fields_ = [
        ("num_tokens", C.c_int64), ("num_heads", C.c_int64), ("num_keys", C.c_int64), ("half_dim", C.c_int64),
        ("k", C.c_int64), ("dtype", C.c_int), ("query", C.c_void_p), ("keys", C.c_void_p),
        ("out_scores", C.c_void_p), ("out_indices", C.c_void_p),
    ]


class PkTopkBwdArgs(C.Structure):
    _fields_ = [
        ("num_tokens", C.c_int64), ("num_heads", C.c_int64), ("num_keys", C.c_int64), ("half_dim", C.c_int64),
        ("k", C.c_int64), ("dtype", C.c_int), ("grad_scores", C.c_void_p), ("query", C.c_void_p),
        ("keys", C.c_void_p), ("indices", C.c_void_p), ("grad_query", C.c_void_p), ("grad_keys", C.c_void_p),
        ("num_threads", C.c_int),
    ]


class IndexReport(C.Structure):
    """What an mk_index_reporter publishes (mk_index_reporter_poll)."""
    _fields_ = [("position", C.c_int64), ("value", C.c_int64), ("num_rows", C.c_int64), ("bag_size", C.c_int64)]


_STRUCTS = {
    b"mk_embedding_bag_fwd_args": EmbeddingBagFwdArgs, b"mk_embedding_bag_bwd_args": EmbeddingBagBwdArgs,
    b"mk_row_update": RowUpdate, b"mk_sparse_row_update_args": SparseRowUpdateArgs,
    b"mk_pk_select_args": PkSelectArgs, b"mk_pk_topk_args": PkTopkArgs,
    b"mk_pk_topk_bwd_args": PkTopkBwdArgs, b"mk_index_report": IndexReport,
}


class CoreError(RuntimeError):
    """A core call returned a status other than MK_OK."""

    def __init__(self, call: str, status: int, message: str):
        super().__init__(f"{call}: {message} (mk_status {status})")
        self.status = status


class Library:
    """The loaded core library: every mk_* function with its types set, the
    ABI version and every struct's size checked against these bindings."""

    def __init__(self, path: Optional[str] = None):
        self.path = path or library_path()
        lib = C.CDLL(self.path)
        lib.mk_abi_version.restype = C.c_int
        lib.mk_status_string.restype = C.c_char_p
        lib.mk_status_string.argtypes = [C.c_int]
        lib.mk_build_info.restype = C.c_char_p
        lib.mk_struct_size.restype = C.c_size_t
        lib.mk_struct_size.argtypes = [C.c_char_p]
        version = lib.mk_abi_version()
        if version != ABI_VERSION:
            raise ImportError(f"memkernels: {self.path} has ABI version {version}; these bindings need {ABI_VERSION}")
        for name, cls in _STRUCTS.items():
            if C.sizeof(cls) != lib.mk_struct_size(name):
                raise ImportError(f"memkernels: {name.decode()} is {lib.mk_struct_size(name)} bytes in {self.path}, "
                                  f"{C.sizeof(cls)} in these bindings")
        for name in ("mk_embedding_bag_forward", "mk_embedding_bag_backward_workspace_size",
                     "mk_embedding_bag_backward_plan", "mk_embedding_bag_backward_count",
                     "mk_embedding_bag_backward_reduce", "mk_pk_select", "mk_pk_topk_fused", "mk_sparse_row_update",
                     "mk_cuda_device_check", "mk_index_reporter_create", "mk_index_reporter_poll"):
            getattr(lib, name).restype = C.c_int
        lib.mk_index_reporter_create.argtypes = [C.c_int, C.POINTER(C.c_void_p)]
        lib.mk_index_reporter_poll.argtypes = [C.c_void_p, C.POINTER(IndexReport), C.POINTER(C.c_int)]
        lib.mk_index_reporter_destroy.restype = None
        lib.mk_index_reporter_destroy.argtypes = [C.c_void_p]
        self.lib = lib

    def build_info(self) -> str:
        return self.lib.mk_build_info().decode()

    def check(self, call: str, status: int) -> None:
        if status != OK:
            raise CoreError(call, status, self.lib.mk_status_string(status).decode())

    def call(self, name: str, *args) -> None:
        """Calls mk_<name>(*args) and raises CoreError unless it returns MK_OK."""
        self.check(name, getattr(self.lib, name)(*args))


_DEFAULT: Optional[Library] = None


def library() -> Library:
    """The installed library, loaded once."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = Library()
    return _DEFAULT


# ---- array helpers: numpy (CPU) and __cuda_array_interface__ arrays (CUDA) ------------------------

_VALUE_DTYPES = {"float32": F32, "float16": F16, "bfloat16": BF16, "float64": F64}
_INDEX_DTYPES = {"int32": I32, "int64": I64}


def _where(a) -> Tuple[int, int]:
    """(device, data pointer) of a C-contiguous array."""
    if not a.flags.c_contiguous:
        raise ValueError("memkernels.capi: arrays must be C-contiguous")
    cai = getattr(a, "__cuda_array_interface__", None)
    if cai is not None:
        return CUDA, cai["data"][0]
    return CPU, a.ctypes.data


def _module(a):
    """numpy for numpy arrays, cupy for CUDA arrays (to allocate outputs)."""
    if hasattr(a, "__cuda_array_interface__"):
        import cupy

        return cupy
    import numpy

    return numpy


def _stream_of(a, stream: Optional[int]) -> Optional[int]:
    if stream is not None or not hasattr(a, "__cuda_array_interface__"):
        return stream
    import cupy

    return cupy.cuda.get_current_stream().ptr


def _check_dtypes(values, indices, weights) -> None:
    if str(values.dtype) not in _VALUE_DTYPES:
        raise ValueError(f"memkernels.capi: values must be one of {sorted(_VALUE_DTYPES)}; got {values.dtype}")
    if str(indices.dtype) not in _INDEX_DTYPES:
        raise ValueError(f"memkernels.capi: indices must be int32 or int64; got {indices.dtype}")
    acc = "float64" if str(values.dtype) == "float64" else "float32"
    if str(weights.dtype) != acc:
        raise ValueError(f"memkernels.capi: weights must be {acc} (the accumulation dtype); got {weights.dtype}")


def _devices(*arrays) -> Tuple[int, list]:
    where = [_where(a) for a in arrays]
    devices = {d for d, _ in where}
    if len(devices) != 1:
        raise ValueError("memkernels.capi: all arrays must be on the same device")
    return devices.pop(), [p for _, p in where]


def embedding_bag(values, indices, weights, *, stream: Optional[int] = None, lib: Optional[Library] = None):
    """``out[t] = sum_j weights[t, j] * values[indices[t, j]]`` through the
    C ABI: numpy arrays on the CPU, CuPy arrays on CUDA (on ``stream``, a
    cudaStream_t as an int, default CuPy's current stream). values [N, D]
    float32/float64 (16-bit on CUDA via CuPy's float16), indices [T, B]
    int32/int64, weights [T, B] in the accumulation dtype (float64 for float64
    values, float32 otherwise). A bad index raises CoreError on the CPU; on
    CUDA its term is skipped (no error flag is passed)."""
    lib = lib or library()
    _check_dtypes(values, indices, weights)
    xp = _module(values)
    T, B = indices.shape
    N, D = values.shape
    out = xp.empty((T, D), dtype=values.dtype)
    device, (pv, pi, pw, po) = _devices(values, indices, weights, out)
    bad = C.c_int64(-1)
    a = EmbeddingBagFwdArgs(N, D, T, B, _VALUE_DTYPES[str(values.dtype)], _INDEX_DTYPES[str(indices.dtype)],
                            pv, D, pi, pw, po, 1 if device == CPU else 0, C.pointer(bad), None, 0)
    lib.call("mk_embedding_bag_forward", C.byref(a), device, C.c_void_p(_stream_of(values, stream)))
    return out


def embedding_bag_backward(values, indices, weights, grad_out, *, sparse: bool = False,
                           stream: Optional[int] = None, lib: Optional[Library] = None):
    """The atomic-free backward through the C ABI: ``(grad_values [N, D],
    grad_weights [T, B])``, or with ``sparse`` ``(rows [U] int64,
    row_grads [U, D], grad_weights)``. Arrays and devices as in
    :func:`embedding_bag`. The sparse form learns U on the host (on CUDA a
    stream synchronisation)."""
    lib = lib or library()
    _check_dtypes(values, indices, weights)
    xp = _module(values)
    T, B = indices.shape
    N, D = values.shape
    grad_w = xp.empty((T, B), dtype=weights.dtype)
    device, (pv, pi, pw, pg, pgw) = _devices(values, indices, weights, grad_out, grad_w)
    s = C.c_void_p(_stream_of(values, stream))
    a = EmbeddingBagBwdArgs(N, D, T, B, _VALUE_DTYPES[str(values.dtype)], _INDEX_DTYPES[str(indices.dtype)],
                            pv, D, pi, pw, pg, pgw, None, None, None, 0, None, 0)
    size = C.c_size_t(0)
    lib.call("mk_embedding_bag_backward_workspace_size", C.byref(a), device, C.byref(size))
    ws = xp.empty(max(1, size.value), dtype=xp.uint8)
    pws = _where(ws)[1]
    lib.call("mk_embedding_bag_backward_plan", C.byref(a), C.c_void_p(pws), size, device, s)
    if sparse:
        u = C.c_int64(0)
        lib.call("mk_embedding_bag_backward_count", C.byref(a), C.c_void_p(pws), device, s, C.byref(u))
        rows = xp.empty(max(1, u.value), dtype=xp.int64)[:u.value]
        grads = xp.empty((max(1, u.value), D), dtype=values.dtype)[:u.value]
        a.sparse_rows, a.sparse_grads = _where(rows)[1], _where(grads)[1]
        lib.call("mk_embedding_bag_backward_reduce", C.byref(a), C.c_void_p(pws), size, device, s)
        return rows, grads, grad_w
    grads = xp.empty((N, D), dtype=values.dtype)
    a.grad_values = _where(grads)[1]
    lib.call("mk_embedding_bag_backward_reduce", C.byref(a), C.c_void_p(pws), size, device, s)
    return grads, grad_w
