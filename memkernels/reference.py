"""Pure-PyTorch reference implementations: the oracle for tests and the
baseline for benchmarks. Readable first; no custom kernels."""

import torch


def embedding_bag(values: torch.Tensor, indices: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``out[t] = sum_j weights[t, j] * values[indices[t, j]]``.

    Accumulates in float32 (float64 for float64 values) and returns the
    values' dtype, like :func:`memkernels.embedding_bag`. Differentiable in
    ``values`` and ``weights`` through PyTorch's own autograd.
    """
    acc = torch.float64 if values.dtype == torch.float64 else torch.float32
    rows = values[indices.long()].to(acc)  # [T, B, D]
    out = (weights.to(acc).unsqueeze(-1) * rows).sum(dim=1)
    return out.to(values.dtype)
