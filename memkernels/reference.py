"""Pure-PyTorch reference implementations: the oracle for tests and the
baseline for benchmarks. Readable first; no custom kernels."""

import math

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


def sparse_row_step(table, rows, grads, state, algorithm, lr, betas, eps, weight_decay, max_row_norm):
    """One row-sparse optimizer step, written out in float64: the oracle of
    :func:`memkernels.ops.sparse_row_update` and
    :class:`memkernels.optim.SparseRowOptimizer`.

    Args:
        table: ``[N, D]``; a float64 copy is returned with ``rows`` updated.
        rows: ``[U]`` distinct row ids; grads: ``[U, D]`` their gradients.
        state: a dict updated in place: ``"step"`` (the steps so far), and
            ``"m"``, ``"v"`` ``[N, D]`` (``"adamw"``), ``"m"`` ``[N, D]`` and
            ``"v"`` ``[N]`` (``"adam_rowwise"``) or ``"sum"`` ``[N]``
            (``"adagrad_rowwise"``), float64.
        algorithm: ``"adamw"`` (SparseAdam semantics with decoupled weight
            decay on the touched rows), ``"adam_rowwise"`` (the same with one
            second moment per row, the mean of the row's squared gradient) or
            ``"adagrad_rowwise"``.
        max_row_norm: if > 0, each row's gradient is first scaled to at most
            this L2 norm.
    """
    t = table.double()
    g = grads.double()
    if max_row_norm > 0:
        norm = g.norm(dim=1, keepdim=True)
        g = g * torch.where(norm > max_row_norm, max_row_norm / norm, torch.ones_like(norm))
    w = t[rows] * (1 - lr * weight_decay)
    state["step"] += 1
    if algorithm == "adamw":
        m, v = state["m"], state["v"]
        m[rows] += (1 - betas[0]) * (g - m[rows])
        v[rows] += (1 - betas[1]) * (g * g - v[rows])
        step_size = lr * math.sqrt(1 - betas[1] ** state["step"]) / (1 - betas[0] ** state["step"])
        w = w - step_size * m[rows] / (v[rows].sqrt() + eps)
    elif algorithm == "adam_rowwise":
        m, v = state["m"], state["v"]
        m[rows] += (1 - betas[0]) * (g - m[rows])
        v[rows] += (1 - betas[1]) * ((g * g).mean(dim=1) - v[rows])
        step_size = lr * math.sqrt(1 - betas[1] ** state["step"]) / (1 - betas[0] ** state["step"])
        w = w - step_size * m[rows] / (v[rows].sqrt() + eps).unsqueeze(1)
    elif algorithm == "adagrad_rowwise":
        s = state["sum"]
        s[rows] += (g * g).mean(dim=1)
        w = w - lr * g / (s[rows].sqrt() + eps).unsqueeze(1)
    else:
        raise ValueError(f"sparse_row_step: algorithm must be 'adamw', 'adam_rowwise' or 'adagrad_rowwise'; got "
                         f"{algorithm!r}")
    t[rows] = w
    return t
