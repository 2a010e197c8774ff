"""Drives the torch-free core library (libmemkernels_core.so, built by
CMakeLists.txt) through its C ABI with ctypes and numpy arrays: what another
framework would do. Run as a script with the library path; it never imports
torch and exits non-zero on a mismatch."""

import ctypes as C
import sys

import numpy as np

MK_OK, MK_ERR_INDEX_OUT_OF_RANGE = 0, 2
MK_F32, MK_F64 = 0, 3
MK_I32, MK_I64 = 0, 1
MK_CPU = 0


class FwdArgs(C.Structure):
    _fields_ = [
        ("num_rows", C.c_int64), ("dim", C.c_int64), ("num_bags", C.c_int64), ("bag_size", C.c_int64),
        ("value_dtype", C.c_int), ("index_dtype", C.c_int),
        ("values", C.c_void_p), ("values_row_stride", C.c_int64),
        ("indices", C.c_void_p), ("weights", C.c_void_p), ("out", C.c_void_p),
        ("check_indices", C.c_int), ("bad_position", C.POINTER(C.c_int64)),
        ("error_flag", C.c_void_p), ("num_threads", C.c_int),
    ]


class BwdArgs(C.Structure):
    _fields_ = [
        ("num_rows", C.c_int64), ("dim", C.c_int64), ("num_bags", C.c_int64), ("bag_size", C.c_int64),
        ("value_dtype", C.c_int), ("index_dtype", C.c_int),
        ("values", C.c_void_p), ("values_row_stride", C.c_int64),
        ("indices", C.c_void_p), ("weights", C.c_void_p), ("grad_out", C.c_void_p),
        ("grad_weights", C.c_void_p), ("grad_values", C.c_void_p),
        ("sparse_rows", C.c_void_p), ("sparse_grads", C.c_void_p), ("sparse_grads_acc", C.c_int),
        ("update", C.c_void_p), ("num_threads", C.c_int),
    ]


def ptr(a):
    return a.ctypes.data_as(C.c_void_p)


def load(path):
    lib = C.CDLL(path)
    lib.mk_status_string.restype = C.c_char_p
    lib.mk_build_info.restype = C.c_char_p
    lib.mk_struct_size.restype = C.c_size_t
    lib.mk_struct_size.argtypes = [C.c_char_p]
    for cls, name in ((FwdArgs, b"mk_embedding_bag_fwd_args"), (BwdArgs, b"mk_embedding_bag_bwd_args")):
        assert C.sizeof(cls) == lib.mk_struct_size(name), (name, C.sizeof(cls), lib.mk_struct_size(name))
    for name in ("mk_embedding_bag_forward", "mk_embedding_bag_backward_plan", "mk_embedding_bag_backward_reduce",
                 "mk_embedding_bag_backward_workspace_size", "mk_embedding_bag_backward_count"):
        getattr(lib, name).restype = C.c_int
    return lib


def forward(lib, values, indices, weights):
    out = np.full((indices.shape[0], values.shape[1]), np.nan, dtype=values.dtype)
    bad = C.c_int64(-1)
    a = FwdArgs(values.shape[0], values.shape[1], indices.shape[0], indices.shape[1],
                MK_F32 if values.dtype == np.float32 else MK_F64,
                MK_I32 if indices.dtype == np.int32 else MK_I64,
                ptr(values), values.shape[1], ptr(indices), ptr(weights), ptr(out), 1, C.pointer(bad), None, 0)
    st = lib.mk_embedding_bag_forward(C.byref(a), MK_CPU, None)
    return st, out, bad.value


def backward(lib, values, indices, weights, grad_out, sparse):
    T, B = indices.shape
    N, D = values.shape
    gw = np.empty((T, B), dtype=weights.dtype)
    a = BwdArgs(N, D, T, B, MK_F32 if values.dtype == np.float32 else MK_F64,
                MK_I32 if indices.dtype == np.int32 else MK_I64,
                ptr(values), D, ptr(indices), ptr(weights), ptr(grad_out), ptr(gw), None, None, None, 0, None, 0)
    size = C.c_size_t(0)
    assert lib.mk_embedding_bag_backward_workspace_size(C.byref(a), MK_CPU, C.byref(size)) == MK_OK
    ws = np.empty(size.value, dtype=np.uint8)
    assert lib.mk_embedding_bag_backward_plan(C.byref(a), ptr(ws), size, MK_CPU, None) == MK_OK
    if sparse:
        u = C.c_int64(0)
        assert lib.mk_embedding_bag_backward_count(C.byref(a), ptr(ws), MK_CPU, None, C.byref(u)) == MK_OK
        rows = np.empty(u.value, dtype=np.int64)
        grads = np.empty((u.value, D), dtype=values.dtype)
        a.sparse_rows, a.sparse_grads = ptr(rows), ptr(grads)
    else:
        grads = np.full((N, D), np.nan, dtype=values.dtype)
        rows = None
        a.grad_values = ptr(grads)
    assert lib.mk_embedding_bag_backward_reduce(C.byref(a), ptr(ws), size, MK_CPU, None) == MK_OK
    return rows, grads, gw


def main(path):
    lib = load(path)
    rng = np.random.default_rng(0)
    N, D, T, B = 300, 37, 50, 6
    values = rng.standard_normal((N, D)).astype(np.float32)
    indices = rng.integers(0, N, (T, B)).astype(np.int32)
    indices[0, :3] = 5  # duplicates
    weights = rng.standard_normal((T, B)).astype(np.float32)
    grad_out = rng.standard_normal((T, D)).astype(np.float32)

    st, out, _ = forward(lib, values, indices, weights)
    assert st == MK_OK, lib.mk_status_string(st)
    ref = np.einsum("tb,tbd->td", weights.astype(np.float64), values[indices].astype(np.float64))
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)

    _, gv, gw = backward(lib, values, indices, weights, grad_out, sparse=False)
    ref_gv = np.zeros((N, D))
    np.add.at(ref_gv, indices.ravel(), weights.ravel()[:, None] * grad_out.astype(np.float64).repeat(B, axis=0))
    ref_gw = np.einsum("td,tbd->tb", grad_out.astype(np.float64), values[indices].astype(np.float64))
    np.testing.assert_allclose(gv, ref_gv, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(gw, ref_gw, rtol=1e-5, atol=1e-5)

    rows, sgv, _ = backward(lib, values, indices, weights, grad_out, sparse=True)
    assert np.array_equal(rows, np.unique(indices))
    assert np.array_equal(sgv, gv[rows])

    indices[3, 2] = N + 7
    st, _, bad = forward(lib, values, indices, weights)
    assert st == MK_ERR_INDEX_OUT_OF_RANGE and bad == 3 * B + 2, (st, bad)
    assert "torch" not in sys.modules
    print("capi_numpy: ok", lib.mk_build_info().decode())


if __name__ == "__main__":
    main(sys.argv[1])
