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


def pk_topk(query: torch.Tensor, keys: torch.Tensor, k: int):
    """The PyTorch composite of product-key scoring: einsum, topk, combine,
    topk, gather. Half-scores in float32 (float64 for float64 inputs).

    Returns ``(scores[T, H, k], indices[T, H, k])`` like
    :func:`memkernels.pk_topk`; differentiable through PyTorch's autograd.
    Ties among equal scores break however ``torch.topk`` breaks them.
    """
    n_keys = keys.shape[2]
    half = query.shape[-1] // 2
    acc = torch.float64 if query.dtype == torch.float64 else torch.float32
    q, kk = query.to(acc), keys.to(acc)
    s1 = torch.einsum("thd,hnd->thn", q[..., :half], kk[:, 0])
    s2 = torch.einsum("thd,hnd->thn", q[..., half:], kk[:, 1])
    v1, i1 = s1.topk(k, dim=-1)
    v2, i2 = s2.topk(k, dim=-1)
    cand = (v1.unsqueeze(-1) + v2.unsqueeze(-2)).flatten(-2)  # [T, H, k*k]
    scores, best = cand.topk(k, dim=-1)
    slots = i1.gather(-1, best // k) * n_keys + i2.gather(-1, best % k)
    return scores, slots
