"""The torch-free core: CMakeLists.txt builds it as a shared library with its
own C/C++ tests (CTest, the core's CUDA code paths among them, run on the
CPU emulation of tests/core/emu); the installed package ships the same library and
its header; and the C ABI works from numpy through the package's ctypes
bindings in a process that never imports torch, and from a C program
compiled against the installed header and library."""

import os
import shutil
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cmake():
    exe = shutil.which("cmake")
    if exe is None:
        pytest.fail("cmake is required for the core library tests (pip install cmake)")
    return exe


@pytest.fixture(scope="module")
def core_build(tmp_path_factory):
    build = tmp_path_factory.mktemp("core-build")
    cmake = _cmake()
    # CPU kernels only: the CUDA side is compiled by the extension build.
    # The CUDA sources still build, as C++, into the emulated CUDA test
    # (tests/core/emu); this interpreter rewrites them for it.
    configure = [cmake, "-S", ROOT, "-B", str(build), "-DMEMKERNELS_CUDA=OFF", "-DPython3_EXECUTABLE=" + sys.executable]
    if shutil.which("ninja"):
        configure += ["-G", "Ninja"]
    subprocess.run(configure, check=True, capture_output=True, text=True)
    subprocess.run([cmake, "--build", str(build), "-j", "2"], check=True, capture_output=True, text=True)
    return build


def test_ctest_passes(core_build):
    ctest = os.path.join(os.path.dirname(_cmake()), "ctest")
    res = subprocess.run([ctest, "--test-dir", str(core_build), "--output-on-failure"], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "100% tests passed" in res.stdout
    # The core's CUDA code paths, end to end under the CPU emulation, and the
    # kernel bodies alone: none may drop out of the suite unnoticed.
    for name in ("core_cuda_emu_sms2", "core_cuda_emu_sms5", "warp_select_emu", "eb_forward_emu", "eb_backward_emu"):
        assert name in res.stdout, res.stdout


def test_c_abi_from_numpy_without_torch(core_build):
    lib = os.path.join(str(core_build), "libmemkernels_core.so")
    assert os.path.exists(lib)
    script = os.path.join(ROOT, "tests", "core", "capi_numpy.py")
    res = subprocess.run([sys.executable, script, lib], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "capi_numpy: ok" in res.stdout


def test_installed_library_from_numpy_without_torch():
    from memkernels import capi

    script = os.path.join(ROOT, "tests", "core", "capi_numpy.py")
    res = subprocess.run([sys.executable, script, capi.library_path(), capi.__file__], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "capi_numpy: ok" in res.stdout


def test_installed_header_and_library_serve_a_c_caller(tmp_path):
    from memkernels import capi

    lib, include = capi.library_path(), capi.include_dir()
    assert os.path.exists(os.path.join(include, "memkernels.h"))
    exe = str(tmp_path / "c_abi")
    subprocess.run(["cc", "-std=c99", os.path.join(ROOT, "tests", "core", "test_c_abi.c"), "-I", include, lib,
                    "-Wl,-rpath," + os.path.dirname(lib), "-lm", "-o", exe], check=True, capture_output=True, text=True)
    res = subprocess.run([exe], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    assert capi.library().lib.mk_abi_version() == capi.ABI_VERSION


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cupy_arrays_through_the_c_abi():
    """CuPy device arrays through memkernels.capi on CuPy's stream: the same
    results as the numpy path on the CPU (fp32 sums: close, not bitwise)."""
    cupy = pytest.importorskip("cupy")
    import numpy as np

    from memkernels import capi

    rng = np.random.default_rng(1)
    N, D, T, B = 500, 64, 40, 8
    values = rng.standard_normal((N, D)).astype(np.float32)
    indices = rng.integers(0, N, (T, B)).astype(np.int64)
    weights = rng.standard_normal((T, B)).astype(np.float32)
    grad_out = rng.standard_normal((T, D)).astype(np.float32)
    out = capi.embedding_bag(cupy.asarray(values), cupy.asarray(indices), cupy.asarray(weights))
    np.testing.assert_allclose(cupy.asnumpy(out), capi.embedding_bag(values, indices, weights), rtol=1e-5, atol=1e-5)
    gv, gw = capi.embedding_bag_backward(cupy.asarray(values), cupy.asarray(indices), cupy.asarray(weights),
                                         cupy.asarray(grad_out))
    gv_cpu, gw_cpu = capi.embedding_bag_backward(values, indices, weights, grad_out)
    np.testing.assert_allclose(cupy.asnumpy(gv), gv_cpu, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(cupy.asnumpy(gw), gw_cpu, rtol=1e-5, atol=1e-5)
