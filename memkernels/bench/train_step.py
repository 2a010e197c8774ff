"""Bench of one value-table training step (forward, backward, Adam-type
update): memkernels' fused and sparse paths against torch's dense AdamW and
SparseAdam."""

from __future__ import annotations

import statistics
from typing import List

import torch
import torch.nn.functional as F

import memkernels
from memkernels.optim import SparseRowOptimizer

from .cases import UpdateCase, embedding_bag_bytes
from .harness import BUDGET_S, Row, add_speedups, make_row, peak_bytes, peak_reset, time_fn


def make_train_step(impl: str, case: UpdateCase, device: torch.device, generator=None):
    """A fresh value table and optimizer for `impl`, and the step
    ``step(indices, weights, grad_out)``: forward, backward, update.

    impl: ``memkernels_fused`` (SparseRowOptimizer fused into the backward),
    ``memkernels_sparse`` (sparse gradient + SparseRowOptimizer),
    ``torch_dense_adamw`` (F.embedding_bag + AdamW) or ``torch_sparse_adam``
    (F.embedding_bag(sparse=True) + SparseAdam)."""
    dtype = getattr(torch, case.dtype)
    table = torch.nn.Parameter(torch.randn(case.N, case.D, generator=generator, device=device, dtype=dtype))
    if impl.startswith("memkernels"):
        opt = SparseRowOptimizer([table], "adam", lr=1e-3)
        if impl == "memkernels_fused":
            opt.fuse(table)
    elif impl == "torch_dense_adamw":
        opt = torch.optim.AdamW([table], lr=1e-3)
    elif impl == "torch_sparse_adam":
        opt = torch.optim.SparseAdam([table], lr=1e-3)
    else:
        raise ValueError(f"unknown train-step impl {impl!r}")

    def step(idx, w, gout):
        if impl.startswith("memkernels"):
            out = memkernels.embedding_bag(table, idx, w, sparse=impl == "memkernels_sparse", check_indices=False)
        else:
            out = F.embedding_bag(idx, table, mode="sum", per_sample_weights=w.to(dtype),
                                  sparse=impl == "torch_sparse_adam")
        out.backward(gout)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def bench_update(case: UpdateCase, device: torch.device, ceilings, reps: int) -> List[Row]:
    """One training step of a value table (forward, backward, Adam-type
    update), four ways: memkernels' fused backward+update, memkernels' sparse
    gradient + SparseRowOptimizer, torch's dense gradient + AdamW, and torch's
    sparse gradient + SparseAdam. Ours should stay flat as N grows."""

    dtype = getattr(torch, case.dtype)
    g = torch.Generator(device=device).manual_seed(0)
    data = []
    for _ in range(3):
        idx = torch.randint(0, case.N, (case.T, case.B), generator=g, device=device)
        w = torch.rand(case.T, case.B, generator=g, device=device)
        gout = torch.randn(case.T, case.D, generator=g, device=device, dtype=dtype)
        data.append((idx, w, gout))
    unique = int(statistics.mean(torch.unique(b[0]).numel() for b in data))
    elt = torch.empty((), dtype=dtype).element_size()
    base = embedding_bag_bytes(case.N, case.D, case.T, case.B, elt, 8, unique, "forward")
    base += embedding_bag_bytes(case.N, case.D, case.T, case.B, elt, 8, unique, "backward_sparse")
    # The update reads and writes each touched row and its two fp32 moments.
    nbytes = base + unique * case.D * 2 * (elt + 8)

    rows: List[Row] = []
    for impl in ("memkernels_fused", "memkernels_sparse", "torch_dense_adamw", "torch_sparse_adam"):
        base_mem = peak_reset(device)
        try:
            step = make_train_step(impl, case, device, g)
            times = time_fn(lambda i: step(*data[i % 3]), device, warmup=2, reps=reps, budget_s=BUDGET_S,
                            label=f"{case.name} {impl}")
        except torch.OutOfMemoryError:
            continue
        finally:
            step = None
        peak = peak_bytes(device, base_mem)
        rows.append(make_row("train_step", case, impl, "fwd+bwd+update", device, times, nbytes,
                         6 * case.T * case.B * case.D, ceilings, peak))
    add_speedups(rows, pairs={("memkernels_fused", "torch_dense_adamw"), ("memkernels_fused", "torch_sparse_adam"),
                           ("memkernels_sparse", "torch_sparse_adam")})
    return rows
