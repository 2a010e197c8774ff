"""What was built: memkernels.build_info() reports it, and CI (which sets
MEMKERNELS_EXPECT_CUDA=1) proves the CUDA kernels were compiled and linked."""

import os

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
