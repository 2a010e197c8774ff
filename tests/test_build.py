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
