"""The torch-free core: CMakeLists.txt builds it as a shared library with its
own C/C++ tests (CTest), and its C ABI works from numpy through ctypes in a
process that never imports torch."""

import os
import shutil
import subprocess
import sys

import pytest

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
    configure = [cmake, "-S", ROOT, "-B", str(build), "-DMEMKERNELS_CUDA=OFF"]
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


def test_c_abi_from_numpy_without_torch(core_build):
    lib = os.path.join(str(core_build), "libmemkernels_core.so")
    assert os.path.exists(lib)
    script = os.path.join(ROOT, "tests", "core", "capi_numpy.py")
    res = subprocess.run([sys.executable, script, lib], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "capi_numpy: ok" in res.stdout
