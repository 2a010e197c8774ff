"""Bench of memkernels.embedding_bag against F.embedding_bag (dense and
sparse gradients), a Triton kernel in the design of the paper's released
ones (``triton_per_bag``, on CUDA when triton is installed) and the
pure-PyTorch reference."""

from __future__ import annotations

import statistics
from typing import List

import torch
import torch.nn.functional as F

import memkernels
from memkernels import reference

from . import triton_bag
from .cases import EBCase, embedding_bag_bytes
from .harness import BUDGET_S, ERRORS, Row, add_speedups, make_row, peak_bytes, peak_reset, time_fn


def make_inputs(case: EBCase, device, sets: int):
    dtype = getattr(torch, case.dtype)
    idt = getattr(torch, case.index_dtype)
    g = torch.Generator(device=device).manual_seed(0)
    values = torch.randn(case.N, case.D, generator=g, device=device, dtype=dtype)
    batches = []
    for _ in range(sets):
        idx = torch.randint(0, case.N, (case.T, case.B), generator=g, device=device).to(idt)
        w = torch.randn(case.T, case.B, generator=g, device=device)
        gout = torch.randn(case.T, case.D, generator=g, device=device, dtype=dtype)
        batches.append((idx, w, gout))
    return values, batches


def torch_computes_weights_grad(values) -> bool:
    """False where PyTorch's embedding_bag has no backward for per-sample
    weights (bfloat16 on CUDA): its rows then time the values' gradient only."""
    return not (values.is_cuda and values.dtype == torch.bfloat16)


def embedding_bag_impls(values, batches, case):
    """forward and forward+backward callables per implementation."""
    dtype = values.dtype

    def differentiable(bag):
        """(i, backward) -> bag(values, indices, weights) on the i-th input
        set, and with backward both gradients."""
        def call(i, backward):
            idx, w, gout = batches[i % len(batches)]
            v = values.requires_grad_(backward)
            ww = w.requires_grad_(backward)
            out = bag(v, idx, ww)
            if backward:
                torch.autograd.grad(out, (v, ww), gout)
            return out
        return call

    # PyTorch's CUDA kernel has no bfloat16 backward for per-sample weights:
    # there its rows compute the values' gradient only (less work than ours).
    torch_grad_w = torch_computes_weights_grad(values)

    def torch_op(i, backward, sparse=False):
        idx, w, gout = batches[i % len(batches)]
        v = values.requires_grad_(backward)
        ww = w.detach().to(dtype).requires_grad_(backward and torch_grad_w)
        out = F.embedding_bag(idx, v, mode="sum", per_sample_weights=ww, sparse=sparse)
        if backward:
            torch.autograd.grad(out, (v, ww) if torch_grad_w else (v,), gout)
        return out

    # memkernels as a user calls it: the default index check (on CUDA reported
    # without synchronising) is part of the time.
    impls = {
        "memkernels": differentiable(memkernels.embedding_bag),
        "memkernels_sparse": differentiable(lambda v, i, w: memkernels.embedding_bag(v, i, w, sparse=True)),
        "torch.F.embedding_bag": torch_op,
        "torch.F.embedding_bag_sparse": lambda i, bw: torch_op(i, bw, sparse=True),
        "reference": differentiable(reference.embedding_bag),
    }
    if triton_bag.available(values.device) is None:
        impls["triton_per_bag"] = differentiable(triton_bag.embedding_bag)
    return impls


def bench_embedding_bag(case: EBCase, device: torch.device, ceilings, reps: int, impls=None) -> List[Row]:
    values, batches = make_inputs(case, device, sets=3)
    elt = values.element_size()
    idx_bytes = 8 if case.index_dtype == "int64" else 4
    unique = int(statistics.mean(torch.unique(b[0]).numel() for b in batches))
    rows: List[Row] = []
    all_impls = embedding_bag_impls(values, batches, case)
    for impl, fn in all_impls.items():
        if impls and impl not in impls:
            continue
        for part, backward in (("forward", False), ("forward+backward", True)):
            if impl.endswith("_sparse") and not backward:
                continue
            base = peak_reset(device)
            try:
                times = time_fn(lambda i: fn(i, backward), device, warmup=2, reps=reps, budget_s=BUDGET_S,
                                label=f"{case.name} {impl} {part}")
            except torch.OutOfMemoryError:
                continue
            except Exception as e:  # noqa: BLE001 - a failing baseline must not hide the case's other rows
                if impl != "triton_per_bag":
                    raise
                msg = f"{case.name} {impl} {part}: {type(e).__name__}: {str(e)[:300]}"
                print(f"FAILED baseline {msg}")
                ERRORS.append(msg)
                continue
            peak = peak_bytes(device, base)
            nbytes = embedding_bag_bytes(case.N, case.D, case.T, case.B, elt, idx_bytes, unique, "forward")
            if backward:
                bpart = "backward_sparse" if impl.endswith("_sparse") else "backward_dense"
                nbytes += embedding_bag_bytes(case.N, case.D, case.T, case.B, elt, idx_bytes, unique, bpart)
            flops = 2 * case.T * case.B * case.D * (3 if backward else 1)
            rows.append(make_row("embedding_bag", case, impl, part, device, times, nbytes, flops, ceilings, peak))
            if backward and impl.startswith("torch.") and not torch_computes_weights_grad(values):
                rows[-1].note = "values' gradient only: torch has no bf16 weights gradient on CUDA"
    values.requires_grad_(False)
    add_speedups(rows)
    return rows
