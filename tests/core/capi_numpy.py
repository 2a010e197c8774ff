"""Drives the torch-free core library through its C ABI with the package's
ctypes bindings (memkernels/capi.py, loaded by path so that the package, and
torch with it, is never imported) and numpy arrays: what another framework
would do. Run as a script with the library's path; exits non-zero on a
mismatch."""

import importlib.util
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def load_capi(path=None):
    path = path or os.path.join(os.path.dirname(os.path.dirname(HERE)), "memkernels", "capi.py")
    spec = importlib.util.spec_from_file_location("memkernels_capi", path)
    capi = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(capi)
    return capi


def main(lib_path, capi_path=None):
    capi = load_capi(capi_path)
    lib = capi.Library(lib_path)  # checks the ABI version and every struct's size
    rng = np.random.default_rng(0)
    N, D, T, B = 300, 37, 50, 6
    values = rng.standard_normal((N, D)).astype(np.float32)
    indices = rng.integers(0, N, (T, B)).astype(np.int32)
    indices[0, :3] = 5  # duplicates
    weights = rng.standard_normal((T, B)).astype(np.float32)
    grad_out = rng.standard_normal((T, D)).astype(np.float32)

    out = capi.embedding_bag(values, indices, weights, lib=lib)
    ref = np.einsum("tb,tbd->td", weights.astype(np.float64), values[indices].astype(np.float64))
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)

    gv, gw = capi.embedding_bag_backward(values, indices, weights, grad_out, lib=lib)
    ref_gv = np.zeros((N, D))
    np.add.at(ref_gv, indices.ravel(), weights.ravel()[:, None] * grad_out.astype(np.float64).repeat(B, axis=0))
    ref_gw = np.einsum("td,tbd->tb", grad_out.astype(np.float64), values[indices].astype(np.float64))
    np.testing.assert_allclose(gv, ref_gv, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(gw, ref_gw, rtol=1e-5, atol=1e-5)

    rows, sgv, _ = capi.embedding_bag_backward(values, indices, weights, grad_out, sparse=True, lib=lib)
    assert np.array_equal(rows, np.unique(indices))
    assert np.array_equal(sgv, gv[rows])

    indices[3, 2] = N + 7
    try:
        capi.embedding_bag(values, indices, weights, lib=lib)
    except capi.CoreError as e:
        assert e.status == capi.ERR_INDEX_OUT_OF_RANGE, e
    else:
        raise AssertionError("an index outside the table was accepted")
    try:
        capi.embedding_bag(values, indices, weights.astype(np.float64), lib=lib)
    except ValueError as e:
        assert "weights must be float32" in str(e), e
    else:
        raise AssertionError("float64 weights for float32 values were accepted")
    assert "torch" not in sys.modules and "memkernels" not in sys.modules
    print("capi_numpy: ok", lib.build_info())


if __name__ == "__main__":
    main(*sys.argv[1:])
