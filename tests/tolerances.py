"""Per-dtype tolerances in one place.

float32/float64 kernels are compared with an fp64 oracle by absolute and
relative tolerance. For float16/bfloat16 the rule is flash-attention's: our
error against the fp64 oracle may be at most twice the error of PyTorch's own
op computed in that dtype (plus a small floor for exact cases).
"""

import torch

ATOL_RTOL = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (2e-5, 2e-5),
    torch.float16: (None, None),
    torch.bfloat16: (None, None),
}

LOWP_FLOOR = {torch.float16: 1e-3, torch.bfloat16: 1e-2}


def assert_close_to_oracle(ours, oracle64, dtype, torch_lowp=None):
    """ours: our result; oracle64: fp64 reference; torch_lowp: PyTorch's own op in `dtype`."""
    ours64 = ours.detach().to(torch.float64).cpu()
    oracle64 = oracle64.detach().to(torch.float64).cpu()
    assert ours.shape == oracle64.shape, (ours.shape, oracle64.shape)
    assert torch.isfinite(ours64).all()
    if ours64.numel() == 0:
        return
    scale = max(1.0, oracle64.abs().max().item())
    if dtype in (torch.float32, torch.float64):
        atol, rtol = ATOL_RTOL[dtype]
        torch.testing.assert_close(ours64, oracle64, atol=atol * scale, rtol=rtol)
        return
    assert torch_lowp is not None, "low precision needs PyTorch's own result for the 2x rule"
    ours_err = (ours64 - oracle64).abs().max().item()
    torch_err = (torch_lowp.detach().to(torch.float64).cpu() - oracle64).abs().max().item()
    assert ours_err <= 2 * torch_err + LOWP_FLOOR[dtype] * scale, (ours_err, torch_err)
