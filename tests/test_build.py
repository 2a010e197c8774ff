"""What was built: memkernels.build_info() reports it, and CI (which sets
MEMKERNELS_EXPECT_CUDA=1) proves the CUDA kernels were compiled and linked."""

import importlib.metadata
import os

import pytest
import torch

import memkernels


def test_build_info_fields():
    info = memkernels.build_info()
    for key in ("version", "backends", "cuda_archs", "openmp", "torch", "cuda", "torch_runtime"):
        assert key in info, key
    assert info["version"] == memkernels.__version__
    assert "cpu" in info["backends"]
    assert info["torch_runtime"] == torch.__version__


def test_cuda_kernels_built_when_expected():
    info = memkernels.build_info()
    if os.environ.get("MEMKERNELS_EXPECT_CUDA") == "1" or torch.cuda.is_available():
        assert "cuda" in info["backends"], info
        assert info["cuda"], info
        arch = os.environ.get("MEMKERNELS_EXPECT_ARCH")
        if arch:
            assert arch in info["cuda_archs"], info
        # The CUDA kernels are registered with the dispatcher.
        assert torch._C._dispatch_has_kernel_for_dispatch_key("memkernels::embedding_bag", "CUDA")
    elif os.environ.get("MEMKERNELS_EXPECT_CUDA") == "0":
        assert info["backends"] == ["cpu"], info
    else:
        assert info["backends"] in (["cpu"], ["cpu", "cuda"])


def test_extension_uses_the_shared_cpp_runtime():
    """The extension depends on libstdc++.so rather than carrying a static
    copy: two C++ runtimes in one process crash when an error message formats
    a number (setup.py probes for compilers that link libstdc++ statically)."""
    with open(memkernels._C.__file__, "rb") as f:
        assert b"libstdc++.so" in f.read()
    values = torch.randn(10, 4, 1)
    try:
        memkernels.embedding_bag(values, torch.zeros(3, 2, dtype=torch.long), torch.ones(3, 2))
    except RuntimeError as e:
        assert "got shape [10, 4, 1]" in str(e)
    else:
        raise AssertionError("a 3-D values tensor was accepted")


def test_installed_version_names_its_build():
    """A build's version carries the CUDA and torch it was compiled against
    (0.1.0+cu130torch2.14, 0.1.0+cputorch2.14) and it requires that torch
    series: torch's C++ ABI holds only within a series."""
    try:
        version = importlib.metadata.version("memkernels")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("memkernels runs from a source-tree build (setup.py build_ext --inplace): no package metadata")
    info = memkernels.build_info()
    major, minor = (int(x) for x in info["torch"].split("+")[0].split(".")[:2])
    device = "cu" + info["cuda"].replace(".", "") if "cuda" in info["backends"] else "cpu"
    assert version == f"{info['version']}+{device}torch{major}.{minor}"
    torch_req = [r for r in importlib.metadata.requires("memkernels") if r.startswith("torch")]
    assert len(torch_req) == 1, torch_req
    assert set(torch_req[0][len("torch"):].split(",")) == {f">={major}.{minor}", f"<{major}.{minor + 1}"}


def test_torch_series_mismatch_is_refused_with_a_remedy():
    from memkernels._load import check_torch_series

    check_torch_series("2.14.1+cu130", "2.14.0")  # same series: fine
    with pytest.raises(ImportError, match=r"compiled against torch 2\.14\.1\+cu130, but torch 2\.15\.0 is imported.*"
                                          r"pip install --no-build-isolation"):
        check_torch_series("2.14.1+cu130", "2.15.0")
